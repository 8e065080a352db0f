"""Round-to-nearest k-quant packers (format-exact ggml block layouts), for the GGUF and GGML builders.

The type and file-type facts live in :mod:`.ggml_types`, llama.cpp's per-tensor
type rules in :mod:`.gguf.mix`; their users import them from there.
"""

from __future__ import annotations

import numpy as np

# --- round-to-nearest k-quant packers (format-exact ggml block layouts) ------------------
# Simple RTN, not llama.cpp's error-minimising search: the bytes follow ggml's block_qN_K
# structs exactly, so gguf.quants.dequantize (and llama.cpp) read them back.

def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape, np.float32), where=b != 0)


def _asym(x: np.ndarray, sub: int, qmax: int, sbits: int):
    """Sub-block scales/mins for value = d*sc*q - dmin*m: returns d, dmin (f16), sc, m, q."""
    n = x.shape[0]
    xs = x.reshape(n, -1, sub)
    lo = np.minimum(xs.min(-1), 0.0)
    hi = xs.max(-1)
    scale = (hi - lo) / qmax
    offset = -lo
    smax = (1 << sbits) - 1
    d = _f16(scale.max(-1) / smax)
    dmin = _f16(offset.max(-1) / smax)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.rint(_safe_div(scale, d32)), 0, smax).astype(np.uint8)
    m = np.clip(np.rint(_safe_div(offset, dmin32)), 0, smax).astype(np.uint8)
    eff_s = (d32 * sc)[..., None]
    eff_m = (dmin32 * m)[..., None]
    q = np.clip(np.rint(_safe_div(xs + eff_m, eff_s)), 0, qmax).astype(np.uint8)
    return d, dmin, sc, m, q.reshape(n, -1)


def _sym(x: np.ndarray, sub: int, qlo: int, qhi: int, smax: int):
    """value = d*sc*q with q in [qlo, qhi], sc in [0, smax]: returns d (f16), sc, q (int)."""
    n = x.shape[0]
    xs = x.reshape(n, -1, sub)
    amax = np.abs(xs).max(-1)
    scale = amax / max(-qlo, qhi)
    d = _f16(scale.max(-1) / smax)
    d32 = d.astype(np.float32)[:, None]
    sc = np.clip(np.rint(_safe_div(scale, d32)), 0, smax).astype(np.int32)
    q = np.clip(np.rint(_safe_div(xs, (d32 * sc)[..., None])), qlo, qhi).astype(np.int32)
    return d, sc, q.reshape(n, -1)


def _pack_scales_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The 12-byte 6-bit scale/min packing of block_q4_K / block_q5_K."""
    out = np.zeros((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0xF) | ((m[:, 4:8] & 0xF) << 4)
    return out


def _nibbles_32(q: np.ndarray) -> np.ndarray:
    """Pairs of 32-element sub-blocks into one 32-byte run: low nibble first sub-block."""
    q = q.reshape(q.shape[0], -1, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(q.shape[0], -1).astype(np.uint8)


def _crumbs_128(q: np.ndarray) -> np.ndarray:
    """2-bit values, 128-element halves: element 128h+32s+l in byte 32h+l at bit 2s."""
    q = q.reshape(q.shape[0], 2, 4, 32).astype(np.uint8)
    out = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return out.reshape(q.shape[0], 64)


def _bits_8x32(bits: np.ndarray) -> np.ndarray:
    """One bit per element: element 32b+l in byte l at bit b."""
    b = bits.reshape(bits.shape[0], 8, 32).astype(np.uint8)
    return np.bitwise_or.reduce(b << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)


def pack_q4_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _asym(x, 32, 15, 6)
    return np.concatenate([_f16b(d), _f16b(dmin), _pack_scales_k4(sc, m), _nibbles_32(q)], axis=1)


def pack_q5_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _asym(x, 32, 31, 6)
    qh = _bits_8x32(q >> 4)
    return np.concatenate([_f16b(d), _f16b(dmin), _pack_scales_k4(sc, m), qh, _nibbles_32(q & 0xF)], axis=1)


def pack_q2_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _asym(x, 16, 3, 4)
    scales = (sc & 0xF) | (m << 4)
    return np.concatenate([scales.astype(np.uint8), _crumbs_128(q), _f16b(d), _f16b(dmin)], axis=1)


def pack_q3_k(x: np.ndarray) -> np.ndarray:
    d, sc, q = _sym(x, 16, -4, 3, 31)
    v = (q + 4).astype(np.uint8)
    s = (sc + 32).astype(np.uint8)
    lo, hi = s & 0xF, s >> 4
    scales = np.concatenate(
        [lo[:, 0:8] | (lo[:, 8:16] << 4), hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)],
        axis=1,
    )
    return np.concatenate([_bits_8x32(v >> 2), _crumbs_128(v & 3), scales, _f16b(d)], axis=1)


def pack_q6_k(x: np.ndarray) -> np.ndarray:
    d, sc, q = _sym(x, 16, -32, 31, 127)
    v = (q + 32).astype(np.uint8)
    n = v.shape[0]
    low = (v & 0xF).reshape(n, 2, 2, 64)
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    qh = _crumbs_128(v >> 4)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), _f16b(d)], axis=1)


def _f16b(d: np.ndarray) -> np.ndarray:
    return d.astype("<f2").view(np.uint8).reshape(-1, 2)


# ggml type -> packer of [n_blocks, 256] float32 blocks into [n_blocks, block bytes].
PACKERS = {"Q2_K": pack_q2_k, "Q3_K": pack_q3_k, "Q4_K": pack_q4_k, "Q5_K": pack_q5_k, "Q6_K": pack_q6_k}
