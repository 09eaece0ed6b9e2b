// The model's CUDA kernels against the CPU reference (model.h): every check of the kernel
// lab's table (dev/kernel_checks.h) at shapes that are not multiples of any tile (T = 37,
// K = 3, W = 5, C = 4, hd 16, 64 and 12, V = 97 and 1000); then what the table does not
// cover (tiles visited, determinism, the token sort); the whole model at hd 4, 16, 32 and 64.
// Built into the same binaries as test_gpu.cu: emulated on the CPU and natively.
#include <algorithm>
#include <vector>
#include <doctest/doctest.h>
#include <map>
#include "../dev/kernel_checks.h"
#include "../kernels/engine.h"
#include "test_util.h"

// A kernel-test shape: a model config with B = 2 sequences of T positions.
struct KernelShape { const char* variant; int V, D, H, Hkv, T; };
static Config kernel_config(const KernelShape& s) {
    Config c = tiny_config(s.variant, s.V, s.T);
    c.D = s.D; c.H = s.H; c.Hkv = s.Hkv; c.F = 200;
    REQUIRE(config_error(c).empty());
    return c;
}
// Every variant at hd = 16 (a compiled head size), T = 37; phd-cswa also at hd = 64 (the
// GPT-2 size) with V = 1000 (the loss's rows end in 24 padding columns; its rows of several
// groups a thread are the loss test's, below) and at hd = 128 (the bf16 kernels' largest), phd-swa at
// hd = 12 (read at run time: the generic attention instance), naive at hd = 32; phd-2 at
// T = 80, where hidden rows have tiles without a mask in the tensor-core kernels; phd-swa at
// D = 30 (hd = 10), where no row is whole 16-byte groups: every kernel's one-element path,
// and AdamW's groups that cross from one tensor into the next.
static const KernelShape kKernelShapes[] = {
    {"phd-cswa-3-5-4", 97, 96, 6, 2, 37}, {"vanilla", 97, 96, 6, 2, 37}, {"phd-3", 97, 96, 6, 2, 37},
    {"phd-swa-3-5", 97, 96, 6, 2, 37},    {"naive-3", 97, 96, 6, 2, 37}, {"phd-cswa-3-5-4", 1000, 128, 2, 1, 37},
    {"phd-swa-3-5", 97, 96, 8, 2, 37},    {"phd-2", 97, 32, 2, 1, 80},       {"phd-cswa-3-5-4", 97, 256, 2, 1, 37},
    {"naive-2", 97, 128, 4, 2, 37},       {"phd-swa-3-5", 97, 30, 3, 1, 37},
};
static const int kKernelB = 2;
// Under ThreadSanitizer: every compiled head size (16, 32, 64, 128), the generic instance
// (hd 12), the loss's padded rows (V = 1000) and the unmasked tiles (T = 80), at
// one variant each; the other variants at hd 16 run the same instances over other masks, and
// D = 30 the one-element paths of the vector kernels, whose threads share nothing more. A
// check over the whole parameter vector (AdamW) runs the same launches at every shape, only
// longer: the first shape alone (it was 15 of the table's 49 s there).
static bool tsan_keeps(const KernelShape& s) {
    return !kUnderTsan || ((s.D / s.H != 16 || s.T == 80 || &s == &kKernelShapes[0]) && s.D % 4 == 0);
}

TEST_CASE("kernel lab table: every kernel equals its CPU counterpart, every tensor within its tolerance; every check runs at a shape") {
    const Timed untimed = [](const std::function<void()>&) {};
    const std::vector<KernelCheck> checks = kernel_checks();
    std::vector<int> ran(checks.size(), 0);  // shapes each check ran at: one that runs at none cannot fail
    for (const KernelShape& sh : kKernelShapes) {
        if (!tsan_keeps(sh)) continue;
        const Config c = kernel_config(sh);
        std::vector<float> params(num_params(c));
        init_params(c, params.data(), 1);
        GpuModel G(c, params.data(), false);
        for (size_t i = 0; i < checks.size(); i++) {
            if (kUnderTsan && checks[i].whole_vector && &sh != &kKernelShapes[0]) continue;
            const CheckResult r = checks[i].run(G, kKernelB, sh.T, untimed);
            ran[i] += r.ran();
            for (const TensorError& e : r.errors) {
                INFO(variant_name(c) << " hd " << c.hd() << " V " << c.V << ": " << std::string(checks[i].name) << " " << e.tensor
                                     << " error " << e.err << " (tol " << e.tol << ")");  // (a char* would print as a pointer)
                CHECK(e.ok());
            }
        }
    }
    for (size_t i = 0; i < checks.size(); i++) {
        INFO(std::string(checks[i].name) << " ran at " << ran[i] << " of " << std::size(kKernelShapes) << " shapes");
        CHECK(ran[i] > 0);
    }
}

TEST_CASE("kernel lab table: a check fails when the kernel's output is wrong") {
    // The table's measure and its NaN-filled outputs, on a result that is off by 1 %, and on
    // one the kernel left unwritten.
    std::vector<float> want = random_vec<float>(1000, 3), off = want, unwritten = want;
    for (float& x : off) x *= 1.01f;
    unwritten[999] = NAN;
    CHECK_FALSE((TensorError{"off", max_rel(off, want), 1e-5}.ok()));
    CHECK_FALSE((TensorError{"unwritten", max_rel(unwritten, want), 1e-5}.ok()));
    CHECK((TensorError{"same", max_rel(want, want), 0}.ok()));
}

