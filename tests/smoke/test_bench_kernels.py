"""benchmarks/bench_kernels.py end to end on the host CUDA runtime: the script works before a GPU ever runs it.

The timings are host wall-clock and mean nothing; what is checked is that every
kernel of every format is built, launched through the real launcher at each
batch, and reported in RESULTS.md with the device's name.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from helpers import ROOT

torch = pytest.importorskip("torch")

import cudahost  # noqa: E402 - after the torch skip: it needs torch


@pytest.mark.skipif(not cudahost.available()[0], reason=f"host CUDA runtime: {cudahost.available()[1]}")
def test_bench_kernels_runs_every_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cupy_kernels import launch

    monkeypatch.setitem(sys.modules, "cupy", cudahost.fake_cupy())
    launch._module.cache_clear()
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks" / "bench_kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "RESULTS.md"
    try:
        bench.main(["--shapes", "512x256", "--batches", "1,3", "--runs", "1", "--warmup", "0", "--copy-mb", "1",
                    "--rotate-mb", "0", "--out", str(out)])
    finally:
        launch._module.cache_clear()
    text = out.read_text()
    assert "Device: **cudahost (CPU)**" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| 512x256 |")]
    kernels = {"gptq g128", "gptq g128 act-order", "awq g128", "nf4 double-quant", "gguf Q4_0", "gguf Q4_1",
               "gguf Q4_K"}
    assert {(r.split("|")[2].strip(), r.split("|")[3].strip()) for r in rows} == {
        (b, k) for b in ("1", "3") for k in kernels}
    assert all(float(r.split("|")[4]) > 0 for r in rows)
    assert all(re.search(r"\| - \|$", r) for r in rows)  # no CUDA torch here: no fp16 baseline column
