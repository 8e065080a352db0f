// GPTQ 4-bit GEMV (batch 1) and small-batch GEMM (batch <= 32): y[M,N] = x[M,K] @ W[K,N] (+ bias).
//
// Layout (AutoGPTQ): qweight int32 [K/8, N], packed along K: k = 8r + j lives in
// word (r, n) at bits 4j. qzeros int32 [G, N/8] packed along N the same way;
// scales fp16 [G, N]; g_idx int32 [K]. W[k,n] = scales[g,n] * (q[k,n] - z[g,n])
// with g = g_idx[k]. Format v1 stores z-1 (we add 1 back modulo 16), v2 the true z.
//
// Shape of the work, and why:
// * Batch 1 is memory bound: every packed byte must be read exactly once and the
//   reads must be wide and coalesced. qweight rows are N words long, so adjacent
//   columns are adjacent in memory: a thread loads one int4 (128 bits) = 4 columns
//   x 8 k, and LANES_N = 4 neighbouring lanes cover 64 contiguous bytes of a row
//   (two full 32-byte sectors; nothing fetched is wasted).
// * The other 8 lanes of the warp and the 8 warps of the block split K: each
//   of the 64 "K slices" owns one packed row per step, so a step consumes 512 k
//   and a block tile is 16 columns wide. Many narrow tiles (N/16 blocks) keep
//   enough loads in flight on every SM at batch 1.
// * Activations for the step are staged once in shared memory (float) and read
//   by all 16 columns' threads: x is re-used N times, weights never.
// * Each thread's weights for the NEXT step are loaded before the current step's
//   FMAs (a register double buffer), so every thread has two 128-bit loads in
//   flight across the barrier that separates steps instead of one.
// * Dequantization happens in registers, in fp32, right before the FMA. The
//   block's 16 columns of scales and zeros for all G groups (G <= 256: K = 32768
//   at group size 128, K = 8192 at 32) are staged once, at the start, in shared
//   memory as one word per (group, column): fp16 scale bits | zero << 16, with
//   v1's +1 already applied. Act-order changes the group at every k (g_idx is a
//   permutation), so without the staging each k would cost two dependent global
//   loads; with it, one 128-bit shared load gives a thread its 4 columns' pairs.
//   Larger G falls back to the same loads from global memory.
// * Partial sums over K slices: first a warp-shuffle butterfly across the 8
//   K-lanes of a warp (no shared memory), then one shared-memory pass across
//   the 8 warps. fp32 all the way; one fp16 rounding at the store.
// * The GEMM variant is the same loop with MT batch rows per block (grid.y
//   covers the batch): each dequantized weight feeds MT FMAs, so the dequant
//   cost is amortized while weights are still read once per M tile.
#include <cuda_fp16.h>

#define GPTQ_THREADS 256
#define GPTQ_WARPS 8
#define GPTQ_LANES_N 4                              // lanes along N per warp
#define GPTQ_LANES_K 8                              // lanes along K per warp
#define GPTQ_TILE_N (GPTQ_LANES_N * 4)              // 16 columns per block
#define GPTQ_KSLICES (GPTQ_LANES_K * GPTQ_WARPS)    // 64 packed rows per step
#define GPTQ_KSTEP (GPTQ_KSLICES * 8)               // 512 k per step
#define GPTQ_SMEM_GROUPS 256                        // groups staged in shared memory (16 KB)

