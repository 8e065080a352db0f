"""CPU emulation of every CUDA kernel in ``cupy_kernels/``, checked against ``mcard.reference``.

What this is: a numpy transliteration of each ``.cu`` kernel body, statement by
statement. Every thread of every block of the launch grid is a lane of a numpy
array (``bx``, ``by``, ``tid``); the thread-index arithmetic, the staging loops
(``for (i = tid; i < ...; i += THREADS)``), the shared-memory tiles, the
per-thread packed loads, the nibble/scale/zero extraction, the ``if`` guards,
the ``__shfl_xor_sync`` butterflies and the final stores are written the way the
CUDA source writes them. The launcher (:mod:`cupy_kernels.launch`) runs for
real: ``cupy`` is replaced by numpy and ``launch.kernel`` by the emulator, which
first checks the launch against the kernel's C signature parsed from the
``.cu`` text (argument count, pointer dtypes, ``int``/``long long``/``float``
scalars as the exact numpy scalar types CuPy needs, block size). The tiling
constants and each kernel's MT are read from the ``.cu`` sources, so an edit
there that the emulation does not follow fails here.

What it proves: the indexing, layouts (GPTQ nibbles and v1/v2 zeros, g_idx
gather, AWQ interleave, Q4_0/Q4_1/Q4_K blocks and get_scale_min_k4, NF4 nibble
order and nested absmax), tails in K, N and M, the reductions and the launcher's
grid/argument plumbing agree with the torch reference; that every global load is
in bounds and naturally aligned for its width (int4/uint4 = 16 bytes, ...); that
no two threads store different values to one shared-memory word in one phase;
that every output element is written exactly once.

What it cannot prove: anything about real hardware. Phases between
``__syncthreads()`` run one after another for all threads here, so a missing
barrier, a divergent ``__shfl_xor_sync`` or a real data race would not show
(those were checked by reading the source); nor do timing, occupancy, register
spills, fp32 FMA contraction order, or NVRTC/driver behaviour. The GPU tests
(``tests/test_kernels_gpu.py``) remain the real check.
"""

from __future__ import annotations

import re
import sys
import types
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cupy_kernels import launch  # noqa: E402
from mcard import reference as ref  # noqa: E402
from kernel_inputs import gguf_raw, rng, scales, words  # noqa: E402
from mcard.formats import _kquant, awq, gptq  # noqa: E402

KDIR = Path(launch.__file__).resolve().parent
F32, F64, I64, U32 = np.float32, np.float64, np.int64, np.uint32
NF4 = np.array([-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0, 0.0796, 0.1609, 0.2461, 0.3379,
                0.4407, 0.5626, 0.7230, 1.0], dtype=np.float32)


# ---------------------------------------------------------------------------
# The .cu sources: a tiny preprocessor, the #define constants, the signatures
# ---------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _preprocessed(src: str) -> tuple[str, dict[str, int]]:
    text = (KDIR / src).read_text().replace("\\\n", " ")
    text = re.sub(r"//[^\n]*", "", text)
    obj: dict[str, str] = {}
    fn: dict[str, tuple[list[str], str]] = {}
    body_lines = []
    for line in text.splitlines():
        m = re.match(r"\s*#define\s+(\w+)(\(([^)]*)\))?\s*(.*)$", line)
        if m and m.group(2):
            fn[m.group(1)] = ([p.strip() for p in m.group(3).split(",")], m.group(4))
        elif m:
            obj[m.group(1)] = m.group(4).strip()
        elif not line.lstrip().startswith("#"):
            body_lines.append(line)
    body = "\n".join(body_lines)

    def expand_obj(s: str) -> str:
        for _ in range(5):
            s = re.sub(r"\b(\w+)\b", lambda mm: obj.get(mm.group(1), mm.group(1)), s)
        return s

    for name, (params, repl) in fn.items():  # top-level function-like macros (GG_KERNELS)
        def sub(mm: re.Match, params=params, repl=repl) -> str:
            args = [a.strip() for a in mm.group(1).split(",")]
            out = repl
            for p, a in zip(params, args):
                out = re.sub(rf"\b{p}\b", a, out)
            return re.sub(r"\s*##\s*", "", out)
        body = re.sub(rf"^\s*{name}\(([^)]*)\)\s*$", sub, body, flags=re.M)
    consts = {}
    for name in obj:
        val = expand_obj(name)
        if re.fullmatch(r"[\d\s()+*/-]+", val):
            consts[name] = int(eval(val.replace("/", "//")))  # noqa: S307 - digits and operators only
    return expand_obj(body), consts


def consts(src: str) -> dict[str, int]:
    return _preprocessed(src)[1]


@lru_cache(maxsize=None)
def signatures(src: str) -> dict[str, tuple[list[tuple[str, bool, str]], int]]:
    """kernel name -> ([(base C type, is_pointer, name)], MT of the body template it calls)."""
    body, _ = _preprocessed(src)
    out = {}
    pat = r'extern\s+"C"\s+__global__\s+void\s+__launch_bounds__\(\s*\d+\s*\)\s*(\w+)\s*\(([^)]*)\)\s*\{\s*\w+<([^>]*)>'
    for m in re.finditer(pat, body, flags=re.S):
        params = []
        for p in m.group(2).split(","):
            toks = p.replace("*", " * ").split()
            ptr = "*" in toks
            toks = [t for t in toks if t not in ("const", "__restrict__", "*")]
            params.append((" ".join(toks[:-1]), ptr, toks[-1]))
        out[m.group(1)] = (params, int(m.group(3).split(",")[-1]))
    return out


