// The CPU reference: visibility, every layer's backward against finite differences, the
// whole model per variant, and the invariants of the method (model.h §2-§4: K = 1 is
// vanilla, originals are a vanilla model, structured attention equals dense masked attention).
#include <omp.h>
#include "test_util.h"

// ----------------------------------------------------------------------------
// Visibility

// Masks for K = 3, T = 4 written out by hand from model.h §4. Row = query n*3+c,
// column = key m*3+d; '1' = visible.
static const char* kMaskPhd[12] = {
    "100000000000", "110000000000", "111000000000",
    "100100000000", "100110000000", "100111000000",
    "100100100000", "100100110000", "100100111000",
    "100100100100", "100100100110", "100100100111"};
static const char* kMaskSwa2[12] = {  // W = 2: hidden stream (0,1)(0,2)(1,1)(1,2)(2,1)...
    "100000000000", "110000000000", "111000000000",
    "100100000000", "111110000000", "101111000000",
    "100100100000", "100111110000", "100101111000",
    "100100100100", "100100111110", "100100101111"};
static const char* kMaskCswa22[12] = {  // W = 2, C = 2: the window does not cross position 1|2
    "100000000000", "110000000000", "111000000000",
    "100100000000", "111110000000", "101111000000",
    "100100100000", "100100110000", "100100111000",
    "100100100100", "100100111110", "100100101111"};

static void check_mask(const char* variant, const char* const* rows) {
    Config c = tiny_config(variant);
    for (int i = 0; i < 12; i++)
        for (int j = 0; j < 12; j++) {
            INFO(std::string(variant) << " query " << i << " key " << j);
            CHECK(phd_visible(c, i / 3, i % 3, j / 3, j % 3) == (rows[i][j] == '1'));
        }
}

TEST_CASE("visibility predicate equals hand-written masks for K=3, T=4") {
    check_mask("phd-3", kMaskPhd);
    check_mask("phd-swa-3-2", kMaskSwa2);
    check_mask("phd-cswa-3-2-2", kMaskCswa22);
    const char* naive[12];
    std::vector<std::string> lower(12);
    for (int i = 0; i < 12; i++) { lower[i] = std::string(i + 1, '1') + std::string(11 - i, '0'); naive[i] = lower[i].c_str(); }
    check_mask("naive-3", naive);
}

TEST_CASE("visible_rows holds exactly the predicate's keys, in row order") {
    const char* variants[] = {"vanilla", "phd-1", "phd-2", "phd-4", "naive-3", "phd-swa-1-3", "phd-swa-2-0",
                              "phd-swa-3-1", "phd-swa-3-5", "phd-swa-4-16", "phd-cswa-2-3-1", "phd-cswa-3-2-2",
                              "phd-cswa-3-5-3", "phd-cswa-4-7-4", "phd-cswa-3-16-32"};
    const int T = 11;
    for (const char* v : variants) {
        Config c = tiny_config(v);
        for (int n = 0; n < T; n++)
            for (int q = 0; q < c.K; q++) {
                std::vector<int> want, got;
                for (int j = 0; j < T * c.K; j++) {
                    int m, d;
                    row_token(c, T, j, &m, &d);
                    if (phd_visible(c, n, q, m, d)) want.push_back(j);
                }
                const VisibleRows keys = visible_rows(c, T, n, q);
                for (int t = 0; t < keys.count; t++) got.push_back(keys.row(t));
                INFO(std::string(v) << " query (" << n << "," << q << ")");
                CHECK(got == want);
            }
    }
}

// Windows of 0, 1, a few and more than T hidden tokens; chunks of 1, 2, 3 and 4 positions.
static const char* kWindowVariants[] = {"vanilla", "phd-2", "phd-4", "naive-3", "phd-swa-3-0", "phd-swa-3-1", "phd-swa-3-5",
                                        "phd-swa-4-16", "phd-cswa-2-3-1", "phd-cswa-3-2-2", "phd-cswa-3-5-3", "phd-cswa-4-7-4"};

