// KV-cache inference on the GPU (kernels/gpu_decode.cuh) against the CPU decoder (cpu/decode.h),
// which test_decode.cpp holds to the full training forward. Built into the GPU test
// binaries: emulated on the CPU in every `make test`, natively where a GPU exists.
// Shape: D = 160, H = 2, Hkv = 1 (hd = 80: the kernel's second pass over output dims runs,
// and the head count is not a multiple of anything), L = 2, V = 97.
#include <vector>
#include <doctest/doctest.h>
#include "../cpu/decode.h"
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
// Logits within tol of their scale. Returns the fewest split-K parts a decode step's
// attention took (decode_splits, as the decoder calls it: from the cache's counts and the
// step's K rows).
static int check_gpu_decoder(const char* variant, int P, int steps, double tol = 1e-5) {
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
    INFO(std::string(variant) << " prompt " << P);
    CHECK(gpu.hidden_computed == cpu.hidden_computed);
    int splits = kDecodeMaxSplits;
    for (int s = 0; s <= steps; s++) {
        if (s > 0) {
            splits = std::min(splits, decode_splits(gpu.cache[0], DecodeBlock{c.K, 1, gpu.t, gpu.t * (c.K - 1)}, c));
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
        // float on both sides, other summation orders and exp implementations: by default 1e-5
        // of the logits' scale (the GPU training forward meets 2e-6 of it on one step; decode
        // chains L layers; measured up to 6e-6 here, 8.3e-6 in the ThreadSanitizer build)
        INFO("after " << s << " decode steps: max |diff| " << worst << " of logits up to " << scale);
        CHECK(worst <= tol * scale);
        CHECK(scale > 0.1);  // logits that vanished would agree vacuously
    }
    CHECK(gpu.hidden_computed == cpu.hidden_computed);
    return splits;
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

TEST_CASE("GPU decoder: decode steps over 500+ candidate keys take split-K and still equal the CPU decoder") {
    // phd-cswa-3-4-5 after a 510-token prompt: 510 kept originals, 4 window slots and the
    // step's 3 rows, 517 candidates: 3 splits (kDecodeKeysPerSplit = 256), each of up to
    // 3 tiles of 64 keys (kDecodeThreads), the last partial. The steps start a new chunk
    // (510 = 102 C): the window's slots hold the last chunk's hidden tokens, which no query
    // sees, then this chunk's. The pre-fill (520 rows) takes one split. Logits to 3e-5 of
    // their scale: sums over 500 keys (measured 7.3e-6, 9.3e-6 in the ThreadSanitizer build,
    // 1.15e-5 there with a 600-token prompt).
    CHECK(check_gpu_decoder("phd-cswa-3-4-5", 510, 3, 3e-5) == 3);
}

TEST_CASE("decode kernels: split-K (2, 3, 7, 170 splits) equals one split, including splits that see no key") {
    // A decode step of phd-swa-3-4 at position 200: 200 kept originals, 4 window slots (one
    // empty), the block's 3 copies: up to 207 candidates a query. 170 splits take 2
    // candidates each, and the last ones none.
    Config c = decode_config("phd-swa-3-4", 256);
    const int R = 3, t = 200, kvdim = c.Hkv * c.hd(), W = c.W;
    KVLayer L;
    L.kept = t;
    L.win_slots = W;
    std::vector<int2> kept_nc, win_nc(W, make_int2(-1, 0)), nc;
    for (int n = 0; n < t; n++) kept_nc.push_back(make_int2(n, 0));
    for (int h = t * 2 - 3; h < t * 2; h++) win_nc[h % W] = make_int2(h / 2, h % 2 + 1);  // the last 3 hidden tokens
    for (int k = 0; k < R; k++) nc.push_back(make_int2(t, k));
    std::vector<void*> bufs;
    auto up = [&](auto v) { auto* d = to_device(v); bufs.push_back(d); return d; };
    L.kept_k = up(random_vec<float>((size_t)t * kvdim, 1));
    L.kept_v = up(random_vec<float>((size_t)t * kvdim, 2));
    L.kept_nc = up(kept_nc);
    L.win_k = up(random_vec<float>((size_t)W * kvdim, 3));
    L.win_v = up(random_vec<float>((size_t)W * kvdim, 4));
    L.win_nc = up(win_nc);
    const DecodeBlock b{R, 1, t, t * 2};
    float* qkv = up(random_vec<float>((size_t)R * c.qkv_dim(), 5, 2.0));
    int2* d_nc = up(nc);
    float* part = up(std::vector<float>((size_t)kDecodeMaxParts * (c.hd() + 2)));
    const size_t osize = (size_t)R * c.H * c.hd();
    float* o = up(std::vector<float>(osize));
    attention_decode(o, part, qkv, d_nc, L, b, c, nullptr, 1);
    const std::vector<float> one = to_host(o, osize);
    for (int splits : {2, 3, 7, 170}) {
        attention_decode(o, part, qkv, d_nc, L, b, c, nullptr, splits);
        const std::vector<float> got = to_host(o, osize);
        double worst = 0, scale = 0;
        for (size_t i = 0; i < osize; i++) {
            worst = max_nan(worst, std::fabs(got[i] - one[i]));
            scale = max_nan(scale, std::fabs(one[i]));
        }
        INFO(splits << " splits: max |diff| " << worst << " of outputs up to " << scale);
        CHECK(worst <= 1e-6 * scale);  // the same sums, split differently
        CHECK(scale > 0.01);
    }
    for (void* p : bufs) cudaCheck(cudaFree(p));
}
