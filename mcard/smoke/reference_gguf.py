"""Torch references for the GGUF types that have no CUDA kernel: Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q5_K, Q6_K.

``mcard smoke`` checks these layers on the CPU path: this float32 torch reading of the
ggml block structs against the format module's own (``gguf.quants.dequantize``). The
block layouts follow ggml's ``block_q*`` structs (``ggml-common.h``) and its
``dequantize_row_q*`` loops; each function says which bytes hold what. The types with
kernels (Q4_0, Q4_1, Q4_K) are in :mod:`mcard.smoke.reference` next to the kernels' other
references. Every function takes ``blocks`` uint8 ``[rows, n_blocks, block bytes]`` and
returns float32 ``[rows, n_blocks * elements per block]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .reference import _f16_at, q4k_scale_min

# type -> (elements per block, bytes per block), as ggml's GGML_QUANT_SIZES.
BLOCKS: dict[str, tuple[int, int]] = {
    "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q5_K": (256, 176), "Q6_K": (256, 210),
}


def _bits(byte_values: torch.Tensor, nbits: int) -> torch.Tensor:
    """[..., n] bytes -> [..., nbits, n]: bit b of every byte (little-endian bit order)."""
    shifts = torch.arange(nbits, device=byte_values.device).view(*([1] * (byte_values.dim() - 1)), nbits, 1)
    return (byte_values.to(torch.int64).unsqueeze(-2) >> shifts) & 1


def q8_0(blocks: torch.Tensor) -> torch.Tensor:
    """block_q8_0: d f16 | qs int8[32]; x = d * q."""
    d = _f16_at(blocks, 0)
    q = blocks[..., 2:34].contiguous().view(torch.int8).float()
    return (q * d[..., None]).flatten(-2)


def _q5_values(blocks: torch.Tensor, qh_at: int, qs_at: int) -> torch.Tensor:
    """Q5_0/Q5_1: 5-bit values 0..31. Element j < 16: low nibble of qs[j], high bit qh bit j;
    element j + 16: high nibble of qs[j], high bit qh bit j + 16."""
    qh = blocks[..., qh_at:qh_at + 4].to(torch.int64)
    high_word = qh[..., 0] | (qh[..., 1] << 8) | (qh[..., 2] << 16) | (qh[..., 3] << 24)
    high = (high_word[..., None] >> torch.arange(32, device=blocks.device)) & 1
    qs = blocks[..., qs_at:qs_at + 16].to(torch.int64)
    low = torch.cat([qs & 0xF, qs >> 4], dim=-1)
    return low | (high << 4)


def q5_0(blocks: torch.Tensor) -> torch.Tensor:
    """block_q5_0: d f16 | qh u8[4] | qs u8[16]; x = d * (q - 16)."""
    d = _f16_at(blocks, 0)
    return ((_q5_values(blocks, 2, 6) - 16).float() * d[..., None]).flatten(-2)


def q5_1(blocks: torch.Tensor) -> torch.Tensor:
    """block_q5_1: d f16 | m f16 | qh u8[4] | qs u8[16]; x = d * q + m."""
    d, m = _f16_at(blocks, 0), _f16_at(blocks, 2)
    return (_q5_values(blocks, 4, 8).float() * d[..., None] + m[..., None]).flatten(-2)


def q2_k(blocks: torch.Tensor) -> torch.Tensor:
    """block_q2_K: scales u8[16] | qs u8[64] | d f16 | dmin f16.

    Element 128h + 32j + 16s + l (half h, shift j, sub-block s, l < 16) is bits 2j..2j+1 of
    qs[32h + 16s + l]; its scale byte is scales[8h + 2j + s]: x = d * (sc & 15) * q - dmin * (sc >> 4).
    """
    rows, n = blocks.shape[:2]
    sc = blocks[..., 0:16].to(torch.int64)
    d, dmin = _f16_at(blocks, 80), _f16_at(blocks, 82)
    qs = blocks[..., 16:80].to(torch.int64).view(rows, n, 2, 1, 2, 16)  # h, (j), s, l
    q = (qs >> (2 * torch.arange(4, device=blocks.device)).view(1, 1, 1, 4, 1, 1)) & 3  # [.., h, j, s, l]
    sc = sc.view(rows, n, 2, 4, 2, 1)  # scales[8h + 2j + s]
    scale = d[..., None, None, None, None] * (sc & 15).float()
    minus = dmin[..., None, None, None, None] * (sc >> 4).float()
    return (scale * q.float() - minus).reshape(rows, n * 256)


def q3_k(blocks: torch.Tensor) -> torch.Tensor:
    """block_q3_K: hmask u8[32] | qs u8[64] | scales u8[12] | d f16.

    Element 128h + 32j + 16s + l: low bits 2j..2j+1 of qs[32h + 16s + l], high bit (4h + j) of
    hmask[16s + l]; q = low + 4 * high - 4. The 16 six-bit scales: low nibbles from bytes 0-7
    (scale i < 8: byte i & 15, else byte i - 8 >> 4), top two bits from byte 8 + i % 4 at bit
    2 * (i // 4); x = d * (scale - 32) * q, scale index 8h + 2j + s.
    """
    rows, n = blocks.shape[:2]
    dev = blocks.device
    hmask = blocks[..., 0:32].to(torch.int64)
    qs = blocks[..., 32:96].to(torch.int64).view(rows, n, 2, 1, 2, 16)
    raw = blocks[..., 96:108].to(torch.int64)
    d = _f16_at(blocks, 108)
    i = torch.arange(16, device=dev)
    low = torch.where(i < 8, raw[..., i % 8] & 15, raw[..., i % 8] >> 4)
    top = (raw[..., 8 + i % 4] >> (2 * (i // 4))) & 3
    scales = (low | (top << 4)) - 32  # [rows, n, 16]
    j = torch.arange(4, device=dev).view(1, 1, 1, 4, 1, 1)
    q_low = (qs >> (2 * j)) & 3
    h = torch.arange(2, device=dev).view(1, 1, 2, 1, 1, 1)
    hm = hmask.view(rows, n, 1, 1, 2, 16)
    q_high = (hm >> (4 * h + j)) & 1
    q = q_low + 4 * q_high - 4
    scale = d[..., None, None, None, None] * scales.view(rows, n, 2, 4, 2, 1).float()
    return (scale * q.float()).reshape(rows, n * 256)


def q5_k(blocks: torch.Tensor) -> torch.Tensor:
    """block_q5_K: d f16 | dmin f16 | scales u8[12] | qh u8[32] | qs u8[128].

    Sub-block t (32 elements, t < 8): low nibble (t even) or high nibble (t odd) of
    qs[32 (t // 2) + l], high bit t of qh[l]; scale and min as Q4_K's (get_scale_min_k4):
    x = d * sc[t] * q - dmin * m[t].
    """
    rows, n = blocks.shape[:2]
    d, dmin = _f16_at(blocks, 0), _f16_at(blocks, 2)
    sc, mn = q4k_scale_min(blocks[..., 4:16])
    qh = _bits(blocks[..., 16:48], 8)  # [rows, n, 8 (t), 32 (l)]
    qs = blocks[..., 48:176].to(torch.int64).view(rows, n, 4, 32)
    low = torch.stack([qs & 0xF, qs >> 4], dim=3).view(rows, n, 8, 32)
    q = (low | (qh << 4)).float()
    return (d[..., None, None] * sc.float()[..., None] * q - dmin[..., None, None] * mn.float()[..., None]).reshape(
        rows, n * 256)


def q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """block_q6_K: ql u8[128] | qh u8[64] | scales i8[16] | d f16.

    Element 128h + 32k + l (k < 4, l < 32): low nibble (k < 2) or high nibble (k >= 2) of
    ql[64h + 32 (k % 2) + l], bits 2k..2k+1 of qh[32h + l] on top; q = value - 32;
    x = d * scales[8h + 2k + l // 16] * q.
    """
    rows, n = blocks.shape[:2]
    dev = blocks.device
    ql = blocks[..., 0:128].to(torch.int64).view(rows, n, 2, 2, 32)  # h, k % 2, l
    qh = blocks[..., 128:192].to(torch.int64).view(rows, n, 2, 1, 32)  # h, (k), l
    scales = blocks[..., 192:208].contiguous().view(torch.int8).to(torch.int64)
    d = _f16_at(blocks, 208)
    k = torch.arange(4, device=dev)
    low = torch.where((k < 2).view(1, 1, 1, 4, 1), ql[..., k % 2, :] & 0xF, ql[..., k % 2, :] >> 4)
    high = (qh >> (2 * k).view(1, 1, 1, 4, 1)) & 3
    q = (low | (high << 4)) - 32  # [rows, n, h, k, l]
    l_half = torch.arange(32, device=dev) // 16
    idx = 8 * torch.arange(2, device=dev).view(2, 1, 1) + 2 * k.view(1, 4, 1) + l_half.view(1, 1, 32)
    sc = scales[..., idx]  # [rows, n, h, k, l]
    return (d[..., None, None, None] * sc.float() * q.float()).reshape(rows, n * 256)


DEQUANTIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Q5_0": q5_0, "Q5_1": q5_1, "Q8_0": q8_0, "Q2_K": q2_k, "Q3_K": q3_k, "Q5_K": q5_k, "Q6_K": q6_k,
}