TEST_CASE("attention: the tiles the tensor-core kernels leave unmasked hold only visible pairs") {
    // tile_all_visible against the predicate, for the tiles the kernels ask about: 16 query
    // rows x 32 keys (forward, dq) and 32 queries x 16 key rows (dk/dv).
    for (const char* v : {"vanilla", "phd-2", "phd-3", "phd-swa-3-5", "phd-cswa-3-5-4", "naive-3"}) {
        const int T = 80;
        Config c = tiny_config(v, 11, T);
        const int TK = T * c.K;
        long full = 0;
        for (int shape = 0; shape < 2; shape++) {
            const int qrows = shape == 0 ? kTcRows : kAttnTile, krows = shape == 0 ? kAttnTile : kTcRows;
            for (int q0 = 0; q0 < TK; q0 += qrows)
                for (int k0 = 0; k0 < TK; k0 += krows) {
                    const int q1 = std::min(q0 + qrows, TK), k1 = std::min(k0 + krows, TK);
                    if (!tile_all_visible(c, T, q0, q1, k0, k1)) continue;
                    full++;
                    for (int i = q0; i < q1; i++)
                        for (int j = k0; j < k1; j++) {
                            int n, qc, m, kc;
                            row_token(c, T, i, &n, &qc);
                            row_token(c, T, j, &m, &kc);
                            INFO(std::string(v) << ": query row " << i << ", key row " << j);
                            REQUIRE(phd_visible(c, n, qc, m, kc));
                        }
                }
        }
        MESSAGE(std::string(v) << ": " << full << " tiles unmasked");
        CHECK(full > 0);  // the fast path is taken
    }
}

TEST_CASE("attention: the bf16 kernels' tile map says exactly which warps meet which tiles, and which need no mask") {
    // Every bit of bf_tile_map against the predicate, pair by pair: query side (warps of 16
    // and 32 query rows, key tiles) and key side (warps of 16 key rows, query tiles, repeated
    // over a group of 2 heads), at T = 37 (partial tiles) and 80 (unmasked tiles).
    for (const char* v : {"vanilla", "phd-2", "phd-3", "phd-swa-3-5", "phd-cswa-3-5-4", "naive-3"})
        for (int T : {37, 80}) {
            const Config c = tiny_config(v, 11, T);
            const int TK = T * c.K, tiles = (TK + kBfKeys - 1) / kBfKeys;
            long visits = 0, unmasked = 0;
            for (int wr : {16, 32})
                for (bool query_side : {true, false}) {
                    if (!query_side && wr != kTcRows) continue;
                    const int repeat = query_side ? 1 : 2, rows = kTcWarps * wr;
                    const std::vector<uint8_t> map = bf_tile_map(c, T, wr, query_side, repeat);
                    REQUIRE(map.size() == (size_t)((TK + rows - 1) / rows) * tiles * repeat);
                    for (size_t at = 0; at < map.size(); at++) {
                        const int b = (int)(at / (tiles * repeat)), i = (int)(at % tiles);
                        for (int w = 0; w < kTcWarps; w++) {
                            const int w0 = b * rows + w * wr, w1 = std::min(w0 + wr, TK), t0 = i * kBfKeys, t1 = std::min(t0 + kBfKeys, TK);
                            bool any = false, all = w0 < TK && w1 - w0 == wr && t1 - t0 == kBfKeys;
                            for (int x = w0; x < w1; x++)
                                for (int y = t0; y < t1; y++) {
                                    int n, qc, m, kc;
                                    row_token(c, T, query_side ? x : y, &n, &qc);
                                    row_token(c, T, query_side ? y : x, &m, &kc);
                                    const bool vis = phd_visible(c, n, qc, m, kc);
                                    any = any || vis;
                                    all = all && vis;
                                }
                            INFO(v << " T " << T << (query_side ? " query side" : " key side") << " warp rows " << wr << ": byte " << at
                                   << ", warp " << w);
                            REQUIRE(((map[at] >> w & 1) != 0) == (w0 < TK && any));
                            REQUIRE(((map[at] >> (4 + w) & 1) != 0) == (w0 < TK && any && all));
                            visits += map[at] >> w & 1;
                            unmasked += map[at] >> (4 + w) & 1;
                        }
                    }
                }
            CHECK(visits > 0);
            if (T == 80) CHECK(unmasked > 0);  // the unmasked instances run
        }
}

