"""The torch references against independent numpy unpacking written here from the design facts.

Nothing below reuses library unpacking code: each layout is re-derived in numpy
with plain loops and explicit bit arithmetic, on random packed data.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mcard.smoke import reference as ref

RNG = np.random.default_rng(1234)
AWQ_ORDER_DESIGN = (0, 2, 4, 6, 1, 3, 5, 7)
NF4_BNB = np.array(
    [-1.0, -0.6961928009986877, -0.5250730514526489, -0.39491748809814453, -0.28444138169288635,
     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
     0.7229568362236023, 1.0], dtype=np.float32)


def rand_words(*shape: int) -> np.ndarray:
    return RNG.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32).view(np.int32)


def rand_scales(*shape: int) -> np.ndarray:
    return (RNG.random(shape) * 0.02 + 0.001).astype(np.float16)


# ---------------------------------------------------------------- GPTQ
def np_gptq_values(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Column-wise: concatenate each column's words into one integer, LSB first; value i at bit bits*i."""
    out = np.zeros((count, words.shape[1]), dtype=np.int64)
    for c in range(words.shape[1]):
        stream = 0
        for w in range(words.shape[0]):
            stream |= int(np.uint32(words[w, c].view(np.uint32))) << (32 * w)
        for i in range(count):
            out[i, c] = (stream >> (bits * i)) & ((1 << bits) - 1)
    return out


def np_gptq(qweight, qzeros, scales, g_idx, bits, fmt):
    k, n = g_idx.shape[0], qweight.shape[1]
    q = np_gptq_values(qweight, bits, k)
    z = np_gptq_values(np.ascontiguousarray(qzeros.T), bits, n).T
    if fmt == "gptq":
        z = (z + 1) % (1 << bits)
    w = np.empty((k, n), dtype=np.float64)
    for kk in range(k):
        g = g_idx[kk]
        w[kk] = scales[g].astype(np.float64) * (q[kk] - z[g])
    return w.T