TEST_CASE("visible_hidden_range: originals [0, n] plus one interval of hidden tokens, exactly the predicate") {
    const int T = 11;
    for (const char* v : kWindowVariants) {
        Config c = tiny_config(v);
        for (int n = 0; n < T; n++)
            for (int q = 0; q < c.K; q++) {
                int lo, hi;
                visible_hidden_range(c, n, q, &lo, &hi);
                INFO(std::string(v) << " query (" << n << "," << q << ") hidden range [" << lo << ", " << hi << "]");
                for (int m = 0; m < T; m++)
                    for (int d = 0; d < c.K; d++) {
                        bool in = d == 0 ? m <= n : (m * (c.K - 1) + d - 1 >= lo && m * (c.K - 1) + d - 1 <= hi);
                        CHECK(in == phd_visible(c, n, q, m, d));
                    }
            }
    }
}

TEST_CASE("hidden_live_from: no query at position >= t sees a hidden token below it, and query (t, 1) sees it") {
    const int T = 11;
    for (const char* v : kWindowVariants) {
        Config c = tiny_config(v);
        for (int t = 0; t < T; t++) {
            const int live = hidden_live_from(c, t);
            INFO(std::string(v) << " t " << t << " live from " << live);
            for (int n = t; n < T; n++)
                for (int q = 0; q < c.K; q++)
                    for (int m = 0; m < T; m++)
                        for (int d = 1; d < c.K; d++)
                            if (phd_visible(c, n, q, m, d)) CHECK(m * (c.K - 1) + d - 1 >= live);
            if (c.K > 1 && live < t * (c.K - 1)) CHECK(phd_visible(c, t, 1, live / (c.K - 1), live % (c.K - 1) + 1));
        }
    }
}

TEST_CASE("variant names parse, print back, and bad ones are rejected") {
    const char* good[] = {"vanilla", "phd-2", "phd-swa-3-16", "phd-cswa-2-16-32", "naive-2", "phd-swa-2-0"};
    for (const char* v : good) {
        Config c;
        CHECK(parse_variant(v, &c).empty());
        CHECK(variant_name(c) == v);
    }
    Config c;
    CHECK(parse_variant("phd-cswa-3-16-32", &c).empty());
    CHECK((c.variant == PHD_CSWA && c.K == 3 && c.W == 16 && c.C == 32));
    const char* bad[] = {"phd-0", "phd--1", "phd-swa-2--1", "phd-cswa-2-4-0", "naive-0", "vanilla-2", "phd",
                         "phd-2x", "swa-2-3", "", "phd-swa-2", "PHD-2", "phd-99999999999", "phd-swa-2-4294967297",
                         "phd-+2", "naive-2-3", "phd-cswa-2-4-", "vanilla-"};
    for (const char* v : bad) {
        Config b;
        INFO(std::string(v));
        CHECK(!parse_variant(v, &b).empty());
    }
    Config v = tiny_config("vanilla");
    v.K = 2;
    CHECK(config_error(v).find("vanilla") != std::string::npos);
    Config g = tiny_config("phd-2");
    g.Hkv = 3;
    CHECK(!config_error(g).empty());
}

// ----------------------------------------------------------------------------
// Each layer's backward against central differences, in double.

TEST_CASE("matmul backward matches finite differences") {
    const int N = 7, I = 13, O = 9;
    auto x = random_vec<double>(N * I, 1), W = random_vec<double>(O * I, 2), R = random_vec<double>(N * O, 3);
    std::vector<double> out(N * O), dx(N * I), dW(O * I, 0.0);
    auto loss = [&]() { matmul_forward(out.data(), x.data(), W.data(), N, I, O); return dot(out, R); };
    loss();
    matmul_backward(dx.data(), dW.data(), R.data(), x.data(), W.data(), N, I, O);
    check_fd("matmul dx", x, dx, loss);
    check_fd("matmul dW", W, dW, loss);
}

