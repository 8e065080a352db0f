"""Launchers for the int4 kernels in this folder (CuPy ``RawModule``, compiled once per process).

Each ``*_matmul`` takes CuPy arrays exactly as the format stores them (no
repacking), fp16 activations ``x`` [M, K], and returns fp16 ``y`` [M, N]
(``y = x @ W.T + bias`` with ``W`` the [N, K] dequantized weight). ``out``, when
given, must be a C-contiguous fp16 [M, N] array and is written in place (the GPU
tests poison it with NaN first). M == 1 runs the GEMV kernel, M > 1 the GEMM one.

Nothing here imports CuPy at module level: ``import cupy_kernels`` is cheap and
safe on machines without a GPU; :func:`available` says whether kernels can run.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCES = {"gptq": "gptq.cu", "awq": "awq.cu", "gguf": "gguf.cu", "bnb": "nf4.cu"}
THREADS = 256
GPTQ_TILE_N, GPTQ_MT = 16, 8  # must match gptq.cu
AWQ_TILE_N, AWQ_MT = 32, 4  # must match awq.cu
ROWS_PER_BLOCK, ROW_MT = 8, 8  # gguf.cu and nf4.cu
GGUF_KERNELS = {"Q4_0": ("gguf_q4_0", 32, 18), "Q4_1": ("gguf_q4_1", 32, 20), "Q4_K": ("gguf_q4_k", 256, 144)}


class KernelUnavailable(RuntimeError):
    """CuPy is missing, or it sees no CUDA device."""


def available() -> tuple[bool, str]:
    """(usable, reason): whether CuPy imports and sees a CUDA device."""
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken CUDA install
        return False, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - no driver
        return False, f"CuPy sees no CUDA driver ({exc})"
    if count < 1:
        return False, "CuPy sees no CUDA device"
    return True, ""


def source(name: str) -> Path:
    """Path of a kernel source file, located next to this module."""
    return HERE / SOURCES[name]


@functools.lru_cache(maxsize=None)
def _module(name: str, device_id: int) -> Any:
    import cupy

    code = source(name).read_text(encoding="utf-8")
    return cupy.RawModule(code=code, options=("--std=c++17",))


def kernel(name: str, function: str) -> Any:
    """The compiled kernel ``function`` of source ``name`` (compiled on first use, then cached)."""
    import cupy

    return _module(name, cupy.cuda.Device().id).get_function(function)


def _dummy_half() -> Any:
    import cupy

    return cupy.zeros(1, dtype=cupy.float16)


def _check_x(x: Any, k: int) -> tuple[Any, int]:
    import cupy

    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError(f"x must be [M, {k}], got {tuple(x.shape)}")
    return _contig(x, cupy.float16), int(x.shape[0])


def _out(out: Any, m: int, n: int) -> Any:
    import cupy

    if out is None:
        return cupy.empty((m, n), dtype=cupy.float16)
    if out.shape != (m, n) or out.dtype != cupy.float16 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float16 [{m}, {n}]")
    return out


def _bias(bias: Any, n: int) -> tuple[Any, np.int32]:
    import cupy

    if bias is None:
        return _dummy_half(), np.int32(0)
    b = _contig(bias, cupy.float16).reshape(-1)
    if b.shape[0] != n:
        raise ValueError(f"bias must have {n} elements")
    return b, np.int32(1)


def _contig(a: Any, dtype: Any) -> Any:
    """A C-contiguous, 16-byte aligned CuPy array of ``dtype`` (numpy inputs are copied to the device).

    The kernels read packed weights, scales and codes with 64- and 128-bit loads
    from the base pointer; a contiguous view at an odd offset into a larger buffer
    (a slice) would fault with a misaligned address, so such views are copied
    (fresh CuPy allocations are 256-byte aligned).
    """
    import cupy

    a = cupy.ascontiguousarray(cupy.asarray(a, dtype=dtype))
    if getattr(getattr(a, "data", None), "ptr", 0) % 16:
        a = a.copy()
    return a


def _need(ok: bool, what: str) -> None:
    """Shape checks that keep the kernels' unchecked reads inside their arrays."""
    if not ok:
        raise ValueError(what)


