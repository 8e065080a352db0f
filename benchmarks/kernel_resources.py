"""Registers, shared memory, spills and occupancy of every kernel, as ptxas reports them (no GPU needed).

Usage: ``python benchmarks/kernel_resources.py [--out benchmarks/RESULTS_resources.md]``.
Compiles each ``cupy_kernels/*.cu`` for sm_80 (A100) and sm_90 (H100/H200) with
``nvcc -cubin -Xptxas -v`` and computes how many 256-thread blocks fit on one SM
(cupy_kernels/_resources.py). These are compiler facts, not timings: they say
which resource bounds occupancy, which is what the bandwidth-bound batch-1
kernels need to keep enough loads in flight.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cupy_kernels import _resources
from cupy_kernels.launch import block_threads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS_resources.md")
    args = ap.parse_args(argv)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("nvcc is not on PATH", file=sys.stderr)
        return 2
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-2]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for src in sorted((ROOT / "cupy_kernels").glob("*.cu")):
            for arch in _resources.ARCH_LIMITS:
                rc, text, kernels = _resources.measure(nvcc, src, arch, Path(tmp) / "k.cubin")
                if rc:
                    print(text, file=sys.stderr)
                    return 1
                rows += kernels
    lines = ["# Kernel resources (ptxas)", "",
             f"nvcc: {version}. Host: {platform.machine()} {platform.system()}. Occupancy = resident threads / 2048 "
             "per SM. Produced by `python benchmarks/kernel_resources.py`.", "",
             "| kernel | arch | threads/block | registers | smem (bytes) | spills (st/ld) | blocks/SM | occupancy | "
             "limited by |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(rows, key=lambda k: (k.name, k.arch)):
        threads = block_threads(k.name)
        blocks, occ, limiter = k.occupancy(threads)
        lines.append(f"| {k.name} | {k.arch} | {threads} | {k.registers} | {k.smem} | {k.spill_stores}/{k.spill_loads} | "
                     f"{blocks} | {occ:.0%} | {limiter} |")
        print(lines[-1])
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