TEST_CASE("gemm handles every stride pattern and accumulation, off tile multiples") {
    const int M = 77, N = 101, Kd = 300;  // crosses MR, NR, KC and MC boundaries
    auto A = random_vec<double>(M * Kd, 4), B = random_vec<double>(Kd * N, 5), C0 = random_vec<double>(M * N, 6);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int acc = 0; acc < 2; acc++) {
                std::vector<double> C = C0;
                long ars = ta ? 1 : Kd, acs = ta ? M : 1, brs = tb ? 1 : N, bcs = tb ? Kd : 1;
                gemm(C.data(), N, A.data(), ars, acs, B.data(), brs, bcs, M, N, Kd, acc == 1);
                double worst = 0;
                for (int i = 0; i < M; i++)
                    for (int j = 0; j < N; j++) {
                        double s = acc ? C0[i * N + j] : 0.0;
                        for (int p = 0; p < Kd; p++) s += A[i * ars + p * acs] * B[p * brs + j * bcs];
                        worst = max_nan(worst, std::fabs(s - C[i * N + j]));
                    }
                INFO("transA " << ta << " transB " << tb << " accumulate " << acc);
                CHECK(worst < 1e-12);
            }
}

// The determinism kernels/cpu_gemm.h promises: a row of C is the same bits whether it is computed alone
// (a decode step), among many rows (training), and on any number of threads, because each
// element's sum runs in one order whatever way the work is split.
TEST_CASE("gemm: a row's bits do not depend on the other rows or on the thread count") {
    const int M = 150, N = 1100, Kd = 300;  // several row blocks and column blocks, off every tile
    auto A = random_vec<float>(M * Kd, 21), W = random_vec<float>(N * Kd, 22);
    auto run = [&](int threads, int row0, int rows) {
        const int before = omp_get_max_threads();
        omp_set_num_threads(threads);
        std::vector<float> C((size_t)rows * N);
        gemm(C.data(), N, A.data() + (size_t)row0 * Kd, Kd, 1, W.data(), 1, Kd, rows, N, Kd, false);  // x W^T
        omp_set_num_threads(before);
        return C;
    };
    const std::vector<float> all = run(1, 0, M);
    for (int threads : {2, 3, 8}) CHECK(run(threads, 0, M) == all);
    for (int threads : {1, 2, 3})
        for (int row : {0, 77, M - 1}) {
            std::vector<float> one = run(threads, row, 1);
            INFO("row " << row << ", " << threads << " threads");
            CHECK(std::equal(one.begin(), one.end(), all.begin() + (size_t)row * N));
        }
}

TEST_CASE("rmsnorm backward matches finite differences") {
    const int N = 5, D = 12;
    auto x = random_vec<double>(N * D, 7), g = random_vec<double>(D, 8), R = random_vec<double>(N * D, 9);
    std::vector<double> out(N * D), rstd(N), dx(N * D), dg(D, 0.0);
    auto loss = [&]() { rmsnorm_forward(out.data(), rstd.data(), x.data(), g.data(), N, D); return dot(out, R); };
    loss();
    rmsnorm_backward(dx.data(), dg.data(), R.data(), x.data(), g.data(), rstd.data(), N, D);
    check_fd("rmsnorm dx", x, dx, loss);
    check_fd("rmsnorm dg", g, dg, loss);
}

