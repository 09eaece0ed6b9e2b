// test/cuda_emu_math.h: CUDA's number types and approximate intrinsics as the GPU computes
// them (included by test/cuda_emu.h).
#pragma once

// bf16 and half storage types with CUDA's conversion functions (round to nearest even,
// overflow to infinity, subnormals kept); no arithmetic operators.
struct int2 { int x, y; };
inline int2 make_int2(int x, int y) { return {x, y}; }
struct __nv_bfloat16 { uint16_t x; };
struct __half { uint16_t x; };
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if (std::isnan(f)) return {(uint16_t)((u >> 16) | 0x40)};  // stays a (quiet) NaN
    return {(uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t u = (uint32_t)b.x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline __half __float2half(float f) {
    uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    double a = std::fabs((double)f);
    if (std::isnan(f)) return {0x7e00};
    if (a >= 65520.0) return {(uint16_t)(sign | 0x7c00)};  // past the midpoint above 65504: infinity
    if (a < std::ldexp(1.0, -14)) return {(uint16_t)(sign | (uint16_t)std::nearbyint(std::ldexp(a, 24)))};  // subnormal
    int e;
    std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
    double q = std::nearbyint(std::ldexp(a, 11 - e));  // 11 significant bits, in [1024, 2048]
    if (q == 2048) { q = 1024; e++; }
    return {(uint16_t)(sign | (uint16_t)((e + 14) << 10) | (uint16_t)(q - 1024))};
}
inline float __half2float(__half h) {
    int e = (h.x >> 10) & 0x1f, m = h.x & 0x3ff;
    double v = e == 0 ? std::ldexp((double)m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(1024.0 + m, e - 25);
    return (float)((h.x & 0x8000) ? -v : v);
}

// The approximate instructions with an error as large as their documented bound: the exact
// result moved by a number of units in the last place that x's bits choose, in [-ulps, ulps],
// so that tolerances are set against the GPU's worst, not the best case.
namespace cuda_emu {
inline float off_by_ulps(float y, float x, int ulps) {
    uint32_t b, xb;
    memcpy(&b, &y, 4);
    memcpy(&xb, &x, 4);
    if (!std::isfinite(y) || (b & 0x7fffffffu) < 0x00800000u + (uint32_t)ulps) return y;  // keep 0, subnormals, inf, NaN
    const uint64_t h = ((uint64_t)xb * 0x9e3779b97f4a7c15ull) >> 32;
    b += (uint32_t)((int)(h % (uint64_t)(2 * ulps + 1)) - ulps);  // the magnitude moves; the sign stays
    memcpy(&y, &b, 4);
    return y;
}
// ex2.approx.f32: 1 ulp (CUDA holds __expf, ex2 of a rounded product, to 2 ulp near 0).
// lg2.approx.f32: within 2^-22 absolute for x in [0.5, 2],
// else 2^-22 relative (1 ulp, at most 2). rsqrt.approx.f32 (CUDA's rsqrtf): within 2 ulp.
inline float approx_ex2(float x) { return off_by_ulps(exp2f(x), x, 1); }
inline float approx_lg2(float x) {
    if (x >= 0.5f && x <= 2.0f) {
        const uint64_t h = ((uint64_t)(uint32_t)(x * 16777216.0f) * 0x9e3779b97f4a7c15ull) >> 32;
        return log2f(x) + (float)((int)(h % 9) - 4) * 0x1p-24f;
    }
    return off_by_ulps(log2f(x), x, 1);
}
}  // namespace cuda_emu
// The fast intrinsics as nvcc compiles them (without --use_fast_math): __expf(x) is
// ex2.approx(x * log2 e) and __logf(x) is lg2.approx(x) * ln 2, products rounded to float.
// Rounding x * log2 e is what makes __expf's error grow with |x| (CUDA documents
// 2 + 1.173|x| ulp), so the tests see it.
inline float __expf(float x) { return cuda_emu::approx_ex2(x * 1.44269502f); }
inline float __logf(float x) { return cuda_emu::approx_lg2(x) * 0.693147182f; }
inline float rsqrtf(float x) { return cuda_emu::off_by_ulps((float)(1.0 / std::sqrt((double)x)), x, 2); }
inline float __fdividef(float a, float b) { return a / b; }
