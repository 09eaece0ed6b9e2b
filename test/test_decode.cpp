// KV-cache inference: pre-fill + decode steps reproduce the training forward's last-copy
// logits for every variant, with the cache sizes of PHD.md section 6 and only the hidden
// tokens each variant needs.
#include "../decode.h"
#include "test_util.h"

static const int kC = 5;  // chunk length of the cswa variant below; prompts cross its boundaries
static const char* kDecodeVariants[] = {"vanilla", "phd-3", "phd-swa-3-4", "phd-cswa-3-4-5", "naive-2"};

// Cache entries per layer after t positions (PHD.md section 6's table).
static size_t expected_entries(const Config& c, int t) {
    switch (c.variant) {
        case NAIVE: return (size_t)c.K * t;
        case PHD_SWA: return t + std::min<size_t>(c.W, (size_t)t * (c.K - 1));
        case PHD_CSWA: return t + std::min<size_t>(c.W, (size_t)(t - (t - 1) / c.C * c.C) * (c.K - 1));
        default: return t;
    }
}

// Hidden tokens a pre-fill of P tokens must compute (PHD.md section 6).
static long expected_prefill_hidden(const Config& c, int P) {
    switch (c.variant) {
        case PHD: return c.K - 1;
        case PHD_SWA: case NAIVE: return (long)P * (c.K - 1);
        case PHD_CSWA: return (long)(P - (P - 1) / c.C * c.C) * (c.K - 1);
        default: return 0;
    }
}

template<typename Real> static void check_decoder(const char* variant, double tol) {
    const int steps = 20;
    for (int P : {1, kC - 1, kC, kC + 1, 3 * kC + 2}) {
        Config c = tiny_config(variant, 11, 3 * kC + 2 + steps);
        Model<Real> M(c), full(c);
        init_params(c, M.params.data(), 77);
        for (Real& x : M.params) x *= 3;  // sharper attention: a wrong key would show
        full.params = M.params;
        std::vector<int> seq = random_tokens(P + steps, c.V, 100 + P);
        Decoder<Real> dec(M);
        dec.prefill(seq.data(), P);
        INFO(std::string(variant) << " prompt " << P);
        CHECK(dec.hidden_computed == expected_prefill_hidden(c, P));
        for (int s = 0; s <= steps; s++) {
            const int len = P + s;
            if (s > 0) dec.step(seq[len - 1]);
            CHECK(dec.cache_entries() == expected_entries(c, len));
            model_forward(full, seq.data(), nullptr, 1, len);
            const Real* want = full.logits + (size_t)(len - 1) * c.Vp;
            double worst = 0, scale = 0;
            for (int j = 0; j < c.V; j++) {
                worst = max_nan(worst, (double)std::fabs(dec.logits[j] - want[j]));
                scale = max_nan(scale, (double)std::fabs(want[j]));
            }
            INFO("after " << s << " decode steps: max |diff| " << worst << " of logits up to " << scale);
            CHECK(worst <= tol * scale);
        }
        CHECK(dec.hidden_computed == expected_prefill_hidden(c, P) + (long)steps * (c.K - 1));
    }
}

TEST_CASE("pre-fill + 20 decode steps equal the full forward, in double (1e-10)") {
    for (const char* v : kDecodeVariants) check_decoder<double>(v, 1e-10);
}

TEST_CASE("pre-fill + 20 decode steps equal the full forward, in float (2e-6 of the logit scale)") {
    for (const char* v : kDecodeVariants) check_decoder<float>(v, 2e-6);
}

TEST_CASE("phd-cswa pre-fill computes hidden tokens of the last chunk only, whatever P") {
    Config c = tiny_config("phd-cswa-3-16-32", 11, 300);
    Model<float> M(c);
    init_params(c, M.params.data(), 1);
    std::vector<int> prompt = random_tokens(250, c.V, 3);
    Decoder<float> dec(M);
    dec.prefill(prompt.data(), 250);
    CHECK(dec.hidden_computed == (250 - 224) * 2);  // positions 224..249, K-1 = 2 each
    CHECK(dec.cache_entries() == 250 + 16);
}

TEST_CASE("sampling: greedy at temperature 0, top-k keeps the k best") {
    std::vector<float> z = {0.1f, 3.0f, -1.0f, 2.9f, 0.0f};
    Rng rng{5};
    CHECK(sample_token(z.data(), 5, 0.0f, 0, rng) == 1);
    for (int i = 0; i < 200; i++) {
        int t = sample_token(z.data(), 5, 1.0f, 2, rng);
        CHECK((t == 1 || t == 3));
    }
}