TEST_CASE("rmsnorm on strided rows and qk-norm: backward matches finite differences, v untouched") {
    Config c = with_block(tiny_config("phd-2"), "qk-norm");
    const int N = 5, ld = c.qkv_dim(), w = c.qk_dim();
    auto x = random_vec<double>(N * ld, 40), g = random_vec<double>(w, 41), R = random_vec<double>(N * ld, 42);
    std::vector<double> y, qk(N * w), rstd(2 * N), dg(w, 0.0);
    auto loss = [&]() { y = x; qk_norm_forward(y.data(), qk.data(), rstd.data(), g.data(), c, N); return dot(y, R); };
    loss();
    std::vector<double> dx = R;
    qk_norm_backward(dx.data(), dg.data(), qk.data(), rstd.data(), g.data(), c, N);
    for (int r = 0; r < N; r++)
        for (int j = w; j < ld; j++) dx[r * ld + j] = R[r * ld + j];  // v passes through: its gradient is R's
    check_fd("qk-norm dx", x, dx, loss);
    check_fd("qk-norm dg", g, dg, loss);
    for (int r = 0; r < N; r++)
        for (int j = 0; j < ld; j++) CHECK((j < w ? qk[r * w + j] : y[r * ld + j]) == x[r * ld + j]);  // q|k kept, v untouched
    // q is normed over its H*hd columns, k over its Hkv*hd: each part has a mean square of 1 at g = 1.
    std::fill(g.begin(), g.end(), 1.0);
    loss();
    for (int part = 0; part < 2; part++) {
        const int off = part ? c.H * c.hd() : 0, width = part ? c.Hkv * c.hd() : c.H * c.hd();
        double ss = 0;
        for (int j = 0; j < width; j++) ss += y[off + j] * y[off + j];
        CHECK(ss / width == doctest::Approx(1.0).epsilon(1e-4));  // 1e-5 of eps in the norm
    }
}

TEST_CASE("rope: backward matches finite differences, and copies of one position rotate alike") {
    Config c = tiny_config("phd-3");
    const int N = 6, ld = c.qkv_dim();
    std::vector<int> pos = {0, 0, 0, 3, 3, 8};
    std::vector<double> cs(c.maxT * c.hd() / 2), sn(cs.size());
    rope_tables(cs.data(), sn.data(), c.maxT, c.hd());
    auto x = random_vec<double>(N * ld, 10), R = random_vec<double>(N * ld, 11);
    std::vector<double> y;
    auto loss = [&]() { y = x; rope_forward(y.data(), pos.data(), c, N, cs.data(), sn.data()); return dot(y, R); };
    loss();
    std::vector<double> dx = R;
    rope_backward(dx.data(), pos.data(), c, N, cs.data(), sn.data());
    check_fd("rope", x, dx, loss);
    // Position 0 is the identity; v columns are never rotated.
    for (int j = 0; j < ld; j++) CHECK(y[j] == x[j]);
    for (int r = 0; r < N; r++)
        for (int j = (c.H + c.Hkv) * c.hd(); j < ld; j++) CHECK(y[r * ld + j] == x[r * ld + j]);
    // The pair (z_i, z_{i+hd/2}) turns by pos * 10000^(-2i/hd): check one element by hand.
    const int hd = c.hd(), i = 1;
    double ang = 3 * pow(10000.0, -2.0 * i / hd);
    double a = x[3 * ld + i], b = x[3 * ld + i + hd / 2];
    CHECK(y[3 * ld + i] == doctest::Approx(a * cos(ang) - b * sin(ang)).epsilon(1e-14));
    CHECK(y[3 * ld + i + hd / 2] == doctest::Approx(a * sin(ang) + b * cos(ang)).epsilon(1e-14));
}

TEST_CASE("attention backward matches finite differences for every variant") {
    const char* variants[] = {"vanilla", "phd-3", "phd-swa-3-2", "phd-cswa-3-2-2", "naive-2"};
    const int B = 2, T = 5;
    for (const char* v : variants) {
        Config c = tiny_config(v);
        const int TK = T * c.K, ld = c.qkv_dim();
        auto qkv = random_vec<double>(B * TK * ld, 12), R = random_vec<double>(B * TK * c.H * c.hd(), 13);
        std::vector<double> o(R.size()), lse(B * c.H * TK), dqkv(qkv.size());
        auto loss = [&]() { attention_forward(o.data(), lse.data(), qkv.data(), c, B, T); return dot(o, R); };
        loss();
        attention_backward(dqkv.data(), R.data(), qkv.data(), o.data(), lse.data(), c, B, T);
        check_fd(v, qkv, dqkv, loss);
    }
}

