// The model's CUDA kernels against the CPU reference (model.h), at shapes that are not
// multiples of any tile: T = 37, K = 3, W = 5, C = 4, D = 96, H = 6, Hkv = 2 (hd = 16;
// attention also at hd = 64 and 12); the whole model at hd 4, 16, 32 and 64.
// Built into the same binaries as test_gpu.cu: emulated on the CPU and natively.
#include <set>
#include <vector>
#include <doctest/doctest.h>
#include "../kernels/adamw.cuh"
#include "../kernels/attention.cuh"
#include "../kernels/gpu_model.cuh"
#include "../kernels/layers.cuh"
#include "../kernels/loss.cuh"
#include "test_gpu_util.h"
#include "test_util.h"

// dq, dk and dv (the q, k and v column blocks of every row of a dqkv tensor), each to its
// own scale: compared as one tensor, the block with the largest values would set the scale
// of all three. Each must be within tol.
static void check_dqkv(const std::vector<float>& got, const std::vector<float>& want, const Config& c, double tol, const std::string& what) {
    const int hd = c.hd(), ld = c.qkv_dim(), edge[4] = {0, c.H * hd, (c.H + c.Hkv) * hd, ld};
    double err[3];
    for (int blk = 0; blk < 3; blk++) {
        std::vector<float> a, b;
        for (size_t r = 0; r < got.size() / ld; r++) {
            a.insert(a.end(), got.begin() + r * ld + edge[blk], got.begin() + r * ld + edge[blk + 1]);
            b.insert(b.end(), want.begin() + r * ld + edge[blk], want.begin() + r * ld + edge[blk + 1]);
        }
        err[blk] = max_rel(a, b);
    }
    MESSAGE(what << ": dq " << err[0] << ", dk " << err[1] << ", dv " << err[2] << " of their own scales");
    CHECK(err[0] < tol);
    CHECK(err[1] < tol);
    CHECK(err[2] < tol);
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
                            regrouped_token(c, T, i, &n, &qc);
                            regrouped_token(c, T, j, &m, &kc);
                            INFO(std::string(v) << ": query row " << i << ", key row " << j);
                            REQUIRE(phd_visible(c, n, qc, m, kc));
                        }
                }
        }
        MESSAGE(std::string(v) << ": " << full << " tiles unmasked");
        CHECK(full > 0);  // the fast path is taken
    }
}

