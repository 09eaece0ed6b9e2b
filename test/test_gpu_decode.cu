// KV-cache inference on the GPU (kernels/gpu_decode.cuh) against the CPU decoder (decode.h),
// which test_decode.cpp holds to the full training forward. Built into the GPU test
// binaries: emulated on the CPU in every `make test`, natively where a GPU exists.
// Shape: D = 160, H = 2, Hkv = 1 (hd = 80: the kernel's second pass over output dims runs,
// and the head count is not a multiple of anything), L = 2, V = 97.
#include <vector>
#include <doctest/doctest.h>
#include "../kernels/gpu_decode.cuh"
#include "test_util.h"

static Config decode_config(const char* variant, int maxT) {
    Config c = tiny_config(variant, 97, maxT);
    c.D = 160; c.H = 2; c.Hkv = 1; c.F = 96;
    REQUIRE(config_error(c).empty());
    return c;
}

// Runs both decoders over seq: pre-fill of P tokens, then `steps` decode steps; after each
// block the last-copy logits must agree and the caches must count the same entries.
static void check_gpu_decoder(const char* variant, int P, int steps) {
    Config c = decode_config(variant, P + steps);
    Model<float> M(c);
    init_params(c, M.params.data(), 91);
    for (float& x : M.params) x *= 3;  // sharper attention: a wrong or missing key shows
    GpuModel G(c, M.params.data(), false);
    std::vector<int> seq = random_tokens(P + steps, c.V, 200 + P);
    Decoder<float> cpu(M);
    GpuDecoder gpu(G);
    cpu.prefill(seq.data(), P);
    gpu.prefill(seq.data(), P);
    INFO(variant << " prompt " << P);
    CHECK(gpu.hidden_computed == cpu.hidden_computed);
    for (int s = 0; s <= steps; s++) {
        if (s > 0) {
            cpu.step(seq[P + s - 1]);
            gpu.step(seq[P + s - 1]);
        }
        CHECK(gpu.cache_entries() == cpu.cache_entries());
        CHECK(gpu.t == cpu.t);
        double worst = 0, scale = 0;
        for (int j = 0; j < c.V; j++) {
            worst = max_nan(worst, (double)std::fabs(gpu.logits[j] - cpu.logits[j]));
            scale = max_nan(scale, (double)std::fabs(cpu.logits[j]));
        }
        // float on both sides, other summation orders and exp implementations: 1e-5 of the
        // logits' scale (the GPU training forward meets 2e-6 of it on one step; decode chains L layers)
        INFO("after " << s << " decode steps: max |diff| " << worst << " of logits up to " << scale);
        CHECK(worst <= 1e-5 * scale);
        CHECK(scale > 0.1);  // logits that vanished would agree vacuously
    }
    CHECK(gpu.hidden_computed == cpu.hidden_computed);
}

TEST_CASE("GPU decoder: pre-fill + decode steps equal the CPU decoder, every variant, prompts across chunk boundaries") {
    const int C = 5;
    for (const char* v : {"vanilla", "phd-3", "phd-swa-3-4", "phd-cswa-3-4-5", "naive-2"})
        for (int P : {1, C - 1, C, C + 1, 3 * C + 2}) check_gpu_decoder(v, P, 4);
}

TEST_CASE("decode kernels: a long prompt spans several key tiles; the decoder still equals the CPU") {
    // 70 originals > kDecodeThreads candidates per tile; naive-2 keeps 140 entries
    for (const char* v : {"phd-cswa-3-4-5", "phd-swa-2-70", "naive-2"}) check_gpu_decoder(v, 70, 3);
}