TEST_CASE("swiglu backward matches finite differences") {
    const int N = 4, F = 9;
    auto h13 = random_vec<double>(N * 2 * F, 14), R = random_vec<double>(N * F, 15);
    std::vector<double> g(N * F), dh(N * 2 * F);
    auto loss = [&]() { swiglu_forward(g.data(), h13.data(), N, F); return dot(g, R); };
    loss();
    swiglu_backward(dh.data(), R.data(), h13.data(), N, F);
    check_fd("swiglu", h13, dh, loss);
}

TEST_CASE("cross-entropy backward matches finite differences; padded columns never count") {
    const int N = 3, V = 11, Vp = 128;
    auto z = random_vec<double>(N * Vp, 16, 3.0);
    std::vector<int> y = {0, 10, 4};
    std::vector<double> l(N), lse(N);
    auto loss = [&]() { crossentropy_forward(l.data(), lse.data(), z.data(), y.data(), N, V, Vp); return l[0] + 2 * l[1] - l[2]; };
    double before = loss();
    std::vector<double> dz = z;
    for (int i = 0; i < N; i++) {  // per-row weights 1, 2, -1 through three single-row calls
        double w[3] = {1, 2, -1};
        crossentropy_backward(dz.data() + i * Vp, lse.data() + i, y.data() + i, w[i], 1, V, Vp);
    }
    check_fd("crossentropy", z, dz, loss);
    for (int j = V; j < Vp; j++) z[j] += 100;  // padded logits change nothing
    CHECK(loss() == before);
    // With the z-loss (model.h §10): rows weighted 1, 2, -1 of loss + zc * lse^2.
    const double zc = 0.3;
    auto zloss = [&]() { loss(); return l[0] + 2 * l[1] - l[2] + zc * (lse[0] * lse[0] + 2 * lse[1] * lse[1] - lse[2] * lse[2]); };
    zloss();
    dz = z;
    for (int i = 0; i < N; i++) {
        double w[3] = {1, 2, -1};
        crossentropy_backward(dz.data() + i * Vp, lse.data() + i, y.data() + i, w[i], 1, V, Vp, zc);
    }
    for (int i = 0; i < N; i++) std::fill(dz.begin() + i * Vp + V, dz.begin() + (i + 1) * Vp, 0.0);
    check_fd("crossentropy with z-loss", z, dz, zloss);
}

TEST_CASE("the row order: originals, then the hidden tokens in stream order; every row once") {
    for (const char* v : {"vanilla", "phd-2", "phd-4", "naive-3"}) {
        Config c = tiny_config(v);
        const int T = 7;
        std::vector<int> seen(T * c.K, 0);
        for (int n = 0; n < T; n++)
            for (int q = 0; q < c.K; q++) {
                const int r = token_row(c, T, n, q);
                REQUIRE(r >= 0);
                REQUIRE(r < T * c.K);
                seen[r]++;
                int m, d;
                row_token(c, T, r, &m, &d);
                CHECK(m == n);
                CHECK(d == q);
                CHECK(row_position(c, T, r) == n);
                CHECK(r == (q == 0 ? n : T + n * (c.K - 1) + q - 1));  // written out: [originals | hidden]
            }
        CHECK(std::count(seen.begin(), seen.end(), 1) == T * c.K);
    }
}

