// 4-bit weight x fp16 activation matrix multiply on tensor cores, for every format mcard
// smoke-tests: y[M, N] = x[M, K] @ W[N, K]^T (+ bias), fp32 accumulation, one fp16
// rounding at the store. One kernel per (dequantization kind, batch-row tile):
//   int4_affine_*: W[k, n] = a * q + b    (GPTQ, AWQ, GGUF Q4_0 / Q4_1 / Q4_K), (a, b) fp16
//   int4_lut_*:    W[k, n] = s * code[q]  (bitsandbytes NF4 / FP4), s fp32
// with q the 4-bit code and one (a, b) or s per (param group of 32..128 k, column).
// The *_m8 kernel serves batch 1..8 (the GEMV), *_m16 batch 9..16, *_m32 batch 17..32
// (and larger batches on more grid rows).
//
// Weights arrive in the kernel's own tile layout, written once per layer at load time
// by cupy_kernels/pack.py from the published layout (which stays as it is on disk), as
// Marlin and ExLlamaV2 do: act-order permutes K there (the launcher gathers x's columns
// to match), every group size and zero format becomes (a, b) pairs, and every nibble
// sits where the dequantization below puts it into an mma fragment.
//
// Shape of the work, and why:
// * A block is 2 or 4 warps (I4Shape) on one 32-column tile of W; the warps split K
//   (warp w of W takes k-steps w, w+W, ...), so every weight byte is read once and the
//   grid has N/32 blocks. Each warp runs its own cp.async pipeline in its own slice of shared memory:
//   nothing is shared between warps until the final reduction, so the hot loop has no
//   block barrier, only __syncwarp.
// * Batch 1 is bound by memory bandwidth only if the SMs can issue the dequantization
//   as fast as HBM delivers weights: about 3.5 SASS instructions per weight on an H200
//   (benchmarks/kernel_sass.py counts them). So each pair of weights costs three
//   instructions: one lop3 ORs two nibbles into the mantissas of 1024.0 (half2 {1024+q,
//   1024+q'}, or 1024+16q for the upper nibble of a byte), one hsub2 / hfma2 removes
//   the 1024 exactly (q exact in fp16), one hfma2 applies the pair's scale and offset
//   (a * q + b, one rounding). The products and their sums run in the tensor core:
//   one mma.sync m16n8k16 takes 4 weights per thread.
// * The code-book kernel has no arithmetic form for code[q]: a byte of the word (two
//   codes) indexes a 256-entry shared table of half2 code pairs, two instructions for the
//   index and one load per pair. The mma sums x * code over 64 k (32 in the m32 kernel)
//   and each column's fp32 scale multiplies that sum: one FFMA per accumulator per 64 k
//   instead of one hfma2 per pair of weights, and the scale never rounds to fp16.
// * A lane's 16-byte load is one 32-bit word for each of the 4 n8 tiles of the warp:
//   the 8 nibbles of a word are exactly the lane's B-fragment elements of two k16 mmas
//   (pack.py puts them there), so no shuffles or shared-memory transposes are needed.
// * Activations go through shared memory because ldmatrix turns 16-byte rows into the
//   A fragment in one instruction. The 16-byte chunks of a row are XOR-swizzled by the
//   row so that the 8 row addresses of one ldmatrix phase hit 8 different bank groups.
// * The pipeline is STAGES deep (k-steps in flight per warp): each step issues the
//   cp.async copies for STAGES-1 steps ahead, then waits for the current one. Tails
//   (k >= K, rows >= M, steps past the warp's last) are zero-size copies, so the loop
//   has no branch but its back edge.
// * After the loop the warps' fp32 partial sums meet in shared memory; one thread per
//   output element adds the warps and the bias and rounds once to fp16.
#include <cuda_fp16.h>
#include "ptx.cuh"

#define I4_TILE_N 32  // columns per block = 4 n8 mma tiles

enum { I4_AFFINE = 0, I4_LUT = 1 };

