"""Write a layer's 4-bit weights into the tile layout of ``int4.cu``, once, when the layer is loaded.

The published layouts stay as they are on disk; what the kernel reads is built here,
with array code that runs on CuPy (on the GPU) and on numpy (the host runtime in the
tests) alike, as Marlin and ExLlamaV2 repack GPTQ checkpoints at load time:

* every format becomes a 4-bit code ``q`` per weight and, per (32-k chunk, column),
  either an affine pair ``W = a * q + b`` (GPTQ, AWQ, GGUF Q4_0 / Q4_1 / Q4_K) or a
  scale for a code book, ``W = s * code[q]`` (bitsandbytes NF4 / FP4);
* act-order (GPTQ ``desc_act``) sorts K by group once, so that every 32-k chunk lies in
  one group; the launcher gathers x's columns with the same permutation. A group whose
  size is not a multiple of 32 is padded with zero-weight rows fed by x = 0;
* K is padded to a multiple of 128 (the longest k-step of a warp) and N to 32 (a block).

Tile layout (the kernel's comments say why): for each 32-column unit and each 32-k
chunk, 512 bytes: lane ``4 g + t`` holds one 32-bit word per n8 tile ``j`` (column
``32 u + 8 j + g``); nibble ``i`` of that word is the code at k offset ``KOFF[kind][t][i]``,
which is where the kernel's dequantization puts it in the mma B fragment. Params:
128 bytes per (unit, param group of ``2**pshift`` k): affine (a, b) fp16 pairs of columns
``8 j + g`` at ``[g][j]`` (the B-fragment column of lane g); lut fp32 scales of columns
``8 j + 2 t + e`` at ``[t][j][e]`` (the accumulator columns of lane t).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import limits
from .limits import CHUNK, GGUF_BLOCKS  # k per chunk of the tile layout; the GGUF types served

K_ALIGN = 128  # longest k-step of a warp (int4.cu, I4Shape<8>::KW)
N_ALIGN = 32   # columns per block
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ: nibble i of a word holds column 8c + AWQ_ORDER[i]

# k offset inside a chunk of nibble i of lane t's word: the B fragment of mma m16n8k16 holds
# rows 2t, 2t+1 (b0b1) and 2t+8, 2t+9 (b2b3) of each k16 half (PTX ISA).
_T, _I = np.meshgrid(np.arange(4), np.arange(8), indexing="ij")
KOFF = {
    # lop3 pairs nibbles (0, 4), (1, 5) of a word, then (2, 6), (3, 7) after a shift by 8
    "affine": 2 * _T + 8 * (_I % 4) + _I // 4,
    # a byte (nibbles 2b, 2b+1) indexes the code-pair table
    "lut": 2 * _T + 8 * (_I // 2) + _I % 2,
}


@dataclass
class PackedInt4:
    """One layer in the kernel's layout (device arrays of the module ``xp`` that built it)."""

    kind: str          # "affine" or "lut"
    n: int             # outputs (rows of W)
    k: int             # inputs
    kp: int            # K padded to K_ALIGN (and grown by act-order padding)
    pshift: int        # one param group per 2**pshift k (5..7)
    weights: Any       # uint32 [N/32 * Kp/32 * 128]
    params: Any        # uint32 [N/32 * Kp/2**pshift * 32]: fp16 pairs (affine) or fp32 bits (lut)
    code: Any          # fp16 [16]: the code book (lut); zeros for affine
    perm: Any = None   # int32 [Kp]: x column feeding each kernel k (value k: a zero column), or None

    @property
    def nbytes(self) -> int:
        """Bytes a matmul streams for the weights (weights, params, code book, permutation)."""
        return sum(int(a.nbytes) for a in (self.weights, self.params, self.code, self.perm) if a is not None)


def _xp(xp: Any) -> Any:
    if xp is None:
        import cupy

        return cupy
    return xp


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _nibbles(xp: Any, words: Any, axis_len: int) -> Any:
    """int32 words [R, C] -> uint8 [R, C, 8], nibble i (bits 4i..4i+3) last."""
    w = xp.ascontiguousarray(xp.asarray(words)).view(xp.uint32)
    shifts = (4 * xp.arange(8, dtype=xp.uint32)).reshape(1, 1, 8)
    return ((w.reshape(-1, axis_len)[:, :, None] >> shifts) & 15).astype(xp.uint8)