PTR_DTYPES = {"half": np.float16, "int": np.int32, "float": np.float32, "unsigned char": np.uint8}
SCALAR_TYPES = {"int": np.int32, "long long": np.int64, "float": np.float32}


# ---------------------------------------------------------------------------
# Emulated device: global buffers, shared memory, warps
# ---------------------------------------------------------------------------
class Buf:
    """A global-memory buffer (base 256-byte aligned, as CuPy allocates) addressed in bytes."""

    def __init__(self, arr: np.ndarray):
        self.arr = arr
        self.u8 = arr.reshape(-1).view(np.uint8)
        self.writes = np.zeros(arr.size, np.int64)

    def ld(self, off, nbytes: int, mask) -> np.ndarray:
        """Per-thread load of ``nbytes`` at byte offset ``off`` where ``mask``; [..., nbytes] uint8."""
        off, mask = np.broadcast_arrays(np.asarray(off, I64), np.asarray(mask, bool))
        o = off[mask]
        assert (o % nbytes == 0).all(), f"misaligned {nbytes}-byte load at byte {o[o % nbytes != 0][:4]}"
        assert (o >= 0).all() and (o + nbytes <= self.u8.size).all(), "out-of-bounds global load"
        out = np.zeros(off.shape + (nbytes,), np.uint8)
        out[mask] = self.u8[o[:, None] + np.arange(nbytes)]
        return out

    def u32(self, off, nwords: int, mask) -> np.ndarray:
        return self.ld(off, 4 * nwords, mask).view("<u4").astype(I64)  # [..., nwords]

    def half(self, idx, mask) -> np.ndarray:
        return self.ld(np.asarray(idx, I64) * 2, 2, mask).view("<f2")[..., 0].astype(F32)

    def f32(self, idx, mask) -> np.ndarray:
        return self.ld(np.asarray(idx, I64) * 4, 4, mask).view("<f4")[..., 0]

    def u8at(self, idx, mask) -> np.ndarray:
        return self.ld(idx, 1, mask)[..., 0].astype(I64)

    def store_half(self, idx, mask, val) -> None:
        idx, mask, val = np.broadcast_arrays(np.asarray(idx, I64), np.asarray(mask, bool), val)
        i = idx[mask]
        assert (i >= 0).all() and (i < self.arr.size).all(), "out-of-bounds store"
        flat = self.arr.reshape(-1)
        flat[i] = val[mask].astype(F32).astype(np.float16)  # __float2half: round to nearest even
        np.add.at(self.writes, i, 1)


def half_bits(u16) -> np.ndarray:
    """Reinterpret the low 16 bits of ints as fp16 (``__low2float`` of a half2 word, etc.)."""
    return (np.asarray(u16) & 0xFFFF).astype(np.uint16).view(np.float16).astype(F32)


def fmaf(a, b, c) -> np.ndarray:
    return (np.asarray(a, F64) * np.asarray(b, F64) + np.asarray(c, F64)).astype(F32)