TEST_CASE("embedding repeats every token K times; backward sums the copies") {
    Config c = tiny_config("phd-3");
    const int B = 2, T = 3, K = c.K, D = c.D, Vp = c.Vp;
    auto E = random_vec<double>(Vp * D, 17), R = random_vec<double>(B * T * K * D, 18);
    std::vector<int> tok = {5, 7, 5, 1, 0, 5};
    std::vector<double> x(B * T * K * D), dE(Vp * D, 0.0);
    auto loss = [&]() { embedding_forward(x.data(), tok.data(), E.data(), c, B, T); return dot(x, R); };
    loss();
    for (int r = 0; r < B * T * K; r++)
        for (int j = 0; j < D; j++) CHECK(x[r * D + j] == E[tok[r / (T * K) * T + row_position(c, T, r % (T * K))] * D + j]);
    embedding_backward(dE.data(), R.data(), tok.data(), c, B, T);
    check_fd("embedding", E, dE, loss);
}

// ----------------------------------------------------------------------------
// The whole model

TEST_CASE("whole-model gradients match finite differences for every variant, block and tensor") {
    const char* variants[] = {"vanilla", "phd-3", "phd-swa-3-2", "phd-cswa-3-2-2", "naive-2"};
    const int B = 2, T = 5;
    for (const char* block : kBlocks)
        for (const char* v : variants) {
            if (std::string(block) != "llama" && std::string(block) != "olmo2" && std::string(v) != "phd-cswa-3-2-2") continue;
            Config c = with_block(tiny_config(v), block, 0.05f);  // a z-loss large enough to see
            Model<double> M(c);
            init_params(c, M.params.data(), 42);
            for (double& p : M.params) p *= 4;  // larger weights: gradients well above FD noise
            auto tok = random_tokens(B * T, c.V, 1), tgt = random_tokens(B * T, c.V, 2);
            model_forward(M, tok.data(), tgt.data(), B, T);
            model_backward(M, 1.0);
            for (const ParamTensor& t : param_tensors(c)) {
                // E and wout: the V real rows (the padded ones are covered by their own test).
                size_t n = (t.name == "E" || t.name == "wout") ? (size_t)c.V * c.D : t.size();
                std::vector<double> x(M.params.begin() + t.offset, M.params.begin() + t.offset + n);
                std::vector<double> g(M.grads.begin() + t.offset, M.grads.begin() + t.offset + n);
                auto loss = [&]() {  // what the backward differentiates: the loss and the z-loss
                    std::copy(x.begin(), x.end(), M.params.begin() + t.offset);
                    return model_forward(M, tok.data(), tgt.data(), B, T) + M.z_term;
                };
                // h 1e-6: qk-norm divides layer 0's small q and k (E times wq) by their norm, and
                // central differences at h 1e-5 err by up to 2e-5 there (h^2 times that curvature).
                check_fd((std::string(v) + " " + block + " " + t.name).c_str(), x, g, loss, 1e-6, 1e-6, 80);
            }
        }
}

TEST_CASE("padded vocabulary rows get zero gradient") {
    Config c = tiny_config("phd-2");
    Model<float> M(c);
    init_params(c, M.params.data(), 1);
    auto tok = random_tokens(6, c.V, 3), tgt = random_tokens(6, c.V, 4);
    model_forward(M, tok.data(), tgt.data(), 2, 3);
    model_backward(M, 1.0f);
    for (int r = c.V; r < c.Vp; r++)
        for (int j = 0; j < c.D; j++) {
            CHECK(M.g.E[r * c.D + j] == 0.0f);
            CHECK(M.g.wout[r * c.D + j] == 0.0f);
            CHECK(M.p.E[r * c.D + j] == 0.0f);
        }
}

