// Host stand-in for <cuda_fp16.h>: the subset of the half-precision API that the
// kernels in cupy_kernels/ use, with CUDA's bit-exact semantics (IEEE binary16,
// float -> half rounds to nearest even, like __float2half on the device).
// tests/smoke/test_cudahost.py checks both conversions against numpy for every half
// value and for a sweep of floats across the normal, subnormal and overflow ranges.
// The half2 arithmetic (__hadd2, __hsub2, __hmul2, __hfma2: PTX add/sub/mul/fma.rn.f16x2)
// rounds the exact result once to nearest even, subnormals kept (no flush to zero),
// and returns the canonical NaN 0x7FFF for a NaN result; the test checks it against
// exact rational arithmetic.
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

// ---- half2 arithmetic: exact result, one rounding to nearest even -----------------------
namespace cch_half {
// Round a double to binary16, nearest even; `below` > 0 / < 0 says the exact value is a
// hair above / below x (the part lost when x itself was rounded), used only at ties.
inline unsigned short round_half(double x, double below = 0.0)
{
    if (std::isnan(x)) return 0x7FFFu;
    const unsigned short sign = std::signbit(x) ? 0x8000u : 0u;
    double a = std::fabs(x);
    const double tail = std::signbit(x) ? -below : below;  // the lost part, in |x|'s direction
    if (a == 0.0) return sign;
    int e;
    std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1)
    e -= 1;             // a in [2^e, 2^(e+1))
    if (e < -14) e = -14;  // subnormal range: quantum 2^-24
    const double quantum = std::ldexp(1.0, e - 10);
    const double scaled = a / quantum;  // exact: a power-of-two scaling
    double whole = std::floor(scaled);
    const double frac = scaled - whole;
    if (frac > 0.5 || (frac == 0.5 && (tail > 0 || (tail == 0 && std::fmod(whole, 2.0) == 1.0)))) whole += 1.0;
    const double r = whole * quantum;
    if (r >= 65520.0 || r > 65504.0) return sign | 0x7C00u;
    __half h = __float2half((float)r);  // r is a half value: exact
    return sign | h.__x;
}

inline double to_d(__half h) { return (double)__half2float(h); }

inline __half make(unsigned short b) { return __half{b}; }

inline __half add(__half a, __half b) { return make(round_half(to_d(a) + to_d(b))); }  // exact in double
inline __half mul(__half a, __half b) { return make(round_half(to_d(a) * to_d(b))); }  // exact in double
inline __half fma(__half a, __half b, __half c)
{
    const double p = to_d(a) * to_d(b), q = to_d(c);  // p exact
    const double s = p + q;
    if (std::isinf(s) || std::isnan(s)) return make(round_half(s));
    const double bb = s - p, err = (p - (s - bb)) + (q - bb);  // two-sum: s + err == p + q exactly
    return make(round_half(s, err));
}
inline __half neg(__half a) { return make(a.__x ^ 0x8000u); }
}  // namespace cch_half

inline __half2 __hadd2(__half2 a, __half2 b) { return {cch_half::add(a.x, b.x), cch_half::add(a.y, b.y)}; }
inline __half2 __hsub2(__half2 a, __half2 b)
{
    return {cch_half::add(a.x, cch_half::neg(b.x)), cch_half::add(a.y, cch_half::neg(b.y))};
}
inline __half2 __hmul2(__half2 a, __half2 b) { return {cch_half::mul(a.x, b.x), cch_half::mul(a.y, b.y)}; }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c)
{
    return {cch_half::fma(a.x, b.x, c.x), cch_half::fma(a.y, b.y, c.y)};
}
inline __half2 __low2half2(__half2 a) { return {a.x, a.x}; }
inline __half2 __high2half2(__half2 a) { return {a.y, a.y}; }