TEST_CASE("attention kernels: forward and backward equal the CPU reference; only tiles with visible pairs are visited") {
    const int B = 2;
    // Every variant at hd = 16 (a compiled head size), T = 37; one also at hd = 64 (the GPT-2
    // size) and hd = 12 (read at run time: the kernels' generic instance); phd-2 at T = 80,
    // where hidden rows have tiles without a mask in the tensor-core kernels.
    struct Shape { const char* variant; int D, H, Hkv, T; };
    std::vector<Shape> shapes;
    for (const char* v : {"vanilla", "phd-3", "phd-swa-3-5", "phd-cswa-3-5-4", "naive-3"}) shapes.push_back({v, 96, 6, 2, 37});
    shapes.push_back({"phd-cswa-3-5-4", 128, 2, 1, 37});
    shapes.push_back({"phd-swa-3-5", 96, 8, 2, 37});
    shapes.push_back({"phd-2", 32, 2, 1, 80});
    for (const Shape& sh : shapes) {
        const char* v = sh.variant;
        const int T = sh.T;
        Config c = tiny_config(v, 11, T);
        c.D = sh.D; c.H = sh.H; c.Hkv = sh.Hkv;
        const int TK = T * c.K, ld = c.qkv_dim(), od = c.H * c.hd();
        std::vector<float> qkv = random_vec<float>((size_t)B * TK * ld, 1, 1.5), dout = random_vec<float>((size_t)B * TK * od, 2);
        std::vector<float> o_ref((size_t)B * TK * od), lse_ref((size_t)B * c.H * TK), dqkv_ref(qkv.size());
        attention_forward(o_ref.data(), lse_ref.data(), qkv.data(), c, B, T);
        attention_backward(dqkv_ref.data(), dout.data(), qkv.data(), o_ref.data(), lse_ref.data(), c, B, T);

        float *d_qkv = to_device(regroup_rows(qkv, c, B, T, ld, true)), *d_dout = to_device(regroup_rows(dout, c, B, T, od, true));
        float *d_o = to_device(std::vector<float>(o_ref.size())), *d_lse = to_device(std::vector<float>(lse_ref.size()));
        float* d_dqkv = to_device(std::vector<float>(qkv.size(), NAN));  // every element must be written
        int* d_visited = to_device(std::vector<int>{0});
        attention_forward(d_o, d_lse, d_qkv, c, B, T, nullptr, d_visited);
        attention_backward(d_dqkv, d_dout, d_qkv, d_o, d_lse, c, B, T, nullptr);
        std::vector<float> o = regroup_rows(to_host(d_o, o_ref.size()), c, B, T, od, false);
        std::vector<float> dqkv = regroup_rows(to_host(d_dqkv, qkv.size()), c, B, T, ld, false);
        // lse (B, H, TK) is B*H sequences of TK rows of width 1.
        std::vector<float> lse = regroup_rows(to_host(d_lse, lse_ref.size()), c, B * c.H, T, 1, false);
        INFO(std::string(v) << " hd " << c.hd());
        CHECK(max_rel(o, o_ref) < 1e-5);        // o: 1e-5 of its scale
        CHECK(max_rel(lse, lse_ref) < 1e-6);    // lse: 1e-6 of its scale
        check_dqkv(dqkv, dqkv_ref, c, 1e-4, std::string(v) + " fp32");  // dq, dk, dv: 1e-4 of each one's scale (longer sums, other order)

        // Visited tiles: exactly the (query tile, key tile) pairs holding a visible pair, for
        // query tiles of `rows` rows.
        auto tiles_wanted = [&](int rows, long* all) {
            long want = 0;
            *all = 0;
            for (int q0 = 0; q0 < TK; q0 += rows)
                for (int k0 = 0; k0 < TK; k0 += kAttnTile) {
                    bool any = false;
                    for (int i = q0; i < std::min(q0 + rows, TK) && !any; i++)
                        for (int j = k0; j < std::min(k0 + kAttnTile, TK) && !any; j++) {
                            int n, qc, m, kc;
                            regrouped_token(c, T, i, &n, &qc);
                            regrouped_token(c, T, j, &m, &kc);
                            any = phd_visible(c, n, qc, m, kc);
                        }
                    want += any;
                    ++*all;
                }
            return (long)B * c.H * want;
        };
        long all;
        const long want = tiles_wanted(kAttnTile, &all);
        int visited = to_host(d_visited, 1)[0];
        MESSAGE(std::string(v) << ": visited " << visited << " of " << (long)B * c.H * all << " tiles");
        CHECK(visited == want);

        // Deterministic: a second backward gives the same bits.
        attention_backward(d_dqkv, d_dout, d_qkv, d_o, d_lse, c, B, T, nullptr);
        CHECK(regroup_rows(to_host(d_dqkv, qkv.size()), c, B, T, ld, false) == dqkv);

        // The tensor-core (TF32) kernels, where the head size has an instance: the same
        // attention to TF32 precision, and the forward's own 16-row query tiles visited exactly.
        if (compiled_head_dim(c)) {
            cudaCheck(cudaMemset(d_visited, 0, sizeof(int)));
            cudaCheck(cudaMemset(d_o, 0xff, o_ref.size() * sizeof(float)));  // NaN: every element must be written
            attention_forward(d_o, d_lse, d_qkv, c, B, T, nullptr, d_visited, true);
            std::vector<float> o_tc = regroup_rows(to_host(d_o, o_ref.size()), c, B, T, od, false);
            lse = regroup_rows(to_host(d_lse, lse_ref.size()), c, B * c.H, T, 1, false);
            MESSAGE(std::string(v) << " tensor cores: o " << max_rel(o_tc, o_ref) << ", lse " << max_rel(lse, lse_ref) << " of scale");
            CHECK(max_rel(o_tc, o_ref) < 5e-3);  // o: TF32 inputs (2^-11 relative rounding) over hd-long sums
            CHECK(max_rel(lse, lse_ref) < 1e-3);
            const long want_tc = tiles_wanted(kTcRows, &all);
            CHECK(to_host(d_visited, 1)[0] == want_tc);
            // The tensor-core backward on that forward's o and lse; deterministic too.
            cudaCheck(cudaMemset(d_dqkv, 0xff, qkv.size() * sizeof(float)));  // NaN: every element must be written
            attention_backward(d_dqkv, d_dout, d_qkv, d_o, d_lse, c, B, T, nullptr, true);
            std::vector<float> dqkv_tc = regroup_rows(to_host(d_dqkv, qkv.size()), c, B, T, ld, false);
            check_dqkv(dqkv_tc, dqkv_ref, c, 5e-3, std::string(v) + " tensor cores");  // TF32 inputs and P, dS rounded to TF32
            attention_backward(d_dqkv, d_dout, d_qkv, d_o, d_lse, c, B, T, nullptr, true);
            CHECK(regroup_rows(to_host(d_dqkv, qkv.size()), c, B, T, ld, false) == dqkv_tc);
        }
        for (void* p : {(void*)d_qkv, (void*)d_dout, (void*)d_o, (void*)d_lse, (void*)d_dqkv, (void*)d_visited}) cudaCheck(cudaFree(p));
    }
}

