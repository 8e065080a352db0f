"""Time the int4 kernels on a GPU and write ``benchmarks/RESULTS.md`` (not a test).

For each shape (K inputs x N outputs) and batch, every kernel is timed with CUDA
events: warm-up launches, then the median of many launches, each on the next of
several copies of the weights so that the 50 MB-class L2 cache cannot serve them
(at batch 1 the point is DRAM bandwidth). Reports the time, the effective GB/s
(bytes the kernel must read and write / time) next to a measured device-to-device
copy bandwidth, and the speedup over torch's fp16 matmul on the dense weight.

Usage: ``python benchmarks/bench_kernels.py [--runs 50] [--quick] [--shapes KxN,..]
[--batches 1,16]``; needs CuPy, a CUDA device and (for the fp16 baseline) torch
with CUDA. tests/smoke/test_bench_kernels.py runs it end to end at a tiny shape on the
host CUDA runtime (tests/tools/cudahost), so the script itself is checked on every CI
run; its timings there mean nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)]  # (K, N)
BATCHES = [1, 4, 16, 32]
L2_FLUSH_BYTES = 3 * 64 * 1024 * 1024  # rotate through at least 3x a large L2


def timed(fn: Callable[[int], Any], copies: int, runs: int, warmup: int) -> float:
    """Median microseconds of ``fn(i)`` over ``runs`` launches, rotating i over the copies."""
    import cupy

    for i in range(warmup):
        fn(i % copies)
    cupy.cuda.Device().synchronize()
    times = []
    for i in range(runs):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn(i % copies)
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) * 1e3)
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy GB/s (read + write counted)."""
    import cupy

    a = cupy.empty(nbytes, dtype=cupy.uint8)
    b = cupy.empty_like(a)
    t = timed(lambda _i: b.__setitem__(Ellipsis, a), 1, 20, 5)
    return 2 * nbytes / (t * 1e-6) / 1e9