// Per kernel: k per warp-step (KW), pipeline depth and warps per block. Shared memory
// (WARPS x STAGES x (activations + weights + params of a step)) stays under the 48 KB a
// kernel may declare statically. The m8 kernels (batch 1..8) take long steps so that the
// fixed cost of a step (waits, copies, addresses) is spread over 128 weights a thread;
// the lut one keeps only 2 stages because its table lookups need the registers that a
// deeper unrolled pipeline would take (it spills otherwise). The GEMMs take shorter
// steps (their activation tiles are larger). MIN_BLOCKS (blocks per SM for
// __launch_bounds__) caps the registers so that the unrolled loop does not spill.
template <int KIND, int ROWS> struct I4Shape;
template <> struct I4Shape<I4_AFFINE, 8> { enum { KW = 128, STAGES = 4, WARPS = 2, MIN_BLOCKS = 5 }; };
template <> struct I4Shape<I4_LUT, 8> { enum { KW = 128, STAGES = 2, WARPS = 2, MIN_BLOCKS = 5 }; };
template <int KIND> struct I4Shape<KIND, 16> { enum { KW = 64, STAGES = 3, WARPS = 4, MIN_BLOCKS = 3 }; };
template <int KIND> struct I4Shape<KIND, 32> { enum { KW = 32, STAGES = 3, WARPS = 4, MIN_BLOCKS = 3 }; };

__device__ __forceinline__ half2 i4_h2(unsigned u) { return *reinterpret_cast<half2*>(&u); }
__device__ __forceinline__ unsigned i4_u(half2 h) { return *reinterpret_cast<unsigned*>(&h); }

// Byte offset of 16-byte chunk `ch` of activation row `row` in a stage (rows of KW halves).
template <int KW>
__device__ __forceinline__ int i4_xoff(int row, int ch)
{
    if constexpr (KW >= 64) return row * KW * 2 + ((ch ^ (row & 7)) << 4);  // >= 8 chunks a row
    else return row * 64 + ((ch ^ ((row >> 1) & 3)) << 4);                // 4 chunks a row, 2 rows a bank line
}

// The four B registers (two k16 mmas) of one word: nibble order is pack.py's.
// Affine: q exact in fp16, then one hfma2 a * q + b (one rounding) per pair.
// LUT: a byte indexes the 256-entry table of code pairs; the scale comes after the mma.
template <int KIND>
__device__ __forceinline__ void i4_dequant(unsigned (&b)[4], unsigned w, unsigned param, const unsigned* lut)
{
    if constexpr (KIND == I4_AFFINE) {
        const half2 p = i4_h2(param);  // {a, b}
        const half2 k1024 = i4_h2(0x64006400u), k16th = i4_h2(0x2C002C00u), km64 = i4_h2(0xD400D400u);
        const unsigned hi = w >> 8;
        half2 q[4];
        q[0] = __hsub2(i4_h2(lop3<0xEA>(w, 0x000F000Fu, 0x64006400u)), k1024);          // nibbles 0, 4
        q[1] = __hfma2(i4_h2(lop3<0xEA>(w, 0x00F000F0u, 0x64006400u)), k16th, km64);    // nibbles 1, 5
        q[2] = __hsub2(i4_h2(lop3<0xEA>(hi, 0x000F000Fu, 0x64006400u)), k1024);         // nibbles 2, 6
        q[3] = __hfma2(i4_h2(lop3<0xEA>(hi, 0x00F000F0u, 0x64006400u)), k16th, km64);   // nibbles 3, 7
#pragma unroll
        for (int i = 0; i < 4; ++i) b[i] = i4_u(__hfma2(q[i], __low2half2(p), __high2half2(p)));
    } else {
        b[0] = lut[w & 0xFFu];
        b[1] = lut[(w >> 8) & 0xFFu];
        b[2] = lut[(w >> 16) & 0xFFu];
        b[3] = lut[w >> 24];
    }
}

