"""The host CUDA runtime (tests/tools/cudahost) has teeth: each class of kernel bug it claims to catch is caught.

Every test compiles a few lines of CUDA C through ``cudahost.HostModule`` (the
same path the real kernels take in tests/smoke/test_kernels.py) and launches it.
"""

from __future__ import annotations

from fractions import Fraction

import cudahost
import numpy as np
import pytest
from cudahost import HostModule, KernelFault

from helpers import ROOT

pytestmark = pytest.mark.skipif(not cudahost.available()[0], reason=f"host CUDA runtime: {cudahost.available()[1]}")

i32 = np.int32


def kernel(body: str, name: str = "k"):
    return HostModule(code="#include <cuda_fp16.h>\n" + body).get_function(name)


# ---- half precision ---------------------------------------------------------------------
CONVERT = """
extern "C" __global__ void to_float(const half* h, float* f, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) f[i] = __half2float(h[i]); }
extern "C" __global__ void to_half(const float* f, half* h, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) h[i] = __float2half(f[i]); }
"""


def test_half_to_float_is_exact_for_every_half() -> None:
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    out = np.zeros(65536, np.float32)
    kernel(CONVERT, "to_float")((256,), (256,), (bits.view(np.float16), out, i32(65536)))
    want = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(out), nan)
    assert np.array_equal(out[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_float_to_half_rounds_to_nearest_even_like_numpy() -> None:
    r = np.random.default_rng(0)
    exps = r.uniform(-30, 17, 200_000)  # subnormal halves, normals, overflow to inf
    vals = (np.sign(r.standard_normal(exps.size)) * 2.0 ** exps).astype(np.float32)
    ties = (np.arange(1, 4096, dtype=np.float32) + 0.5) * np.float32(2.0 ** -24)  # exact ties, subnormal range
    halves = np.arange(1, 0x7BFF, dtype=np.uint16).view(np.float16)  # finite positive halves below the max
    mids = halves.astype(np.float32) + np.spacing(halves).astype(np.float32) / 2  # exact ties between neighbours
    edges = np.array([65504, 65519.99, 65520, 1e30, np.inf, -np.inf, 0.0, -0.0, 2.0 ** -25, 2.0 ** -26], np.float32)
    f = np.concatenate([vals, ties, mids, -mids, edges]).astype(np.float32)
    out = np.zeros(f.size, np.float16)
    kernel(CONVERT, "to_half")(((f.size + 255) // 256,), (256,), (f, out, i32(f.size)))
    with np.errstate(over="ignore"):
        want = f.astype(np.float16)
    assert np.array_equal(out.view(np.uint16), want.view(np.uint16))


# ---- warp shuffles ----------------------------------------------------------------------
SHUFFLES = """
extern "C" __global__ void k(float* out, int arg, int width) {
    const int t = threadIdx.x; const float v = (float)t;
    out[4 * t + 0] = __shfl_xor_sync(0xffffffffu, v, arg, width);
    out[4 * t + 1] = __shfl_down_sync(0xffffffffu, v, arg, width);
    out[4 * t + 2] = __shfl_up_sync(0xffffffffu, v, arg, width);
    out[4 * t + 3] = __shfl_sync(0xffffffffu, v, arg, width);
}
"""


@pytest.mark.parametrize("arg,width", [(1, 32), (5, 32), (16, 32), (3, 8), (6, 8), (9, 16)])
def test_shuffles_follow_the_cuda_rules(arg: int, width: int) -> None:
    out = np.zeros(64 * 4, np.float32)
    kernel(SHUFFLES)((1,), (64,), (out, i32(arg), i32(width)))
    got = out.reshape(64, 4)
    for t in range(64):
        lane, base, seg = t % 32, t - t % 32, (t % 32) // width * width
        xor = lane ^ arg
        want = [xor if xor // width <= lane // width else lane,
                lane + arg if lane - seg + arg < width else lane,
                lane - arg if lane - seg - arg >= 0 else lane,
                seg + arg % width]
        assert got[t].tolist() == [float(base + w) for w in want], t


# ---- the bugs it must catch ------------------------------------------------------------
RACE = """
extern "C" __global__ void k(float* out) {
    __shared__ float s[128];
    s[threadIdx.x] = (float)threadIdx.x;
    %s
    out[threadIdx.x] = s[(threadIdx.x + 1) %% 128];
}
"""


def test_a_missing_barrier_is_a_race() -> None:
    out = np.zeros(128, np.float32)
    kernel(RACE % "__syncthreads();")((1,), (128,), (out,))
    assert out.tolist() == [float((t + 1) % 128) for t in range(128)]
    with pytest.raises(KernelFault, match="differ between thread orders.*data race"):
        kernel(RACE % "")((1,), (128,), (out,))


def test_reads_past_the_end_fault_and_name_the_buffer() -> None:
    k = kernel('extern "C" __global__ void k(const float* a, float* out, int n) { out[0] = a[n + threadIdx.x]; }')
    a = np.ones(1024, np.float32)
    with pytest.raises(KernelFault, match=r"accessed byte 4096 of `a`, which has 4096 bytes"):
        k((1,), (1,), (a, np.zeros(1, np.float32), i32(1024)))
    k((1,), (1,), (a, np.zeros(1, np.float32), i32(1023)))  # the last element is fine


def test_stores_into_const_inputs_fault() -> None:
    k = kernel('extern "C" __global__ void k(const int* a) { if (threadIdx.x == 3) const_cast<int*>(a)[3] = 1; }')
    with pytest.raises(KernelFault, match=r"stored into the const input `a` at byte 12"):
        k((1,), (4,), (np.zeros(4, np.int32),))


def test_barrier_divergence_is_reported() -> None:
    k = kernel("""extern "C" __global__ void k(int* o) {
        if (threadIdx.x < 32) __syncthreads();
        else __syncthreads();
        o[threadIdx.x] = 1; }""")
    with pytest.raises(KernelFault, match="barrier divergence"):
        k((1,), (64,), (np.zeros(64, np.int32),))


def test_an_early_exit_before_a_barrier_is_reported() -> None:
    k = kernel("""extern "C" __global__ void k(int* o) {
        if (threadIdx.x == 5) return;
        __syncthreads(); o[threadIdx.x] = 1; }""")
    with pytest.raises(KernelFault, match="thread 5 exited while 63 threads wait at __syncthreads"):
        k((1,), (64,), (np.zeros(64, np.int32),))


def test_a_shuffle_with_exited_lanes_is_reported() -> None:
    k = kernel("""extern "C" __global__ void k(float* o) {
        if (threadIdx.x % 32 >= 16) return;
        o[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1); }""")
    with pytest.raises(KernelFault, match="has exited"):
        k((1,), (32,), (np.zeros(32, np.float32),))


def test_misaligned_vector_loads_are_reported() -> None:
    k = kernel("""extern "C" __global__ void k(const int* a, int* o, int off) {
        const int4 v = __ldg(reinterpret_cast<const int4*>(a + off)); o[0] = v.x + v.w; }""")
    a, o = np.arange(64, dtype=np.int32), np.zeros(1, np.int32)
    k((1,), (1,), (a, o, i32(4)))
    assert o[0] == 4 + 7
    with pytest.raises(KernelFault, match="UBSan.*misaligned"):
        k((1,), (1,), (a, o, i32(2)))


def test_shared_array_index_out_of_range_is_reported() -> None:
    k = kernel("""extern "C" __global__ void k(int* o, int i) {
        __shared__ int s[32]; s[threadIdx.x] = 1; __syncthreads(); o[0] = s[i]; }""")
    with pytest.raises(KernelFault, match="UBSan.*out of bounds"):
        k((1,), (32,), (np.zeros(1, np.int32), i32(40)))


def test_unwritten_shared_memory_reads_as_nan() -> None:
    k = kernel("""extern "C" __global__ void k(float* o) {
        __shared__ float s[64]; if (threadIdx.x < 32) s[threadIdx.x] = 2.f; __syncthreads();
        o[threadIdx.x] = s[threadIdx.x]; }""")
    o = np.zeros(64, np.float32)
    k((2,), (64,), (o,))
    assert (o[:32] == 2).all() and np.isnan(o[32:]).all()


def test_endless_loops_time_out(monkeypatch: pytest.MonkeyPatch) -> None:
    k = kernel('extern "C" __global__ void k(volatile int* o) { while (o[0] == 0) {} }')
    monkeypatch.setattr(k, "timeout_s", 1.0)
    with pytest.raises(KernelFault, match="hung: did not finish in 1 s"):
        k((1,), (1,), (np.zeros(1, np.int32),))


def test_argument_types_are_checked_like_the_c_signature() -> None:
    k = kernel('extern "C" __global__ void k(const half* x, float* y, long long n) { y[0] = (float)n; }')
    x, y = np.zeros(4, np.float16), np.zeros(1, np.float32)
    with pytest.raises(KernelFault, match="`n` is C long long but got int; .* int64"):
        k((1,), (1,), (x, y, 3))
    with pytest.raises(KernelFault, match="`x` is const half\\* but the array is float32"):
        k((1,), (1,), (x.astype(np.float32), y, np.int64(3)))
    with pytest.raises(KernelFault, match="2 arguments for 3 parameters"):
        k((1,), (1,), (x, y))
    k((1,), (1,), (x, y, np.int64(3)))
    assert y[0] == 3


def test_grid_and_block_coordinates() -> None:
    k = kernel("""extern "C" __global__ void k(int* o) {
        const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
        const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
        o[b * blockDim.x * blockDim.y * blockDim.z + t] = 1000 * b + t; }""")
    o = np.full(2 * 3 * 2 * 24, -1, np.int32)
    k((2, 3, 2), (4, 3, 2), (o,))
    assert o.tolist() == [1000 * b + t for b in range(12) for t in range(24)]


# ---- the PTX wrappers of cupy_kernels/ptx.cuh and the warp-level semantics behind them -----------
PTX = (ROOT / "cupy_kernels" / "ptx.cuh").read_text()


def ptx_kernel(body: str, name: str = "k"):
    return HostModule(code="#include <cuda_fp16.h>\n" + PTX + body).get_function(name)


def test_lop3_every_truth_table() -> None:
    """All 256 immediates against the PTX definition: bit i of the table is F at (a, b, c) = bits (2, 1, 0) of i."""
    lines = "\n".join(f"    o[{lut} * 64 + t] = lop3<{lut}>(a[t], b[t], c[t]);" for lut in range(256))
    k = ptx_kernel('extern "C" __global__ void k(const unsigned* a, const unsigned* b, const unsigned* c, unsigned* o) {\n'
                   "    const int t = threadIdx.x;\n" + lines + "\n}\n")
    r = np.random.default_rng(1)
    a, b, c = (r.integers(0, 2**32, 64, dtype=np.uint64).astype(np.uint32) for _ in range(3))
    out = np.zeros(256 * 64, np.uint32)
    k((1,), (64,), (a, b, c, out))
    got = out.reshape(256, 64)
    for lut in (0x00, 0xEA, 0x96, 0x80, 0xFE, 0x6A, 0xF8, 0x2C):
        want = np.zeros(64, np.uint32)
        for bit in range(32):
            idx = ((a >> bit) & 1) << 2 | ((b >> bit) & 1) << 1 | ((c >> bit) & 1)
            want |= ((np.uint32(lut) >> idx) & 1) << bit
        assert np.array_equal(got[lut], want), hex(lut)
    assert np.array_equal(got[0xEA], (a & b) | c)  # the dequantization's (a & b) | c
    assert np.array_equal(got[0x96], a ^ b ^ c)


def test_prmt_selects_bytes_and_replicates_signs() -> None:
    k = ptx_kernel('extern "C" __global__ void k(const unsigned* a, const unsigned* b, const unsigned* s, unsigned* o) {\n'
                   "    o[threadIdx.x] = prmt(a[threadIdx.x], b[threadIdx.x], s[threadIdx.x]); }\n")
    r = np.random.default_rng(2)
    a, b = (r.integers(0, 2**32, 256, dtype=np.uint64).astype(np.uint32) for _ in range(2))
    s = r.integers(0, 2**16, 256, dtype=np.uint64).astype(np.uint32)
    s[:3] = [0x3210, 0x7654, 0x4440]
    out = np.zeros(256, np.uint32)
    k((1,), (256,), (a, b, s, out))
    for i in range(256):
        src = int(a[i]).to_bytes(4, "little") + int(b[i]).to_bytes(4, "little")
        want = bytearray()
        for j in range(4):
            sel = (int(s[i]) >> (4 * j)) & 15
            byte = src[sel & 7]
            want.append((0xFF if byte & 0x80 else 0) if sel & 8 else byte)
        assert int(out[i]) == int.from_bytes(want, "little"), (hex(a[i]), hex(b[i]), hex(s[i]))
    a0, b0 = int(a[2]) & 0xFF, int(b[2]) & 0xFF
    assert out[0] == a[0] and out[1] == b[1] and int(out[2]) == a0 | b0 << 8 | b0 << 16 | b0 << 24


def _half_rn(v: Fraction, zero_sign: float = 0.0) -> int:
    """Exact value -> binary16 bits, round to nearest even (IEEE), overflow to infinity.

    An exact zero takes the sign IEEE gives it, passed as the same operation in float64.
    """
    sign = 0x8000 if v < 0 else 0
    v = abs(v)
    if v == 0:
        return 0x8000 if np.signbit(zero_sign) else 0
    e = v.numerator.bit_length() - v.denominator.bit_length()
    while Fraction(2) ** e > v:
        e -= 1
    while Fraction(2) ** (e + 1) <= v:
        e += 1
    e = max(e, -14)
    q = v / Fraction(2) ** (e - 10)
    n = q.numerator // q.denominator
    frac = q - n
    if frac > Fraction(1, 2) or (frac == Fraction(1, 2) and n % 2):
        n += 1
    r = n * Fraction(2) ** (e - 10)
    if r > 65504:
        return sign | 0x7C00
    return sign | int(np.array(float(r), np.float16).view(np.uint16))


HALF2_OPS = """
extern "C" __global__ void k(const unsigned* a, const unsigned* b, const unsigned* c, unsigned* o, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    half2 x, y, z;
    memcpy(&x, a + i, 4); memcpy(&y, b + i, 4); memcpy(&z, c + i, 4);
    const half2 r[4] = {__hadd2(x, y), __hsub2(x, y), __hmul2(x, y), __hfma2(x, y, z)};
    memcpy(o + 4 * i, r, 16);
}
"""


def test_half2_arithmetic_rounds_like_cuda() -> None:
    """add, sub, mul, fma on half2: the exact result rounded once to nearest even, subnormals kept (PTX .rn)."""
    r = np.random.default_rng(3)
    n = 3000
    bits = r.integers(0, 0x7C00, (3, n, 2), dtype=np.uint16) | (r.integers(0, 2, (3, n, 2), dtype=np.uint16) << 15)
    bits[:, :300] &= 0x83FF  # subnormals
    halves = bits.view(np.float16)
    # ties and near-ties of fma: products that land between two halves, plus exact cancellation
    halves[0, 300:600] = np.float16(1 + 2 ** -10)
    halves[1, 300:600] = np.float16(1 + 2 ** -10)
    halves[2, 300:600, 0] = (r.integers(-8, 8, 300) * np.float16(2 ** -20)).astype(np.float16)
    halves[2, 300:600, 1] = -np.float16(1 + 2 ** -9)
    halves[0, 600:700] = np.float16(60000)
    halves[1, 600:700] = np.float16(2)  # overflow to infinity
    a, b, c = (np.ascontiguousarray(halves[i]).view(np.uint32).reshape(-1) for i in range(3))
    out = np.zeros(4 * n, np.uint32)
    k = kernel(HALF2_OPS)
    k(((n + 255) // 256,), (256,), (a, b, c, out, i32(n)))
    got = out.view(np.uint16).reshape(n, 4, 2)
    for i in range(0, n, 3) if n > 1000 else range(n):
        for h in range(2):
            fx, fy, fz = (np.float64(halves[j, i, h]) for j in range(3))
            x, y, z = Fraction(float(fx)), Fraction(float(fy)), Fraction(float(fz))
            want = [_half_rn(x + y, fx + fy), _half_rn(x - y, fx - fy), _half_rn(x * y, fx * fy),
                    _half_rn(x * y + z, fx * fy + fz)]
            assert [int(v) for v in got[i, :, h]] == want, (i, h, float(x), float(y), float(z))


def _frag_regs(lanes: int = 32):
    """Per the PTX ISA (mma.m16n8k16, .f16): (row, col) of each element a0..a7, b0..b3, c0..c3 of each lane."""
    out = []
    for lane in range(lanes):
        g, t = lane >> 2, lane % 4
        a = [(g + 8 * ((i >> 1) & 1), 2 * t + (i & 1) + 8 * (i >= 4)) for i in range(8)]
        b = [(2 * t + (i & 1) + 8 * (i >= 2), g) for i in range(4)]
        c = [(g + 8 * (i >= 2), 2 * t + (i & 1)) for i in range(4)]
        out.append((a, b, c))
    return out


MMA = """
extern "C" __global__ void k(const unsigned* a, const unsigned* b, const float* c, float* d) {
    const int l = threadIdx.x;
    const unsigned fa[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
    const unsigned fb[2] = {b[2 * l], b[2 * l + 1]};
    const float fc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
    float fd[4];
    mma_m16n8k16(fd, fa, fb, fc);
    for (int i = 0; i < 4; ++i) d[4 * l + i] = fd[i];
}
"""


def test_mma_sync_follows_the_ptx_fragment_layout() -> None:
    r = np.random.default_rng(4)
    A = r.standard_normal((16, 16)).astype(np.float16)
    B = r.standard_normal((16, 8)).astype(np.float16)
    C = r.standard_normal((16, 8)).astype(np.float32)
    frags = _frag_regs()
    fa = np.array([[A[rc] for rc in f[0]] for f in frags], np.float16).view(np.uint32)  # [32, 4]: pairs a0a1, ...
    fb = np.array([[B[rc] for rc in f[1]] for f in frags], np.float16).view(np.uint32)
    fc = np.array([[C[rc] for rc in f[2]] for f in frags], np.float32)
    d = np.zeros((32, 4), np.float32)
    ptx_kernel(MMA)((1,), (32,), (fa.reshape(-1), fb.reshape(-1), fc.reshape(-1), d.reshape(-1)))
    D = np.zeros((16, 8))
    for lane, f in enumerate(frags):
        for i, rc in enumerate(f[2]):
            D[rc] = d[lane, i]
    want = A.astype(np.float64) @ B.astype(np.float64) + C
    assert np.allclose(D, want, rtol=1e-6, atol=1e-6)
    # a transposed B fragment (b0b1 taken along n instead of k) is a different product: the layout has teeth
    assert not np.allclose(A.astype(np.float64) @ B.astype(np.float64)[::-1] + C, want, atol=1e-3)


def test_mma_sync_needs_the_whole_warp() -> None:
    k = ptx_kernel('extern "C" __global__ void k(float* d) {\n'
                   "    if (threadIdx.x == 7) return;\n"
                   "    const unsigned a[4] = {0u, 0u, 0u, 0u}, b[2] = {0u, 0u}; const float c[4] = {0.f, 0.f, 0.f, 0.f};\n"
                   "    float o[4]; mma_m16n8k16(o, a, b, c); d[threadIdx.x] = o[0]; }\n")
    with pytest.raises(KernelFault, match="has exited"):
        k((1,), (32,), (np.zeros(32, np.float32),))


LDMATRIX = """
extern "C" __global__ void k(const unsigned short* m, const int* rows, unsigned* o) {
    __shared__ uint4 s[32];  // 32 rows of 8 halves
    const int l = threadIdx.x;
    s[l] = *reinterpret_cast<const uint4*>(m + 8 * l);
    __syncwarp();
    unsigned r4[4], r2[2];
    ldmatrix<4>(r4, &s[rows[l]]);
    ldmatrix<2>(r2, &s[rows[l]]);
    for (int i = 0; i < 4; ++i) o[6 * l + i] = r4[i];
    o[6 * l + 4] = r2[0]; o[6 * l + 5] = r2[1];
}
"""


def test_ldmatrix_gives_each_lane_its_row_pair() -> None:
    r = np.random.default_rng(5)
    m = r.integers(0, 2**16, (32, 8), dtype=np.uint64).astype(np.uint16)
    rows = r.permutation(32).astype(np.int32)
    out = np.zeros(32 * 6, np.uint32)
    ptx_kernel(LDMATRIX)((1,), (32,), (m.reshape(-1), rows, out))
    got = out.reshape(32, 6)
    for lane in range(32):
        for i in range(4):  # matrix i's row lane/4 comes from the address lane 8i + lane/4 gave
            row = rows[8 * i + lane // 4]
            want = int(m[row, 2 * (lane % 4)]) | int(m[row, 2 * (lane % 4) + 1]) << 16
            assert got[lane, i] == want and (i >= 2 or got[lane, 4 + i] == want), (lane, i)


def test_ldmatrix_rejects_addresses_outside_shared_memory() -> None:
    k = ptx_kernel('extern "C" __global__ void k(const unsigned* g, unsigned* o) {\n'
                   "    unsigned r[2]; ldmatrix<2>(r, g + 4 * threadIdx.x); o[threadIdx.x] = r[0]; }\n")
    with pytest.raises(KernelFault, match="ldmatrix row address is not a 16-byte aligned row of shared memory"):
        k((1,), (32,), (np.zeros(128, np.uint32), np.zeros(32, np.uint32)))


CP_ASYNC = """
extern "C" __global__ void k(const unsigned* src, unsigned* o, int mode) {
    __shared__ uint4 s[3][32];
    const int l = threadIdx.x;
    for (int g = 0; g < 3; ++g) {  // three groups, one 16-byte copy per lane each
        cp_async16(&s[g][l], src + 4 * (32 * g + l), mode == 3 && g == 2 ? 0 : 16);
        cp_async_commit();
    }
    if (mode == 0) { cp_async_wait<0>(); __syncwarp(); }
    if (mode == 1) { cp_async_wait<1>(); }                 // groups 0 and 1 have landed, 2 has not
    if (mode == 2) { cp_async_wait<0>(); }                 // own copies only: no barrier before reading a neighbour's
    if (mode == 3) { cp_async_wait<0>(); __syncwarp(); }   // group 2 copied 0 bytes: zero-filled
    for (int g = 0; g < 3; ++g) o[3 * l + g] = s[g][mode == 1 ? l : (l + 1) % 32].x;  // mode 1: its own copy
}
"""


def test_cp_async_lands_only_at_the_wait() -> None:
    src = np.arange(3 * 32 * 4, dtype=np.uint32) + 1000
    k = ptx_kernel(CP_ASYNC)

    def run(mode: int) -> np.ndarray:
        out = np.zeros(3 * 32, np.uint32)
        k((1,), (32,), (src, out, i32(mode)))
        return out.reshape(32, 3)

    want = np.array([[src[4 * (32 * g + (lane + 1) % 32)] for g in range(3)] for lane in range(32)])
    own = np.array([[src[4 * (32 * g + lane)] for g in range(3)] for lane in range(32)])
    assert np.array_equal(run(0), want)
    early = run(1)
    assert np.array_equal(early[:, :2], own[:, :2])
    assert (early[:, 2] == 0xFFFFFFFF).all()  # read before its wait_group: the poison, not the data
    zero = run(3)
    assert np.array_equal(zero[:, :2], want[:, :2]) and (zero[:, 2] == 0).all()
    with pytest.raises(KernelFault, match="differ between thread orders"):
        run(2)  # a lane reads a neighbour's copy without a barrier after the neighbour's wait


def test_cp_async_checks_alignment() -> None:
    k = ptx_kernel('extern "C" __global__ void k(const unsigned* src) {\n'
                   "    __shared__ uint4 s[4];\n"
                   "    cp_async16(reinterpret_cast<char*>(s) + 4, src, 16); cp_async_commit(); cp_async_wait<0>(); }\n")
    with pytest.raises(KernelFault, match="cp.async destination is not 16-byte aligned shared memory"):
        k((1,), (1,), (np.zeros(8, np.uint32),))


def test_syncwarp_with_an_exited_lane_is_reported() -> None:
    k = kernel("""extern "C" __global__ void k(int* o) {
        if (threadIdx.x == 3) return;
        __syncwarp(); o[threadIdx.x] = 1; }""")
    with pytest.raises(KernelFault, match="has exited"):
        k((1,), (32,), (np.zeros(32, np.int32),))


def test_each_library_keeps_its_own_shared_memory() -> None:
    """Two kernel libraries with the same template: each one's __shared__ copy is the one it poisons and checks."""
    body = """template <int N> __device__ void f(float* o) {
        __shared__ float s[N];
        if (threadIdx.x < N / 2) s[threadIdx.x] = 1.f;
        __syncthreads();
        o[threadIdx.x] = s[threadIdx.x]; }
    extern "C" __global__ void k(float* o) { f<32>(o); }
    """
    for tag in ("first", "second"):
        out = np.zeros(32, np.float32)
        kernel(body + f"// {tag} library\n")((1,), (32,), (out,))
        assert (out[:16] == 1).all() and np.isnan(out[16:]).all(), tag


LDMATRIX_AFTER_CP_ASYNC = """
extern "C" __global__ void k(const unsigned* src, unsigned* o, int sync) {
    __shared__ uint4 s[32];
    const int l = threadIdx.x;
    cp_async16(&s[l], src + 4 * l, 16);
    cp_async_commit();
    cp_async_wait<0>();
    if (sync) __syncwarp();  // publishes every lane's landed copy to the warp
    unsigned r[4];
    ldmatrix<4>(r, &s[l]);
    o[l] = r[0] ^ r[3];
}
"""


def test_ldmatrix_of_other_lanes_copies_needs_a_barrier_after_their_wait() -> None:
    """Warp-collective instructions are no memory barrier: rows landed by another lane's wait_group need __syncwarp."""
    k = ptx_kernel(LDMATRIX_AFTER_CP_ASYNC)
    src, out = np.arange(128, dtype=np.uint32), np.zeros(32, np.uint32)
    k((1,), (32,), (src, out, i32(1)))
    assert out[0] == src[0] ^ src[4 * 24]  # r[0] = row 0 of matrix 0, r[3] = row 0 of matrix 3 (lane 24's row)
    with pytest.raises(KernelFault, match="ldmatrix reads shared memory that thread .* cp.async wrote, with no barrier"):
        k((1,), (32,), (src, out, i32(0)))