template <int MT>
__device__ __forceinline__ void gptq4_body(
    const half* __restrict__ x, const int* __restrict__ qweight, const int* __restrict__ qzeros,
    const half* __restrict__ scales, const int* __restrict__ g_idx, const half* __restrict__ bias,
    half* __restrict__ y, int M, int K, int N, int groups, int group_size, int use_g_idx, int zeros_v1, int has_bias)
{
    __shared__ float xs[MT][GPTQ_KSTEP];
    __shared__ int gs[GPTQ_KSTEP];
    __shared__ float red[GPTQ_WARPS][MT][GPTQ_TILE_N];
    __shared__ unsigned int sz[GPTQ_SMEM_GROUPS][GPTQ_TILE_N];  // fp16 scale bits | zero << 16

    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31;
    const int nl = lane % GPTQ_LANES_N, kl = lane / GPTQ_LANES_N;
    const int kslice = warp * GPTQ_LANES_K + kl;
    const int n0 = blockIdx.x * GPTQ_TILE_N + nl * 4;
    const int m0 = blockIdx.y * MT;
    const bool col_ok = n0 < N;  // N % 8 == 0 (checked by the launcher) so n0..n0+3 are all valid
    const int KW = K / 8;
    const int zshift = (n0 & 7) * 4;  // our 4 columns' zero nibbles inside the qzeros word

    float acc[MT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[m][c] = 0.f;

    int cur_g = -1;
    float s[4] = {0.f, 0.f, 0.f, 0.f};
    int z[4] = {0, 0, 0, 0};

    // Phase 0: stage the block's scales and zeros (published by the first barrier below).
    const bool staged = groups <= GPTQ_SMEM_GROUPS;
    if (staged)
        for (int i = tid; i < groups * GPTQ_TILE_N; i += GPTQ_THREADS) {
            const int g = i / GPTQ_TILE_N, col = i % GPTQ_TILE_N, n = blockIdx.x * GPTQ_TILE_N + col;
            unsigned int v = 0;
            if (n < N) {
                const unsigned int sbits = __ldg(reinterpret_cast<const unsigned short*>(scales) + (size_t)g * N + n);
                const unsigned int zc = ((unsigned)__ldg(qzeros + (size_t)g * (N / 8) + n / 8) >> ((n & 7) * 4)) & 15u;
                v = sbits | ((zeros_v1 ? (zc + 1) & 15u : zc) << 16);
            }
            sz[g][col] = v;
        }

    // The first step's packed weights; each step then fetches the next step's before computing.
    int4 w_next = make_int4(0, 0, 0, 0);
    if (col_ok && kslice < KW) w_next = __ldg(reinterpret_cast<const int4*>(qweight + (size_t)kslice * N + n0));

    for (int kbase = 0; kbase < K; kbase += GPTQ_KSTEP) {
        // Phase 1: stage the step's activations (and g_idx) in shared memory. Every
        // thread of the block needs them; one coalesced global read serves 16 columns.
        for (int i = tid; i < MT * GPTQ_KSTEP; i += GPTQ_THREADS) {
            const int m = i / GPTQ_KSTEP, kk = i % GPTQ_KSTEP;
            const int gm = m0 + m, gk = kbase + kk;
            xs[m][kk] = (gm < M && gk < K) ? __half2float(x[(size_t)gm * K + gk]) : 0.f;
        }
        if (use_g_idx)
            for (int i = tid; i < GPTQ_KSTEP; i += GPTQ_THREADS)
                gs[i] = (kbase + i < K) ? g_idx[kbase + i] : 0;
        __syncthreads();

        // Phase 2: this step's 128-bit word of packed weights (loaded a step ago),
        // the next step's load issued, dequantization in registers, FMAs against
        // the staged activations.
        const int r = kbase / 8 + kslice;
        const int4 w = w_next;
        if (col_ok && r + GPTQ_KSLICES < KW)
            w_next = __ldg(reinterpret_cast<const int4*>(qweight + (size_t)(r + GPTQ_KSLICES) * N + n0));
        if (col_ok && r < KW) {
            const unsigned int wc[4] = {(unsigned)w.x, (unsigned)w.y, (unsigned)w.z, (unsigned)w.w};
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int kk = kslice * 8 + j;  // position inside the step
                const int k = kbase + kk;
                const int g = use_g_idx ? gs[kk] : k / group_size;
                if (g != cur_g && staged) {  // act-order: a new group at every k; else once per step
                    cur_g = g;
                    const uint4 e = *reinterpret_cast<const uint4*>(&sz[g][nl * 4]);
                    const unsigned int ev[4] = {e.x, e.y, e.z, e.w};
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        s[c] = __half2float(__ushort_as_half((unsigned short)(ev[c] & 0xFFFFu)));
                        z[c] = (int)(ev[c] >> 16);
                    }
                } else if (g != cur_g) {  // more groups than shared memory holds: global loads
                    cur_g = g;
                    const uint2 sv = __ldg(reinterpret_cast<const uint2*>(scales + (size_t)g * N + n0));
                    const half2 s01 = *reinterpret_cast<const half2*>(&sv.x);
                    const half2 s23 = *reinterpret_cast<const half2*>(&sv.y);
                    s[0] = __low2float(s01); s[1] = __high2float(s01);
                    s[2] = __low2float(s23); s[3] = __high2float(s23);
                    const unsigned int zw = (unsigned)__ldg(qzeros + (size_t)g * (N / 8) + n0 / 8);
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        const int zc = (zw >> (zshift + 4 * c)) & 15;
                        z[c] = zeros_v1 ? ((zc + 1) & 15) : zc;
                    }
                }
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    const float wv = s[c] * (float)((int)((wc[c] >> (4 * j)) & 15u) - z[c]);
#pragma unroll
                    for (int m = 0; m < MT; ++m) acc[m][c] = fmaf(xs[m][kk], wv, acc[m][c]);
                }
            }
        }
        __syncthreads();  // xs and gs are overwritten by the next step
    }

    // Phase 3: reduce the 64 K slices. Lanes with the same nl hold the same columns:
    // butterfly across lane bits 2..4 (the K lanes), then across warps in shared memory.
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            float v = acc[m][c];
#pragma unroll
            for (int off = GPTQ_LANES_N; off < 32; off <<= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
            acc[m][c] = v;
        }
    if (kl == 0) {
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int c = 0; c < 4; ++c) red[warp][m][nl * 4 + c] = acc[m][c];
    }
    __syncthreads();

    // Phase 4: one thread per (row, column) of the tile sums the warps and stores fp16.
    for (int i = tid; i < MT * GPTQ_TILE_N; i += GPTQ_THREADS) {
        const int m = i / GPTQ_TILE_N, col = i % GPTQ_TILE_N;
        const int gm = m0 + m, n = blockIdx.x * GPTQ_TILE_N + col;
        if (gm < M && n < N) {
            float v = 0.f;
#pragma unroll
            for (int wp = 0; wp < GPTQ_WARPS; ++wp) v += red[wp][m][col];
            if (has_bias) v += __half2float(bias[n]);
            y[(size_t)gm * N + n] = __float2half(v);
        }
    }
}

