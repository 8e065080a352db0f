"""Every CUDA source in cupy_kernels/ compiles with nvcc for sm_80 and sm_90 without a warning."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

KERNEL_DIR = Path(__file__).resolve().parent.parent / "cupy_kernels"
SOURCES = sorted(KERNEL_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")


def test_sources_exist_and_launcher_names_them() -> None:
    import cupy_kernels

    assert {p.name for p in SOURCES} == set(cupy_kernels.SOURCES.values())
    for src in SOURCES:
        text = src.read_text()
        includes = [line for line in text.splitlines() if line.startswith("#include")]
        assert includes == ["#include <cuda_fp16.h>"], f"{src.name}: NVRTC finds only cuda_fp16.h"
        assert 'extern "C" __global__' in text or "extern \"C\" __global__" in text.replace("\\\n", "")


ARCHS = ("sm_80", "sm_90")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[int, str, str]]:
    """Compile every (source, arch) pair concurrently (nvcc is single-threaded; this keeps CI fast)."""
    if NVCC is None:
        pytest.skip("nvcc not on PATH")
    tmp = tmp_path_factory.mktemp("ptx")
    procs = {}
    for src in SOURCES:
        for arch in ARCHS:
            out = tmp / f"{src.stem}.{arch}.ptx"
            cmd = [NVCC, "-ptx", f"-arch={arch}", "--std=c++17", "--Werror", "all-warnings", "-o", str(out), str(src)]
            procs[(src.name, arch)] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out)
    results = {}
    for key, (proc, out) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[key] = (proc.returncode, stdout + stderr, out.read_text() if out.exists() else "")
    return results


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src", SOURCES, ids=[p.name for p in SOURCES])
def test_compiles_without_warnings(compiled, src: Path, arch: str) -> None:
    rc, messages, ptx = compiled[(src.name, arch)]
    assert rc == 0, messages
    assert messages.strip() == "", messages
    assert ".entry" in ptx