TEST_CASE("attention kernels (fp32, TF32, bf16): only tiles with visible pairs are visited; the backward is deterministic") {
    for (const KernelShape& sh : kKernelShapes) {
        if (sh.D / sh.H != 16 || !tsan_keeps(sh)) continue;  // which tiles are visited does not depend on the head size: the cheapest one
        const Config c = kernel_config(sh);
        const int B = kKernelB, T = sh.T, TK = T * c.K;
        // Visited tiles: exactly the (query tile, key tile) pairs holding a visible pair, for
        // query tiles of `rows` rows and key tiles of `keys`.
        auto tiles_wanted = [&](int rows, int keys) {
            long want = 0;
            for (int q0 = 0; q0 < TK; q0 += rows)
                for (int k0 = 0; k0 < TK; k0 += keys) {
                    bool any = false;
                    for (int i = q0; i < std::min(q0 + rows, TK) && !any; i++)
                        for (int j = k0; j < std::min(k0 + keys, TK) && !any; j++) {
                            int n, qc, m, kc;
                            row_token(c, T, i, &n, &qc);
                            row_token(c, T, j, &m, &kc);
                            any = phd_visible(c, n, qc, m, kc);
                        }
                    want += any;
                }
            return (long)B * c.H * want;
        };
        float *d_qkv = to_device(random_vec<float>((size_t)B * TK * c.qkv_dim(), 1, 1.5));
        float *d_dout = to_device(random_vec<float>((size_t)B * TK * c.H * c.hd(), 2));
        float *d_o = to_device(std::vector<float>((size_t)B * TK * c.H * c.hd())), *d_lse = to_device(std::vector<float>((size_t)B * c.H * TK));
        float* d_dqkv = to_device(std::vector<float>((size_t)B * TK * c.qkv_dim()));
        int* d_visited = to_device(std::vector<int>{0});
        for (bool tc : {false, true}) {
            if (tc && !compiled_head_dim(c)) continue;
            INFO(variant_name(c) << " hd " << c.hd() << (tc ? " tensor cores" : " fp32"));
            cudaCheck(cudaMemset(d_visited, 0, sizeof(int)));
            attention_forward(d_o, d_lse, d_qkv, c, B, T, nullptr, d_visited, tc);
            CHECK(to_host(d_visited, 1)[0] == tiles_wanted(tc ? kTcRows : kAttnTile, kAttnTile));
            attention_backward(d_dqkv, d_dout, d_qkv, d_o, d_lse, c, B, T, nullptr, tc);
            const std::vector<float> first = to_host(d_dqkv, (size_t)B * TK * c.qkv_dim());
            attention_backward(d_dqkv, d_dout, d_qkv, d_o, d_lse, c, B, T, nullptr, tc);
            CHECK(to_host(d_dqkv, first.size()) == first);
        }
        if (c.hd() % 16 == 0) {  // bf16: warps of BfWarp rows (dK/dV: 16 keys) and tiles of kBfKeys rows; the backward twice
            REQUIRE(c.hd() == 16);
            __nv_bfloat16* d_qkv16 = to_device(to_bf16(random_vec<float>((size_t)B * TK * c.qkv_dim(), 1, 1.5)));
            __nv_bfloat16* d_o16 = to_device(std::vector<__nv_bfloat16>((size_t)B * TK * c.H * c.hd()));
            int* d_counts = to_device(std::vector<int>{0, 0});
            cudaCheck(cudaMemset(d_visited, 0, sizeof(int)));
            attention_forward_bf16(d_o16, d_lse, d_qkv16, c, B, T, nullptr, d_visited);
            INFO(variant_name(c) << " hd " << c.hd() << " bf16");
            const long query_side = tiles_wanted(BfWarp<16>::rows, kBfKeys);
            CHECK(to_host(d_visited, 1)[0] == query_side);
            __nv_bfloat16* d_dout16 = to_device(to_bf16(random_vec<float>((size_t)B * TK * c.H * c.hd(), 2)));
            __nv_bfloat16* d_dqkv16 = to_device(std::vector<__nv_bfloat16>((size_t)B * TK * c.qkv_dim()));
            float* d_D = to_device(std::vector<float>((size_t)B * c.H * TK));
            attention_backward_bf16(d_dqkv16, d_dout16, d_qkv16, d_o16, d_lse, d_D, c, B, T, nullptr, d_counts);
            const std::vector<int> counts = to_host(d_counts, 2);
            CHECK(counts[0] == query_side);                       // dQ: the forward's (warp, key tile) pairs
            CHECK(counts[1] == tiles_wanted(kBfKeys, kTcRows));  // dK/dV: (query tile, 16 key rows) pairs, every query head
            cudaCheck(cudaFree(d_counts));
            const std::vector<float> first = from_bf16(to_host(d_dqkv16, (size_t)B * TK * c.qkv_dim()));
            attention_backward_bf16(d_dqkv16, d_dout16, d_qkv16, d_o16, d_lse, d_D, c, B, T, nullptr);
            CHECK(from_bf16(to_host(d_dqkv16, first.size())) == first);
            for (void* p : {(void*)d_qkv16, (void*)d_o16, (void*)d_dout16, (void*)d_dqkv16, (void*)d_D}) cudaCheck(cudaFree(p));
        }
        for (void* p : {(void*)d_qkv, (void*)d_dout, (void*)d_o, (void*)d_lse, (void*)d_dqkv, (void*)d_visited}) cudaCheck(cudaFree(p));
    }
}

TEST_CASE("token sort: the bitonic network sorts keys on the device, through both of its kernels") {
    // 1000: one shared-memory block; 3000: four, with the global steps between them.
    for (int n : {1000, 3000}) {
        std::vector<int> tok = random_tokens(n, 50257, 11);
        const size_t n2 = token_sort_slots(n);
        int* d_tok = to_device(tok);
        uint64_t* d_keys = to_device(std::vector<uint64_t>(n2));
        launch(token_keys_kernel, dim3((unsigned)(n2 / 256)), dim3(256), 0, nullptr, d_keys, (const int*)d_tok, n);
        token_sort(d_keys, n2, nullptr);
        std::vector<uint64_t> want(n2, ~(uint64_t)0);
        for (int i = 0; i < n; i++) want[i] = (uint64_t)tok[i] << 32 | (uint32_t)i;
        std::sort(want.begin(), want.end());
        INFO("n = " << n << " in " << n2 << " slots");
        CHECK(to_host(d_keys, n2) == want);
        cudaCheck(cudaFree(d_tok));
        cudaCheck(cudaFree(d_keys));
    }
}

TEST_CASE("embedding backward and grad norm: two runs give the same bits") {
    const Config c = kernel_config(kKernelShapes[0]);
    const int B = kKernelB, T = kKernelShapes[0].T, N = B * T * c.K;
    std::vector<int> tok = random_tokens(B * T, 20, 3);  // a small range: tokens repeat
    const std::vector<float> dE0 = random_vec<float>((size_t)c.Vp * c.D, 6);
    int* d_tok = to_device(tok);
    float *d_dx = to_device(random_vec<float>((size_t)N * c.D, 5)), *d_dE = to_device(dE0), *d_dE2 = to_device(dE0);
    uint64_t* d_keys = to_device(std::vector<uint64_t>(token_sort_slots(B * T)));
    embedding_backward(d_dE, d_dx, d_tok, d_keys, c, B, T, nullptr);
    embedding_backward(d_dE2, d_dx, d_tok, d_keys, c, B, T, nullptr);
    CHECK(to_host(d_dE2, dE0.size()) == to_host(d_dE, dE0.size()));
    const size_t P = num_params(c);
    float* d_g = to_device(random_vec<float>(P, 16));
    GradNorm gn;
    gn.run(d_g, P, 1.0f, nullptr);
    const double first = gn.sumsq();
    gn.run(d_g, P, 1.0f, nullptr);
    CHECK(gn.sumsq() == first);
    for (void* p : {(void*)d_tok, (void*)d_dx, (void*)d_dE, (void*)d_dE2, (void*)d_keys, (void*)d_g}) cudaCheck(cudaFree(p));
}

