// GGUF Q4_0, Q4_1 and Q4_K GEMV (batch 1) and small-batch GEMM: y[M,N] = x[M,K] @ W[N,K]^T.
//
// Layout (ggml-common.h): a tensor is `rows` = N rows of K elements (ne0 = K), each
// row a run of blocks:
//   block_q4_0 { half d; uint8 qs[16]; }           32 elements, 18 bytes: w = d * (q - 8)
//   block_q4_1 { half d, m; uint8 qs[16]; }        32 elements, 20 bytes: w = d * q + m
//   element j < 16 is the low nibble of qs[j], element j + 16 its high nibble.
//   block_q4_K { half d, dmin; uint8 scales[12]; uint8 qs[128]; }  256 elements, 144 bytes:
//   qs[32i + l] low nibble -> element 64i + l (sub-block 2i), high -> 64i + 32 + l (2i + 1);
//   w = d * sc[j] * q - dmin * m[j], (sc, m) from get_scale_min_k4(j, scales).
//
// Shape of the work, and why:
// * Weights are row-major along K (the opposite of GPTQ), so one output column is
//   one contiguous row: a warp owns a row and its 32 lanes walk K side by side, each
//   lane one 32-element slice per step (1024 k per warp-step). Consecutive lanes
//   read consecutive blocks, so a warp's loads are one contiguous run of the row.
// * Load widths follow each block's alignment: Q4_0 blocks are 18 bytes (2-byte
//   aligned) so qs is read as 8 x 16-bit; Q4_1 blocks are 20 bytes (4-byte aligned)
//   so 4 x 32-bit; Q4_K blocks are 144 = 9 x 16 bytes, so a lane reads its 16 bytes
//   of qs with one 128-bit load (8 lanes per super-block).
// * A block of 8 warps owns 8 rows and stages each step's activations once in
//   shared memory for all of them. The staged copy is padded by one float every
//   32 so that 32 lanes reading "element e of their slice" hit 32 different banks.
// * Sums: each lane multiplies its slice in fp32 (scale factored out of the inner
//   sum), then a warp-shuffle butterfly over the 32 K lanes; no shared reduction.
// * The GEMM variant keeps MT batch rows of accumulators per lane, so each
//   dequantized value feeds MT FMAs.
#include <cuda_fp16.h>

#define GG_THREADS 256
#define GG_WARPS 8                                   // rows per block
#define GG_KSTEP 1024                                // 32 lanes x 32 elements
#define GG_PADDED (GG_KSTEP + GG_KSTEP / 32)         // one pad float every 32

__device__ __forceinline__ int gg_pad(int p) { return p + (p >> 5); }

template <int MT>
__device__ __forceinline__ void gg_stage(float (*xs)[GG_PADDED], const half* __restrict__ x, int M, int K, int m0, int kbase)
{
    for (int i = threadIdx.x; i < MT * GG_KSTEP; i += GG_THREADS) {
        const int m = i / GG_KSTEP, kk = i % GG_KSTEP;
        const int gm = m0 + m, gk = kbase + kk;
        xs[m][gg_pad(kk)] = (gm < M && gk < K) ? __half2float(x[(size_t)gm * K + gk]) : 0.f;
    }
}

template <int MT>
__device__ __forceinline__ void gg_finish(float (&acc)[MT], const half* __restrict__ bias, half* __restrict__ y,
                                          int M, int N, int n, int m0, int has_bias)
{
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        float v = acc[m];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        acc[m] = v;
    }
    if ((threadIdx.x & 31) == 0 && n < N) {
        const float b = has_bias ? __half2float(bias[n]) : 0.f;
#pragma unroll
        for (int m = 0; m < MT; ++m)
            if (m0 + m < M) y[(size_t)(m0 + m) * N + n] = __float2half(acc[m] + b);
    }
}

