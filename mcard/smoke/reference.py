"""Torch reference for every kernel: dequantize in float32, then matmul in float32.

This is the slow, obviously-correct side of ``mcard smoke``. It works from the
raw packed tensors exactly as they are stored on disk and follows the layout
facts of ``/work/shared/design.md``; the table-shaped facts (AWQ's nibble order)
come from the format modules so there is one source of truth. The CUDA kernels
in ``cupy_kernels/`` are the second, independent implementation.

Every ``*_dequantize`` returns ``nn.Linear.weight`` orientation, ``[N, K]``
(out_features, in_features) float32, on the device of its inputs. Inputs may be
numpy arrays or torch tensors.

torch is imported at module level: import this module only where torch is wanted
(``mcard.smoke.run`` imports it inside its functions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# GGUF block geometry: type -> (elements per block, bytes per block).
GGUF_BLOCKS: dict[str, tuple[int, int]] = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q4_K": (256, 144)}


def _t(x: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """A torch view of ``x`` (numpy or torch), copied only when needed (read-only memmaps are copied)."""
    if not isinstance(x, torch.Tensor):
        arr = np.ascontiguousarray(x)
        x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    return x if device is None else x.to(device)


def awq_order() -> tuple[int, ...]:
    """AWQ's nibble order: nibble i of a packed word holds column ``8c + order[i]``.

    Read from :mod:`mcard.formats.awq` (the format's one source of truth).
    """
    from ..formats import awq

    for attr in ("AWQ_ORDER", "ORDER", "AWQ_PACK_ORDER", "PACK_ORDER"):
        order = getattr(awq, attr, None)
        if order is not None:
            return tuple(int(v) for v in order)
    raise AttributeError("mcard.formats.awq exposes no nibble order table (AWQ_ORDER)")


# ---------------------------------------------------------------------------
# Bit unpacking
# ---------------------------------------------------------------------------
def unpack_bitstream(words: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Unpack ``count`` values of ``bits`` bits from int32 words along dim 0.

    GPTQ packs values least significant first and, for 3 bits, lets a value
    straddle two words: the words of a column form one little-endian bit
    stream, value i at stream bit ``bits * i``. ``words`` is [W, C]; returns
    int64 [count, C].
    """
    w = words.to(torch.int64) & 0xFFFFFFFF
    start = torch.arange(count, device=w.device, dtype=torch.int64) * bits
    word, shift = start // 32, start % 32
    lo = w[word] >> shift[:, None]
    nxt = torch.clamp(word + 1, max=w.shape[0] - 1)
    hi = (w[nxt] << (32 - shift[:, None])) & 0xFFFFFFFF  # bits spilling into the next word
    spill = (shift + bits > 32)[:, None]
    return torch.where(spill, lo | hi, lo) & ((1 << bits) - 1)


# ---------------------------------------------------------------------------
# GPTQ
# ---------------------------------------------------------------------------
def gptq_dequantize(
    qweight: Any, qzeros: Any, scales: Any, g_idx: Any, bits: int, checkpoint_format: str = "gptq"
) -> torch.Tensor:
    """``W[n, k] = scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n])`` as [N, K] float32.

    ``qweight`` int32 [K*b/32, N], ``qzeros`` int32 [G, N*b/32], ``scales``
    fp16 [G, N], ``g_idx`` int32 [K]. Format v1 (``gptq``) stores zero-1 and the
    reader adds 1 back modulo 2^b; ``gptq_v2`` stores the true zero.
    """
    qweight, scales = _t(qweight), _t(scales)
    qzeros, g_idx = _t(qzeros, qweight.device), _t(g_idx, qweight.device).to(torch.int64)
    k = g_idx.shape[0]
    n = qweight.shape[1]
    q = unpack_bitstream(qweight, bits, k)  # [K, N]
    z = unpack_bitstream(qzeros.T.contiguous(), bits, n).T  # [G, N]
    if checkpoint_format != "gptq_v2":
        z = (z + 1) & ((1 << bits) - 1)
    s = scales.to(qweight.device).float()
    w = s[g_idx] * (q - z[g_idx]).float()  # [K, N]
    return w.T.contiguous()


# ---------------------------------------------------------------------------
# AWQ (GEMM layout)
# ---------------------------------------------------------------------------
def awq_unpack(words: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """[R, N/8] int32 packed along N -> [R, N] int64, nibble i -> column 8c + order[i]."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    r, c = w.shape
    out = torch.empty((r, c, 8), dtype=torch.int64, device=w.device)
    for i, col in enumerate(order):
        out[:, :, col] = (w >> (4 * i)) & 0xF
    return out.reshape(r, c * 8)


def awq_dequantize(
    qweight: Any, qzeros: Any, scales: Any, group_size: int, order: tuple[int, ...] | None = None
) -> torch.Tensor:
    """``W[n, k] = (q[k, n] - z[k//g, n]) * scales[k//g, n]`` as [N, K] float32 (no -1 offset)."""
    order = order or awq_order()
    qweight = _t(qweight)
    dev = qweight.device
    q = awq_unpack(qweight, order)  # [K, N]
    z = awq_unpack(_t(qzeros, dev), order)  # [G, N]
    s = _t(scales, dev).float()
    k = q.shape[0]
    g = k if group_size in (-1, 0) else group_size
    grp = torch.arange(k, device=dev) // g
    w = (q - z[grp]).float() * s[grp]
    return w.T.contiguous()


def awq_gemv_dequantize(qweight: Any, qzeros: Any, scales: Any, group_size: int) -> torch.Tensor:
    """AWQ GEMV layout: qweight int32 [N, K/8] packed along K in natural order, qzeros [N, Z]
    and scales [N, 8Z] zero-padded per row; returns [N, K] float32."""
    qweight = _t(qweight)
    dev = qweight.device
    k = qweight.shape[1] * 8
    q = unpack_bitstream(qweight.T.contiguous(), 4, k).T  # [N, K]
    zw = _t(qzeros, dev)
    z = unpack_bitstream(zw.T.contiguous(), 4, zw.shape[1] * 8).T  # [N, 8Z]
    s = _t(scales, dev).float()
    g = k if group_size in (-1, 0) else group_size
    grp = torch.arange(k, device=dev) // g
    return (q - z[:, grp]).float() * s[:, grp]


# ---------------------------------------------------------------------------
# GGUF Q4_0, Q4_1, Q4_K (ggml block layouts)
# ---------------------------------------------------------------------------
def _f16_at(blocks: torch.Tensor, off: int) -> torch.Tensor:
    return blocks[..., off : off + 2].contiguous().view(torch.float16)[..., 0].float()


def _nibbles_lo_hi(qs: torch.Tensor) -> torch.Tensor:
    """[..., 16] bytes -> [..., 32] values: low nibbles are elements 0-15, high ones 16-31."""
    q = qs.to(torch.int64)
    return torch.cat([q & 0xF, q >> 4], dim=-1)


def q4k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml ``get_scale_min_k4`` for j = 0..7: [..., 12] bytes -> (sc, m), each [..., 8]."""
    q = scales.to(torch.int64)
    sc = torch.empty(q.shape[:-1] + (8,), dtype=torch.int64, device=q.device)
    mn = torch.empty_like(sc)
    for j in range(8):
        if j < 4:
            sc[..., j] = q[..., j] & 63
            mn[..., j] = q[..., j + 4] & 63
        else:
            sc[..., j] = (q[..., j + 4] & 0xF) | ((q[..., j - 4] >> 6) << 4)
            mn[..., j] = (q[..., j + 4] >> 4) | ((q[..., j] >> 6) << 4)
    return sc, mn


def gguf_reference_types() -> frozenset[str]:
    """The GGUF tensor types :func:`gguf_dequantize` reads (with a kernel or not)."""
    from . import reference_gguf

    return frozenset(GGUF_BLOCKS) | frozenset(reference_gguf.DEQUANTIZERS)


def gguf_dequantize(raw: Any, type_name: str, shape: tuple[int, int]) -> torch.Tensor:
    """raw uint8 [rows, bytes_per_row] of ``type_name`` -> [rows, cols] float32.

    GGUF's ``rows`` are the linear's outputs N and ``cols`` (ne0) its inputs K,
    so the result is already in ``nn.Linear.weight`` orientation.
    """
    rows, cols = shape
    if type_name not in GGUF_BLOCKS:  # types without a kernel: mcard.smoke.reference_gguf
        from . import reference_gguf

        if type_name not in reference_gguf.DEQUANTIZERS:
            raise ValueError(f"no reference for GGUF type {type_name}")
        per, nbytes = reference_gguf.BLOCKS[type_name]
        blocks = _t(raw).reshape(rows, cols // per, nbytes)
        return reference_gguf.DEQUANTIZERS[type_name](blocks).reshape(rows, cols)
    per, nbytes = GGUF_BLOCKS[type_name]
    blocks = _t(raw).reshape(rows, cols // per, nbytes)
    if type_name == "Q4_0":
        d = _f16_at(blocks, 0)
        q = _nibbles_lo_hi(blocks[..., 2:18])
        w = (q - 8).float() * d[..., None]
    elif type_name == "Q4_1":
        d, m = _f16_at(blocks, 0), _f16_at(blocks, 2)
        q = _nibbles_lo_hi(blocks[..., 4:20])
        w = q.float() * d[..., None] + m[..., None]
    else:  # Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins
        d, dmin = _f16_at(blocks, 0), _f16_at(blocks, 2)
        sc, mn = q4k_scale_min(blocks[..., 4:16])
        qs = blocks[..., 16:144].to(torch.int64).reshape(rows, -1, 4, 32)
        # qs[32i + l]: low nibble -> element 64i + l (sub-block 2i), high -> 64i + 32 + l (2i + 1)
        q = torch.stack([qs & 0xF, qs >> 4], dim=3).reshape(rows, -1, 8, 32)
        scale = (d[..., None] * sc.float())[..., None]
        minus = (dmin[..., None] * mn.float())[..., None]
        w = scale * q.float() - minus
    return w.reshape(rows, cols)


# ---------------------------------------------------------------------------
# bitsandbytes NF4 / FP4 (code-book lookup, blockwise absmax)
# ---------------------------------------------------------------------------
def bnb_absmax(
    absmax: Any,
    nested_absmax: Any = None,
    nested_quant_map: Any = None,
    nested_offset: float = 0.0,
    nested_blocksize: int = 256,
) -> torch.Tensor:
    """Per-block absmax as float32; with double quantization
    ``absmax = nested_quant_map[u8] * nested_absmax[blk // 256] + offset``."""
    a = _t(absmax)
    if nested_absmax is None or a.dtype != torch.uint8:
        return a.float()
    code = _t(nested_quant_map, a.device).float()
    outer = _t(nested_absmax, a.device).float()
    blk = torch.arange(a.numel(), device=a.device) // nested_blocksize
    return code[a.to(torch.int64)] * outer[blk] + float(nested_offset)


def bnb_dequantize(
    weight: Any, absmax: torch.Tensor, quant_map: Any, shape: tuple[int, int], blocksize: int = 64
) -> torch.Tensor:
    """Packed uint8 (first element in the high nibble) -> [N, K] float32, ``code[q] * absmax[i // bs]``."""
    w = _t(weight).reshape(-1).to(torch.int64)
    codes = torch.stack([w >> 4, w & 0xF], dim=1).reshape(-1)
    n_el = shape[0] * shape[1]
    codes = codes[:n_el]
    code = _t(quant_map, w.device).float()
    blk = torch.arange(n_el, device=w.device) // blocksize
    return (code[codes] * absmax.to(w.device).float()[blk]).reshape(shape)


# ---------------------------------------------------------------------------
# Matmul
# ---------------------------------------------------------------------------
def linear(x: torch.Tensor, weight: torch.Tensor, bias: Any = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` in float32: x [M, K] (fp16 or f32), W [N, K] -> [M, N] float32."""
    y = x.float() @ weight.float().T
    if bias is not None:
        y = y + _t(bias, y.device).float()
    return y