TEST_CASE("grad norm: the sum of squares of any length, 16-byte aligned or not, as the host sums it; the clip scale from it") {
    // 16-byte groups and the last n % 4 in block 0, or single floats from a misaligned start;
    // the longest takes the 1024 x 256 threads round twice (under ThreadSanitizer, where each
    // thread is a fiber it tracks, 17 blocks once).
    const size_t longest = kUnderTsan ? (size_t)4099 * 4 + 3 : (size_t)2 * kNormBlocks * kNormThreads * 4 + 7;
    const std::vector<float> g = random_vec<float>(longest + 1, 17);
    float* d_g = to_device(g);
    GradNorm gn;
    for (size_t n : {(size_t)1, (size_t)3, (size_t)4, (size_t)1001, longest})
        for (size_t at : {(size_t)0, (size_t)1}) {
            double want = 0;
            for (size_t i = at; i < at + n; i++) want += (double)g[i] * g[i];
            INFO("n " << n << " from " << at);
            gn.run(d_g + at, n, 0.5f, nullptr);
            CHECK(std::fabs(gn.sumsq() - want) <= 1e-12 * want);
            CHECK(to_host(gn.scale, 1)[0] == (float)clip_scale_of(0.5, std::sqrt(gn.sumsq())));  // the clip scale AdamW reads
        }
    cudaCheck(cudaFree(d_g));
}

// At V = 1000 and 20000 the row waits in shared memory between the kernel's passes; at a
// vocabulary whose fp32 row is past the device's shared memory (163 KB emulated, 227 KB on
// an H100) the second pass reads it again from memory: both paths against the same
// double-precision sums. V = 1000 takes one 16-byte group a thread; the others several, the
// last round partial (1024 threads).
TEST_CASE("loss: a NaN logit makes its row's loss and gradient NaN; -inf logits have probability 0; rows in and past shared memory") {
    const int past_shared = (int)(shared_optin() / sizeof(float)) + 1000;
    for (const int V : {1000, 20000, past_shared}) {
        const int Vp = pad_vocab(V), N = 3;
        CHECK(crossentropy_row_shared<float>(Vp) == (V != past_shared));
        std::vector<float> z = random_vec<float>((size_t)N * Vp, 71, 4.0);
        z[1 * Vp + 517] = NAN;
        for (int j = 0; j < 300; j++) z[2 * Vp + j] = -INFINITY;  // the first 16-byte groups, and more
        const std::vector<int> y = {5, 6, 700};
        float *d_z = to_device(z), *d_loss = to_device(std::vector<float>(N)), *d_lse = to_device(std::vector<float>(N));
        int* d_y = to_device(y);
        crossentropy(d_loss, d_lse, d_z, d_y, N, V, Vp, 0.0f, nullptr);
        const std::vector<float> loss = to_host(d_loss, N), dz = to_host(d_z, z.size());
        for (int i : {0, 2}) {
            double sum = 0;  // the finite logits' log-sum-exp, in double
            for (int j = 0; j < V; j++) sum += std::exp((double)z[(size_t)i * Vp + j]);
            const double lse = std::log(sum);
            INFO("V " << V << " row " << i);
            CHECK(std::fabs(loss[i] - (lse - z[(size_t)i * Vp + y[i]])) <= 2e-6 * std::fabs(lse));
            for (int j = 0; j < Vp; j++) {
                const double want = j < V ? std::exp(z[(size_t)i * Vp + j] - lse) - (j == y[i]) : 0.0;
                if (std::fabs(dz[(size_t)i * Vp + j] - want) > 2e-6) CHECK(dz[(size_t)i * Vp + j] == doctest::Approx(want));
            }
        }
        for (int j = 0; j < 300; j++) CHECK(dz[2 * Vp + j] == 0.0f);
        CHECK(std::isnan(loss[1]));
        CHECK(std::isnan(dz[1 * Vp + 3]));
        for (void* p : {(void*)d_z, (void*)d_loss, (void*)d_lse, (void*)d_y}) cudaCheck(cudaFree(p));
    }
}

// ----------------------------------------------------------------------------
// The whole model

// The whole model's shapes: tiny_config (L = 2, V = 11) at head size hd, with GQA: H = 4,
// Hkv = 2 (D = 4 hd), or from hd 64 H = 2, Hkv = 1 (D = 2 hd: the emulated GEMMs stay quick).
static Config model_config(const char* variant, int T, int hd) {
    Config c = tiny_config(variant, 11, T);
    if (hd >= 64) { c.H = 2; c.Hkv = 1; }
    c.D = c.H * hd;
    REQUIRE(config_error(c).empty());
    return c;
}

// The GPU model (fp32, or TF32 tensor cores) against the CPU model on one batch from the
// same weights: the loss's relative error, the logits' max_rel (0 with logits_chunk, whose
// logits are never whole), and the worst gradient tensor's (each tensor to its own scale)
// with its name.
struct ModelDiff { double loss, logits, grads, z; std::string worst; };
static ModelDiff gpu_model_diff(const Config& c, int B, int T, bool tf32, uint64_t seed, bool bf16 = false, int logits_chunk = 0) {
    Model<float> M(c);
    init_params(c, M.params.data(), seed);
    std::vector<int> tok = random_tokens(B * T, c.V, seed + 1), tgt = random_tokens(B * T, c.V, seed + 2);
    const float loss_ref = model_forward(M, tok.data(), tgt.data(), B, T);
    std::vector<float> logits_ref;
    for (int i = 0; i < B * T; i++) logits_ref.insert(logits_ref.end(), M.logits + (size_t)i * c.Vp, M.logits + (size_t)i * c.Vp + c.V);
    model_backward(M, 1.0f);
    GpuModel G(c, M.params.data(), tf32, true, bf16);
    G.logits_chunk = logits_chunk;
    // As a step starts: the last step's gradients (NaN here) are overwritten by the first
    // backward, not added to; one left unwritten stays NaN and fails.
    cudaCheck(cudaMemset(G.grads, 0xff, G.P * sizeof(float)));
    G.zero_grads();
    double logits_err = 0;
    if (!logits_chunk) {
        G.forward(tok.data(), nullptr, B, T);  // the logits (a forward with targets turns them into their gradient)
        logits_err = max_rel(G.logits_host(), logits_ref);
    }
    G.forward_async(tok.data(), tgt.data(), B, T);
    double z;  // model.h §10's z term, 0 without
    const float loss = G.take_loss(&z);
    ModelDiff d{std::fabs(loss - loss_ref) / loss_ref, logits_err, 0.0, c.z_loss > 0 ? std::fabs(z - M.z_term) / M.z_term : z, ""};
    G.backward(1.0f);
    const std::vector<float> grads = G.download(G.grads, G.P);
    for (const ParamTensor& t : param_tensors(c)) {
        const double e = max_rel(grads.data() + t.offset, M.grads.data() + t.offset, t.size());
        if (std::isnan(e) || e > d.grads) { d.grads = e; d.worst = t.name; }  // a NaN stays the worst: it fails
    }
    MESSAGE(variant_name(c) << std::string(bf16 ? " bf16" : tf32 ? " TF32" : " fp32") << " block " << block_name(c) << " hd " << c.hd()
                            << " T " << T << ": loss " << d.loss << ", logits " << d.logits << ", gradients " << d.grads << " ("
                            << d.worst << "), z-loss " << d.z);
    return d;
}

