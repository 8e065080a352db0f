"""``mcard smoke`` without a GPU: reference-only path, its message and exit codes, layer picking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from helpers import cli_process, run_cli
from mcard.core.arch import tiny_config
from mcard.core.errors import EXIT_FAILED, EXIT_NO_GPU, EXIT_OK, EXIT_UNUSABLE
from mcard.smoke import run as smoke

NO_GPU = not smoke.gpu_status()[0]
needs_no_gpu = pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU path")


def _builder(fmt: str):
    return pytest.importorskip(f"mcard.formats.{fmt}")


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small variant per format, from the format modules' own builders."""
    root = tmp_path_factory.mktemp("smoke")
    cfg = tiny_config()
    out: dict[str, Path] = {}
    builders = {
        "gptq-act-asym": lambda m, p: m.write_variant(p, cfg, bits=4, group_size=64, desc_act=True, sym=False),
        "gptq-v2-sym": lambda m, p: m.write_variant(p, cfg, bits=4, group_size=128, checkpoint_format="gptq_v2"),
        "gptq-3bit": lambda m, p: m.write_variant(p, cfg, bits=3, group_size=128),
        "awq": lambda m, p: m.write_variant(p, cfg, group_size=64),
        "bnb": lambda m, p: m.write_variant(p, cfg, quant_type="nf4", double_quant=True),
        "bnb-plain": lambda m, p: m.write_variant(p, cfg, quant_type="nf4", double_quant=False),
        "gguf-q4km": lambda m, p: m.write_variant(p, cfg, "Q4_K_M"),
        "gguf-q4_1": lambda m, p: m.write_variant(p, cfg, "Q4_1"),
        "gguf-q8_0": lambda m, p: m.write_variant(p, cfg, "Q8_0"),
        "gguf-q6_k": lambda m, p: m.write_variant(p, cfg, "Q6_K"),
    }
    for label, build in builders.items():
        fmt = label.split("-")[0]
        try:
            mod = __import__(f"mcard.formats.{fmt}", fromlist=["*"])
        except ModuleNotFoundError:
            continue
        build(mod, root / label)
        out[label] = root / label
    return out


@pytest.mark.parametrize(
    "label", ["gptq-act-asym", "gptq-v2-sym", "gptq-3bit", "awq", "bnb", "bnb-plain", "gguf-q4km", "gguf-q4_1"]
)
def test_reference_path_passes_on_builder_variants(variants: dict[str, Path], label: str) -> None:
    if label not in variants:
        pytest.skip(f"format module for {label} not available")
    result = smoke.run(variants[label], device="cpu", layers="3", batches="1,4", seed=1)
    assert result.ok, [r.to_dict() for r in result.layers if not r.ok]
    assert not result.kernels_run and "no kernel was exercised" in result.message
    assert {r.engine for r in result.layers} == {"reference"}
    # 3 layers x 2 batches; a GGUF mix adds one layer of its type without a kernel (Q6_K output)
    assert len(result.layers) == 6 + 2 * label.startswith("gguf")
    assert all(r.rel_error is not None and r.rel_error < 1e-5 for r in result.layers)