// grid (ceil(N/16), 1), block 256. M must be 1.
extern "C" __global__ void __launch_bounds__(GPTQ_THREADS) gptq4_gemv(
    const half* __restrict__ x, const int* __restrict__ qweight, const int* __restrict__ qzeros,
    const half* __restrict__ scales, const int* __restrict__ g_idx, const half* __restrict__ bias,
    half* __restrict__ y, int M, int K, int N, int groups, int group_size, int use_g_idx, int zeros_v1, int has_bias)
{
    gptq4_body<1>(x, qweight, qzeros, scales, g_idx, bias, y, M, K, N, groups, group_size, use_g_idx, zeros_v1, has_bias);
}

// grid (ceil(N/16), ceil(M/8)), block 256.
extern "C" __global__ void __launch_bounds__(GPTQ_THREADS) gptq4_gemm(
    const half* __restrict__ x, const int* __restrict__ qweight, const int* __restrict__ qzeros,
    const half* __restrict__ scales, const int* __restrict__ g_idx, const half* __restrict__ bias,
    half* __restrict__ y, int M, int K, int N, int groups, int group_size, int use_g_idx, int zeros_v1, int has_bias)
{
    gptq4_body<8>(x, qweight, qzeros, scales, g_idx, bias, y, M, K, N, groups, group_size, use_g_idx, zeros_v1, has_bias);
}
