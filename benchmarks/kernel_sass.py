"""SASS instructions per weight of every int4 kernel's hot loop, for sm_80 and sm_90 (no GPU needed).

Usage: ``python benchmarks/kernel_sass.py [--json] [--out benchmarks/RESULTS_sass.md]``.
Needs ``nvcc`` and ``cuobjdump`` + ``nvdisasm`` (``pip install -e '.[dev]'`` brings the
last two from PyPI). ``--json`` prints one object per kernel and architecture
(``kernel``, ``arch``, ``loop_start``, ``loop_end``, ``weights_per_iteration``,
``instr_per_weight``, ``hmma``, ``registers``, ``spills``) and writes nothing; otherwise
the table and the method go to ``--out``. Exit 1 when a batch-1 kernel is over the
budget on sm_90 or a kernel has no HMMA, 2 when a tool is missing. The method and its
limits: ``cupy_kernels/_sass.py``; ``tests/smoke/test_kernels_sass.py`` enforces the budget.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cupy_kernels import _sass

ARCHS = ("sm_80", "sm_90")
H200 = "H200: 4.8 TB/s HBM, 132 SMs at ~1.98 GHz, 4 warp-instructions issued per SM per cycle"


def run(src: Path) -> list[_sass.KernelSass]:
    nvcc = shutil.which("nvcc")
    cuobjdump, env = _sass.find_cuobjdump()
    if nvcc is None or cuobjdump is None:
        raise FileNotFoundError("needs nvcc and cuobjdump + nvdisasm (pip install -e '.[dev]')")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            out += _sass.measure(nvcc, cuobjdump, env, src, arch, Path(tmp) / f"{arch}.cubin")
    return out


def verdicts(rows: list[_sass.KernelSass]) -> list[str]:
    bad = []
    for r in rows:
        if r.kernel in _sass.BATCH1 and r.arch == "sm_90" and r.instr_per_weight > _sass.BUDGET:
            bad.append(f"{r.kernel} {r.arch}: {r.instr_per_weight:.2f} instructions per weight > {_sass.BUDGET}")
        if r.hmma == 0:
            bad.append(f"{r.kernel} {r.arch}: no HMMA")
        if r.spills:
            bad.append(f"{r.kernel} {r.arch}: {r.spills} bytes of spills")
    return bad


def markdown(rows: list[_sass.KernelSass], nvcc_version: str, tool_version: str) -> str:
    lines = [
        "# Kernel instruction budget (SASS)", "",
        f"Produced by `python benchmarks/kernel_sass.py` with {nvcc_version} and cuobjdump {tool_version}; "
        "no GPU involved. Each kernel is compiled as `nvcc -std=c++17 -arch=sm_XX -cubin -O3 cupy_kernels/int4.cu`.",
        "",
        f"**Budget.** On an {H200}, HBM delivers about 37 int4 weights per SM per cycle against 128 "
        "thread-instructions of issue: a batch-1 kernel can stay at the memory roofline only below about 3.5 SASS "
        "instructions per weight (about 5 on an H100), less to leave issue slots for latency hiding. The batch-1 "
        f"kernels (`{'`, `'.join(_sass.BATCH1)}`, batch 1..8) must stay at or below **{_sass.BUDGET}** on sm_90 "
        "(`tests/smoke/test_kernels_sass.py`); every kernel must use the tensor cores (HMMA).",
        "",
        "**Method.** The hot loop is the longest range closed by a backward `BRA` with no other control flow "
        "inside (so its static count is its dynamic count; `loop_start`..`loop_end` are the offsets "
        "`cuobjdump -sass` prints, anyone can recount). Weights per iteration, per thread: each `HMMA.16816` "
        "multiplies a k16 x n8 tile of weights, 4 per thread, once per m16 tile of the batch (2 tiles in the m32 "
        "kernels). Instructions per weight = loop instructions / weights per iteration.",
        "",
        "**Limits.** Issue slots only: no latency, bank conflicts, bandwidth or occupancy; the prologue, the "
        "cross-warp reduction and the store are outside the loop; the act-order column gather of x runs before the "
        "kernel. Whether the loop reaches the roofline is for `benchmarks/bench_kernels.py` on a GPU to say.",
        "",
        "| kernel | arch | loop (offsets) | loop instructions | weights / iteration | instructions / weight | "
        "HMMA (loop / kernel) | registers | spills | budget |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r.kernel, r.arch)):
        budget = "-"
        if r.kernel in _sass.BATCH1:
            budget = ("ok" if r.instr_per_weight <= _sass.BUDGET else "OVER") if r.arch == "sm_90" else "(sm_90 only)"
        lines.append(f"| {r.kernel} | {r.arch} | {r.loop_start}..{r.loop_end} | {r.loop_instructions} | "
                     f"{r.weights_per_iteration} | {r.instr_per_weight:.2f} | {r.hmma_in_loop} / {r.hmma} | "
                     f"{r.registers} | {r.spills} | {budget} |")
    lines += ["", "Which kernel serves which format (every layer is packed once by `cupy_kernels/pack.py`):", "",
              "| format | batch 1..8 | 9..16 | 17..32 (and more, on more grid rows) |", "|---|---|---|---|",
              "| GPTQ 4-bit v1/v2, sym/asym, every group size, act-order | int4_affine_m8 | int4_affine_m16 | "
              "int4_affine_m32 |",
              "| AWQ GEMM layout | int4_affine_m8 | int4_affine_m16 | int4_affine_m32 |",
              "| GGUF Q4_0 / Q4_1 / Q4_K | int4_affine_m8 | int4_affine_m16 | int4_affine_m32 |",
              "| bitsandbytes NF4 / FP4, plain or nested absmax, blocksize >= 64 | int4_lut_m8 | int4_lut_m16 | "
              "int4_lut_m32 |",
              "| bitsandbytes blocksize 32 | int4_lut_m32 | int4_lut_m32 | int4_lut_m32 |", "",
              "Act-order runs the very kernel of plain GPTQ (K is sorted by group once, at load time), so its count is "
              "the same (ratio 1.00, within the 10 % the issue allows); what it adds is a gather of x's K columns before "
              "the launch (M x K halves), which this static count does not see.", ""]
    lines += ["", "Instruction mix of the hot loops on sm_90 (per iteration):", ""]
    for r in sorted(rows, key=lambda r: r.kernel):
        if r.arch == "sm_90":
            mix = ", ".join(f"{op} {n}" for op, n in r.mix)
            lines.append(f"- `{r.kernel}`: {mix}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print a JSON list and write nothing")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS_sass.md")
    ap.add_argument("--source", type=Path, default=ROOT / "cupy_kernels" / "int4.cu", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        rows = run(args.source)
    except FileNotFoundError as exc:
        print(json.dumps({"error": str(exc)}) if args.json else f"kernel_sass: {exc}", file=sys.stderr)
        return 2
    bad = verdicts(rows)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=1))
    else:
        nvcc_version = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip()
        nvcc_version = nvcc_version.splitlines()[-2] if nvcc_version else "nvcc"
        cuobjdump, env = _sass.find_cuobjdump()
        tool = subprocess.run([cuobjdump, "--version"], capture_output=True, text=True, env=env).stdout.strip()
        tool_version = tool.splitlines()[-2].split(",")[-1].strip() if tool else "?"
        text = markdown(rows, nvcc_version, tool_version)
        args.out.write_text(text, encoding="utf-8")
        print(text)
        print(f"wrote {args.out}")
    for line in bad:
        print(f"kernel_sass: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
