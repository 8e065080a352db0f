// One thin wrapper per PTX instruction the int4 kernels use, each with a CUDA body
// (inline PTX, exactly one instruction) and a host body for tests/tools/cudahost, which
// compiles this file with g++ and defines __CUDAHOST__. Nothing else in the kernels
// is compiled differently for the host. The host bodies of the warp-collective
// instructions (mma.sync, ldmatrix) and of cp.async live in the host runtime
// (cch:: in tests/tools/cudahost/runtime.h), which also checks how they are used;
// the bit-level ones (lop3, prmt) are written out here, from the PTX ISA.
#pragma once

// ---- lop3.b32: any three-input bitwise function, given as its 8-bit truth table.
// The table is F(0xF0, 0xCC, 0xAA) for the function F of (a, b, c), so
// (a & b) | c is (0xF0 & 0xCC) | 0xAA = 0xEA.
template <int LUT>
__device__ __forceinline__ unsigned lop3(unsigned a, unsigned b, unsigned c)
{
#ifdef __CUDAHOST__
    unsigned d = 0;
    for (int i = 0; i < 8; ++i)  // minterm i: bit 2 selects a, bit 1 b, bit 0 c
        if (LUT >> i & 1) d |= (i & 4 ? a : ~a) & (i & 2 ? b : ~b) & (i & 1 ? c : ~c);
    return d;
#else
    unsigned d;
    asm("lop3.b32 %0, %1, %2, %3, %4;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c), "n"(LUT));
    return d;
#endif
}

// ---- prmt.b32 (default mode): byte i of the result is byte s_i of the 8-byte value
// {b, a} (a = bytes 0..3), s_i = bits 4i..4i+2 of sel; bit 4i+3 set replicates the
// selected byte's sign bit instead.
__device__ __forceinline__ unsigned prmt(unsigned a, unsigned b, unsigned sel)
{
#ifdef __CUDAHOST__
    const unsigned long long ab = (unsigned long long)b << 32 | a;
    unsigned d = 0;
    for (int i = 0; i < 4; ++i) {
        const unsigned s = sel >> (4 * i) & 15u;
        unsigned byte = (unsigned)(ab >> (8 * (s & 7u))) & 0xFFu;
        if (s & 8u) byte = (byte & 0x80u) ? 0xFFu : 0u;
        d |= byte << (8 * i);
    }
    return d;
#else
    unsigned d;
    asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
#endif
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: D = A (16x16) * B (16x8) + C.
// Warp-collective. Lane = 4 * groupID + threadID_in_group (PTX ISA, "Matrix
// Fragments for mma.m16n8k16"): a0a1 = A[g][2t..2t+1], a2a3 = A[g+8][2t..],
// a4a5 = A[g][2t+8..], a6a7 = A[g+8][2t+8..]; b0b1 = B[2t..2t+1][g],
// b2b3 = B[2t+8..2t+9][g]; c0c1 = C[g][2t..2t+1], c2c3 = C[g+8][2t..]. Each
// 32-bit register holds two halves, the lower-indexed element in the low half.
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                             const float (&c)[4])
{
#ifdef __CUDAHOST__
    cch::mma_m16n8k16(d, a, b, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#endif
}

// ---- ldmatrix.sync.aligned.m8n8.x{2,4}.shared.b16: the warp loads 2 or 4 8x8 matrices
// of halves from shared memory. Lanes 8i..8i+7 give the addresses of matrix i's
// rows (16 bytes each, 16-byte aligned); every lane receives, for each matrix i,
// register r[i] = row (lane / 4), halves 2 * (lane % 4) and 2 * (lane % 4) + 1.
template <int X>
__device__ __forceinline__ void ldmatrix(unsigned (&r)[X], const void* row)
{
    static_assert(X == 2 || X == 4, "x2 or x4");
#ifdef __CUDAHOST__
    cch::ldmatrix(r, X, row);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(row);
    if constexpr (X == 4)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s) : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(s) : "memory");
#endif
}

// ---- cp.async.cg.shared.global [dst], [src], 16, src_bytes: an asynchronous 16-byte
// copy from global to shared memory that reads src_bytes (0 or 16 here) and fills the
// rest with zeros. Nothing may read dst before this thread has waited for the copy's
// group (cp_async_wait) and, for other threads, a barrier has followed that wait.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes)
{
#ifdef __CUDAHOST__
    cch::cp_async(dst, src, 16, src_bytes);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(src_bytes) : "memory");
#endif
}

// ---- cp.async.commit_group: the thread's copies issued since the last commit form a group.
__device__ __forceinline__ void cp_async_commit()
{
#ifdef __CUDAHOST__
    cch::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// ---- cp.async.wait_group N: wait until at most N of the thread's groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait()
{
#ifdef __CUDAHOST__
    cch::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
