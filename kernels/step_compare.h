// kernels/step_compare.h: one forward and backward on an engine, and two such steps compared
// tensor by tensor: train_phd's --check-state (against a double-precision debug state) and
// --compare-cpu (the GPU against the CPU model from the same weights).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>
#include "../model.h"

// One forward and backward: what --check-state and --compare-cpu compare.
struct StepResult {
    float loss;
    std::vector<float> logits, grads;  // (B*T, V), (P)
};

template<typename Engine> StepResult run_step(Engine& E, const int* in, const int* tg, int B, int T) {
    StepResult r;
    E.zero_grads();
    E.forward(in, nullptr, B, T);  // with targets the GPU turns the logits into their gradient: first without
    r.logits = E.logits();
    r.loss = E.forward(in, tg, B, T);
    E.backward(1.0f);
    r.grads = E.grads();
    return r;
}

// A gradient tensor is measured against its own scale, max|want|, but never against less
// than kGradFloor times the largest |want| over all gradients, G. A tensor whose true value
// is an exact cancellation (wq and wk of naive-K at T=1, where every copy is the same) keeps
// the float rounding of the terms it cancelled: noise relative to G, not to its own zeros.
// That rounding is up to ~eps*G (eps = 6e-8), so at the default tol 1e-5 the floor must be
// above eps/tol = 6e-3 of G: 1e-2 lets a zero tensor carry 1.7*eps*G (seen: up to 0.05*eps*G),
// and a 1 % error still fails in any tensor whose scale is above tol*kGradFloor/0.01 = 1e-5*G.
static constexpr double kGradFloor = 1e-2;

// max|got - want| / max(max|want|, floor) over a tensor, one line; a NaN or inf in either
// fails (std::max would drop a NaN). Returns true when within tol.
inline bool compare_tensor(const char* name, const float* got, const float* want, size_t n, double floor, float tol) {
    double maxabs = 0, maxref = 0;
    size_t bad_got = 0, bad_want = 0;
    for (size_t i = 0; i < n; i++) {
        bad_got += !std::isfinite(got[i]);
        bad_want += !std::isfinite(want[i]);
        if (!std::isfinite(got[i]) || !std::isfinite(want[i])) continue;
        maxabs = std::max(maxabs, (double)std::fabs(got[i] - want[i]));
        maxref = std::max(maxref, (double)std::fabs(want[i]));
    }
    const double scale = std::max(maxref, floor), rel = scale > 0 ? maxabs / scale : maxabs;
    const bool ok = rel <= tol && bad_got == 0 && bad_want == 0;
    printf("%-18s max abs diff %.3e  rel %.3e  %s", name, maxabs, rel, ok ? "ok" : "FAIL");
    if (bad_got || bad_want) printf("  [non-finite: %zu in want, %zu in got]", bad_want, bad_got);
    else if (floor > maxref) printf("  [rel to the floor %.3e: max|want| %.3e]", floor, maxref);
    printf("\n");
    return ok;
}

// Compares got with want: loss, logits and every parameter gradient, one line each, then
// "<what>: OK" or "<what>: FAILED". Returns the exit status.
inline int compare_step(const char* what, const Config& c, const StepResult& got, const StepResult& want, float tol) {
    double gmax = 0;
    for (float g : want.grads)
        if (std::isfinite(g)) gmax = std::max(gmax, (double)std::fabs(g));
    bool ok = compare_tensor("loss", &got.loss, &want.loss, 1, 0, tol);
    ok &= compare_tensor("logits", got.logits.data(), want.logits.data(), want.logits.size(), 0, tol);
    for (const ParamTensor& t : param_tensors(c))
        ok &= compare_tensor(("d" + t.name).c_str(), got.grads.data() + t.offset, want.grads.data() + t.offset, t.size(),
                             kGradFloor * gmax, tol);
    printf("%s: %s\n", what, ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}