// The shapes of the kernel tests below: B = 2, T = 37, K = 3 (N = 222 rows), D = 96, F = 200.
static Config kernel_config(const char* variant = "phd-cswa-3-5-4") {
    Config c = tiny_config(variant, 97, 37);
    c.D = 96; c.H = 6; c.Hkv = 2; c.F = 200;
    return c;
}

TEST_CASE("embedding kernels: K-fold repetition, deterministic backward, against the CPU") {
    Config c = kernel_config();
    const int B = 2, T = 37, TK = T * c.K, N = B * TK;
    std::vector<int> tok = random_tokens(B * T, 20, 3);  // a small range: tokens repeat
    std::vector<float> E = random_vec<float>((size_t)c.Vp * c.D, 4), dx = random_vec<float>((size_t)N * c.D, 5);
    std::vector<float> x_ref((size_t)N * c.D), dE_ref = random_vec<float>(E.size(), 6);
    std::vector<float> dE0 = dE_ref;
    embedding_forward(x_ref.data(), tok.data(), E.data(), B, T, c.K, c.D);
    embedding_backward(dE_ref.data(), regroup_rows(dx, c, B, T, c.D, false).data(), tok.data(), B, T, c.K, c.D);
    std::vector<int> row_tok(N);  // the regrouped rows' tokens, as GpuModel lays them out
    for (int i = 0; i < N; i++) row_tok[i] = tok[i / TK * T + regrouped_position(c, T, i % TK)];
    int* d_tok = to_device(row_tok);
    float *d_E = to_device(E), *d_x = to_device(std::vector<float>(x_ref.size())), *d_dx = to_device(dx), *d_dE = to_device(dE0);
    embedding_forward(d_x, d_tok, d_E, N, c.D, nullptr);
    CHECK(regroup_rows(to_host(d_x, x_ref.size()), c, B, T, c.D, false) == x_ref);  // copies: exact
    TokenGroups groups;
    groups.set(row_tok);
    CHECK(groups.count == (int)std::set<int>(tok.begin(), tok.end()).size());
    embedding_backward(d_dE, d_dx, groups, c.D, nullptr);
    std::vector<float> dE = to_host(d_dE, E.size());
    CHECK(max_rel(dE, dE_ref) < 1e-6);  // sums of up to K*B*T/20 rows in another order
    float* d_dE2 = to_device(dE0);
    embedding_backward(d_dE2, d_dx, groups, c.D, nullptr);
    CHECK(to_host(d_dE2, E.size()) == dE);  // deterministic
    for (void* p : {(void*)d_tok, (void*)d_E, (void*)d_x, (void*)d_dx, (void*)d_dE, (void*)d_dE2}) cudaCheck(cudaFree(p));
}