def make_formats(k: int, n: int, rng: np.random.Generator) -> dict[str, Callable[[], Any]]:
    """Per format, a function that packs a fresh random layer (device arrays) for the kernel.

    Packing (cupy_kernels.pack) happens once per layer, at load time; the timings below
    cover only the matmul (for act-order, the column gather of x and the kernel).
    """
    import cupy

    import cupy_kernels as ck

    def w32(*shape: int) -> Any:
        return cupy.asarray(rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32).view(np.int32))

    def f16(*shape: int) -> Any:
        return cupy.asarray((rng.random(shape) * 0.01).astype(np.float16))

    def gguf_raw(type_name: str) -> Any:
        per, nbytes = ck.pack.GGUF_BLOCKS[type_name]
        raw = rng.integers(0, 256, size=(n, k // per, nbytes), dtype=np.uint8)
        raw[..., 0:4] = np.frombuffer(np.full(2, 0.01, "<f2").tobytes(), np.uint8)
        return cupy.asarray(raw.reshape(n, -1))

    g = 128
    plain = (np.arange(k) // g).astype(np.int32)
    act = (np.argsort(rng.permutation(k)) // g).astype(np.int32)
    out: dict[str, Callable[[], Any]] = {
        "gptq g128": lambda: ck.pack_gptq(w32(k // 8, n), w32(k // g, n // 8), f16(k // g, n), plain, g),
        "gptq g128 act-order": lambda: ck.pack_gptq(w32(k // 8, n), w32(k // g, n // 8), f16(k // g, n), act, g),
        "awq g128": lambda: ck.pack_awq(w32(k, n // 8), w32(k // g, n // 8), f16(k // g, n), g),
        "nf4 double-quant": lambda: ck.pack_bnb(
            cupy.asarray(rng.integers(0, 256, size=(n * k // 2, 1), dtype=np.uint8)),
            cupy.asarray(np.linspace(-1, 1, 16, dtype=np.float32)),
            cupy.asarray(rng.integers(0, 256, size=n * k // 64, dtype=np.uint8)), (n, k), 64,
            cupy.ones(-(-n * k // 64 // 256), dtype=cupy.float32),
            cupy.asarray(np.linspace(0, 0.1, 256, dtype=np.float32)), 0.01, 256),
    }
    for tname in ("Q4_0", "Q4_1", "Q4_K"):
        out[f"gguf {tname}"] = lambda tn=tname: ck.pack_gguf(gguf_raw(tn), tn, (n, k))
    return out


def _shapes(text: str) -> list[tuple[int, int]]:
    return [(int(k), int(n)) for k, n in (item.lower().split("x") for item in text.split(","))]


def main(argv: list[str] | None = None) -> None:
    import cupy

    import cupy_kernels as ck

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="first shape, batches 1 and 16 only")
    ap.add_argument("--shapes", type=_shapes, help="K x N list instead of the default shapes, e.g. 4096x4096,512x256")
    ap.add_argument("--batches", type=lambda t: [int(b) for b in t.split(",")], help="e.g. 1,16")
    ap.add_argument("--copy-mb", type=int, default=1024, help="size of the copy-bandwidth probe")
    ap.add_argument("--rotate-mb", type=int, default=L2_FLUSH_BYTES >> 20,
                    help="weights are rotated over copies totalling this much, so L2 cannot serve them")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = ap.parse_args(argv)
    try:
        import torch

        has_torch = torch.cuda.is_available()
    except ImportError:
        has_torch = False

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    copy_bw = copy_bandwidth(args.copy_mb << 20)
    rows = []
    shapes = args.shapes or (SHAPES[:1] if args.quick else SHAPES)
    batches = args.batches or ([1, 16] if args.quick else BATCHES)
    rotate = args.rotate_mb << 20
    rng = np.random.default_rng(0)
    for k, n in shapes:
        formats = make_formats(k, n, rng)
        dense_bytes = 2 * k * n
        dense_copies = max(2, -(-rotate // dense_bytes))
        dense = [torch.randn(n, k, device="cuda", dtype=torch.float16) for _ in range(dense_copies)] if has_torch else []
        for m in batches:
            x = cupy.asarray(rng.standard_normal((m, k)).astype(np.float16))
            base_us = None
            if has_torch:
                xt = torch.as_tensor(x, device="cuda")
                base_us = timed(lambda i, xt=xt, dense=dense: torch.matmul(xt, dense[i].T), dense_copies, args.runs, args.warmup)
            for name, make in formats.items():
                first = make()
                nbytes = first.nbytes
                copies = max(2, -(-rotate // nbytes))
                dev = [first] + [make() for _ in range(copies - 1)]
                out = cupy.empty((m, n), dtype=cupy.float16)
                t_us = timed(lambda i, x=x, dev=dev, out=out: ck.int4_matmul(x, dev[i], None, out),
                             copies, args.runs, args.warmup)
                moved = nbytes + x.nbytes + out.nbytes
                gbps = moved / (t_us * 1e-6) / 1e9
                rows.append((f"{k}x{n}", m, name, t_us, gbps, gbps / copy_bw,
                             None if base_us is None else base_us / t_us))
                print(f"{k}x{n} M={m:<2} {name:22s} {t_us:9.1f} us {gbps:7.0f} GB/s", flush=True)
                del dev
    lines = [
        "# Kernel benchmark", "",
        f"Device: **{device}**. Device-to-device copy bandwidth: {copy_bw:.0f} GB/s (read + write).",
        f"Median of {args.runs} launches with CUDA events after warm-up; weights rotated over copies totalling "
        f">= {args.rotate_mb} MiB so L2 does not serve them. Shapes are K (in) x N (out).", "",
        "GB/s counts the bytes a matmul must move: the packed layer (cupy_kernels.pack: weights, params, "
        "code book, act-order permutation), x and y.", "",
        "| shape | batch | kernel | time (us) | GB/s | of copy BW | vs torch fp16 |",
        "|---|---|---|---|---|---|---|",
    ]
    for shape, m, name, t_us, gbps, frac, speed in rows:
        lines.append(f"| {shape} | {m} | {name} | {t_us:.1f} | {gbps:.0f} | {frac:.0%} | "
                     f"{'-' if speed is None else f'{speed:.2f}x'} |")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