def test_three_bit_stream_matches_design_split() -> None:
    # value 10 = 0b101: low 2 bits at 30-31 of word 0, high bit at bit 0 of word 1.
    words = np.zeros((3, 1), dtype=np.uint32)
    words[0, 0] = 0b01 << 30
    words[1, 0] = 0b1
    got = ref.unpack_bitstream(torch.from_numpy(words.view(np.int32)), 3, 32)
    assert got[10, 0] == 0b101 and int(got.sum()) == 5


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("group,act", [(32, False), (64, True), (-1, False), (128, True)])
def test_gptq_reference(bits: int, fmt: str, group: int, act: bool) -> None:
    k, n = 128, 32
    g = k if group == -1 else group
    ngroups = -(-k // g)
    qweight = rand_words(k * bits // 32, n)
    qzeros = rand_words(ngroups, n * bits // 32)
    scales = rand_scales(ngroups, n)
    perm = RNG.permutation(k) if act else np.arange(k)
    invperm = np.argsort(perm)
    g_idx = (invperm // g).astype(np.int32)
    want = np_gptq(qweight, qzeros, scales, g_idx, bits, fmt)
    got = ref.gptq_dequantize(qweight, qzeros, scales, g_idx, bits, fmt).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_gptq_symmetric_v1_zero_is_midpoint() -> None:
    k, n = 64, 8
    qweight = np.full((k // 8, n), 0x88888888 - 2**32, dtype=np.int64).astype(np.int32)  # q = 8 everywhere
    qzeros = np.full((1, n // 8), 0x77777777, dtype=np.int32)
    w = ref.gptq_dequantize(qweight, qzeros, np.ones((1, n), np.float16), np.zeros(k, np.int32), 4, "gptq")
    assert float(w.abs().max()) == 0.0


# ---------------------------------------------------------------- AWQ
def np_awq(qweight, qzeros, scales, group):
    k = qweight.shape[0]
    n = qweight.shape[1] * 8
    g = k if group == -1 else group

    def unpack(words):
        out = np.zeros((words.shape[0], n), dtype=np.int64)
        for r in range(words.shape[0]):
            for c in range(words.shape[1]):
                w = int(words[r, c].view(np.uint32))
                for nib in range(8):
                    out[r, 8 * c + AWQ_ORDER_DESIGN[nib]] = (w >> (4 * nib)) & 0xF
        return out

    q, z = unpack(qweight), unpack(qzeros)
    w = np.empty((k, n))
    for kk in range(k):
        w[kk] = (q[kk] - z[kk // g]) * scales[kk // g].astype(np.float64)
    return w.T


@pytest.mark.parametrize("group", [32, 64, 128, -1])
def test_awq_reference(group: int) -> None:
    k, n = 256, 64
    ng = 1 if group == -1 else k // group
    qweight, qzeros, scales = rand_words(k, n // 8), rand_words(ng, n // 8), rand_scales(ng, n)
    got = ref.awq_dequantize(qweight, qzeros, scales, group, order=AWQ_ORDER_DESIGN).numpy()
    np.testing.assert_allclose(got, np_awq(qweight, qzeros, scales, group), rtol=1e-6, atol=1e-7)


def test_awq_order_is_the_design_order() -> None:
    pytest.importorskip("mcard.formats.awq")
    assert ref.awq_order() == AWQ_ORDER_DESIGN


# ---------------------------------------------------------------- GGUF
def rand_blocks(rows: int, nblocks: int, nbytes: int, halves: int) -> np.ndarray:
    raw = RNG.integers(0, 256, size=(rows, nblocks, nbytes), dtype=np.uint8)
    hv = (RNG.standard_normal((rows, nblocks, halves)) * 0.05).astype("<f2")
    raw[..., : 2 * halves] = hv.view(np.uint8).reshape(rows, nblocks, 2 * halves)
    return raw.reshape(rows, nblocks * nbytes)


def np_q4_0(raw, rows, cols):
    out = np.zeros((rows, cols))
    b = raw.reshape(rows, cols // 32, 18)
    for r in range(rows):
        for i in range(cols // 32):
            d = float(b[r, i, 0:2].view("<f2")[0])
            for j in range(16):
                byte = int(b[r, i, 2 + j])
                out[r, 32 * i + j] = d * ((byte & 15) - 8)
                out[r, 32 * i + 16 + j] = d * ((byte >> 4) - 8)
    return out


def np_q4_1(raw, rows, cols):
    out = np.zeros((rows, cols))
    b = raw.reshape(rows, cols // 32, 20)
    for r in range(rows):
        for i in range(cols // 32):
            d, m = (float(v) for v in b[r, i, 0:4].view("<f2"))
            for j in range(16):
                byte = int(b[r, i, 4 + j])
                out[r, 32 * i + j] = d * (byte & 15) + m
                out[r, 32 * i + 16 + j] = d * (byte >> 4) + m
    return out


def np_q4_k(raw, rows, cols):
    out = np.zeros((rows, cols))
    b = raw.reshape(rows, cols // 256, 144)
    for r in range(rows):
        for i in range(cols // 256):
            d, dmin = (float(v) for v in b[r, i, 0:4].view("<f2"))
            s = [int(v) for v in b[r, i, 4:16]]
            qs = b[r, i, 16:]
            for j in range(8):  # get_scale_min_k4, written out
                if j < 4:
                    sc, m = s[j] & 63, s[j + 4] & 63
                else:
                    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4)
                    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4)
                for lane in range(32):
                    byte = int(qs[32 * (j // 2) + lane])
                    q = (byte >> 4) if j % 2 else (byte & 15)
                    out[r, 256 * i + 32 * j + lane] = d * sc * q - dmin * m
    return out


@pytest.mark.parametrize(
    "type_name,per,nbytes,halves,np_fn",
    [("Q4_0", 32, 18, 1, np_q4_0), ("Q4_1", 32, 20, 2, np_q4_1), ("Q4_K", 256, 144, 2, np_q4_k)]
)
def test_gguf_reference(type_name, per, nbytes, halves, np_fn) -> None:
    rows, cols = 6, 512
    raw = rand_blocks(rows, cols // per, nbytes, halves)
    got = ref.gguf_dequantize(raw, type_name, (rows, cols)).numpy()
    np.testing.assert_allclose(got, np_fn(raw, rows, cols), rtol=1e-5, atol=1e-6)
    gguf_quants = pytest.importorskip("gguf.quants")  # a third, upstream implementation
    from gguf import GGMLQuantizationType

    up = gguf_quants.dequantize(raw, GGMLQuantizationType[type_name])
    np.testing.assert_allclose(got, up.reshape(rows, cols), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bitsandbytes NF4
@pytest.mark.parametrize("nested", [False, True])
def test_nf4_reference(nested: bool) -> None:
    n, k, bs = 16, 128, 64
    nblocks = n * k // bs
    packed = RNG.integers(0, 256, size=(n * k // 2, 1), dtype=np.uint8)
    if nested:
        absmax_u8 = RNG.integers(0, 256, size=nblocks, dtype=np.uint8)
        nested_code = np.sort(RNG.standard_normal(256)).astype(np.float32)
        nested_absmax = (RNG.random(-(-nblocks // 256)) + 0.5).astype(np.float32)
        offset = 0.0123
        absmax = np.array([nested_code[a] * nested_absmax[i // 256] + offset for i, a in enumerate(absmax_u8)])
        am = ref.bnb_absmax(absmax_u8, nested_absmax, nested_code, offset)
    else:
        absmax = (RNG.random(nblocks) + 0.1).astype(np.float32)
        am = ref.bnb_absmax(absmax)
    flat = packed.reshape(-1)
    want = np.zeros(n * k)
    for i in range(n * k):
        byte = int(flat[i // 2])
        code = (byte >> 4) if i % 2 == 0 else (byte & 15)  # first element in the high nibble
        want[i] = NF4_BNB[code] * absmax[i // bs]
    got = ref.bnb_dequantize(packed, am, NF4_BNB, (n, k), bs).numpy()
    np.testing.assert_allclose(got, want.reshape(n, k), rtol=1e-5, atol=1e-6)


def test_nf4_code_book_is_bitsandbytes() -> None:
    bnb = pytest.importorskip("mcard.formats.bnb")
    np.testing.assert_allclose(np.asarray(bnb.NF4_CODE, dtype=np.float32), NF4_BNB, rtol=0, atol=1e-7)


def test_linear_adds_bias_in_float32() -> None:
    x = torch.randn(3, 8, dtype=torch.float16)
    w = torch.randn(5, 8)
    b = np.arange(5, dtype=np.float16)
    y = ref.linear(x, w, b)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, x.float() @ w.T + torch.arange(5.0))


def test_awq_gemv_reference() -> None:
    n, k, g = 16, 256, 64
    qweight, qzeros = rand_words(n, k // 8), rand_words(n, 1)  # Z = 1 word: 8 zero slots, 4 used
    scales = rand_scales(n, 8)
    want = np.zeros((n, k))
    for r in range(n):
        for kk in range(k):
            q = (int(qweight[r, kk // 8].view(np.uint32)) >> (4 * (kk % 8))) & 15
            z = (int(qzeros[r, 0].view(np.uint32)) >> (4 * (kk // g))) & 15
            want[r, kk] = (q - z) * float(scales[r, kk // g])
    np.testing.assert_allclose(ref.awq_gemv_dequantize(qweight, qzeros, scales, g).numpy(), want, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- GGUF types without a kernel (#10 item 6)
# type -> byte offsets of its fp16 fields (d, dmin, m): set to finite values, every other byte random
NO_KERNEL_TYPES = {"Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q2_K": (80, 82), "Q3_K": (108,), "Q5_K": (0, 2),
                   "Q6_K": (208,)}


@pytest.mark.parametrize("type_name", sorted(NO_KERNEL_TYPES))
def test_gguf_reference_for_types_without_kernel(type_name) -> None:
    """The torch reading of each ggml block struct equals gguf-py's on random blocks (every bit pattern)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants as gguf_quants

    from mcard.smoke import reference_gguf

    per, nbytes = reference_gguf.BLOCKS[type_name]
    assert GGML_QUANT_SIZES[GGMLQuantizationType[type_name]] == (per, nbytes)
    rows, cols = 6, 1024
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, (rows, cols // per, nbytes), dtype=np.uint8)
    for off in NO_KERNEL_TYPES[type_name]:
        halves = (rng.random((rows, cols // per)) * 0.1 - 0.05).astype("<f2")
        raw[..., off:off + 2] = np.ascontiguousarray(halves).view(np.uint8).reshape(rows, cols // per, 2)
    raw = raw.reshape(rows, -1)
    got = ref.gguf_dequantize(raw, type_name, (rows, cols)).numpy()
    up = gguf_quants.dequantize(raw, GGMLQuantizationType[type_name]).reshape(rows, cols)
    np.testing.assert_allclose(got, up, rtol=1e-6, atol=1e-7)
    assert type_name in ref.gguf_reference_types()
