// AWQ 4-bit (GEMM layout) GEMV (batch 1) and small-batch GEMM: y[M,N] = x[M,K] @ W[K,N] (+ bias).
//
// Layout (AutoAWQ gemm.py / packing_utils.py): qweight int32 [K, N/8] packed along
// N; nibble i of word c holds column 8c + ORDER[i], ORDER = [0,2,4,6,1,3,5,7].
// qzeros int32 [K/g, N/8] in the same order, true zeros (no -1 offset);
// scales fp16 [K/g, N]; W[k,n] = (q[k,n] - z[k/g,n]) * scales[k/g,n].
//
// Shape of the work, and why:
// * AWQ packs along N, so one k row of a tile is contiguous. A thread loads 64 bits
//   (2 words = 16 columns at one k): 128-bit loads would mean 32 columns x MT
//   batch rows of fp32 accumulators per thread, which spills in the GEMM variant.
//   Two neighbouring lanes (AWQ_LANES_N) cover a full 32-byte sector of a row,
//   so every fetched sector is used.
// * The remaining 16 lanes of the warp and the 8 warps split K: 128 K slices, one
//   k row each per step. A block tile is 32 columns (N/32 blocks).
// * Activations of the step live in shared memory (float); each is read by all
//   the tile's columns. Dequant is in registers (fp32) before the FMA.
// * The nibble order is undone with a constant table: column j of a word is
//   nibble INV[j], INV = [0,4,1,5,2,6,3,7] (the inverse of ORDER).
// * Reduction over K slices: warp-shuffle butterfly across the 16 K lanes, then
//   shared memory across warps; one fp16 rounding at the store.
#include <cuda_fp16.h>

#define AWQ_THREADS 256
#define AWQ_WARPS 8
#define AWQ_WORDS 2                                   // words per thread load (64 bits)
#define AWQ_LANES_N 2                                 // lanes along N per warp
#define AWQ_LANES_K 16                                // lanes along K per warp
#define AWQ_TILE_N (AWQ_LANES_N * AWQ_WORDS * 8)      // 32 columns per block
#define AWQ_KSTEP (AWQ_LANES_K * AWQ_WARPS)           // 128 k per step

template <int MT>
__device__ __forceinline__ void awq4_body(
    const half* __restrict__ x, const int* __restrict__ qweight, const int* __restrict__ qzeros,
    const half* __restrict__ scales, const half* __restrict__ bias, half* __restrict__ y,
    int M, int K, int N, int group_size, int has_bias)
{
    __shared__ float xs[MT][AWQ_KSTEP];
    __shared__ float red[AWQ_WARPS][MT][AWQ_TILE_N];

    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31;
    const int nl = lane % AWQ_LANES_N, kl = lane / AWQ_LANES_N;
    const int kslice = warp * AWQ_LANES_K + kl;
    const int NW = N / 8;                                      // words per row
    const int w0 = blockIdx.x * (AWQ_TILE_N / 8) + nl * AWQ_WORDS;  // first word of this thread
    const int n0 = w0 * 8;
    const int m0 = blockIdx.y * MT;
    const bool col_ok = n0 < N;  // N % 16 == 0 (launcher) so all 16 columns are valid

    float acc[MT][16];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int c = 0; c < 16; ++c) acc[m][c] = 0.f;

    for (int kbase = 0; kbase < K; kbase += AWQ_KSTEP) {
        // Phase 1: stage activations for the step.
        for (int i = tid; i < MT * AWQ_KSTEP; i += AWQ_THREADS) {
            const int m = i / AWQ_KSTEP, kk = i % AWQ_KSTEP;
            const int gm = m0 + m, gk = kbase + kk;
            xs[m][kk] = (gm < M && gk < K) ? __half2float(x[(size_t)gm * K + gk]) : 0.f;
        }
        __syncthreads();

        // Phase 2: one 64-bit load of 16 packed columns, their group's zeros and
        // scales (32 bytes of fp16 = two 128-bit loads), dequant, FMA.
        const int k = kbase + kslice;
        if (col_ok && k < K) {
            const uint2 w = __ldg(reinterpret_cast<const uint2*>(qweight + (size_t)k * NW + w0));
            const int g = k / group_size;
            const uint2 zw = __ldg(reinterpret_cast<const uint2*>(qzeros + (size_t)g * NW + w0));
            const uint4 s0 = __ldg(reinterpret_cast<const uint4*>(scales + (size_t)g * N + n0));
            const uint4 s1 = __ldg(reinterpret_cast<const uint4*>(scales + (size_t)g * N + n0 + 8));
            const unsigned int sw[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
            const unsigned int ww[2] = {w.x, w.y};
            const unsigned int zz[2] = {zw.x, zw.y};
            const int INV[8] = {0, 4, 1, 5, 2, 6, 3, 7};
#pragma unroll
            for (int c = 0; c < 16; ++c) {
                const int word = c / 8, j = c % 8;
                const int q = (ww[word] >> (4 * INV[j])) & 15;
                const int zq = (zz[word] >> (4 * INV[j])) & 15;
                const half2 sp = *reinterpret_cast<const half2*>(&sw[c / 2]);
                const float sc = (c & 1) ? __high2float(sp) : __low2float(sp);
                const float wv = (float)(q - zq) * sc;
#pragma unroll
                for (int m = 0; m < MT; ++m) acc[m][c] = fmaf(xs[m][kslice], wv, acc[m][c]);
            }
        }
        __syncthreads();
    }

    // Phase 3: butterfly over the K lanes (lane bits 1..4), then across warps.
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int c = 0; c < 16; ++c) {
            float v = acc[m][c];
#pragma unroll
            for (int off = AWQ_LANES_N; off < 32; off <<= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
            acc[m][c] = v;
        }
    if (kl == 0) {
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int c = 0; c < 16; ++c) red[warp][m][nl * 16 + c] = acc[m][c];
    }
    __syncthreads();

    // Phase 4: sum warps, add bias, store fp16.
    for (int i = tid; i < MT * AWQ_TILE_N; i += AWQ_THREADS) {
        const int m = i / AWQ_TILE_N, col = i % AWQ_TILE_N;
        const int gm = m0 + m, n = blockIdx.x * AWQ_TILE_N + col;
        if (gm < M && n < N) {
            float v = 0.f;
#pragma unroll
            for (int wp = 0; wp < AWQ_WARPS; ++wp) v += red[wp][m][col];
            if (has_bias) v += __half2float(bias[n]);
            y[(size_t)gm * N + n] = __float2half(v);
        }
    }
}

// grid (ceil(N/32), 1), block 256. M must be 1.
extern "C" __global__ void __launch_bounds__(AWQ_THREADS) awq4_gemv(
    const half* __restrict__ x, const int* __restrict__ qweight, const int* __restrict__ qzeros,
    const half* __restrict__ scales, const half* __restrict__ bias, half* __restrict__ y,
    int M, int K, int N, int group_size, int has_bias)
{
    awq4_body<1>(x, qweight, qzeros, scales, bias, y, M, K, N, group_size, has_bias);
}

// grid (ceil(N/32), ceil(M/4)), block 256.
extern "C" __global__ void __launch_bounds__(AWQ_THREADS) awq4_gemm(
    const half* __restrict__ x, const int* __restrict__ qweight, const int* __restrict__ qzeros,
    const half* __restrict__ scales, const half* __restrict__ bias, half* __restrict__ y,
    int M, int K, int N, int group_size, int has_bias)
{
    awq4_body<4>(x, qweight, qzeros, scales, bias, y, M, K, N, group_size, has_bias);
}