// TYPE: 0 = Q4_0, 1 = Q4_1, 2 = Q4_K. row_bytes = bytes of one row of blocks.
template <int TYPE, int MT>
__device__ __forceinline__ void gg_body(
    const half* __restrict__ x, const unsigned char* __restrict__ wq, const half* __restrict__ bias,
    half* __restrict__ y, int M, int K, int N, long long row_bytes, int has_bias)
{
    __shared__ float xs[MT][GG_PADDED];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * GG_WARPS + warp;
    const int m0 = blockIdx.y * MT;
    const unsigned char* row = wq + (size_t)n * row_bytes;

    float acc[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m] = 0.f;

    for (int kbase = 0; kbase < K; kbase += GG_KSTEP) {
        // Phase 1: activations of the step, shared by the block's 8 rows.
        gg_stage<MT>(xs, x, M, K, m0, kbase);
        __syncthreads();

        // Phase 2: each lane dequantizes its 32 elements and dots them with x.
        if (n < N) {
            if (TYPE == 0 || TYPE == 1) {
                const int blk = kbase / 32 + lane;
                if (blk * 32 < K) {
                    const int base = lane * 32;  // slice position inside the step
                    float d, mn = 0.f;
                    unsigned int qw[4];
                    if (TYPE == 0) {
                        const unsigned char* b = row + (size_t)blk * 18;
                        d = __half2float(*reinterpret_cast<const half*>(b));
                        const unsigned short* q16 = reinterpret_cast<const unsigned short*>(b + 2);
#pragma unroll
                        for (int i = 0; i < 4; ++i) qw[i] = (unsigned)__ldg(q16 + 2 * i) | ((unsigned)__ldg(q16 + 2 * i + 1) << 16);
                    } else {
                        const unsigned char* b = row + (size_t)blk * 20;
                        const half2 dm = *reinterpret_cast<const half2*>(b);
                        d = __low2float(dm);
                        mn = __high2float(dm);
                        const unsigned int* q32 = reinterpret_cast<const unsigned int*>(b + 4);
#pragma unroll
                        for (int i = 0; i < 4; ++i) qw[i] = __ldg(q32 + i);
                    }
#pragma unroll
                    for (int m = 0; m < MT; ++m) {
                        float sq = 0.f, sx = 0.f;  // sum x*q and sum x: scale and offset factored out
#pragma unroll
                        for (int j = 0; j < 16; ++j) {
                            const unsigned int byte = (qw[j >> 2] >> (8 * (j & 3))) & 0xFFu;
                            const float xl = xs[m][gg_pad(base + j)];
                            const float xh = xs[m][gg_pad(base + 16 + j)];
                            sq = fmaf(xl, (float)(byte & 15u), sq);
                            sq = fmaf(xh, (float)(byte >> 4), sq);
                            sx += xl + xh;
                        }
                        acc[m] += (TYPE == 0) ? d * (sq - 8.f * sx) : fmaf(d, sq, mn * sx);
                    }
                }
            } else {  // Q4_K: 8 lanes per 256-element super-block, 16 bytes of qs each
                const int sb = kbase / 256 + lane / 8;
                if (sb * 256 < K) {
                    const int part = lane & 7, pair = part >> 1, h = part & 1;
                    const unsigned char* b = row + (size_t)sb * 144;
                    const half2 dd = *reinterpret_cast<const half2*>(b);
                    const float d = __low2float(dd), dmin = __high2float(dd);
                    const unsigned int* sc32 = reinterpret_cast<const unsigned int*>(b + 4);
                    const unsigned int s0 = __ldg(sc32), s1 = __ldg(sc32 + 1), s2 = __ldg(sc32 + 2);
                    const unsigned int sw[3] = {s0, s1, s2};
                    // get_scale_min_k4 for sub-blocks 2*pair (low nibbles) and 2*pair+1 (high nibbles)
                    int scv[2], mnv[2];
#pragma unroll
                    for (int t = 0; t < 2; ++t) {
                        const int j = 2 * pair + t;
#define SCB(i) ((int)((sw[(i) >> 2] >> (8 * ((i) & 3))) & 0xFFu))
                        if (j < 4) {
                            scv[t] = SCB(j) & 63;
                            mnv[t] = SCB(j + 4) & 63;
                        } else {
                            scv[t] = (SCB(j + 4) & 0xF) | ((SCB(j - 4) >> 6) << 4);
                            mnv[t] = (SCB(j + 4) >> 4) | ((SCB(j) >> 6) << 4);
                        }
#undef SCB
                    }
                    const uint4 q = __ldg(reinterpret_cast<const uint4*>(b + 16 + 32 * pair + 16 * h));
                    const unsigned int qw[4] = {q.x, q.y, q.z, q.w};
                    const int lo = (lane / 8) * 256 + 64 * pair + 16 * h;  // low nibbles' positions
                    const float d0 = d * (float)scv[0], d1 = d * (float)scv[1];
                    const float m0f = dmin * (float)mnv[0], m1f = dmin * (float)mnv[1];
#pragma unroll
                    for (int m = 0; m < MT; ++m) {
                        float sq0 = 0.f, sx0 = 0.f, sq1 = 0.f, sx1 = 0.f;
#pragma unroll
                        for (int l = 0; l < 16; ++l) {
                            const unsigned int byte = (qw[l >> 2] >> (8 * (l & 3))) & 0xFFu;
                            const float xl = xs[m][gg_pad(lo + l)];
                            const float xh = xs[m][gg_pad(lo + 32 + l)];
                            sq0 = fmaf(xl, (float)(byte & 15u), sq0);
                            sx0 += xl;
                            sq1 = fmaf(xh, (float)(byte >> 4), sq1);
                            sx1 += xh;
                        }
                        acc[m] += d0 * sq0 - m0f * sx0 + d1 * sq1 - m1f * sx1;
                    }
                }
            }
        }
        __syncthreads();
    }
    // Phase 3: butterfly over the 32 K lanes, lane 0 stores.
    gg_finish<MT>(acc, bias, y, M, N, n, m0, has_bias);
}

#define GG_KERNELS(NAME, TYPE)                                                                          \
    extern "C" __global__ void __launch_bounds__(GG_THREADS) NAME##_gemv(                               \
        const half* __restrict__ x, const unsigned char* __restrict__ wq, const half* __restrict__ bias, \
        half* __restrict__ y, int M, int K, int N, long long row_bytes, int has_bias)                    \
    {                                                                                                   \
        gg_body<TYPE, 1>(x, wq, bias, y, M, K, N, row_bytes, has_bias);                                 \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(GG_THREADS) NAME##_gemm(                               \
        const half* __restrict__ x, const unsigned char* __restrict__ wq, const half* __restrict__ bias, \
        half* __restrict__ y, int M, int K, int N, long long row_bytes, int has_bias)                    \
    {                                                                                                   \
        gg_body<TYPE, 8>(x, wq, bias, y, M, K, N, row_bytes, has_bias);                                 \
    }

// grid (ceil(N/8), ceil(M/MT)) with MT = 1 (gemv) or 8 (gemm), block 256.
GG_KERNELS(gguf_q4_0, 0)
GG_KERNELS(gguf_q4_1, 1)
GG_KERNELS(gguf_q4_k, 2)
