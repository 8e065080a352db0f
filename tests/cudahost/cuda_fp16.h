// Host stand-in for <cuda_fp16.h>: the subset of the half-precision API that the
// kernels in cupy_kernels/ use, with CUDA's bit-exact semantics (IEEE binary16,
// float -> half rounds to nearest even, like __float2half on the device).
// tests/test_cudahost.py checks both conversions against numpy for every half
// value and for a sweep of floats across the normal, subnormal and overflow ranges.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

struct __half {
    unsigned short __x;
};
typedef __half half;

struct alignas(4) __half2 {
    __half x, y;
};
typedef __half2 half2;

inline float __half2float(__half h)
{
    const uint32_t sign = (uint32_t)(h.__x & 0x8000u) << 16;
    const uint32_t exp = (h.__x >> 10) & 0x1Fu, mant = h.__x & 0x3FFu;
    uint32_t bits;
    if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
        float f = std::ldexp((float)mant, -24);
        std::memcpy(&bits, &f, 4);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

inline __half __float2half(float f)
{
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7FFFFFFFu;
    __half h;
    if (ax > 0x7F800000u) {  // NaN stays NaN (quiet)
        h.__x = sign | 0x7E00u;
    } else if (ax >= 0x477FF000u) {  // >= 65520 rounds to infinity
        h.__x = sign | 0x7C00u;
    } else if (ax < 0x38800000u) {  // below 2^-14: a subnormal half (or zero); scaling by 2^24 is exact
        float a;
        std::memcpy(&a, &ax, 4);
        h.__x = sign | (uint16_t)std::nearbyint(a * 16777216.0f);  // default rounding mode: nearest even
    } else {  // normal: rebias the exponent, round the 13 dropped bits to nearest even
        ax += 0xC8000FFFu + ((ax >> 13) & 1u);
        h.__x = sign | (uint16_t)(ax >> 13);
    }
    return h;
}

inline __half __ushort_as_half(unsigned short bits) { return __half{bits}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline __half2 __halves2half2(__half lo, __half hi) { return __half2{lo, hi}; }
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__float2half(lo), __float2half(hi)}; }