template <int KIND, int ROWS>
__device__ __forceinline__ void i4_body(
    const half* __restrict__ x, const unsigned* __restrict__ w, const unsigned* __restrict__ params,
    const half* __restrict__ code, const half* __restrict__ bias, half* __restrict__ y,
    int M, int K, int N, int Kp, int pshift, int has_bias)
{
    using Shape = I4Shape<KIND, ROWS>;
    constexpr int KW = Shape::KW, STAGES = Shape::STAGES, I4_WARPS = Shape::WARPS;
    constexpr int I4_THREADS = I4_WARPS * 32;
    constexpr int CH = KW / 32;                   // k32 chunks per warp-step
    constexpr int MT = (ROWS + 15) / 16;          // m16 mma tiles
    // a warp-stage: activations | weights | params | a spare 16 bytes (zero-size copies) | 16 zero bytes (ldmatrix)
    constexpr int XB = ROWS * KW * 2, WB = CH * 512, PB = CH * 128, ZERO = XB + WB + PB + 16, SB = ZERO + 16;
    constexpr int PIPE = I4_WARPS * STAGES * SB, RED = I4_WARPS * ROWS * I4_TILE_N * 4;
    __shared__ uint4 smem[(PIPE > RED ? PIPE : RED) / 16];
    __shared__ unsigned lut[KIND == I4_LUT ? 256 : 1];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int unit = blockIdx.x, m0 = blockIdx.y * ROWS;
    const int nsteps = Kp / KW, my_steps = (nsteps + I4_WARPS - 1 - warp) / I4_WARPS;
    const int stages = warp * STAGES * SB;  // this warp's slice of smem, in bytes
    unsigned char* const sm = reinterpret_cast<unsigned char*>(smem);

    if constexpr (KIND == I4_LUT) {  // pair table: entry e = {code[e & 15], code[e >> 4]}
        for (int e = threadIdx.x; e < 256; e += I4_THREADS) lut[e] = i4_u(__halves2half2(code[e & 15], code[e >> 4]));
    }
    if (lane < STAGES) *reinterpret_cast<uint4*>(sm + stages + lane * SB + ZERO) = make_uint4(0u, 0u, 0u, 0u);
    __syncthreads();  // publishes the table and the zero rows

    // Phase 1's copy plan, fixed per lane: only the k offset of the step changes. Out-of-range
    // copies (k >= K, rows >= M, steps past the last) read 0 bytes and zero-fill.
    constexpr int XR = XB / 512;  // 16-byte activation copies per lane per step
    int x_dst[XR], x_k[XR];
    bool x_row[XR];
    const half* x_src[XR];
#pragma unroll
    for (int r = 0; r < XR; ++r) {
        const int idx = r * 32 + lane, row = idx / (KW / 8), ch = idx % (KW / 8);
        x_dst[r] = i4_xoff<KW>(row, ch);
        x_row[r] = m0 + row < M;
        x_k[r] = warp * KW + ch * 8;
        x_src[r] = x + (size_t)(x_row[r] ? m0 + row : 0) * K + x_k[r];
    }
    const unsigned* const w_src = w + ((size_t)unit * (Kp >> 5) + warp * CH) * 128 + lane * 4;
    const bool p_mine = lane < 8 * CH;  // lanes past 8 * CH copy 0 bytes into a spare slot
    const int p_dst = XB + WB + (p_mine ? lane * 16 : PB), p_k = warp * KW + 32 * ((lane >> 3) & (CH - 1));
    const unsigned* const p_src = params + (size_t)unit * (Kp >> pshift) * 32 + (lane & 7) * 4;

    auto issue = [&](int i, int st) {  // copies of this warp's i-th k-step into stage offset st
        const int koff = i * I4_WARPS * KW;
        const bool live = i < my_steps;
#pragma unroll
        for (int r = 0; r < XR; ++r)
            cp_async16(sm + st + x_dst[r], x_src[r] + koff, x_row[r] && x_k[r] + koff < K ? 16 : 0);
#pragma unroll
        for (int c = 0; c < CH; ++c)
            cp_async16(sm + st + XB + c * 512 + lane * 16, w_src + (koff >> 5) * 128 + c * 128, live ? 16 : 0);
        cp_async16(sm + st + p_dst, p_src + ((p_k + koff) >> pshift) * 32, live && p_mine ? 16 : 0);
    };

    float acc[MT][4][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][j][e] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        issue(s, stages + s * SB);
        cp_async_commit();
    }

    // ldmatrix row addresses per lane (m8: lanes 8..15 and 24..31 point at a zero row, so the
    // A registers of rows 8..15 come out zero in place) and the lane's B / param words.
    int a_off[CH][MT][2];