TEST_CASE("K = 1 of every variant is vanilla to the last bit, in every block") {
    const char* variants[] = {"phd-1", "phd-swa-1-4", "phd-cswa-1-4-2", "naive-1"};
    const int B = 2, T = 7;
    for (const char* block : kBlocks) {
        Config cv = with_block(tiny_config("vanilla"), block);
        Model<float> V(cv);
        init_params(cv, V.params.data(), 5);
        auto tok = random_tokens(B * T, cv.V, 6), tgt = random_tokens(B * T, cv.V, 7);
        float lv = model_forward(V, tok.data(), tgt.data(), B, T);
        model_backward(V, 1.0f);
        for (const char* v : variants) {
            Config c = with_block(tiny_config(v), block);
            Model<float> M(c);
            M.params = V.params;
            float l = model_forward(M, tok.data(), tgt.data(), B, T);
            model_backward(M, 1.0f);
            const std::string what = std::string(v) + " " + block;
            INFO(what);
            CHECK(l == lv);
            CHECK(M.z_term == V.z_term);
            CHECK(std::equal(M.logits, M.logits + B * T * c.Vp, V.logits));
            CHECK(M.grads == V.grads);
        }
    }
}

TEST_CASE("recompute 1 and 2: the gradients of 0 to the last bit, every variant and block, in less memory") {
    // Three layers: layers 1 and 0 are recomputed into what they share with layer 2. Two
    // micro-batches, so that the second forward overwrites the first's shared tensors.
    const int B = 2, T = 7;
    for (const char* block : kBlocks)
        for (const char* v : {"vanilla", "phd-3", "phd-swa-3-2", "phd-cswa-3-2-2", "naive-2"}) {
            Config c = with_block(tiny_config(v), block, 0.05f);
            c.L = 3;
            std::vector<float> grads[3];
            for (int r = 0; r < 3; r++) {
                INFO(v << " " << block << " recompute " << r);
                Model<float> M(c);
                M.recompute = r;
                init_params(c, M.params.data(), 8);
                for (uint64_t seed : {9, 11}) {
                    auto tok = random_tokens(B * T, c.V, seed), tgt = random_tokens(B * T, c.V, seed + 1);
                    model_forward(M, tok.data(), tgt.data(), B, T);
                    model_backward(M, 0.5f);
                }
                grads[r] = M.grads;
                if (r == 0) continue;
                CHECK(grads[r] == grads[0]);
                CHECK(Activations<float>::floats(c, B, T, true, r) < Activations<float>::floats(c, B, T, true, r - 1));
            }
        }
}

TEST_CASE("the originals of phd, phd-swa and phd-cswa are a vanilla model, layer by layer, in every block") {
    const char* variants[] = {"phd-3", "phd-swa-3-2", "phd-cswa-3-2-2", "phd-cswa-2-16-32"};
    const int B = 2, T = 9;
    for (const char* block : kBlocks) {
        Config cv = with_block(tiny_config("vanilla"), block);
        Model<float> V(cv);
        init_params(cv, V.params.data(), 8);
        auto tok = random_tokens(B * T, cv.V, 9);
        model_forward(V, tok.data(), nullptr, B, T);
        for (const char* v : variants) {
            Config c = with_block(tiny_config(v), block);
            Model<float> M(c);
            M.params = V.params;
            model_forward(M, tok.data(), nullptr, B, T);
            int mismatched = 0;
            for (int l = 0; l <= c.L; l++) {
                const float* xm = l < c.L ? M.layer[l].x : M.xL;
                const float* xv = l < c.L ? V.layer[l].x : V.xL;
                for (int b = 0; b < B; b++)  // the originals: rows [0, T) of each sequence
                    mismatched += !std::equal(xm + (size_t)b * T * c.K * c.D, xm + ((size_t)b * T * c.K + T) * c.D, xv + (size_t)b * T * c.D);
            }
            const std::string what = std::string(v) + " " + block;
            INFO(what);
            CHECK(mismatched == 0);
            // The hidden copies do compute something else (from position 1 on: at position 0 every
            // copy sees the same keys and values as the original), so the test can fail.
            const float* copy1 = M.xL + (size_t)token_row(c, T, 1, 1) * c.D;  // (1, 1) against the original of position 1
            CHECK(!std::equal(copy1, copy1 + c.D, V.xL + c.D));
        }
    }
}