TEST_CASE("GPU model: loss, logits and every gradient equal the CPU model, all five variants") {
    // Every variant at hd 4, T = 9, B = 2 (one tile holds a sequence's rows; the generic
    // attention instance); then the compiled instances hd 32 and 64 at T = 23, B = 1: 69 rows
    // (K = 3) cross two edges of 32-row tiles (kAttnTile), the last tile partial (5 rows),
    // with the originals/hidden edge (row 23) inside the first tile and windows across edges.
    struct Shape { const char* variant; int T, hd; };
    std::vector<Shape> shapes;
    for (const char* v : {"vanilla", "phd-3", "phd-swa-3-2", "phd-cswa-3-2-2", "naive-2"}) shapes.push_back({v, 9, 4});
    shapes.push_back({"phd-cswa-3-2-2", 23, 32});
    shapes.push_back({"phd-swa-3-2", 23, 64});
    for (const Shape& sh : shapes) {
        const ModelDiff d = gpu_model_diff(model_config(sh.variant, sh.T, sh.hd), sh.T == 9 ? 2 : 1, sh.T, false, 21);
        INFO(std::string(sh.variant) << " hd " << sh.hd << ", worst gradient " << d.worst);
        CHECK(d.loss <= 1e-6);   // loss: 1e-6 relative
        CHECK(d.logits < 1e-5);  // logits: 1e-5 of their scale
        CHECK(d.grads < 1e-5);   // every gradient: 1e-5 of its tensor's scale (measured: <= 7e-7 emulated, <= 1.1e-6 on an H200)
    }
}

TEST_CASE("GPU model with the OLMo 2 block and each of its options (model.h §10): fp32 equals the CPU model, bf16 within its precision") {
    // fp32 at hd 4 (T = 9, B = 2) and the compiled hd 32 (T = 23, B = 1), as the test above;
    // bf16 at hd 16 and 64, as the bf16 test below. A z-loss of 0.05: its gradient is seen.
    // Under ThreadSanitizer the OLMo 2 block at the smaller head sizes only: the same kernels.
    for (const char* block : {"olmo2", "qk-norm", "reordered"})
        for (int hd : {4, 32}) {
            if (kUnderTsan && (hd != 4 || std::string(block) != "olmo2")) continue;
            const int T = hd == 4 ? 9 : 23;
            const ModelDiff d = gpu_model_diff(with_block(model_config("phd-cswa-3-2-2", T, hd), block, 0.05f), hd == 4 ? 2 : 1, T, false, 23);
            INFO(block << " fp32 hd " << hd << ", worst gradient " << d.worst);
            CHECK(d.loss <= 1e-6);
            CHECK(d.logits < 1e-5);
            CHECK(d.grads < 1e-5);
            CHECK(d.z <= 1e-6);  // the z term: 1e-6 relative (0 exactly without z-loss)
        }
    for (const char* block : {"olmo2", "qk-norm", "reordered"})
        for (int hd : {16, 64}) {
            if (kUnderTsan && (hd != 16 || std::string(block) != "olmo2")) continue;
            const int T = hd == 16 ? 9 : 23;
            const ModelDiff d = gpu_model_diff(with_block(model_config("phd-cswa-3-2-2", T, hd), block, 0.05f), hd == 16 ? 2 : 1, T, false, 53, true);
            INFO(block << " bf16 hd " << hd << ", worst gradient " << d.worst);
            CHECK(d.loss <= 1e-3);
            CHECK(d.logits < 1e-2);
            // 2e-2 as below, but 6e-2 with both options (seen 4.3e-2 in layer 0's wq at hd 64):
            // there q and k come from x itself, and qk-norm's backward takes dq's component
            // along q away, so the bf16 rounding of dq (which does not cancel) weighs more.
            // fp32 above holds the same code to 1e-5.
            CHECK(d.grads < (std::string(block) == "olmo2" ? 6e-2 : 2e-2));
            CHECK(d.grads > 1e-4);
            CHECK(d.z <= 1e-2);
        }
}

// One step of G (forward with targets, backward) on a batch; emulated, what the device then
// holds beyond what it held before is what G.activation_bytes counts, plus at most `slack`
// (the bf16 attention's tile maps, made at a shape's first launch).
static void step_holding_what_is_counted(GpuModel& G, const std::vector<int>& tok, const std::vector<int>& tgt, int B, int T, size_t slack) {
#ifndef __CUDACC__
    const size_t before = cuda_emu::device_memory().used;
#endif
    G.zero_grads();
    G.forward_async(tok.data(), tgt.data(), B, T);
    G.backward(1.0f);
#ifndef __CUDACC__
    const size_t held = cuda_emu::device_memory().used - before, counted = G.activation_bytes(B, T);
    CHECK(held >= counted);
    CHECK(held <= counted + slack);
#else
    (void)slack;
#endif
}

