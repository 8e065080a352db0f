"""Every CUDA source in cupy_kernels/ compiles with nvcc for sm_80 and sm_90 without a warning, and no kernel spills.

The sources are compiled to cubins, so ptxas runs too (it rejects what PTX
generation lets through, e.g. too much shared memory) and reports each kernel's
registers, shared memory, stack frame and spills (cupy_kernels/_resources.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cupy_kernels import _resources
from helpers import ROOT

KERNEL_DIR = ROOT / "cupy_kernels"
SOURCES = sorted(KERNEL_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")


def test_sources_exist_and_launcher_names_them() -> None:
    import cupy_kernels
    from cupy_kernels import launch

    assert {p.name for p in SOURCES} == set(cupy_kernels.SOURCES.values())
    for src in SOURCES:
        text = src.read_text()
        includes = [line for line in text.splitlines() if line.startswith("#include")]
        # NVRTC finds cuda_fp16.h itself; the launcher inlines the project's own headers
        assert includes == ["#include <cuda_fp16.h>"] + [f'#include "{h}"' for h in launch.HEADERS], src.name
        assert 'extern "C" __global__' in text.replace("\\\n", "")
        inlined = launch.source_text(src.stem)
        assert "#include \"" not in inlined and "mma.sync.aligned.m16n8k16" in inlined


ARCHS = ("sm_80", "sm_90")


LAUNCHED = {f"int4_{kind}_m{rows}" for kind in ("affine", "lut") for rows in (8, 16, 32)}  # every kernel launch.py starts


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[int, str, list]]:
    """Compile every (source, arch) pair concurrently (nvcc is single-threaded; this keeps CI fast)."""
    if NVCC is None:
        pytest.skip("nvcc not on PATH")
    tmp = tmp_path_factory.mktemp("cubin")
    procs = {}
    for src in SOURCES:
        for arch in ARCHS:
            cmd = _resources.compile_command(NVCC, src, arch, tmp / f"{src.stem}.{arch}.cubin")
            procs[(src.name, arch)] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[key] = (proc.returncode, stdout + stderr, _resources.parse_ptxas(stdout + stderr))
    return results


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src", SOURCES, ids=[p.name for p in SOURCES])
def test_compiles_without_warnings_or_spills(compiled, src: Path, arch: str) -> None:
    rc, messages, kernels = compiled[(src.name, arch)]
    assert rc == 0, messages
    assert _resources.ptxas_messages_other_than_info(messages) == "", messages
    assert kernels, f"ptxas reported no kernel for {src.name}"
    for k in kernels:
        assert (k.spill_stores, k.spill_loads, k.stack) == (0, 0, 0), f"{k.name} on {arch} spills: {k}"
        from cupy_kernels.launch import block_threads

        blocks, _, limiter = k.occupancy(block_threads(k.name))
        assert blocks >= 1, f"{k.name} on {arch}: no block fits ({limiter})"


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ARCHS)
def test_every_launched_kernel_is_compiled(compiled, arch: str) -> None:
    names = {k.name for (_, a), (_, _, ks) in compiled.items() if a == arch for k in ks}
    assert names == LAUNCHED


def test_ptxas_report_parsing() -> None:
    """The parser reads both report layouts nvcc 13 prints (cmem after smem on sm_80, not on sm_90)."""
    text = """ptxas info    : Compiling entry function 'k1' for 'sm_80'
ptxas info    : Function properties for k1
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 38912 bytes smem, 440 bytes cmem[0]
ptxas info    : Compiling entry function 'k2' for 'sm_90'
ptxas info    : Function properties for k2
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 1536 bytes smem
"""
    k1, k2 = _resources.parse_ptxas(text)
    assert (k1.name, k1.arch, k1.registers, k1.smem, k1.stack, k1.spill_stores, k1.spill_loads) == (
        "k1", "sm_80", 128, 38912, 8, 4, 12)
    assert (k2.registers, k2.smem, k2.spill_stores) == (40, 1536, 0)
    # 128 registers x 256 threads = half the register file: 2 blocks; 40 registers = 1280 a warp: 6 blocks
    assert k1.occupancy(256)[:1] == (2,) and k1.occupancy(256)[2] == "registers"
    assert k2.occupancy(256) == (6, 0.75, "registers")
    assert _resources.ptxas_messages_other_than_info(text + "gptq.cu(3): warning #177-D: unused\n") == (
        "gptq.cu(3): warning #177-D: unused")