TEST_CASE("rmsnorm, rope and swiglu kernels against the CPU, forward and backward") {
    Config c = kernel_config();
    const int B = 2, T = 37, N = B * T * c.K, D = c.D, F = c.F, ld = c.qkv_dim();
    // rmsnorm (rows in any order: per-row op)
    std::vector<float> x = random_vec<float>((size_t)N * D, 7), g = random_vec<float>(D, 8), dy = random_vec<float>((size_t)N * D, 9);
    std::vector<float> out_ref(x.size()), rstd_ref(N), dx_ref(x.size()), dg_ref(D, 0.5f);
    rmsnorm_forward(out_ref.data(), rstd_ref.data(), x.data(), g.data(), N, D);
    rmsnorm_backward(dx_ref.data(), dg_ref.data(), dy.data(), x.data(), g.data(), rstd_ref.data(), N, D);
    float *d_x = to_device(x), *d_g = to_device(g), *d_out = to_device(std::vector<float>(x.size())), *d_rstd = to_device(std::vector<float>(N));
    float *d_dy = to_device(dy), *d_dg = to_device(std::vector<float>(D, 0.5f));
    rmsnorm_forward(d_out, d_rstd, d_x, d_g, N, D, nullptr);
    CHECK(max_rel(to_host(d_out, x.size()), out_ref) < 1e-6);
    CHECK(max_rel(to_host(d_rstd, N), rstd_ref) < 1e-6);
    float* d_scratch = to_device(std::vector<float>((size_t)kDgChunks * D));
    rmsnorm_backward(d_dy, d_dg, d_dy, d_x, d_g, d_rstd, N, D, d_scratch, nullptr);  // dx aliases dout, as in the model
    CHECK(max_rel(to_host(d_dy, x.size()), dx_ref) < 1e-5);
    CHECK(max_rel(to_host(d_dg, D), dg_ref) < 1e-5);

    // rope: q and k heads of qkv rows, at each row's position n
    Model<float> M(c);
    std::vector<float> qkv = random_vec<float>((size_t)N * ld, 10), rot_ref = qkv;
    std::vector<int> pos(N);
    for (int r = 0; r < N; r++) pos[r] = r % (T * c.K) / c.K;
    rope_forward(rot_ref.data(), pos.data(), c, N, M.rope_cos.data(), M.rope_sin.data());
    float *d_qkv = to_device(qkv), *d_cos = to_device(M.rope_cos), *d_sin = to_device(M.rope_sin);
    int* d_pos = to_device(pos);
    rope_forward(d_qkv, d_pos, c, N, d_cos, d_sin, nullptr);
    CHECK(max_rel(to_host(d_qkv, qkv.size()), rot_ref) < 1e-6);
    rope_backward(d_qkv, d_pos, c, N, d_cos, d_sin, nullptr);  // the inverse rotation restores the input
    CHECK(max_rel(to_host(d_qkv, qkv.size()), qkv) < 1e-6);

    // swiglu
    std::vector<float> h13 = random_vec<float>((size_t)N * 2 * F, 11, 3.0), dgg = random_vec<float>((size_t)N * F, 12);
    std::vector<float> gg_ref((size_t)N * F), dh_ref(h13.size());
    swiglu_forward(gg_ref.data(), h13.data(), N, F);
    swiglu_backward(dh_ref.data(), dgg.data(), h13.data(), N, F);
    float *d_h13 = to_device(h13), *d_gg = to_device(std::vector<float>(gg_ref.size())), *d_dgg = to_device(dgg), *d_dh = to_device(std::vector<float>(h13.size()));
    swiglu_forward(d_gg, d_h13, N, F, nullptr);
    swiglu_backward(d_dh, d_dgg, d_h13, N, F, nullptr);
    CHECK(max_rel(to_host(d_gg, gg_ref.size()), gg_ref) < 1e-6);
    CHECK(max_rel(to_host(d_dh, h13.size()), dh_ref) < 1e-6);
    for (void* p : {(void*)d_x, (void*)d_g, (void*)d_out, (void*)d_rstd, (void*)d_dy, (void*)d_dg, (void*)d_qkv, (void*)d_cos,
                    (void*)d_sin, (void*)d_pos, (void*)d_scratch, (void*)d_h13, (void*)d_gg, (void*)d_dgg, (void*)d_dh})
        cudaCheck(cudaFree(p));
}