#pragma unroll
    for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int ch = c * 4 + h * 2 + (lane >> 4);  // 16-byte chunk: k = 32c + 16h + 8 (lane >= 16)
                if constexpr (ROWS == 8) a_off[c][mt][h] = (lane & 8) ? ZERO : i4_xoff<KW>(lane & 7, ch);
                else a_off[c][mt][h] = i4_xoff<KW>(mt * 16 + (lane & 15), ch);
            }

    // lut: sums of x * code over SK k, then scaled once (the launcher picks a kernel whose
    // SK lies inside one scale group: 2**pshift >= SK)
    constexpr int SK = KW < 64 ? KW : 64, SC = SK / 32;  // SC chunks per scale
    auto compute = [&](int st) {  // the mmas of the k-step in stage offset st
        float part[MT][4][4];
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            const uint4 wv = *reinterpret_cast<const uint4*>(sm + st + XB + c * 512 + lane * 16);
            unsigned a[MT][2][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h) ldmatrix<4>(a[mt][h], sm + st + a_off[c][mt][h]);
            const unsigned wj[4] = {wv.x, wv.y, wv.z, wv.w};
            unsigned pj[4] = {0u, 0u, 0u, 0u};
            if constexpr (KIND == I4_AFFINE) {  // params: (a, b) half2 of column 8j + g at [g][j]
                const uint4 pv = *reinterpret_cast<const uint4*>(sm + st + XB + WB + c * 128 + g * 16);
                pj[0] = pv.x, pj[1] = pv.y, pj[2] = pv.z, pj[3] = pv.w;
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                unsigned b[4];
                i4_dequant<KIND>(b, wj[j], pj[j], lut);
                const unsigned b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    if constexpr (KIND == I4_AFFINE) {
                        mma_m16n8k16(acc[mt][j], a[mt][0], b0, acc[mt][j]);
                    } else if (c % SC == 0) {
                        const float zero[4] = {0.f, 0.f, 0.f, 0.f};
                        mma_m16n8k16(part[mt][j], a[mt][0], b0, zero);
                    } else {
                        mma_m16n8k16(part[mt][j], a[mt][0], b0, part[mt][j]);
                    }
                    float (&d)[4] = KIND == I4_AFFINE ? acc[mt][j] : part[mt][j];
                    mma_m16n8k16(d, a[mt][1], b1, d);
                }
            }
            if constexpr (KIND == I4_LUT) {
                if (c % SC == SC - 1) {  // fp32 scales of columns 8j + 2t, 8j + 2t + 1 at [t][j][2]
                    const float4 s01 = *reinterpret_cast<const float4*>(sm + st + XB + WB + c * 128 + t * 32);
                    const float4 s23 = *reinterpret_cast<const float4*>(sm + st + XB + WB + c * 128 + t * 32 + 16);
                    const float sc[4][2] = {{s01.x, s01.y}, {s01.z, s01.w}, {s23.x, s23.y}, {s23.z, s23.w}};
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                        for (int j = 0; j < 4; ++j)
#pragma unroll
                            for (int e = 0; e < (ROWS == 8 ? 2 : 4); ++e)  // m8: rows 8..15 are zero
                                acc[mt][j][e] = fmaf(sc[j][e & 1], part[mt][j][e], acc[mt][j][e]);
                }
            }
        }
    };

    // Phase 2, the hot loop: STAGES k-steps per iteration (KW weights per thread each), unrolled
    // so that every stage offset is a constant. A warp whose step count is not a multiple of
    // STAGES runs up to STAGES - 1 steps on zero-filled stages (zero weights, zero params)
    // rather than branching out of the unrolled body.
    const int iters = (my_steps + STAGES - 1) / STAGES;
    for (int it = 0; it < iters; ++it) {
#pragma unroll
        for (int s = 0; s < STAGES; ++s) {
            cp_async_wait<STAGES - 2>();  // this lane's copies for this step have landed ...
            __syncwarp();                 // ... and every lane's; the stage written next is free
            issue(it * STAGES + s + STAGES - 1, stages + (s + STAGES - 1) % STAGES * SB);
            cp_async_commit();
            compute(stages + s * SB);
        }
    }
    cp_async_wait<0>();  // no copy may still land in shared memory reused below
    __syncthreads();

    // Phase 3: the 4 warps' partial sums meet in shared memory (fp32) ...
    float* const red = reinterpret_cast<float*>(smem);  // [warp][row][col]
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int row = mt * 16 + g, col = j * 8 + 2 * t;
            red[(warp * ROWS + row) * I4_TILE_N + col] = acc[mt][j][0];
            red[(warp * ROWS + row) * I4_TILE_N + col + 1] = acc[mt][j][1];
            if constexpr (ROWS >= 16) {
                red[(warp * ROWS + row + 8) * I4_TILE_N + col] = acc[mt][j][2];
                red[(warp * ROWS + row + 8) * I4_TILE_N + col + 1] = acc[mt][j][3];
            }
        }
    __syncthreads();

    // Phase 4: ... and one thread per output element adds them, adds the bias, rounds once.
    for (int e = threadIdx.x; e < ROWS * I4_TILE_N; e += I4_THREADS) {
        const int row = e / I4_TILE_N, col = e % I4_TILE_N, gm = m0 + row, n = unit * I4_TILE_N + col;
        if (gm < M && n < N) {
            float v = 0.f;
#pragma unroll
            for (int wp = 0; wp < I4_WARPS; ++wp) v += red[(wp * ROWS + row) * I4_TILE_N + col];
            if (has_bias) v += __half2float(bias[n]);
            y[(size_t)gm * N + n] = __float2half(v);
        }
    }
}