// Dense attention: every query against every key, masked with the predicate. Written
// independently of attention_forward, in the same summation order (the row order).
static void dense_attention(float* o, const float* qkv, const Config& c, int B, int T) {
    const int TK = T * c.K, hd = c.hd(), ld = c.qkv_dim(), group = c.H / c.Hkv;
    auto visible = [&](int i, int j) {
        int n, q, m, d;
        row_token(c, T, i, &n, &q);
        row_token(c, T, j, &m, &d);
        return phd_visible(c, n, q, m, d);
    };
    const float scale = 1.0f / std::sqrt((float)hd);
    std::vector<float> s(TK);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < c.H; h++)
            for (int i = 0; i < TK; i++) {
                const float* q = qkv + ((size_t)b * TK + i) * ld + h * hd;
                float mx = -INFINITY;
                for (int j = 0; j < TK; j++) {
                    if (!visible(i, j)) continue;
                    const float* k = qkv + ((size_t)b * TK + j) * ld + (c.H + h / group) * hd;
                    float d = 0;
                    for (int e = 0; e < hd; e++) d += q[e] * k[e];
                    s[j] = d * scale;
                    mx = std::max(mx, s[j]);
                }
                float sum = 0;
                for (int j = 0; j < TK; j++)
                    if (visible(i, j)) { s[j] = std::exp(s[j] - mx); sum += s[j]; }
                float* out = o + ((size_t)b * TK + i) * c.H * hd + h * hd;
                for (int e = 0; e < hd; e++) out[e] = 0;
                for (int j = 0; j < TK; j++) {
                    if (!visible(i, j)) continue;
                    const float* v = qkv + ((size_t)b * TK + j) * ld + (c.H + c.Hkv + h / group) * hd;
                    for (int e = 0; e < hd; e++) out[e] += s[j] / sum * v[e];
                }
            }
}

TEST_CASE("structured attention equals dense attention masked with the predicate") {
    const char* variants[] = {"vanilla", "phd-3", "phd-swa-3-5", "phd-cswa-3-5-4", "phd-cswa-2-16-32", "naive-3"};
    const int B = 2, T = 37;
    for (const char* v : variants) {
        Config c = tiny_config(v, 11, T);
        auto qkv = random_vec<float>((size_t)B * T * c.K * c.qkv_dim(), 20, 2.0);
        std::vector<float> o((size_t)B * T * c.K * c.H * c.hd()), od(o.size()), lse((size_t)B * c.H * T * c.K);
        attention_forward(o.data(), lse.data(), qkv.data(), c, B, T);
        dense_attention(od.data(), qkv.data(), c, B, T);
        double worst = 0, scale = 0;
        for (size_t i = 0; i < o.size(); i++) {
            worst = max_nan(worst, std::fabs(o[i] - od[i]));
            scale = max_nan(scale, std::fabs(od[i]));
        }
        INFO(std::string(v) << ": max abs difference " << worst << " of outputs up to " << scale);
        // float sums over up to 111 keys in two orders; how the compiler vectorises them
        // varies by machine: 2e-6 of the scale is ~16 ulp
        CHECK(worst <= 2e-6 * scale);
    }
}

TEST_CASE("exp_fast in float is within 2 ulp of exp over the softmax range") {
    double worst = 0;
    for (int i = 0; i <= 200000; i++) {
        float x = -87.0f + 175.0f * i / 200000;
        double want = std::exp((double)x), got = exp_fast(x);
        worst = max_nan(worst, std::fabs(got - want) / want);
    }
    INFO("worst relative error " << worst);
    CHECK(worst < 2.5e-7);  // 2 ulp of float is 2.4e-7 relative
    CHECK(exp_fast(-INFINITY) < 1e-37f);
    CHECK(exp_fast(0.0f) == 1.0f);
}