TEST_CASE("cross-entropy kernels against the CPU; padded columns get zero gradient") {
    // V = 97 (Vp = 128): below one pass of the kLossThreads (256) threads of a row's block;
    // V = 1000 (Vp = 1024): three full passes and a partial fourth, and a padding of 24
    // columns that the backward's last pass writes.
    struct Shape { int V, Vp; };
    for (Shape sh : {Shape{97, 128}, Shape{1000, 1024}}) {
        const int N = 74, V = sh.V, Vp = sh.Vp;
        INFO("V " << V);
        std::vector<float> z = random_vec<float>((size_t)N * Vp, 13, 4.0);
        std::vector<int> y = random_tokens(N, V, 14);
        std::vector<float> loss_ref(N), lse_ref(N), dz_ref = z;
        crossentropy_forward(loss_ref.data(), lse_ref.data(), z.data(), y.data(), N, V, Vp);
        crossentropy_backward(dz_ref.data(), lse_ref.data(), y.data(), 1.0f / N, N, V, Vp);
        float *d_z = to_device(z), *d_loss = to_device(std::vector<float>(N)), *d_lse = to_device(std::vector<float>(N));
        int* d_y = to_device(y);
        crossentropy_forward(d_loss, d_lse, d_z, d_y, N, V, Vp, nullptr);
        const double e_loss = max_rel(to_host(d_loss, N), loss_ref), e_lse = max_rel(to_host(d_lse, N), lse_ref);
        crossentropy_backward(d_z, d_lse, d_y, 1.0f / N, N, V, Vp, nullptr);
        std::vector<float> dz = to_host(d_z, z.size());
        const double e_dz = max_rel(dz, dz_ref);
        MESSAGE("cross-entropy V " << V << ": loss " << e_loss << ", lse " << e_lse << ", dlogits " << e_dz << " of their scale");
        CHECK(e_loss < 1e-6);  // __expf, __logf and another summation order: 1e-6 of the scale
        CHECK(e_lse < 1e-6);
        CHECK(e_dz < 1e-5);    // __expf's error at the largest logits
        int pad_nonzero = 0;
        for (int i = 0; i < N; i++)
            for (int j = V; j < Vp; j++) pad_nonzero += dz[(size_t)i * Vp + j] != 0.0f;
        CHECK(pad_nonzero == 0);
        for (void* p : {(void*)d_z, (void*)d_loss, (void*)d_lse, (void*)d_y}) cudaCheck(cudaFree(p));
    }
}

TEST_CASE("grad norm and AdamW kernels against the CPU; the norm is deterministic") {
    // P = 8016 (tiny_config): 32 blocks, fewer than the grid's kNormBlocks, one pass; P =
    // 189408 (kernel_config): 2.9 passes of the whole grid (kNormBlocks x kNormThreads =
    // 65536 threads), the last partial, and tensors of many AdamW blocks.
    for (const Config& c : {tiny_config("phd-2"), kernel_config()}) {
        const size_t P = num_params(c);
        INFO("P " << P);
        std::vector<float> p = random_vec<float>(P, 15), g = random_vec<float>(P, 16, 0.01), m = random_vec<float>(P, 17, 0.001), v(P);
        for (size_t i = 0; i < P; i++) v[i] = 1e-4f * (1 + (float)(i % 7));
        AdamW o;
        o.weight_decay = 0.1f;
        double norm_ref = grad_norm(g.data(), P);
        std::vector<float> p_ref = p, m_ref = m, v_ref = v;
        adamw_update(c, o, p_ref.data(), g.data(), m_ref.data(), v_ref.data(), 4, 1e-3f, norm_ref);
        float *d_p = to_device(p), *d_g = to_device(g), *d_m = to_device(m), *d_v = to_device(v);
        double* d_part = to_device(std::vector<double>(kNormBlocks));
        double norm = grad_norm(d_g, P, d_part, nullptr);
        MESSAGE("grad norm of " << P << " elements: relative error " << std::fabs(norm - norm_ref) / norm_ref);
        CHECK(norm == doctest::Approx(norm_ref).epsilon(1e-12));  // double sums in another order
        CHECK(grad_norm(d_g, P, d_part, nullptr) == norm);
        adamw_update(c, o, d_p, d_g, d_m, d_v, 4, 1e-3f, norm, nullptr);
        CHECK(max_rel(to_host(d_p, P), p_ref) < 1e-6);
        CHECK(max_rel(to_host(d_m, P), m_ref) < 1e-6);
        CHECK(max_rel(to_host(d_v, P), v_ref) < 1e-6);
        for (void* q : {(void*)d_p, (void*)d_g, (void*)d_m, (void*)d_v, (void*)d_part}) cudaCheck(cudaFree(q));
    }
}