TEST_CASE("GPU model, --recompute 1 and 2: the gradients of 0 bit for bit, fp32 and bf16, every block; less memory, as counted") {
    // Three layers at hd 16, T = 9, B = 2: the backward recomputes layers 1 and 0 into what
    // they share with layer 2, whose own values are still there. The gradients, losses and
    // logits must keep their bits; a recomputation that skipped a kernel, or read a tensor
    // another layer overwrote, would change them. Emulated: what the device holds once a
    // step has run is what GpuModel::activation_bytes counted, no more.
    const int B = 2, T = 9;
    for (const char* block : kBlocks)
        for (bool bf16 : {false, true}) {
            if (kUnderTsan && (bf16 || std::string(block) != "olmo2")) continue;
            Config c = with_block(model_config("phd-cswa-3-2-2", T, 16), block, 0.05f);
            c.L = 3;
            std::vector<float> params(num_params(c));
            init_params(c, params.data(), 71);
            const std::vector<int> tok = random_tokens(B * T, c.V, 72), tgt = random_tokens(B * T, c.V, 73);
            std::vector<float> grads[3];
            size_t bytes[3];
            for (int r = 0; r < 3; r++) {
                INFO(std::string(block) << (bf16 ? " bf16" : " fp32") << " --recompute " << r);
                GpuModel G(c, params.data(), false, true, bf16);
                G.recompute = r;
                step_holding_what_is_counted(G, tok, tgt, B, T, bf16 ? 4096 : 0);
                grads[r] = G.download(G.grads, G.P);
                bytes[r] = G.activation_bytes(B, T);
                if (r == 0) continue;
                CHECK(grads[r] == grads[0]);
                CHECK(bytes[r] < bytes[r - 1]);
            }
        }
}

TEST_CASE("GPU model with TF32 tensor cores (hd 16, 32, 64): within TF32 precision of the CPU model, and not fp32's") {
    // hd 16 at T = 9, B = 2 (27 rows: one block of kTcBlockRows = 64), hd 32 and 64 at T = 23,
    // B = 1 (69 rows: 2 blocks, the second of 5 rows; 5 warps of kTcRows = 16 rows, the
    // originals/hidden edge at row 23 inside the second; 3 key tiles of 32).
    for (int hd : {16, 32, 64}) {
        const int T = hd == 16 ? 9 : 23;
        const ModelDiff d = gpu_model_diff(model_config("phd-cswa-3-2-2", T, hd), hd == 16 ? 2 : 1, T, true, 41);
        INFO("hd " << hd << ", worst gradient " << d.worst);
        CHECK(d.loss <= 1e-3);   // loss: 1e-3 relative
        CHECK(d.logits < 3e-3);  // logits: 3e-3 of their scale (TF32 rounds inputs to 2^-11)
        CHECK(d.grads < 3e-3);   // every gradient: 3e-3 of its tensor's scale (measured 1.0e-3 to 1.4e-3)
        CHECK(d.grads > 1e-4);   // and far from fp32's (< 1e-5, test above): TF32 is really used
    }
}

TEST_CASE("GPU model in bf16 (hd 16, 64, 128): matmuls and attention within bf16 precision of the CPU model, and not fp32's") {
    // As the TF32 test's shapes: 27 rows at hd 16 (one 64-row block), 69 at hd 64 (two); at
    // hd 128 (where the dK/dV kernel takes a query tile in two steps) 195 rows at T = 65, B =
    // 1: 4 query blocks over 4 key tiles of kBfKeys = 64 (the last of 3 rows), so the
    // pipeline's two stages are each refilled, with the originals/hidden edge (row 65) in
    // the second tile.
    for (int hd : {16, 64, 128}) {
        if (kUnderTsan && hd == 128) continue;  // the kernel table runs the hd 128 instances under TSan
        const int T = hd == 16 ? 9 : hd == 64 ? 23 : 65;
        const ModelDiff d = gpu_model_diff(model_config("phd-cswa-3-2-2", T, hd), hd == 16 ? 2 : 1, T, false, 51, true);
        INFO("hd " << hd << ", worst gradient " << d.worst);
        CHECK(d.loss <= 1e-3);   // loss: 1e-3 relative
        // bf16 keeps 8 bits: every matmul's inputs, P, dS and o rounded at 2^-9 relative
        CHECK(d.logits < 1e-2);  // logits: 1e-2 of their scale (seen 2.0e-3, 3.0e-3, 4.2e-3)
        CHECK(d.grads < 2e-2);   // every gradient: 2e-2 of its tensor's scale (seen 9.0e-3, 1.1e-2, 1.3e-2)
        CHECK(d.grads > 1e-4);   // and far from fp32's (< 1e-5): the bf16 kernels really ran
    }
}

// --logits-chunk (bf16 runs): the head and the loss 5 rows at a time of 18 (three whole
// chunks and a partial one), the backward's head made again chunk by chunk, wout's gradient
// summed over them. Within bf16's precision of the CPU model, as without chunks; emulated,
// the device holds one chunk's logits, as counted.
TEST_CASE("GPU model in bf16 with its logits in chunks: within bf16 precision of the CPU model; one chunk's logits held, as counted") {
    if (kUnderTsan) return;  // the same kernels as the models above, in another order on one stream
    const int B = 2, T = 9, chunk = 5;
    const Config c = model_config("phd-cswa-3-2-2", T, 16);
    for (const char* block : {"llama", "olmo2"}) {  // olmo2: the z-loss's sum and gradient too
        const ModelDiff d = gpu_model_diff(with_block(c, block, 0.05f), B, T, false, 51, true, chunk);
        INFO(block << ": worst gradient " << d.worst);
        CHECK(d.loss <= 1e-3);
        CHECK(d.grads < 2e-2);
        CHECK(d.grads > 1e-4);
        CHECK(d.z <= 1e-2);
    }
    const size_t whole = GpuModel::activation_bytes(c, B, T, true, true, 0, 0), chunked = GpuModel::activation_bytes(c, B, T, true, true, 0, chunk);
    CHECK(whole - chunked == (size_t)(B * T - chunk) * c.Vp * sizeof(__nv_bfloat16));
    std::vector<float> params(num_params(c));
    init_params(c, params.data(), 71);
    GpuModel G(c, params.data(), false, true, true);
    G.logits_chunk = chunk;
    REQUIRE(G.activation_bytes(B, T) == chunked);
    step_holding_what_is_counted(G, random_tokens(B * T, c.V, 72), random_tokens(B * T, c.V, 73), B, T, 4096);
}