#define I4_KERNEL(NAME, KIND, ROWS)                                                                              \
    extern "C" __global__ void __launch_bounds__(I4Shape<KIND, ROWS>::WARPS * 32, I4Shape<KIND, ROWS>::MIN_BLOCKS) NAME(                                             \
        const half* __restrict__ x, const unsigned* __restrict__ w, const unsigned* __restrict__ params,        \
        const half* __restrict__ code, const half* __restrict__ bias, half* __restrict__ y, int M, int K, int N, \
        int Kp, int pshift, int has_bias)                                                                       \
    {                                                                                                           \
        i4_body<KIND, ROWS>(x, w, params, code, bias, y, M, K, N, Kp, pshift, has_bias);                         \
    }

// grid (ceil(N / 32), ceil(M / ROWS)), block I4Shape<KIND, ROWS>::WARPS x 32; shapes are checked once, in cupy_kernels/launch.py.
I4_KERNEL(int4_affine_m8, I4_AFFINE, 8)
I4_KERNEL(int4_affine_m16, I4_AFFINE, 16)
I4_KERNEL(int4_affine_m32, I4_AFFINE, 32)
I4_KERNEL(int4_lut_m8, I4_LUT, 8)
I4_KERNEL(int4_lut_m16, I4_LUT, 16)
I4_KERNEL(int4_lut_m32, I4_LUT, 32)