def test_layout_error_is_caught_without_gpu(variants: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A reference that reads the nibbles in the wrong order must fail the CPU path."""
    if "awq" not in variants:
        pytest.skip("awq module not available")
    from mcard.smoke import reference

    monkeypatch.setattr(reference, "awq_order", lambda: (0, 1, 2, 3, 4, 5, 6, 7))
    result = smoke.run(variants["awq"], device="cpu", layers="1", batches="1")
    assert not result.ok
    assert result.layers[0].rel_error > 1e-2


def test_spread_picks_first_and_last() -> None:
    names = [f"l{i}" for i in range(10)]
    assert smoke.spread(names, 3) == ["l0", "l4", "l9"] or smoke.spread(names, 3) == ["l0", "l5", "l9"]
    assert smoke.spread(names, None) == names
    assert smoke.spread(names, 50) == names
    assert len(smoke.spread(names, 4)) == 4


def test_by_depth_orders_layers_numerically() -> None:
    from mcard.smoke.layers import by_depth

    names = ["model.layers.10.mlp.up_proj", "model.layers.2.mlp.up_proj", "model.layers.2.self_attn.q_proj"]
    assert by_depth(names) == [names[1], names[2], names[0]]


@pytest.mark.parametrize("bad", ["0", "33", "a", ""])
def test_bad_batches_are_unusable(bad: str) -> None:
    with pytest.raises(smoke.UnusableInput):
        smoke.parse_batches(bad)


def test_layers_option() -> None:
    assert smoke.parse_layers("all") is None
    assert smoke.parse_layers("2") == 2
    with pytest.raises(smoke.UnusableInput):
        smoke.parse_layers("0")


# -- the real CLI, in a subprocess (no GPU here) ---------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return cli_process("smoke", *args, timeout=120, env=dict(os.environ, COLUMNS="200"))


@needs_no_gpu
def test_cli_without_gpu_exits_0_and_says_so(variants: dict[str, Path]) -> None:
    label = next(iter(variants))
    proc = _cli(str(variants[label]), "--layers", "2", "--batch", "1")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "no kernel was exercised" in proc.stdout
    assert "OK" in proc.stdout


@needs_no_gpu
def test_cli_require_gpu_exits_3(variants: dict[str, Path]) -> None:
    label = next(iter(variants))
    proc = _cli(str(variants[label]), "--require-gpu")
    assert proc.returncode == EXIT_NO_GPU
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcard: ") and "no usable GPU" in lines[0]


@needs_no_gpu
def test_cli_json_table(variants: dict[str, Path]) -> None:
    if "gguf-q4km" not in variants:
        pytest.skip("gguf module not available")
    proc = _cli(str(variants["gguf-q4km"]), "--json", "--layers", "all", "--batch", "1", "--seed", "3")
    assert proc.returncode == EXIT_OK, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["kernels_run"] is False and doc["format"] == "gguf"
    assert doc["layers"] and {row["engine"] for row in doc["layers"]} == {"reference"}
    assert {"name", "kind", "shape", "batch", "rel_error", "threshold", "finite", "ok"} <= set(doc["layers"][0])
    assert "Q6_K" in doc["message"]  # tensors without a kernel are named, not silently dropped


def test_cli_in_process_exit_codes(variants: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 1 on a failing layer, 2 on unusable input (typer's runner: no torch re-import)."""
    missing = run_cli("smoke", tmp_path / "nope")
    assert missing.exit_code == EXIT_UNUSABLE
    (tmp_path / "notes.txt").write_text("hello")
    assert run_cli("smoke", tmp_path).exit_code == EXIT_UNUSABLE
    if "bnb" in variants:
        from mcard.formats.bnb import smoke as bnb_smoke

        real = bnb_smoke.layer

        def broken(variant, name):
            layer = real(variant, name)
            good = layer.numpy_weight
            layer.numpy_weight = lambda: good() * np.float32(1.1)
            return layer

        monkeypatch.setattr(bnb_smoke, "layer", broken)
        res = run_cli("smoke", variants["bnb"], "--device", "cpu", "--layers", "1", "--batch", "1")
        assert res.exit_code == EXIT_FAILED, res.output
        assert "FAIL" in res.output


# -- the kernel path, on the host CUDA runtime (tests/tools/cudahost) ------------------------
@pytest.fixture
def host_gpu(monkeypatch: pytest.MonkeyPatch):
    """Make ``mcard smoke`` see a "GPU": CuPy is the host runtime, so the real .cu kernels run on the CPU."""
    import cudahost

    from cupy_kernels import launch

    ok, why = cudahost.available()
    if not ok:
        pytest.skip(f"host CUDA runtime: {why}")
    monkeypatch.setitem(sys.modules, "cupy", cudahost.fake_cupy())
    monkeypatch.setattr(smoke, "time_kernel", lambda fn: (fn(), 1.0)[1])  # one extra launch, no timing loop
    launch._module.cache_clear()
    yield launch
    launch._module.cache_clear()


@pytest.mark.parametrize("label", ["gptq-act-asym", "gptq-v2-sym", "awq", "bnb", "bnb-plain", "gguf-q4km", "gguf-q4_1"])
def test_kernel_path_passes_on_builder_variants(variants: dict[str, Path], label: str, host_gpu) -> None:
    if label not in variants:
        pytest.skip(f"format module for {label} not available")
    result = smoke.run(variants[label], device="cuda", layers="2", batches="1,3", seed=2)
    assert result.ok, [r.to_dict() for r in result.layers if not r.ok]
    assert result.kernels_run and result.message.startswith("kernels ran on cudahost (CPU)")
    kernel_rows = [r for r in result.layers if r.engine == "kernel"]
    assert kernel_rows and all(r.rel_error < smoke.kernel_tolerances()[result.format] for r in kernel_rows)
    assert all(r.time_us == 1.0 and r.gbps > 0 for r in kernel_rows)


def test_kernel_path_catches_a_broken_kernel(variants: dict[str, Path], host_gpu, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel with a wrong lop3 truth table in its dequantization (a mistake kernels have shipped with): exit 1."""
    import shutil

    for cu in [*Path(host_gpu.HERE).glob("*.cu"), *Path(host_gpu.HERE).glob("*.cuh")]:
        shutil.copy(cu, tmp_path)
    src = tmp_path / "int4.cu"
    assert src.read_text().count("lop3<0xEA>(w, 0x000F000Fu") == 1
    src.write_text(src.read_text().replace("lop3<0xEA>(w, 0x000F000Fu", "lop3<0xE8>(w, 0x000F000Fu"))
    monkeypatch.setattr(host_gpu, "HERE", tmp_path)
    res = run_cli(*["smoke", str(variants["awq"]), "--device", "cuda", "--layers", "1",
                                   "--batch", "1", "--json"])
    assert res.exit_code == EXIT_FAILED, res.output
    doc = json.loads(res.output)
    assert doc["kernels_run"] and not doc["ok"]
    assert doc["layers"][0]["engine"] == "kernel" and doc["layers"][0]["note"] == "kernel disagrees with the reference"


@pytest.mark.parametrize("label, qtype", [("gguf-q8_0", "Q8_0"), ("gguf-q6_k", "Q6_K")])
def test_gguf_types_without_kernel_are_quantized_layers(variants: dict[str, Path], label: str, qtype: str) -> None:
    """#10 item 6: the reference check runs on them and the result says there is no kernel: exit 0, not 2."""
    result = smoke.run(variants[label], device="cpu", layers="2", batches="1", seed=1)
    assert result.ok and result.layers and {r.kind for r in result.layers} == {f"gguf {qtype}"}
    assert all(r.engine == "reference" and r.note == f"no kernel for GGUF {qtype}" for r in result.layers)
    assert f"no kernel for GGUF {qtype} (reference check only)" in result.message
    res = run_cli(*["smoke", str(variants[label]), "--device", "cpu", "--layers", "1", "--batch", "1"])
    assert res.exit_code == EXIT_OK, res.output


def test_gguf_without_kernel_on_a_gpu_says_no_kernel_ran(variants: dict[str, Path], host_gpu) -> None:
    result = smoke.run(variants["gguf-q8_0"], device="cuda", layers="1", batches="1", seed=1)
    assert result.ok and not result.kernels_run
    assert result.message.startswith("no kernel was exercised") and "no kernel for GGUF Q8_0" in result.message