class Block:
    """Thread coordinates for a whole grid: every array has shape [grid.x, grid.y, THREADS]."""

    def __init__(self, grid: tuple[int, int], threads: int):
        self.grid = grid
        self.bx, self.by, self.tid = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), np.arange(threads),
                                                 indexing="ij")
        self.shape = self.tid.shape

    def shared(self, *dims: int, dtype=F32) -> np.ndarray:
        return np.zeros(self.grid + dims, dtype)

    def sts(self, arr: np.ndarray, mask, idx: tuple, val) -> None:
        """Shared store by the threads in ``mask``; no two may hit one element in a phase."""
        mask = np.broadcast_to(mask, self.shape)
        full = tuple(np.broadcast_to(a, self.shape)[mask] for a in (self.bx, self.by) + tuple(idx))
        flat = np.ravel_multi_index(full, arr.shape)  # raises on out-of-range indices
        assert np.unique(flat).size == flat.size, "two threads store to one shared element in one phase"
        arr[full] = np.broadcast_to(val, self.shape)[mask]

    def lds(self, arr: np.ndarray, idx: tuple, mask=True) -> np.ndarray:
        """Shared load; threads outside ``mask`` do not load (read index 0, value unused)."""
        mask = np.broadcast_to(mask, self.shape)
        full = (self.bx, self.by) + tuple(np.where(mask, np.broadcast_to(a, self.shape), 0) for a in idx)
        for a, d in zip(full[2:], arr.shape[2:]):
            assert ((a >= 0) & (a < d)).all(), "shared-memory index out of range"
        return arr[full]

    def shfl_xor(self, v: np.ndarray, off: int) -> np.ndarray:
        """``__shfl_xor_sync(0xffffffff, v, off)``: every lane of every warp takes lane ^ off's value."""
        s = v.shape
        w = v.reshape(s[:2] + (s[2] // 32, 32))
        return w[..., np.arange(32) ^ off].reshape(s)

    def strided(self, count: int, threads: int):
        """``for (int i = tid; i < count; i += threads)``: yields (i, live) per iteration."""
        for base in range(0, count, threads):
            i = self.tid + base
            yield i, i < count


# ---------------------------------------------------------------------------
# Kernel transliterations (names and statement order follow the .cu files)
# ---------------------------------------------------------------------------
def emu_gptq(grid, MT, a) -> None:
    C = consts("gptq.cu")
    THREADS, WARPS, LANES_N, LANES_K = C["GPTQ_THREADS"], C["GPTQ_WARPS"], C["GPTQ_LANES_N"], C["GPTQ_LANES_K"]
    TILE_N, KSTEP = C["GPTQ_TILE_N"], C["GPTQ_KSTEP"]
    x, qweight, qzeros, scales, g_idx, bias, y = (a[k] for k in ("x", "qweight", "qzeros", "scales", "g_idx", "bias", "y"))
    M, K, N, group_size, use_g_idx, zeros_v1, has_bias = (int(a[k]) for k in
                                                         ("M", "K", "N", "group_size", "use_g_idx", "zeros_v1", "has_bias"))
    B = Block(grid, THREADS)
    xs, gs, red = B.shared(MT, KSTEP), B.shared(KSTEP, dtype=I64), B.shared(WARPS, MT, TILE_N)
    tid = B.tid
    warp, lane = tid >> 5, tid & 31
    nl, kl = lane % LANES_N, lane // LANES_N
    kslice = warp * LANES_K + kl
    n0 = B.bx * TILE_N + nl * 4
    m0 = B.by * MT
    col_ok = n0 < N
    KW = K // 8
    zshift = (n0 & 7) * 4
    acc = np.zeros(B.shape + (MT, 4), F32)
    cur_g = np.full(B.shape, -1, I64)
    s = np.zeros(B.shape + (4,), F32)
    z = np.zeros(B.shape + (4,), I64)
    for kbase in range(0, K, KSTEP):
        for i, live in B.strided(MT * KSTEP, THREADS):
            m, kk = i // KSTEP, i % KSTEP
            gm, gk = m0 + m, kbase + kk
            ok = live & (gm < M) & (gk < K)
            B.sts(xs, live, (m, kk), np.where(ok, x.half(gm * K + gk, ok), F32(0)))
        if use_g_idx:
            for i, live in B.strided(KSTEP, THREADS):
                ok = live & (kbase + i < K)
                B.sts(gs, live, (i,), np.where(ok, g_idx.u32((kbase + i) * 4, 1, ok)[..., 0], 0))
        # __syncthreads()
        r = kbase // 8 + kslice
        act = col_ok & (r < KW)
        wc = qweight.u32((r * N + n0) * 4, 4, act)  # int4 load: 4 columns x 8 k
        for j in range(8):
            kk = kslice * 8 + j
            k = kbase + kk
            g = B.lds(gs, (kk,), act) if use_g_idx else k // group_size
            chg = act & (g != cur_g)
            cur_g = np.where(chg, g, cur_g)
            sv = scales.u32((g * N + n0) * 2, 2, chg)  # uint2: 4 halves
            snew = np.stack([half_bits(sv[..., 0]), half_bits(sv[..., 0] >> 16),
                             half_bits(sv[..., 1]), half_bits(sv[..., 1] >> 16)], axis=-1)
            s = np.where(chg[..., None], snew, s)
            zw = qzeros.u32((g * (N // 8) + n0 // 8) * 4, 1, chg)[..., 0]
            for c in range(4):
                zc = (zw >> (zshift + 4 * c)) & 15
                z[..., c] = np.where(chg, ((zc + 1) & 15) if zeros_v1 else zc, z[..., c])
            for c in range(4):
                wv = (s[..., c] * (((wc[..., c] >> (4 * j)) & 15) - z[..., c]).astype(F32)).astype(F32)
                for m in range(MT):
                    acc[..., m, c] = np.where(act, fmaf(B.lds(xs, (m, kk), act), wv, acc[..., m, c]), acc[..., m, c])
        # __syncthreads()
    for m in range(MT):
        for c in range(4):
            v = acc[..., m, c]
            off = LANES_N
            while off < 32:
                v = (v + B.shfl_xor(v, off)).astype(F32)
                off <<= 1
            acc[..., m, c] = v
    for m in range(MT):
        for c in range(4):
            B.sts(red, kl == 0, (warp, m, nl * 4 + c), acc[..., m, c])
    # __syncthreads()
    for i, live in B.strided(MT * TILE_N, THREADS):
        m, col = i // TILE_N, i % TILE_N
        gm, n = m0 + m, B.bx * TILE_N + col
        ok = live & (gm < M) & (n < N)
        v = np.zeros(B.shape, F32)
        for wp in range(WARPS):
            v = (v + B.lds(red, (np.full_like(m, wp), m, col), ok)).astype(F32)
        if has_bias:
            v = (v + bias.half(n, ok)).astype(F32)
        y.store_half(gm * N + n, ok, v)


def emu_awq(grid, MT, a) -> None:
    C = consts("awq.cu")
    THREADS, WARPS, WORDS, LANES_N, LANES_K = (C[k] for k in ("AWQ_THREADS", "AWQ_WARPS", "AWQ_WORDS", "AWQ_LANES_N",
                                                             "AWQ_LANES_K"))
    TILE_N, KSTEP = C["AWQ_TILE_N"], C["AWQ_KSTEP"]
    assert WORDS == 2, "the emulation (like the kernel) handles 2 words = 16 columns per thread"
    x, qweight, qzeros, scales, bias, y = (a[k] for k in ("x", "qweight", "qzeros", "scales", "bias", "y"))
    M, K, N, group_size, has_bias = (int(a[k]) for k in ("M", "K", "N", "group_size", "has_bias"))
    B = Block(grid, THREADS)
    xs, red = B.shared(MT, KSTEP), B.shared(WARPS, MT, TILE_N)
    tid = B.tid
    warp, lane = tid >> 5, tid & 31
    nl, kl = lane % LANES_N, lane // LANES_N
    kslice = warp * LANES_K + kl
    NW = N // 8
    w0 = B.bx * (TILE_N // 8) + nl * WORDS
    n0 = w0 * 8
    m0 = B.by * MT
    col_ok = n0 < N
    acc = np.zeros(B.shape + (MT, 16), F32)
    INV = [0, 4, 1, 5, 2, 6, 3, 7]
    for kbase in range(0, K, KSTEP):
        for i, live in B.strided(MT * KSTEP, THREADS):
            m, kk = i // KSTEP, i % KSTEP
            gm, gk = m0 + m, kbase + kk
            ok = live & (gm < M) & (gk < K)
            B.sts(xs, live, (m, kk), np.where(ok, x.half(gm * K + gk, ok), F32(0)))
        # __syncthreads()
        k = kbase + kslice
        act = col_ok & (k < K)
        w = qweight.u32((k * NW + w0) * 4, 2, act)
        g = k // group_size
        zw = qzeros.u32((g * NW + w0) * 4, 2, act)
        s0 = scales.u32((g * N + n0) * 2, 4, act)
        s1 = scales.u32((g * N + n0 + 8) * 2, 4, act)
        sw = np.concatenate([s0, s1], axis=-1)
        for c in range(16):
            word, j = c // 8, c % 8
            q = (w[..., word] >> (4 * INV[j])) & 15
            zq = (zw[..., word] >> (4 * INV[j])) & 15
            sp = sw[..., c // 2]
            sc = half_bits(sp >> 16) if (c & 1) else half_bits(sp)
            wv = ((q - zq).astype(F32) * sc).astype(F32)
            for m in range(MT):
                acc[..., m, c] = np.where(act, fmaf(B.lds(xs, (m, kslice), act), wv, acc[..., m, c]), acc[..., m, c])
        # __syncthreads()
    for m in range(MT):
        for c in range(16):
            v = acc[..., m, c]
            off = LANES_N
            while off < 32:
                v = (v + B.shfl_xor(v, off)).astype(F32)
                off <<= 1
            acc[..., m, c] = v
    for m in range(MT):
        for c in range(16):
            B.sts(red, kl == 0, (warp, m, nl * 16 + c), acc[..., m, c])
    # __syncthreads()
    for i, live in B.strided(MT * TILE_N, THREADS):
        m, col = i // TILE_N, i % TILE_N
        gm, n = m0 + m, B.bx * TILE_N + col
        ok = live & (gm < M) & (n < N)
        v = np.zeros(B.shape, F32)
        for wp in range(WARPS):
            v = (v + B.lds(red, (np.full_like(m, wp), m, col), ok)).astype(F32)
        if has_bias:
            v = (v + bias.half(n, ok)).astype(F32)
        y.store_half(gm * N + n, ok, v)


def _row_finish(B: Block, acc: np.ndarray, bias: Buf, y: Buf, M: int, N: int, n, m0, has_bias: int) -> None:
    """gg_finish / nf4 phase 3: butterfly over 32 lanes, lane 0 of each warp stores MT rows."""
    MT = acc.shape[-1]
    for m in range(MT):
        v = acc[..., m]
        off = 16
        while off > 0:
            v = (v + B.shfl_xor(v, off)).astype(F32)
            off >>= 1
        acc[..., m] = v
    st = ((B.tid & 31) == 0) & (n < N)
    b = bias.half(n, st) if has_bias else np.zeros(B.shape, F32)
    for m in range(MT):
        ok = st & (m0 + m < M)
        y.store_half((m0 + m) * N + n, ok, (acc[..., m] + b).astype(F32))


def _pad(p):
    return p + (p >> 5)


def emu_gguf(grid, MT, a, TYPE: int) -> None:
    C = consts("gguf.cu")
    THREADS, WARPS, KSTEP, PADDED = C["GG_THREADS"], C["GG_WARPS"], C["GG_KSTEP"], C["GG_PADDED"]
    x, wq, bias, y = (a[k] for k in ("x", "wq", "bias", "y"))
    M, K, N, row_bytes, has_bias = (int(a[k]) for k in ("M", "K", "N", "row_bytes", "has_bias"))
    B = Block(grid, THREADS)
    xs = B.shared(MT, PADDED)
    warp, lane = B.tid >> 5, B.tid & 31
    n = B.bx * WARPS + warp
    m0 = B.by * MT
    row = n * row_bytes  # byte offset of the row in wq
    acc = np.zeros(B.shape + (MT,), F32)
    for kbase in range(0, K, KSTEP):
        for i, live in B.strided(MT * KSTEP, THREADS):  # gg_stage
            m, kk = i // KSTEP, i % KSTEP
            gm, gk = m0 + m, kbase + kk
            ok = live & (gm < M) & (gk < K)
            B.sts(xs, live, (m, _pad(kk)), np.where(ok, x.half(gm * K + gk, ok), F32(0)))
        # __syncthreads()
        if TYPE in (0, 1):
            blk = kbase // 32 + lane
            act = (n < N) & (blk * 32 < K)
            base = lane * 32
            if TYPE == 0:
                b = row + blk * 18
                d = half_bits(wq.ld(b, 2, act).view("<u2")[..., 0])
                mn = np.zeros(B.shape, F32)
                q16 = [wq.ld(b + 2 + 2 * t, 2, act).view("<u2")[..., 0].astype(I64) for t in range(8)]
                qw = [q16[2 * t] | (q16[2 * t + 1] << 16) for t in range(4)]
            else:
                b = row + blk * 20
                dm = wq.u32(b, 1, act)[..., 0]
                d, mn = half_bits(dm), half_bits(dm >> 16)
                qw = [wq.u32(b + 4 + 4 * t, 1, act)[..., 0] for t in range(4)]
            for m in range(MT):
                sq = np.zeros(B.shape, F32)
                sx = np.zeros(B.shape, F32)
                for j in range(16):
                    byte = (qw[j >> 2] >> (8 * (j & 3))) & 0xFF
                    xl = B.lds(xs, (np.full_like(lane, m), _pad(base + j)), act)
                    xh = B.lds(xs, (np.full_like(lane, m), _pad(base + 16 + j)), act)
                    sq = fmaf(xl, (byte & 15).astype(F32), sq)
                    sq = fmaf(xh, (byte >> 4).astype(F32), sq)
                    sx = (sx + (xl + xh).astype(F32)).astype(F32)
                inc = (d * (sq - F32(8) * sx)).astype(F32) if TYPE == 0 else fmaf(d, sq, (mn * sx).astype(F32))
                acc[..., m] = np.where(act, (acc[..., m] + inc).astype(F32), acc[..., m])
        else:
            sb = kbase // 256 + lane // 8
            act = (n < N) & (sb * 256 < K)
            part = lane & 7
            pair, h = part >> 1, part & 1
            b = row + sb * 144
            dd = wq.u32(b, 1, act)[..., 0]
            d, dmin = half_bits(dd), half_bits(dd >> 16)
            sw = np.stack([wq.u32(b + 4 + 4 * t, 1, act)[..., 0] for t in range(3)], axis=-1)  # s0, s1, s2
            scv, mnv = [], []
            for t in range(2):
                j = 2 * pair + t

                def SCB(i):
                    i = np.asarray(i)
                    return (np.take_along_axis(sw, (i >> 2)[..., None], -1)[..., 0] >> (8 * (i & 3))) & 0xFF
                lo_j = j < 4
                jj = np.where(lo_j, j, 0)
                scv.append(np.where(lo_j, SCB(jj) & 63, (SCB(j + 4) & 0xF) | ((SCB(np.maximum(j - 4, 0)) >> 6) << 4)))
                mnv.append(np.where(lo_j, SCB(jj + 4) & 63, (SCB(j + 4) >> 4) | ((SCB(j) >> 6) << 4)))
            qw = wq.u32(b + 16 + 32 * pair + 16 * h, 4, act)  # uint4
            lo = (lane // 8) * 256 + 64 * pair + 16 * h
            d0, d1 = (d * scv[0].astype(F32)).astype(F32), (d * scv[1].astype(F32)).astype(F32)
            m0f, m1f = (dmin * mnv[0].astype(F32)).astype(F32), (dmin * mnv[1].astype(F32)).astype(F32)
            for m in range(MT):
                sq0, sx0, sq1, sx1 = (np.zeros(B.shape, F32) for _ in range(4))
                for l in range(16):
                    byte = (qw[..., l >> 2] >> (8 * (l & 3))) & 0xFF
                    xl = B.lds(xs, (np.full_like(lane, m), _pad(lo + l)), act)
                    xh = B.lds(xs, (np.full_like(lane, m), _pad(lo + 32 + l)), act)
                    sq0 = fmaf(xl, (byte & 15).astype(F32), sq0)
                    sx0 = (sx0 + xl).astype(F32)
                    sq1 = fmaf(xh, (byte >> 4).astype(F32), sq1)
                    sx1 = (sx1 + xh).astype(F32)
                inc = (d0 * sq0 - m0f * sx0 + d1 * sq1 - m1f * sx1).astype(F32)
                acc[..., m] = np.where(act, (acc[..., m] + inc).astype(F32), acc[..., m])
        # __syncthreads()
    _row_finish(B, acc, bias, y, M, N, n, m0, has_bias)


def emu_bnb(grid, MT, a) -> None:
    C = consts("nf4.cu")
    THREADS, WARPS, KSTEP, PADDED = C["NF4_THREADS"], C["NF4_WARPS"], C["NF4_KSTEP"], C["NF4_PADDED"]
    x, wq, code, absmax_f32, absmax_u8, nested_code, nested_absmax, bias, y = (a[k] for k in (
        "x", "wq", "code", "absmax_f32", "absmax_u8", "nested_code", "nested_absmax", "bias", "y"))
    M, K, N, blocksize, has_bias = (int(a[k]) for k in ("M", "K", "N", "blocksize", "has_bias"))
    nested_offset, nested_blocksize, nested = F32(a["nested_offset"]), int(a["nested_blocksize"]), int(a["nested"])
    B = Block(grid, THREADS)
    xs, cb = B.shared(MT, PADDED), B.shared(16)
    warp, lane = B.tid >> 5, B.tid & 31
    n = B.bx * WARPS + warp
    m0 = B.by * MT
    B.sts(cb, B.tid < 16, (np.minimum(B.tid, 15),), code.f32(B.tid, B.tid < 16))
    acc = np.zeros(B.shape + (MT,), F32)
    for kbase in range(0, K, KSTEP):
        for i, live in B.strided(MT * KSTEP, THREADS):
            m, kk = i // KSTEP, i % KSTEP
            gm, gk = m0 + m, kbase + kk
            ok = live & (gm < M) & (gk < K)
            B.sts(xs, live, (m, _pad(kk)), np.where(ok, x.half(gm * K + gk, ok), F32(0)))
        # __syncthreads()
        k0 = kbase + lane * 32
        act = (n < N) & (k0 < K)
        flat = n * K + k0
        qw = wq.u32(flat // 2, 4, act)  # uint4
        blk = flat // blocksize
        if nested:
            am = (nested_code.f32(absmax_u8.u8at(blk, act), act) * nested_absmax.f32(blk // nested_blocksize, act)
                  ).astype(F32) + nested_offset
        else:
            am = absmax_f32.f32(blk, act)
        am = am.astype(F32)
        base = lane * 32
        for m in range(MT):
            s = np.zeros(B.shape, F32)
            mm = np.full_like(lane, m)
            for j in range(16):
                byte = (qw[..., j >> 2] >> (8 * (j & 3))) & 0xFF
                s = fmaf(B.lds(xs, (mm, _pad(base + 2 * j)), act), B.lds(cb, (byte >> 4,), act), s)
                s = fmaf(B.lds(xs, (mm, _pad(base + 2 * j + 1)), act), B.lds(cb, (byte & 15,), act), s)
            acc[..., m] = np.where(act, fmaf(am, s, acc[..., m]), acc[..., m])
        # __syncthreads()
    _row_finish(B, acc, bias, y, M, N, n, m0, has_bias)


EMULATORS = {
    ("gptq", "gptq4"): emu_gptq, ("awq", "awq4"): emu_awq, ("bnb", "bnb4"): emu_bnb,
    ("gguf", "gguf_q4_0"): lambda g, mt, a: emu_gguf(g, mt, a, 0),
    ("gguf", "gguf_q4_1"): lambda g, mt, a: emu_gguf(g, mt, a, 1),
    ("gguf", "gguf_q4_k"): lambda g, mt, a: emu_gguf(g, mt, a, 2),
}


class EmulatedKernel:
    """Stands in for a CuPy ``RawKernel``: ``fn(grid, block, args)``, checked against the C signature."""

    def __init__(self, name: str, function: str):
        self.name, self.function = name, function
        sigs = signatures(launch.SOURCES[name])
        assert function in sigs, f"{function} is not an extern \"C\" kernel of {launch.SOURCES[name]}"
        self.params, self.mt = sigs[function]
        self.emulate = EMULATORS[(name, function.rsplit("_", 1)[0])]
        self.launches = 0

    def __call__(self, grid, block, args) -> None:
        threads = next(v for k, v in consts(launch.SOURCES[self.name]).items() if k.endswith("_THREADS"))
        assert tuple(block) == (threads,), f"block {block} != ({threads},)"
        assert len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid), grid
        assert len(args) == len(self.params), f"{self.function}: {len(args)} args for {len(self.params)} parameters"
        named = {}
        for (ctype, ptr, pname), arg in zip(self.params, args):
            if ptr:
                assert isinstance(arg, np.ndarray), f"{pname}: expected an array"
                assert arg.dtype == PTR_DTYPES[ctype], f"{pname}: {arg.dtype} for {ctype}*"
                assert arg.flags.c_contiguous, f"{pname} not contiguous"
                named[pname] = Buf(arg)
            else:
                assert type(arg) is SCALAR_TYPES[ctype], f"{pname}: {type(arg).__name__} for C {ctype}"
                named[pname] = arg
        self.emulate(tuple(grid), self.mt, named)
        self.launches += 1
        writes = named["y"].writes
        assert (writes == 1).all(), f"outputs written {set(writes.tolist())} times, not exactly once"


def _fake_cupy() -> types.ModuleType:
    cp = types.ModuleType("cupy")
    for attr in ("float16", "float32", "int32", "uint8", "nan", "zeros", "empty", "full", "arange", "asarray",
                 "ascontiguousarray"):
        setattr(cp, attr, getattr(np, attr))
    cp.cuda = types.SimpleNamespace(Device=lambda *a: types.SimpleNamespace(id=0, synchronize=lambda: None))
    return cp


@pytest.fixture(autouse=True)
def emulated(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    made: dict = {}

    def kernel(name: str, function: str):
        return made.setdefault((name, function), EmulatedKernel(name, function))

    monkeypatch.setattr(launch, "kernel", kernel)
    return made


# ---------------------------------------------------------------------------
# Cases (smaller than the GPU tests' but with the same kinds of tails)
# ---------------------------------------------------------------------------
BATCHES = [1, 2, 9, 32]  # gemv; gemm with a partial M tile; several tiles


def check(run, r: np.random.Generator, m: int, k: int, w_ref, n: int, bias=None, tol: float = 1e-3) -> None:
    x16 = r.standard_normal((m, k)).astype(np.float16)
    out = np.full((m, n), np.nan, dtype=np.float16)
    got = run(x16, out)
    assert got is out
    y = out.astype(np.float64)
    assert np.isfinite(y).all()
    want = ref.linear(torch.from_numpy(x16), torch.as_tensor(w_ref), bias).double().numpy()
    err = np.linalg.norm(y - want) / np.linalg.norm(want)
    assert err < tol, f"relative error {err:.2e}"


def test_sources_match_emulation() -> None:
    """Constants the launcher hard-codes agree with the .cu files; each kernel's MT is the launcher's."""
    g, a, gg, nf = consts("gptq.cu"), consts("awq.cu"), consts("gguf.cu"), consts("nf4.cu")
    assert (g["GPTQ_TILE_N"], a["AWQ_TILE_N"], gg["GG_WARPS"], nf["NF4_WARPS"]) == (
        launch.GPTQ_TILE_N, launch.AWQ_TILE_N, launch.ROWS_PER_BLOCK, launch.ROWS_PER_BLOCK)
    assert all(c[k] == launch.THREADS for c, k in ((g, "GPTQ_THREADS"), (a, "AWQ_THREADS"), (gg, "GG_THREADS"),
                                                 (nf, "NF4_THREADS")))
    mts = {f: mt for src in launch.SOURCES.values() for f, (_, mt) in signatures(src).items()}
    assert mts["gptq4_gemv"] == mts["awq4_gemv"] == mts["gguf_q4_k_gemv"] == mts["bnb4_gemv"] == 1
    assert mts["gptq4_gemm"] == launch.GPTQ_MT and mts["awq4_gemm"] == launch.AWQ_MT
    assert mts["gguf_q4_0_gemm"] == mts["gguf_q4_1_gemm"] == mts["gguf_q4_k_gemm"] == mts["bnb4_gemm"] == launch.ROW_MT
    assert len(mts) == 12  # gemv + gemm for GPTQ, AWQ, Q4_0, Q4_1, Q4_K, bitsandbytes


@pytest.mark.parametrize("k,n,group", [(1120, 136, 32), (640, 64, -1)])  # K and N tails; one group
@pytest.mark.parametrize("act", [False, True])
@pytest.mark.parametrize("fmt,sym", [("gptq", True), ("gptq", False), ("gptq_v2", False)])
def test_gptq(k: int, n: int, group: int, act: bool, fmt: str, sym: bool) -> None:
    r = rng(k + n + group + act)
    g = k if group == -1 else group
    ng = k // g
    qweight = words(r, k // 8, n)
    qzeros = (np.full((ng, n // 8), 0x77777777, np.int64).astype(np.int32) if sym and fmt == "gptq"
              else words(r, ng, n // 8))
    sc = scales(r, ng, n)
    perm = r.permutation(k) if act else np.arange(k)
    g_idx = (np.argsort(perm) // g).astype(np.int32)
    bias = (r.standard_normal(n) * 0.1).astype(np.float16)
    w = ref.gptq_dequantize(qweight, qzeros, sc, g_idx, 4, fmt)
    for m in BATCHES:
        check(lambda x, out: launch.gptq_matmul(x, qweight, qzeros, sc, g_idx, group, fmt, bias, out), r, m, k, w, n,
              bias)


def test_gptq_from_quantize() -> None:
    """A layer written by mcard.formats.gptq.quantize (act-order, asym, v1) through the launcher's default out."""
    r = rng(7)
    lin = gptq.quantize(r.standard_normal((72, 384)).astype(np.float32), 4, 64, desc_act=True, sym=False, rng=r)
    w = ref.gptq_dequantize(lin.qweight, lin.qzeros, lin.scales, lin.g_idx, 4, lin.checkpoint_format)
    x16 = r.standard_normal((3, 384)).astype(np.float16)
    y = launch.gptq_matmul(x16, lin.qweight, lin.qzeros, lin.scales, lin.g_idx, 64, lin.checkpoint_format)
    want = ref.linear(torch.from_numpy(x16), w).numpy()
    assert np.linalg.norm(y - want) / np.linalg.norm(want) < 1e-3


@pytest.mark.parametrize("k,n,group", [(160, 144, 32), (1152, 64, 128), (384, 96, -1)])
def test_awq(k: int, n: int, group: int) -> None:
    r = rng(k * 3 + n + group)
    ng = 1 if group == -1 else k // group
    qweight, qzeros, sc = words(r, k, n // 8), words(r, ng, n // 8), scales(r, ng, n)
    w = ref.awq_dequantize(qweight, qzeros, sc, group)
    bias = (r.standard_normal(n) * 0.1).astype(np.float16)
    for m in BATCHES:
        check(lambda x, out: launch.awq_matmul(x, qweight, qzeros, sc, group, bias, out), r, m, k, w, n, bias)


def test_awq_from_quantize() -> None:
    r = rng(8)
    lin = awq.quantize(r.standard_normal((48, 256)).astype(np.float32), group_size=64)
    w = ref.awq_dequantize(lin.qweight, lin.qzeros, lin.scales, 64)
    for m in (1, 5):
        check(lambda x, out: launch.awq_matmul(x, lin.qweight, lin.qzeros, lin.scales, 64, None, out), r, m, 256, w, 48)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q4_K"])
@pytest.mark.parametrize("n,k", [(37, 1280), (8, 256)])
def test_gguf(type_name: str, n: int, k: int) -> None:
    r = rng(n * k + len(type_name))
    raw = gguf_raw(r, type_name, n, k)
    w = ref.gguf_dequantize(raw, type_name, (n, k))
    bias = (r.standard_normal(n) * 0.1).astype(np.float16)
    for m in BATCHES:
        check(lambda x, out: launch.gguf_matmul(x, raw, type_name, (n, k), bias, out), r, m, k, w, n, bias)


def test_gguf_q4_k_from_pack() -> None:
    """Q4_K blocks written by mcard.formats._kquant.pack_q4_k (real scale/min packing)."""
    r = rng(9)
    n, k = 12, 512
    raw = _kquant.pack_q4_k(r.standard_normal((n * k // 256, 256)).astype(np.float32)).reshape(n, -1)
    w = ref.gguf_dequantize(raw, "Q4_K", (n, k))
    for m in (1, 3):
        check(lambda x, out: launch.gguf_matmul(x, raw, "Q4_K", (n, k), None, out), r, m, k, w, n)


@pytest.mark.parametrize("n,k", [(37, 1120), (16, 64)])
@pytest.mark.parametrize("nested", [False, True])
def test_bnb(n: int, k: int, nested: bool) -> None:
    r = rng(n + k + nested)
    nblocks = -(-n * k // 64)
    packed = r.integers(0, 256, size=(n * k // 2, 1), dtype=np.uint8)
    if nested:
        absmax = r.integers(0, 256, size=nblocks, dtype=np.uint8)
        ncode = np.sort(r.standard_normal(256)).astype(np.float32) * 0.01
        nabs = (r.random(-(-nblocks // 256)) + 0.5).astype(np.float32)
        am = ref.bnb_absmax(absmax, nabs, ncode, 0.02)
        extra = (nabs, ncode, 0.02)
    else:
        absmax = (r.random(nblocks) * 0.05 + 0.01).astype(np.float32)
        am = ref.bnb_absmax(absmax)
        extra = (None, None, 0.0)
    w = ref.bnb_dequantize(packed, am, NF4, (n, k), 64)
    bias = (r.standard_normal(n) * 0.1).astype(np.float16)
    for m in BATCHES:
        check(lambda x, out: launch.bnb_matmul(x, packed, NF4, absmax, (n, k), 64, *extra, 256, bias, out),
              r, m, k, w, n, bias)


def test_launcher_guards(emulated: dict) -> None:
    """M == 0 launches nothing; shapes that would make the kernels read outside an array are refused."""
    r = rng(4)
    k, n = 256, 16
    qweight, qzeros, sc = words(r, k // 8, n), words(r, 2, n // 8), scales(r, 2, n)
    g_idx = (np.arange(k) // 128).astype(np.int32)
    y = launch.gptq_matmul(np.zeros((0, k), np.float16), qweight, qzeros, sc, g_idx, 128)
    assert y.shape == (0, n) and not emulated
    with pytest.raises(ValueError, match="g_idx"):
        launch.gptq_matmul(np.zeros((1, k), np.float16), qweight, qzeros, sc, g_idx + 1, 128)
    with pytest.raises(ValueError, match="g_idx"):
        launch.gptq_matmul(np.zeros((1, k), np.float16), qweight, qzeros, sc, g_idx[:-8], 128)
    with pytest.raises(ValueError, match="qzeros"):
        launch.awq_matmul(np.zeros((1, k), np.float16), words(r, k, 2), words(r, 1, 2), scales(r, 1, 16), 128)
    with pytest.raises(ValueError, match="absmax"):
        launch.bnb_matmul(np.zeros((1, 64), np.float16), np.zeros(8 * 32, np.uint8), NF4, np.ones(7, np.float32),
                          (8, 64))


def test_emulator_catches_a_wrong_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness has teeth: the AWQ kernel read with the identity nibble order must fail."""
    r = rng(3)
    k, n = 128, 32
    qweight, qzeros, sc = words(r, k, n // 8), words(r, 1, n // 8), scales(r, 1, n)
    w = ref.awq_dequantize(qweight, qzeros, sc, -1, order=tuple(range(8)))
    with pytest.raises(AssertionError, match="relative error"):
        check(lambda x, out: launch.awq_matmul(x, qweight, qzeros, sc, -1, None, out), r, 1, k, w, n)