// ----------------------------------------------------------------------------
// The whole model

// The whole model's shapes: tiny_config (L = 2, V = 11) at head size hd, with GQA: H = 4,
// Hkv = 2 (D = 4 hd), or for hd 64 H = 2, Hkv = 1 (D = 128: the emulated GEMMs stay quick).
static Config model_config(const char* variant, int T, int hd) {
    Config c = tiny_config(variant, 11, T);
    if (hd == 64) { c.H = 2; c.Hkv = 1; }
    c.D = c.H * hd;
    REQUIRE(config_error(c).empty());
    return c;
}

// The GPU model (fp32, or TF32 tensor cores) against the CPU model on one batch from the
// same weights: the loss's relative error, the logits' max_rel, and the worst gradient
// tensor's (each tensor to its own scale) with its name.
struct ModelDiff { double loss, logits, grads; std::string worst; };
static ModelDiff gpu_model_diff(const Config& c, int B, int T, bool tf32, uint64_t seed) {
    Model<float> M(c);
    init_params(c, M.params.data(), seed);
    std::vector<int> tok = random_tokens(B * T, c.V, seed + 1), tgt = random_tokens(B * T, c.V, seed + 2);
    const float loss_ref = model_forward(M, tok.data(), tgt.data(), B, T);
    std::vector<float> logits_ref;
    for (int i = 0; i < B * T; i++) logits_ref.insert(logits_ref.end(), M.logits + (size_t)i * c.Vp, M.logits + (size_t)i * c.Vp + c.V);
    model_backward(M, 1.0f);
    GpuModel G(c, M.params.data(), tf32);
    const float loss = G.forward(tok.data(), tgt.data(), B, T);
    ModelDiff d{std::fabs(loss - loss_ref) / loss_ref, max_rel(G.logits_host(), logits_ref), 0.0, ""};
    G.backward(1.0f);
    const std::vector<float> grads = G.download(G.grads, G.P);
    for (const ParamTensor& t : param_tensors(c)) {
        const double e = max_rel(grads.data() + t.offset, M.grads.data() + t.offset, t.size());
        if (std::isnan(e) || e > d.grads) { d.grads = e; d.worst = t.name; }  // a NaN stays the worst: it fails
    }
    MESSAGE(variant_name(c) << (tf32 ? " TF32" : " fp32") << " hd " << c.hd() << " T " << T << ": loss " << d.loss << ", logits "
                            << d.logits << ", gradients " << d.grads << " (" << d.worst << ")");
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
        double* d_part = to_device(std::vector<double>(kNormBlocks));
        std::vector<float> losses;
        for (int s = 0; s < steps; s++) {
            G.zero_grads();
            losses.push_back(G.forward(tok.data(), tgt.data(), B, T));
            G.backward(1.0f);
            adamw_update(c, o, G.params, G.grads, d_m, d_v, s, learning_rate(o, s), grad_norm(G.grads, G.P, d_part, nullptr), nullptr);
        }
        *final_params = G.download(G.params, G.P);
        for (void* q : {(void*)d_m, (void*)d_v, (void*)d_part}) cudaCheck(cudaFree(q));
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