def _tile_words(xp: Any, q: Any, kind: str) -> Any:
    """uint8 codes [Kp, Np] -> uint32 tile words [Np/32, Kp/32, 32 lanes, 4 tiles], flattened."""
    kp, n_p = q.shape
    q5 = q.reshape(kp // CHUNK, CHUNK, n_p // 32, 4, 8)          # [chunk, kk, unit, j, g]
    sel = q5[:, xp.asarray(KOFF[kind])]                          # [chunk, t, i, unit, j, g]
    sel = sel.transpose(3, 0, 5, 1, 4, 2).astype(xp.uint32)       # [unit, chunk, g, t, j, i]
    words = xp.zeros(sel.shape[:-1], dtype=xp.uint32)
    for i in range(8):
        words |= sel[..., i] << xp.uint32(4 * i)
    return xp.ascontiguousarray(words).reshape(-1)


def _params(xp: Any, kind: str, a: Any, b: Any) -> tuple[Any, int]:
    """Per-chunk (a, b) [C, Np] (b unused for lut) -> (param words, pshift), coarsest exact grouping."""
    c, n_p = a.shape
    pshift = 5
    for shift in (7, 6):
        r = 1 << (shift - 5)
        if c % r == 0 and bool((a.reshape(c // r, r, n_p) == a.reshape(c // r, r, n_p)[:, :1]).all()) and (
                kind == "lut" or bool((b.reshape(c // r, r, n_p) == b.reshape(c // r, r, n_p)[:, :1]).all())):
            pshift = shift
            break
    r = 1 << (pshift - 5)
    a, b = a[::r], b[::r]
    groups = a.shape[0]
    if kind == "affine":
        ah = a.astype(xp.float16).view(xp.uint16).astype(xp.uint32)
        bh = b.astype(xp.float16).view(xp.uint16).astype(xp.uint32)
        word = (ah | (bh << xp.uint32(16))).reshape(groups, n_p // 32, 4, 8)   # [G, unit, j, g]
        out = word.transpose(1, 0, 3, 2)                                       # [unit, G, g, j]
    else:
        word = a.astype(xp.float32).view(xp.uint32).reshape(groups, n_p // 32, 4, 4, 2)  # [G, unit, j, t, e]
        out = word.transpose(1, 0, 3, 2, 4)                                               # [unit, G, t, j, e]
    return xp.ascontiguousarray(out).reshape(-1), pshift


def _finish(xp: Any, kind: str, q: Any, a: Any, b: Any, n: int, k: int, code: Any = None,
            perm: np.ndarray | None = None) -> PackedInt4:
    """q [K', N] codes, a / b [K'/32, N] per chunk (K' = K or the permuted, padded length) -> PackedInt4."""
    kk = q.shape[0]
    kp, n_p = _round_up(kk, K_ALIGN), _round_up(n, N_ALIGN)
    qp = xp.zeros((kp, n_p), dtype=xp.uint8)
    qp[:kk, :n] = q
    ap = xp.zeros((kp // CHUNK, n_p), dtype=xp.float32)
    bp = xp.zeros((kp // CHUNK, n_p), dtype=xp.float32)
    ap[: a.shape[0], :n] = a
    bp[: b.shape[0], :n] = b
    params, pshift = _params(xp, kind, ap, bp)
    if code is None:
        code = xp.zeros(16, dtype=xp.float16)
    dev_perm = None
    if perm is not None:
        full = np.full(kp, k, dtype=np.int32)  # index k: the zero column the launcher appends to x
        full[: perm.size] = perm
        dev_perm = xp.asarray(full)
    return PackedInt4(kind, n, k, kp, pshift, _tile_words(xp, qp, kind), params,
                      xp.ascontiguousarray(xp.asarray(code, dtype=xp.float16)), dev_perm)


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _served(why_not: str) -> None:
    """Refuse a layer :mod:`cupy_kernels.limits` says no kernel serves (its reason is the message)."""
    _need(not why_not, why_not)


# -- GPTQ -----------------------------------------------------------------------------------
def pack_gptq(qweight: Any, qzeros: Any, scales: Any, g_idx: Any, group_size: int,
              checkpoint_format: str = "gptq", xp: Any = None) -> PackedInt4:
    """GPTQ 4-bit (AutoGPTQ / GPTQModel): qweight int32 [K/8, N], qzeros int32 [G, N/8], scales fp16 [G, N].

    g_idx int32 [K] gives each k's group (act-order when it is not k // group_size);
    ``checkpoint_format`` "gptq" stores zero - 1 (v1), "gptq_v2" the zero itself.
    """
    xp = _xp(xp)
    k, n = int(qweight.shape[0]) * 8, int(qweight.shape[1])
    groups = int(scales.shape[0])
    _served(limits.why_not_gptq(4, n))
    _need(tuple(scales.shape) == (groups, n) and tuple(qzeros.shape) == (groups, n // 8),
          f"scales must be [G, {n}] and qzeros [G, {n // 8}], got {tuple(scales.shape)}, {tuple(qzeros.shape)}")
    gi = np.asarray(g_idx.get() if hasattr(g_idx, "get") else g_idx).reshape(-1).astype(np.int64)
    _need(gi.size == k, f"g_idx must have K = {k} entries, got {gi.size}")
    _need(gi.size == 0 or (0 <= gi.min() and gi.max() < groups), f"g_idx addresses groups outside the {groups} rows of scales")
    q = _nibbles(xp, qweight, n).transpose(0, 2, 1).reshape(k, n)           # k = 8 r + i
    z = _nibbles(xp, qzeros, n // 8).reshape(groups, n).astype(xp.float32)  # column 8 c + i
    if checkpoint_format != "gptq_v2":
        z = (z + 1) % 16
    s = xp.asarray(scales).astype(xp.float32)
    a_g, b_g = s, -s * z
    order = np.argsort(gi, kind="stable")
    sorted_g = gi[order]
    # every 32-k chunk must lie in one group: pad each group's run of k to a multiple of 32
    starts = np.flatnonzero(np.r_[True, sorted_g[1:] != sorted_g[:-1]]) if k else np.zeros(0, np.int64)
    runs = np.diff(np.r_[starts, k])
    if np.array_equal(order, np.arange(k)) and not (runs[:-1] % CHUNK).any():
        perm = None
        chunk_group = sorted_g[::CHUNK]
        q_k = q
    else:
        padded = _round_up_each(runs)
        pos = np.repeat(np.cumsum(np.r_[0, padded[:-1]]), runs) + (np.arange(k) - np.repeat(starts, runs))
        perm = np.full(int(padded.sum()), k, dtype=np.int32)
        perm[pos] = order
        group_at = np.full(perm.size, -1, dtype=np.int64)
        group_at[pos] = sorted_g
        chunk_group = np.repeat(sorted_g[starts], padded // CHUNK)
        q_k = xp.zeros((perm.size, n), dtype=xp.uint8)
        q_k[xp.asarray(pos)] = q[xp.asarray(order)]
    cg = xp.asarray(chunk_group)
    return _finish(xp, "affine", q_k, a_g[cg], b_g[cg], n, k, perm=perm)


def _round_up_each(runs: np.ndarray) -> np.ndarray:
    return -(-runs // CHUNK) * CHUNK


# -- AWQ ------------------------------------------------------------------------------------
def pack_awq(qweight: Any, qzeros: Any, scales: Any, group_size: int, xp: Any = None) -> PackedInt4:
    """AWQ GEMM layout: qweight int32 [K, N/8] (nibble i of word c: column 8c + AWQ_ORDER[i]), qzeros [K/g, N/8]."""
    xp = _xp(xp)
    k, n = int(qweight.shape[0]), int(qweight.shape[1]) * 8
    g = k if group_size in (-1, 0) else int(group_size)
    _served(limits.why_not_awq("gemm", g, n, k))
    groups = -(-k // g)
    _need(qzeros.shape[0] >= groups and qzeros.shape[1] * 8 == n and scales.shape[0] >= groups
          and scales.shape[1] == n, f"qzeros must be [{groups}, {n // 8}] and scales [{groups}, {n}], "
          f"got {tuple(qzeros.shape)}, {tuple(scales.shape)}")
    inv = np.argsort(AWQ_ORDER)  # column offset c' is nibble inv[c']
    q = _nibbles(xp, qweight, n // 8)[:, :, inv].reshape(k, n)
    z = _nibbles(xp, qzeros[:groups], n // 8)[:, :, inv].reshape(groups, n).astype(xp.float32)
    s = xp.asarray(scales[:groups]).astype(xp.float32)
    cg = xp.asarray(np.minimum(np.arange(0, _round_up(k, CHUNK), CHUNK) // g, groups - 1))
    return _finish(xp, "affine", q, s[cg], (-s * z)[cg], n, k)


# -- GGUF -----------------------------------------------------------------------------------
def _q4k_scale_min(xp: Any, sc: Any) -> tuple[Any, Any]:
    """get_scale_min_k4 for the 8 sub-blocks: 12 bytes [..., 12] -> (scale, min) [..., 8] of 6 bits."""
    sc = sc.astype(xp.int32)
    lo_s, lo_m = sc[..., 0:4] & 63, sc[..., 4:8] & 63
    hi_s = (sc[..., 8:12] & 0xF) | ((sc[..., 0:4] >> 6) << 4)
    hi_m = (sc[..., 8:12] >> 4) | ((sc[..., 4:8] >> 6) << 4)
    return xp.concatenate([lo_s, hi_s], axis=-1), xp.concatenate([lo_m, hi_m], axis=-1)


def pack_gguf(raw: Any, type_name: str, shape: tuple[int, int], xp: Any = None) -> PackedInt4:
    """GGUF Q4_0 / Q4_1 / Q4_K: raw uint8 [N, bytes per row] of ggml blocks, shape (N, K)."""
    xp = _xp(xp)
    _served(limits.why_not_gguf(type_name))
    per, nbytes = GGUF_BLOCKS[type_name]
    n, k = int(shape[0]), int(shape[1])
    _need(k % per == 0, f"{type_name} rows must be a multiple of {per}")
    raw = xp.ascontiguousarray(xp.asarray(raw, dtype=xp.uint8)).reshape(n, -1)
    _need(raw.shape[1] == k // per * nbytes, f"{type_name} rows must be {k // per * nbytes} bytes, got {raw.shape[1]}")
    blocks = raw.reshape(n, k // per, nbytes)

    def f16(off: int) -> Any:
        return xp.ascontiguousarray(blocks[..., off:off + 2]).view(xp.float16)[..., 0].astype(xp.float32)

    if type_name in ("Q4_0", "Q4_1"):
        qs = blocks[..., 2 if type_name == "Q4_0" else 4:]
        q = xp.concatenate([qs & 15, qs >> 4], axis=-1).reshape(n, k)        # element j < 16: low nibble of qs[j]
        d = f16(0)                                                           # [N, K/32]
        a, b = d, (-8.0 * d if type_name == "Q4_0" else f16(2))
    else:
        qs = blocks[..., 16:].reshape(n, k // per, 4, 1, 32)
        q = xp.concatenate([qs & 15, qs >> 4], axis=3).reshape(n, k)         # 64i + l low, 64i + 32 + l high
        sc, mn = _q4k_scale_min(xp, blocks[..., 4:16])                       # [N, K/256, 8]
        a = (f16(0)[..., None] * sc).reshape(n, k // 32)
        b = (-f16(2)[..., None] * mn).reshape(n, k // 32)
    return _finish(xp, "affine", q.T, a.T, b.T, n, k)


# -- bitsandbytes ---------------------------------------------------------------------------
def pack_bnb(weight: Any, quant_map: Any, absmax: Any, shape: tuple[int, int], blocksize: int = 64,
             nested_absmax: Any = None, nested_quant_map: Any = None, nested_offset: float = 0.0,
             nested_blocksize: int = 256, xp: Any = None) -> PackedInt4:
    """bitsandbytes 4-bit: uint8 codes of the flattened [N, K] weight, two a byte, the first in the high nibble."""
    xp = _xp(xp)
    n, k = int(shape[0]), int(shape[1])
    _served(limits.why_not_bnb(blocksize, k))
    nblocks = -(-n * k // blocksize)
    _need(int(weight.size) * 2 >= n * k, f"weight holds {int(weight.size) * 2} codes, shape needs {n * k}")
    _need(int(absmax.size) >= nblocks, f"absmax has {int(absmax.size)} blocks, shape needs {nblocks}")
    _need(int(quant_map.size) == 16, "quant_map must have 16 entries")
    packed = xp.asarray(weight, dtype=xp.uint8).reshape(-1)[: n * k // 2]
    q = xp.stack([packed >> 4, packed & 15], axis=1).reshape(n, k)
    am = xp.asarray(absmax).reshape(-1)[:nblocks]
    if nested_absmax is not None and am.dtype == xp.uint8:
        _need(nested_quant_map is not None and int(nested_quant_map.size) == 256, "nested_quant_map must have 256 entries")
        _need(int(nested_absmax.size) >= -(-nblocks // nested_blocksize), "nested_absmax is too short for absmax")
        code2 = xp.asarray(nested_quant_map, dtype=xp.float32).reshape(-1)
        nabs = xp.asarray(nested_absmax, dtype=xp.float32).reshape(-1)
        am = code2[am.astype(xp.int64)] * nabs[xp.arange(nblocks) // nested_blocksize] + xp.float32(nested_offset)
    am = am.astype(xp.float32)
    first = xp.arange(n, dtype=xp.int64)[:, None] * k + xp.arange(0, k, CHUNK, dtype=xp.int64)[None, :]
    scale = am[first // blocksize]                                            # [N, K/32]
    code = xp.asarray(quant_map, dtype=xp.float32).reshape(-1)
    return _finish(xp, "lut", q.T, scale.T, xp.zeros_like(scale.T), n, k, code=code)