TEST_CASE("GPU model: a step's micro-batches add their gradients and losses, as the CPU model's do, with no wait between them") {
    // Three micro-batches queued as train_phd queues them: the third refills the pinned
    // tokens that the first's copy read, which (the emulation runs work as late as it may)
    // has run only because the host waited for it.
    const int B = 2, T = 9, micros = 3;
    const Config c = model_config("phd-cswa-3-2-2", T, 16);
    Model<float> M(c);
    init_params(c, M.params.data(), 51);
    GpuModel G(c, M.params.data(), false);
    cudaCheck(cudaMemset(G.grads, 0xff, G.P * sizeof(float)));
    G.zero_grads();
    double loss_ref = 0;
    for (int micro = 0; micro < micros; micro++) {
        std::vector<int> tok = random_tokens(B * T, c.V, 52 + micro), tgt = random_tokens(B * T, c.V, 55 + micro);
        loss_ref += model_forward(M, tok.data(), tgt.data(), B, T);
        model_backward(M, 1.0f / micros);
        G.forward_async(tok.data(), tgt.data(), B, T);
        G.backward(1.0f / micros);
    }
    CHECK(std::fabs(G.take_loss() - loss_ref) <= 1e-6 * loss_ref);
    const std::vector<float> grads = G.download(G.grads, G.P);
    for (const ParamTensor& t : param_tensors(c)) {
        INFO(t.name);
        CHECK(max_rel(grads.data() + t.offset, M.grads.data() + t.offset, t.size()) < 1e-5);
    }
}

// One training step of G as GpuEngine makes it on one rank (kernels/engine.h), without a
// graph: zero the gradients, forward, backward, the gradient norm and clip scale, AdamW (m,
// v: its moments; gn: the norm's buffers; now: its step's numbers). Returns the forward's loss.
static float gpu_train_step(GpuModel& G, const AdamW& o, float* m, float* v, GradNorm& gn, AdamWStep& now, const std::vector<int>& tok,
                            const std::vector<int>& tgt, int B, int T, int step, float lr) {
    G.zero_grads();
    const float loss = G.forward(tok.data(), tgt.data(), B, T);
    G.backward(1.0f);
    gn.run(G.grads, G.P, o.clip, G.stream);
    now.set(o, step, lr);
    now.upload(G.stream);
    adamw_update(*G.tensors, o, G.params, G.grads, m, v, now.dev, gn.scale, G.stream, G.params16);
    now.read_by(G.stream);
    return loss;
}

TEST_CASE("GPU model: 10 AdamW steps follow the CPU's losses; two GPU runs give identical bits") {
    const int B = 2, T = 9, steps = 10;
    Config c = tiny_config("phd-cswa-3-2-2", 11, T);
    std::vector<float> init(num_params(c));
    init_params(c, init.data(), 31);
    std::vector<int> tok = random_tokens(B * T, c.V, 32), tgt = random_tokens(B * T, c.V, 33);
    AdamW o;
    o.lr_max = 3e-3f; o.warmup = 2; o.total_steps = steps;
    Model<float> M(c);
    M.params = init;
    std::vector<float> m(init.size()), v(init.size()), cpu_losses;
    for (int s = 0; s < steps; s++) {
        std::fill(M.grads.begin(), M.grads.end(), 0.0f);
        cpu_losses.push_back(model_forward(M, tok.data(), tgt.data(), B, T));
        model_backward(M, 1.0f);
        adamw_update(c, o, M.params.data(), M.grads.data(), m.data(), v.data(), s, learning_rate(o, s), grad_norm(M.grads.data(), M.grads.size()));
    }
    auto gpu_run = [&](std::vector<float>* final_params) {
        GpuModel G(c, init.data(), false);
        float *d_m = to_device(std::vector<float>(G.P, 0.0f)), *d_v = to_device(std::vector<float>(G.P, 0.0f));
        GradNorm gn;
        AdamWStep now;
        std::vector<float> losses;
        for (int s = 0; s < steps; s++) losses.push_back(gpu_train_step(G, o, d_m, d_v, gn, now, tok, tgt, B, T, s, learning_rate(o, s)));
        *final_params = G.download(G.params, G.P);
        for (void* q : {(void*)d_m, (void*)d_v}) cudaCheck(cudaFree(q));
        return losses;
    };
    std::vector<float> p1;
    std::vector<float> l1 = gpu_run(&p1);
    for (int s = 0; s < steps; s++) {
        INFO("step " << s << ": GPU " << l1[s] << ", CPU " << cpu_losses[s]);
        CHECK(std::fabs(l1[s] - cpu_losses[s]) <= 1e-4f * cpu_losses[s]);  // 1e-4 relative after up to 9 updates
    }
    CHECK(l1.back() < l1.front() - 0.1f);  // and it learns
    // Deterministic: a second model from the same weights gives the same loss and gradient bits.
    GpuModel G1(c, p1.data(), false), G2(c, p1.data(), false);
    CHECK(G1.forward(tok.data(), tgt.data(), B, T) == G2.forward(tok.data(), tgt.data(), B, T));
    G1.backward(1.0f);
    G2.backward(1.0f);
    CHECK(G1.download(G1.grads, G1.P) == G2.download(G2.grads, G2.P));
}

