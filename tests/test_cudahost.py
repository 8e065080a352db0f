"""The host CUDA runtime (tests/cudahost) has teeth: each class of kernel bug it claims to catch is caught.

Every test compiles a few lines of CUDA C through ``cudahost.HostModule`` (the
same path the real kernels take in tests/test_kernels.py) and launches it.
"""

from __future__ import annotations

import numpy as np
import pytest

import cudahost
from cudahost import HostModule, KernelFault

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
