// bitsandbytes 4-bit (NF4 or FP4: the code book is an input) GEMV and small-batch GEMM:
// y[M,N] = x[M,K] @ W[N,K]^T (+ bias).
//
// Layout (bitsandbytes functional.py): the [N, K] weight is flattened row-major and
// packed two codes a byte, the FIRST element in the HIGH nibble. Element i belongs
// to absmax block i / blocksize (64): w = code[q] * absmax[i / blocksize]. With
// double quantization absmax is uint8 and
//   absmax[b] = nested_code[u8[b]] * nested_absmax[b / nested_blocksize] + offset.
//
// Shape of the work, and why:
// * Like GGUF, a weight row is contiguous along K: a warp owns a row, each lane a
//   32-element slice per step = 16 packed bytes = one 128-bit load (K % 32 == 0,
//   checked by the launcher, keeps every slice 16-byte aligned). A warp-step reads
//   512 contiguous bytes of the row.
// * The 16-entry code book is copied to shared memory once per block: code[q] is a
//   data-dependent lookup, and shared memory serves it without divergence in the
//   memory system (registers cannot be indexed dynamically).
// * A 32-element slice never straddles an absmax block (blocksize 64, slice
//   aligned to 32): one absmax per lane per step, factored out of the inner sum.
//   The nested dequant of that absmax is two scalar loads that hit L1/L2.
// * Activations staged in shared memory (padded against bank conflicts, see
//   gguf.cu); warp-shuffle butterfly over the 32 K lanes; fp16 store.
#include <cuda_fp16.h>

#define NF4_THREADS 256
#define NF4_WARPS 8
#define NF4_KSTEP 1024
#define NF4_PADDED (NF4_KSTEP + NF4_KSTEP / 32)

__device__ __forceinline__ int nf4_pad(int p) { return p + (p >> 5); }

template <int MT>
__device__ __forceinline__ void nf4_body(
    const half* __restrict__ x, const unsigned char* __restrict__ wq, const float* __restrict__ code,
    const float* __restrict__ absmax_f32, const unsigned char* __restrict__ absmax_u8,
    const float* __restrict__ nested_code, const float* __restrict__ nested_absmax, float nested_offset,
    int nested_blocksize, int nested, const half* __restrict__ bias, half* __restrict__ y,
    int M, int K, int N, int blocksize, int has_bias)
{
    __shared__ float xs[MT][NF4_PADDED];
    __shared__ float cb[16];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * NF4_WARPS + warp;
    const int m0 = blockIdx.y * MT;
    if (threadIdx.x < 16) cb[threadIdx.x] = code[threadIdx.x];

    float acc[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m] = 0.f;

    for (int kbase = 0; kbase < K; kbase += NF4_KSTEP) {
        // Phase 1: stage activations (the first barrier also publishes cb).
        for (int i = threadIdx.x; i < MT * NF4_KSTEP; i += NF4_THREADS) {
            const int m = i / NF4_KSTEP, kk = i % NF4_KSTEP;
            const int gm = m0 + m, gk = kbase + kk;
            xs[m][nf4_pad(kk)] = (gm < M && gk < K) ? __half2float(x[(size_t)gm * K + gk]) : 0.f;
        }
        __syncthreads();

        // Phase 2: 128-bit load of 32 codes, one absmax, code-book lookups, FMA.
        const int k0 = kbase + lane * 32;
        if (n < N && k0 < K) {
            const size_t flat = (size_t)n * K + k0;  // flattened element index
            const uint4 q = __ldg(reinterpret_cast<const uint4*>(wq + flat / 2));
            const size_t blk = flat / blocksize;
            float am;
            if (nested)
                am = nested_code[absmax_u8[blk]] * nested_absmax[blk / nested_blocksize] + nested_offset;
            else
                am = absmax_f32[blk];
            const unsigned int qw[4] = {q.x, q.y, q.z, q.w};
            const int base = lane * 32;
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                float s = 0.f;
#pragma unroll
                for (int j = 0; j < 16; ++j) {
                    const unsigned int byte = (qw[j >> 2] >> (8 * (j & 3))) & 0xFFu;
                    s = fmaf(xs[m][nf4_pad(base + 2 * j)], cb[byte >> 4], s);      // even element: high nibble
                    s = fmaf(xs[m][nf4_pad(base + 2 * j + 1)], cb[byte & 15u], s);  // odd element: low nibble
                }
                acc[m] = fmaf(am, s, acc[m]);
            }
        }
        __syncthreads();
    }

    // Phase 3: butterfly over the 32 lanes, lane 0 stores.
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        float v = acc[m];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        acc[m] = v;
    }
    if (lane == 0 && n < N) {
        const float b = has_bias ? __half2float(bias[n]) : 0.f;
#pragma unroll
        for (int m = 0; m < MT; ++m)
            if (m0 + m < M) y[(size_t)(m0 + m) * N + n] = __float2half(acc[m] + b);
    }
}

#define NF4_ARGS                                                                                          \
    const half *__restrict__ x, const unsigned char *__restrict__ wq, const float *__restrict__ code,      \
        const float *__restrict__ absmax_f32, const unsigned char *__restrict__ absmax_u8,                \
        const float *__restrict__ nested_code, const float *__restrict__ nested_absmax, float nested_offset, \
        int nested_blocksize, int nested, const half *__restrict__ bias, half *__restrict__ y, int M, int K, \
        int N, int blocksize, int has_bias
#define NF4_PASS \
    x, wq, code, absmax_f32, absmax_u8, nested_code, nested_absmax, nested_offset, nested_blocksize, nested, bias, y, M, K, N, blocksize, has_bias

// grid (ceil(N/8), 1), block 256.
extern "C" __global__ void __launch_bounds__(NF4_THREADS) bnb4_gemv(NF4_ARGS) { nf4_body<1>(NF4_PASS); }
// grid (ceil(N/8), ceil(M/8)), block 256.
extern "C" __global__ void __launch_bounds__(NF4_THREADS) bnb4_gemm(NF4_ARGS) { nf4_body<8>(NF4_PASS); }