def _launch(source_name: str, base: str, tile_n: int, gemm_mt: int, m: int, n: int, y: Any, args: tuple) -> Any:
    """Start ``{base}_gemv`` (M == 1) or ``{base}_gemm`` on ceil(N / tile_n) x ceil(M / MT) blocks; return ``y``.

    M == 0 launches nothing: a grid with a zero dimension is an invalid launch.
    """
    if m == 0:
        return y
    mt = 1 if m == 1 else gemm_mt
    fn = kernel(source_name, f"{base}_gemv" if m == 1 else f"{base}_gemm")
    fn(((n + tile_n - 1) // tile_n, (m + mt - 1) // mt), (THREADS,), args)
    return y


def gptq_matmul(x: Any, qweight: Any, qzeros: Any, scales: Any, g_idx: Any, group_size: int,
                checkpoint_format: str = "gptq", bias: Any = None, out: Any = None) -> Any:
    """GPTQ 4-bit: qweight int32 [K/8, N], qzeros int32 [G, N/8], scales fp16 [G, N], g_idx int32 [K]."""
    import cupy

    k, n = int(qweight.shape[0]) * 8, int(qweight.shape[1])
    if n % 8:
        raise ValueError("GPTQ kernel needs N % 8 == 0")
    x, m = _check_x(x, k)
    g = k if group_size in (-1, 0) else int(group_size)
    g_idx = _contig(g_idx, cupy.int32).reshape(-1)
    groups = int(scales.shape[0])
    _need(g_idx.shape[0] == k, f"g_idx must have K = {k} entries, got {g_idx.shape[0]}")
    _need(tuple(scales.shape) == (groups, n) and tuple(qzeros.shape) == (groups, n // 8),
          f"scales must be [G, {n}] and qzeros [G, {n // 8}], got {tuple(scales.shape)}, {tuple(qzeros.shape)}")
    # The kernel indexes scales/qzeros rows by g_idx[k] (or k // g, used only when equal) unchecked.
    _need(0 <= int(g_idx.min()) and int(g_idx.max()) < groups,
          f"g_idx addresses groups outside the {groups} rows of scales")
    # Gather scales per k only when g_idx is not the plain k // g (act-order, or odd files).
    use_g_idx = not bool((g_idx == cupy.arange(k, dtype=cupy.int32) // g).all())
    b, has_b = _bias(bias, n)
    y = _out(out, m, n)
    return _launch("gptq", "gptq4", GPTQ_TILE_N, GPTQ_MT, m, n, y, (
        x, _contig(qweight, cupy.int32), _contig(qzeros, cupy.int32), _contig(scales, cupy.float16), g_idx, b, y,
        np.int32(m), np.int32(k), np.int32(n), np.int32(groups), np.int32(g), np.int32(use_g_idx),
        np.int32(checkpoint_format != "gptq_v2"), has_b))


def awq_matmul(x: Any, qweight: Any, qzeros: Any, scales: Any, group_size: int, bias: Any = None, out: Any = None) -> Any:
    """AWQ GEMM layout: qweight int32 [K, N/8], qzeros int32 [K/g, N/8], scales fp16 [K/g, N]."""
    import cupy

    k, n = int(qweight.shape[0]), int(qweight.shape[1]) * 8
    if n % 16:
        raise ValueError("AWQ kernel needs N % 16 == 0")
    x, m = _check_x(x, k)
    g = k if group_size in (-1, 0) else int(group_size)
    groups = (k + g - 1) // g  # the kernel reads row k // g of qzeros and scales
    _need(qzeros.shape[0] >= groups and qzeros.shape[1] * 8 == n and scales.shape[0] >= groups
          and scales.shape[1] == n, f"qzeros must be [{groups}, {n // 8}] and scales [{groups}, {n}], "
          f"got {tuple(qzeros.shape)}, {tuple(scales.shape)}")
    b, has_b = _bias(bias, n)
    y = _out(out, m, n)
    return _launch("awq", "awq4", AWQ_TILE_N, AWQ_MT, m, n, y, (
        x, _contig(qweight, cupy.int32), _contig(qzeros, cupy.int32), _contig(scales, cupy.float16),
        b, y, np.int32(m), np.int32(k), np.int32(n), np.int32(g), has_b))


def gguf_matmul(x: Any, raw: Any, type_name: str, shape: tuple[int, int], bias: Any = None, out: Any = None) -> Any:
    """GGUF Q4_0 / Q4_1 / Q4_K: raw uint8 [rows=N, bytes_per_row], shape (N, K)."""
    import cupy

    if type_name not in GGUF_KERNELS:
        raise ValueError(f"no kernel for GGUF type {type_name}")
    name, per, nbytes = GGUF_KERNELS[type_name]
    n, k = int(shape[0]), int(shape[1])
    if k % per:
        raise ValueError(f"{type_name} rows must be a multiple of {per}")
    raw = _contig(raw, cupy.uint8).reshape(n, -1)
    row_bytes = k // per * nbytes
    if raw.shape[1] != row_bytes:
        raise ValueError(f"{type_name} rows must be {row_bytes} bytes, got {raw.shape[1]}")
    x, m = _check_x(x, k)
    b, has_b = _bias(bias, n)
    y = _out(out, m, n)
    return _launch("gguf", name, ROWS_PER_BLOCK, ROW_MT, m, n, y,
                   (x, raw, b, y, np.int32(m), np.int32(k), np.int32(n), np.int64(row_bytes), has_b))


def bnb_matmul(x: Any, weight: Any, quant_map: Any, absmax: Any, shape: tuple[int, int], blocksize: int = 64,
               nested_absmax: Any = None, nested_quant_map: Any = None, nested_offset: float = 0.0,
               nested_blocksize: int = 256, bias: Any = None, out: Any = None) -> Any:
    """bitsandbytes 4-bit: packed uint8 (high nibble first), absmax f32 (or uint8 + nested stats)."""
    import cupy

    n, k = int(shape[0]), int(shape[1])
    if k % 32 or blocksize % 32:
        raise ValueError("bitsandbytes kernel needs K % 32 == 0 and blocksize % 32 == 0")
    x, m = _check_x(x, k)
    nested = nested_absmax is not None and absmax.dtype == cupy.uint8
    nblocks = (n * k + blocksize - 1) // blocksize
    _need(int(weight.size) * 2 >= n * k, f"weight holds {int(weight.size) * 2} codes, shape needs {n * k}")
    _need(int(absmax.size) >= nblocks, f"absmax has {int(absmax.size)} blocks, shape needs {nblocks}")
    _need(int(quant_map.size) == 16, "quant_map must have 16 entries")
    if nested:
        _need(nested_quant_map is not None and int(nested_quant_map.size) == 256,
              "nested_quant_map must have 256 entries")
        _need(int(nested_absmax.size) >= (nblocks + nested_blocksize - 1) // nested_blocksize,
              "nested_absmax is too short for absmax")
    f32_dummy = cupy.zeros(1, dtype=cupy.float32)
    u8_dummy = cupy.zeros(1, dtype=cupy.uint8)
    absmax_f32 = f32_dummy if nested else _contig(absmax, cupy.float32)
    absmax_u8 = _contig(absmax, cupy.uint8) if nested else u8_dummy
    ncode = _contig(nested_quant_map, cupy.float32) if nested else f32_dummy
    nabs = _contig(nested_absmax, cupy.float32) if nested else f32_dummy
    b, has_b = _bias(bias, n)
    y = _out(out, m, n)
    return _launch("bnb", "bnb4", ROWS_PER_BLOCK, ROW_MT, m, n, y, (
        x, _contig(weight, cupy.uint8).reshape(-1), _contig(quant_map, cupy.float32), absmax_f32,
        absmax_u8, ncode, nabs, np.float32(nested_offset), np.int32(nested_blocksize),
        np.int32(nested), b, y, np.int32(m), np.int32(k), np.int32(n), np.int32(blocksize), has_b))
