// dev/tensor_util.h: tensor helpers shared by the tests and the kernel lab: random
// tensors and NaN-safe comparisons. No doctest here, so that benchmarks can use them.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>
#include "../kernels/utils.h"

// std::max that keeps a NaN, so that a comparison which met one fails instead of passing.
static inline double max_nan(double a, double b) { return std::isnan(a) || std::isnan(b) ? NAN : std::max(a, b); }

template<typename Real> std::vector<Real> random_vec(size_t n, uint64_t seed, double scale = 1.0) {
    Rng rng{seed};
    std::vector<Real> v(n);
    for (Real& x : v) x = (Real)(scale * rng.normal());
    return v;
}

// max |got - want| / max |want| over a tensor (the measure --check-state prints as "rel");
// NaN if either holds a NaN.
static inline double max_rel(const float* got, const float* want, size_t n) {
    double d = 0, ref = 0;
    for (size_t i = 0; i < n; i++) {
        d = max_nan(d, (double)std::fabs(got[i] - want[i]));
        ref = max_nan(ref, (double)std::fabs(want[i]));
    }
    return d / ref;
}
static inline double max_rel(const std::vector<float>& got, const std::vector<float>& want) {
    return max_rel(got.data(), want.data(), got.size());
}