TEST_CASE("GPU engine: a forward of shorter rows between steps (an eval's) keeps the step's buffers and graph; the same bits without a graph") {
    // An eval scores rows of its longest example, shorter than training's T: laid out in the
    // training batch's buffers, so the next step finds the addresses its graph was captured
    // with and replays it. Without a graph, and without the evals, the same weights.
    const int B = 2, T = 16, steps = 4;
    Config c = tiny_config("phd-cswa-2-3-2", 11, T);
    c.D = 32; c.H = 2; c.Hkv = 1; c.F = 48;  // head size 16: a bf16 attention instance
    std::vector<float> init(num_params(c));
    init_params(c, init.data(), 71);
    AdamW o;
    o.lr_max = 1e-2f; o.warmup = 1; o.total_steps = steps;
    auto run = [&](bool graphs, bool evals, int* graph_steps) {
        EngineOptions eo;
        eo.bf16 = true;
        eo.graphs = graphs;
        GpuEngine E(c, init, eo);
        for (int s = 0; s < steps; s++) {
            const std::vector<int> tok = random_tokens(B * T, c.V, 80 + s), tgt = random_tokens(B * T, c.V, 90 + s);
            E.stage(tok.data(), tgt.data(), 1, B, T, o, s, learning_rate(o, s));
            E.step(1, 1.0f, o, true);
            CHECK(std::isfinite(E.norm()));
            E.take_loss();
            if (evals && s >= 2) {  // after the capture: an eval's forward at rows of 8
                const std::vector<int> etok = random_tokens(B * 8, c.V, 100 + s);
                CHECK(std::isfinite(E.forward(etok.data(), etok.data(), B, 8)));
            }
        }
        *graph_steps = E.graph_steps;
        return E.G.download(E.G.params, E.G.P);
    };
    int with = 0, without = 0, no_evals = 0;
    const std::vector<float> p_graph = run(true, true, &with), p_plain = run(false, true, &without), p_no_evals = run(true, false, &no_evals);
    CHECK(with == steps - 1);  // the first warms up; the second is captured, the rest replay it, evals between
    CHECK(without == 0);
    CHECK(p_graph == p_plain);
    CHECK(p_graph == p_no_evals);
}

// The counted budget (dev/bench_gpu.cu --budget): one bf16 training step with a ledger open.
static Ledger count_step(const Config& c, const std::vector<float>& init, const std::vector<int>& tok, const std::vector<int>& tgt, int B,
                         int T) {
    GpuModel G(c, init.data(), false, true, true);
    float *m = to_device(std::vector<float>(G.P, 0.0f)), *v = to_device(std::vector<float>(G.P, 0.0f));
    GradNorm gn;
    AdamWStep now;
    Ledger l;
    open_ledger() = &l;
    gpu_train_step(G, AdamW{}, m, v, gn, now, tok, tgt, B, T, 0, 1e-3f);
    open_ledger() = nullptr;
    cudaCheck(cudaDeviceSynchronize());
    for (void* q : {(void*)m, (void*)v}) cudaCheck(cudaFree(q));
    return l;
}

TEST_CASE("counted budget: a bf16 step's launches count the model's FLOPs and the optimizer's bytes; a dry run counts the same") {
    const int B = 2, T = 23;
    const Config c = model_config("phd-cswa-3-2-2", T, 32);
    std::vector<float> init(num_params(c));
    init_params(c, init.data(), 61);
    const std::vector<int> tok = random_tokens(B * T, c.V, 62), tgt = random_tokens(B * T, c.V, 63);
    const Ledger l = count_step(c, init, tok, tgt, B, T);
    double gemm = 0, attention = 0, other = 0;
    std::map<std::string, int> n;
    std::map<std::string, double> bytes;
    for (const CountedLaunch& x : l.launches) {
        (x.what.rfind("matmul", 0) == 0 ? gemm : x.what.rfind("attention", 0) == 0 ? attention : other) += x.flops;
        n[x.what]++;
        bytes[x.what] += x.bytes;
    }
    // 2 FLOPs a multiply-add, 3 products a weight (forward, dx, dW): the body on all B*T*K
    // rows, the head (padded vocabulary) on the B*T last copies.
    const double rows = (double)B * T * c.K,
                 layer = (double)c.D * c.qkv_dim() + (double)c.H * c.hd() * c.D + (double)c.D * 2 * c.F + (double)c.F * c.D;
    CHECK(gemm == 6 * (rows * c.L * layer + (double)B * T * c.D * c.Vp));
    // Attention's 2 + 3 + 4 products of 2 hd FLOPs a visible pair and head, in every layer.
    CHECK(attention == 18.0 * c.hd() * B * c.H * c.L * visible_pairs(c, T));
    CHECK(other == 0);
    CHECK(n["attention_forward"] == c.L);
    CHECK(n["matmul qkv backward dW"] == c.L);
    CHECK(n["rmsnorm_forward"] == 2 * c.L + 1);
    CHECK(n["adamw"] == 1);  // every tensor in one launch
    const double P = (double)num_params(c);
    CHECK(n.count("zero_grads") == 0);  // the first backward writes the gradients: no pass of its own
    CHECK(bytes["embedding_backward zero"] == 4.0 * c.Vp * c.D);  // but E's, which the scatter only adds to
    CHECK(bytes["grad_norm"] == 4 * P);
    CHECK(bytes["adamw"] == 30 * P);  // p, m, v read and written, g read, the bf16 copy written
#ifndef __CUDACC__
    cuda_emu::dry_run() = true;
    const Ledger dry = count_step(c, init, tok, tgt, B, T);
    cuda_emu::dry_run() = false;
    REQUIRE(dry.launches.size() == l.launches.size());
    for (size_t i = 0; i < l.launches.size(); i++) {
        INFO("launch " << i << ": " << l.launches[i].what);
        CHECK(dry.launches[i].what == l.launches[i].what);
        CHECK(dry.launches[i].bytes == l.launches[i].bytes);
        CHECK(dry.launches[i].flops == l.launches[i].flops);
    }
#endif
}
