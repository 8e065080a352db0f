"""Launcher for the int4 tensor-core kernels in ``int4.cu`` (CuPy ``RawModule``, compiled once per process).

A layer is packed once into the kernel's tile layout (:mod:`cupy_kernels.pack`,
``pack_gptq`` / ``pack_awq`` / ``pack_gguf`` / ``pack_bnb`` take the arrays exactly as
the format stores them) and then multiplied with :func:`int4_matmul`: fp16
activations ``x`` [M, K] in, fp16 ``y`` [M, N] out (``y = x @ W.T + bias`` with ``W``
the [N, K] dequantized weight). ``out``, when given, must be a C-contiguous fp16
[M, N] array and is written in place (the tests poison it with NaN first). The
``*_matmul`` functions pack and multiply in one call.

Nothing here imports CuPy at module level: ``import cupy_kernels`` is cheap and
safe on machines without a GPU; :func:`available` says whether kernels can run.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import numpy as np

from . import limits, pack
from .pack import PackedInt4

# The sources are package data, found with importlib.resources (every install style); a Path in a
# plain install. Tests point HERE at a copy (mutated kernels).
HERE: Any = resources.files(__package__ or "cupy_kernels")
SOURCES = {"int4": "int4.cu"}
HEADERS = ("ptx.cuh",)  # included by the sources; inlined into the code CuPy compiles
ROW_TILES = {8: 2, 16: 4, 32: 4}  # batch rows per block -> warps per block (int4.cu, I4Shape)
TILE_N = 32  # columns per block


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


def source(name: str) -> Any:
    """A kernel source file (a Path in a plain install; an importlib.resources Traversable in any)."""
    return HERE / SOURCES[name]


def source_text(name: str) -> str:
    """The source CuPy compiles: the ``.cu`` file with its ``#include "..."`` headers inlined.

    Inlining (rather than passing ``-I``) keeps the compiled text self-contained, so
    CuPy's kernel cache, which keys on the text, sees a header edit.
    """
    out = []
    for line in source(name).read_text(encoding="utf-8").splitlines():
        inc = line.strip()
        if inc.startswith('#include "') and inc.endswith('"'):
            out.append((HERE / inc[len('#include "'):-1]).read_text(encoding="utf-8"))
        else:
            out.append(line)
    return "\n".join(out) + "\n"


@functools.cache
def _module(name: str, device_id: int) -> Any:
    import cupy

    return cupy.RawModule(code=source_text(name), options=("--std=c++17",))


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


def block_threads(kernel_name: str) -> int:
    """Threads per block of ``int4_<kind>_m<rows>``."""
    return ROW_TILES[int(kernel_name.rsplit("_m", 1)[1])] * 32


def int4_matmul(x: Any, packed: PackedInt4, bias: Any = None, out: Any = None) -> Any:
    """``y = x @ W.T + bias`` for a layer packed once by :mod:`cupy_kernels.pack`; fp16 [M, N].

    Every shape limit of the kernels is enforced here and in the ``pack_*`` functions, as
    :mod:`cupy_kernels.limits` states them: K % 8 == 0 (16-byte activation rows), x [M, K]
    fp16, bias [N], out C-contiguous fp16 [M, N]. Batch 1..8 runs ``int4_*_m8`` (the GEMV), 9..16 ``_m16``, more ``_m32``
    on ceil(M / 32) grid rows; M == 0 launches nothing. A code-book layer whose scale
    groups are 32 k (bitsandbytes blocksize 32) always runs ``int4_lut_m32``, the one
    kernel that applies a scale every 32 k.
    """
    import cupy

    n, k = packed.n, packed.k
    _need(k % limits.K_MULTIPLE == 0, f"the int4 kernels need K % {limits.K_MULTIPLE} == 0, got K = {k}")
    x, m = _check_x(x, k)
    b, has_b = _bias(bias, n)
    y = _out(out, m, n)
    if m == 0:
        return y
    kx = k
    if packed.perm is not None:  # act-order: feed x's columns in the packed K order (index k: zero)
        x = cupy.ascontiguousarray(cupy.take(cupy.concatenate([x, cupy.zeros((m, 1), dtype=cupy.float16)], axis=1),
                                             packed.perm, axis=1))
        kx = packed.kp
    rows = 8 if m <= 8 else 16 if m <= 16 else 32
    if packed.kind == "lut" and packed.pshift < 6:  # scale groups of 32 k: only the m32 kernel scales that often
        rows = 32
    fn = kernel("int4", f"int4_{packed.kind}_m{rows}")
    grid = ((n + TILE_N - 1) // TILE_N, (m + rows - 1) // rows)
    fn(grid, (block_threads(f"_m{rows}"),), (x, packed.weights, packed.params, packed.code, b, y, np.int32(m),
                                       np.int32(kx), np.int32(n), np.int32(packed.kp), np.int32(packed.pshift),
                                       has_b))
    return y


def gptq_matmul(x: Any, qweight: Any, qzeros: Any, scales: Any, g_idx: Any, group_size: int,
                checkpoint_format: str = "gptq", bias: Any = None, out: Any = None) -> Any:
    """GPTQ 4-bit: qweight int32 [K/8, N], qzeros int32 [G, N/8], scales fp16 [G, N], g_idx int32 [K].

    Packs the layer on every call; pack once with :func:`cupy_kernels.pack.pack_gptq` and call
    :func:`int4_matmul` where speed matters.
    """
    return int4_matmul(x, pack.pack_gptq(qweight, qzeros, scales, g_idx, group_size, checkpoint_format), bias, out)


def awq_matmul(x: Any, qweight: Any, qzeros: Any, scales: Any, group_size: int, bias: Any = None, out: Any = None) -> Any:
    """AWQ GEMM layout: qweight int32 [K, N/8], qzeros int32 [K/g, N/8], scales fp16 [K/g, N] (packs per call)."""
    return int4_matmul(x, pack.pack_awq(qweight, qzeros, scales, group_size), bias, out)


def gguf_matmul(x: Any, raw: Any, type_name: str, shape: tuple[int, int], bias: Any = None, out: Any = None) -> Any:
    """GGUF Q4_0 / Q4_1 / Q4_K: raw uint8 [rows=N, bytes_per_row], shape (N, K) (packs per call)."""
    return int4_matmul(x, pack.pack_gguf(raw, type_name, shape), bias, out)


def bnb_matmul(x: Any, weight: Any, quant_map: Any, absmax: Any, shape: tuple[int, int], blocksize: int = 64,
               nested_absmax: Any = None, nested_quant_map: Any = None, nested_offset: float = 0.0,
               nested_blocksize: int = 256, bias: Any = None, out: Any = None) -> Any:
    """bitsandbytes 4-bit: packed uint8 (high nibble first), absmax f32 (or uint8 + nested stats) (packs per call)."""
    return int4_matmul(x, pack.pack_bnb(weight, quant_map, absmax, shape, blocksize, nested_absmax, nested_quant_map,
                                        nested_offset, nested_blocksize), bias, out)
