// KV-cache inference: pre-fill + decode steps reproduce the training forward's last-copy
// logits for every variant, with the cache sizes of PHD.md section 6 and only the hidden
// tokens each variant needs; sampling draws from the softmax of the top k at temperature T.
#include "../cpu/decode.h"
#include "test_util.h"

static const int kC = 5;  // chunk length of the cswa variant below; prompts cross its boundaries
static const char* kDecodeVariants[] = {"vanilla", "phd-3", "phd-swa-3-4", "phd-cswa-3-4-5", "naive-2"};

// Cache entries per layer after t positions (PHD.md section 6's table). phd-cswa keeps the
// hidden tokens of the chunk of position t, the next query's: none once t starts a chunk.
static size_t expected_entries(const Config& c, int t) {
    switch (c.variant) {
        case NAIVE: return (size_t)c.K * t;
        case PHD_SWA: return t + std::min<size_t>(c.W, (size_t)t * (c.K - 1));
        case PHD_CSWA: return t + std::min<size_t>(c.W, (size_t)(t - t / c.C * c.C) * (c.K - 1));
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

// Logits of 8 real ids whose best three (1, 5, 3) are not in front and whose next two (6, 0)
// are close behind, so ignoring top-k or the temperature shows; ids 8 and 9 are vocabulary
// padding (beyond V) with the largest logits, which must never be drawn.
static const std::vector<float> kSampleLogits = {1.2f, 2.0f, -1.0f, 1.3f, 0.5f, 1.6f, 1.25f, -0.3f, 9.0f, 9.0f};
static const int kSampleV = 8;

// Draws n tokens at temperature T with top_k. Every id must be one of the k largest logits;
// each of those must be drawn (the rarest below has n p > 250: missing it has probability
// < e^-250); each id's count must be within 5 standard deviations of n p, p the softmax at T
// of the kept logits (computed here, not by sample_token). The draws are seeded, hence
// reproducible; 5 sigma keeps the bound from depending on the seed (a binomial count leaves
// it with probability < 1e-6) yet rejects a wrong temperature or k.
static void check_sampling(float T, int top_k, int n) {
    const std::vector<float>& z = kSampleLogits;
    const int V = kSampleV, k = top_k > 0 && top_k < V ? top_k : V;
    std::vector<float> sorted(z.begin(), z.begin() + V);
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    const float kth = sorted[k - 1];  // the logits have no ties
    std::vector<double> p(V, 0.0);
    double sum = 0;
    for (int j = 0; j < V; j++)
        if (z[j] >= kth) sum += p[j] = std::exp((double)z[j] / T);
    for (double& x : p) x /= sum;
    Rng rng{1234};
    std::vector<long> count(V, 0);
    long outside = 0;  // ids outside the top k, padding included
    for (int i = 0; i < n; i++) {
        int t = sample_token(z.data(), V, T, top_k, rng);
        if (t < 0 || t >= V || p[t] == 0) outside++;
        else count[t]++;
    }
    INFO("temperature " << T << ", top-k " << top_k << ", " << n << " draws");
    CHECK(outside == 0);
    for (int j = 0; j < V; j++) {
        INFO("id " << j << " (logit " << z[j] << "): drawn " << count[j] << " times, expected " << n * p[j]);
        if (p[j] == 0) continue;
        CHECK(count[j] > 0);
        CHECK(std::fabs(count[j] - n * p[j]) <= 5 * std::sqrt(n * p[j] * (1 - p[j])));
    }
}

TEST_CASE("sampling: top-k draws only the k best, with the softmax's frequencies at temperature T") {
    check_sampling(0.7f, 3, 20000);
    check_sampling(1.5f, 5, 20000);
    check_sampling(1.0f, 0, 20000);             // top-k 0: every real id
    check_sampling(1.0f, kSampleV + 3, 20000);  // top-k past V: every real id
}

TEST_CASE("sampling: temperature 0 and top-k 1 are greedy") {
    const float* z = kSampleLogits.data();
    Rng rng{5};
    for (int top_k : {0, 1, 3, 100}) CHECK(sample_token(z, kSampleV, 0.0f, top_k, rng) == 1);
    for (float T : {0.3f, 1.0f, 10.0f}) {
        int not_argmax = 0;
        for (int i = 0; i < 1000; i++) not_argmax += sample_token(z, kSampleV, T, 1, rng) != 1;
        INFO("temperature " << T);
        CHECK(not_argmax == 0);
    }
}
