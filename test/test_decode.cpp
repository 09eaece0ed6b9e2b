// KV-cache inference: pre-fill + decode steps reproduce the training forward's last-copy
// logits for every variant, with the cache sizes of model.h §6 and only the hidden
// tokens each variant needs; sampling draws from the softmax of the top k at temperature T.
#include "../data/checkpoint.h"
#include "../kernels/cpu_decode.h"
#include "test_util.h"
#include "train_util.h"

static const int kC = 5;  // chunk length of the cswa variant below; prompts cross its boundaries
static const char* kDecodeVariants[] = {"vanilla", "phd-3", "phd-swa-3-4", "phd-cswa-3-4-5", "naive-2"};

// Cache entries per layer after t positions (the table of model.h §6). phd-cswa keeps the
// hidden tokens of the chunk of position t, the next query's: none once t starts a chunk.
static size_t expected_entries(const Config& c, int t) {
    switch (c.variant) {
        case NAIVE: return (size_t)c.K * t;
        case PHD_SWA: return t + std::min<size_t>(c.W, (size_t)t * (c.K - 1));
        case PHD_CSWA: return t + std::min<size_t>(c.W, (size_t)(t - t / c.C * c.C) * (c.K - 1));
        default: return t;
    }
}

// Hidden tokens a pre-fill of P tokens must compute (model.h §6).
static long expected_prefill_hidden(const Config& c, int P) {
    switch (c.variant) {
        case PHD: return c.K - 1;
        case PHD_SWA: case NAIVE: return (long)P * (c.K - 1);
        case PHD_CSWA: return (long)(P - (P - 1) / c.C * c.C) * (c.K - 1);
        default: return 0;
    }
}

template<typename Real> static void check_decoder(const char* variant, double tol, const char* block = "llama") {
    const int steps = 20;
    for (int P : {1, kC - 1, kC, kC + 1, 3 * kC + 2}) {
        Config c = with_block(tiny_config(variant, 11, 3 * kC + 2 + steps), block);
        Model<Real> M(c), full(c);
        init_params(c, M.params.data(), 77);
        for (Real& x : M.params) x *= 3;  // sharper attention: a wrong key would show
        full.params = M.params;
        std::vector<int> seq = random_tokens(P + steps, c.V, 100 + P);
        Decoder<Real> dec(M);
        dec.prefill(seq.data(), P);
        INFO(std::string(variant) << " " << block << " prompt " << P);
        CHECK(dec.hidden_computed == expected_prefill_hidden(c, P));
        for (int s = 0; s <= steps; s++) {
            const int len = P + s;
            if (s > 0) dec.step({seq[len - 1]});
            CHECK(dec.cache_entries() == expected_entries(c, len));
            model_forward(full, seq.data(), nullptr, 1, len);
            const Real* want = full.logits + (size_t)(len - 1) * c.Vp;
            const std::vector<Real> got = dec.logits(0);
            double worst = 0, scale = 0;
            for (int j = 0; j < c.V; j++) {
                worst = max_nan(worst, (double)std::fabs(got[j] - want[j]));
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

TEST_CASE("the OLMo 2 block (model.h §10): pre-fill + 20 decode steps equal the full forward, in double (1e-10)") {
    for (const char* v : kDecodeVariants) check_decoder<double>(v, 1e-10, "olmo2");
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

// n draws of sample_token from one seeded Rng, for check_draws (test_util.h).
static void check_sampling(float T, int top_k, int n, const std::vector<float>& z = kSampleLogits) {
    Rng rng{1234};
    std::vector<int> draws(n);
    for (int& t : draws) t = sample_token(z.data(), kSampleV, T, top_k, rng);
    check_draws(z, kSampleV, T, top_k, draws);
}

TEST_CASE("sampling: top-k draws only the k best, with the softmax's frequencies at temperature T") {
    check_sampling(0.7f, 3, 20000);
    check_sampling(1.5f, 5, 20000);
    check_sampling(1.0f, 0, 20000);             // top-k 0: every real id
    check_sampling(1.0f, kSampleV + 3, 20000);  // top-k past V: every real id
}

TEST_CASE("sampling: non-finite logits as the device takes them: NaN as -inf, +inf ones evenly, a row of -inf and NaN every id") {
    const float nan = NAN, inf = INFINITY;
    struct Row { std::vector<float> z; int greedy; };
    const Row rows[] = {
        {{nan, 1.0f, -inf, 0.5f, -nan, -inf, 1.5f, 0.0f, 9.0f, 9.0f}, 6},
        {{1.0f, inf, nan, inf, -inf, 2.0f, 0.0f, 0.0f, 9.0f, 9.0f}, 1},
        {{nan, -inf, -nan, -inf, nan, nan, -inf, -inf, 9.0f, 9.0f}, 0},
    };
    for (const Row& r : rows)
        for (int top_k : {0, 1, 2}) {
            INFO("row with greedy id " << r.greedy << ", top-k " << top_k);
            Rng rng{7};
            CHECK(sample_token(r.z.data(), kSampleV, 0.0f, top_k, rng) == r.greedy);
            check_sampling(1.0f, top_k, 4000, r.z);
        }
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

TEST_CASE("batched generation: each sample of a batch is the sample its seed gives alone, greedy and drawn") {
    // phd-cswa-3-4-5: its window moves with each sample's own tokens; 9 prompt + 8 new tokens
    // cross a chunk boundary.
    Config c = tiny_config("phd-cswa-3-4-5", 11, 20);
    Model<float> M(c);
    init_params(c, M.params.data(), 8);
    for (float& x : M.params) x *= 3;
    const std::vector<int> prompt = random_tokens(9, c.V, 4);
    for (Sampling sm : {Sampling{0.0f, 0, 21}, Sampling{1.0f, 4, 21}, Sampling{1.5f, 0, 99}}) {
        Decoder<float> batch(M, 3, sm);
        const std::vector<std::vector<int>> got = generated(batch, prompt, 8);
        for (int s = 0; s < 3; s++) {
            Decoder<float> alone(M, 1, Sampling{sm.temperature, sm.top_k, sm.seed + s});
            const std::vector<std::vector<int>> want = generated(alone, prompt, 8);
            INFO("temperature " << sm.temperature << " top-k " << sm.top_k << " sample " << s);
            CHECK(got[s] == want[0]);
            CHECK(max_rel(batch.logits(s), alone.logits(0)) <= 1e-6);  // the same rows, in a larger block
            CHECK(batch.cache_entries() == alone.cache_entries());
        }
        if (sm.temperature > 0) CHECK(got[0] != got[1]);  // the samples' own draws, not one stream
    }
}

TEST_CASE("train_phd --generate --samples S: each sample's line is what its seed prints alone, on the CPU and the emulated GPU") {
    Config c = tiny_config("phd-cswa-2-4-3", 32, 16);
    std::vector<float> p(num_params(c));
    init_params(c, p.data(), 12);
    for (float& x : p) x *= 3;
    const std::string ck = tmp("samples.ckpt"), gen = std::string(kEmuBin) + " -e " + ck + " --generate 6 --prompt-ids '1 2 3' ";
    save_checkpoint(ck.c_str(), c, p.data());
    auto first_line = [](const std::string& o) { return o.substr(0, o.find('\n')); };
    for (const char* device : {"cpu", "cuda"}) {
        for (const char* sampling : {"--temperature 0", "--temperature 1 --top-k 8"}) {
            const std::string flags = std::string("--device ") + device + " " + sampling;
            std::string out, alone;
            REQUIRE(run(gen + flags + " --samples 3 -r 40", &out) == 0);
            INFO(device << " " << sampling << ":\n" << out);
            std::vector<std::string> lines;
            for (int s = 0; s < 3; s++) {
                const std::string head = "--- sample " + std::to_string(s + 1) + " of 3 (seed " + std::to_string(40 + s) + ")\n";
                const size_t at = out.find(head);
                REQUIRE(at != std::string::npos);
                lines.push_back(first_line(out.substr(at + head.size())));
                REQUIRE(run(gen + flags + " -r " + std::to_string(40 + s), &alone) == 0);
                CHECK(lines[s] == first_line(alone));
                CHECK(lines[s].find(" 1 2 3 | ") == 0);
            }
            CHECK(out.find("6 tokens x 3 samples in") != std::string::npos);
            CHECK(out.find("KV cache after 8 tokens: 10 entries/layer") != std::string::npos);
            if (std::string(sampling) != "--temperature 0") CHECK((lines[0] != lines[1] || lines[1] != lines[2]));
        }
    }
    struct Case { std::string args, expect; };
    for (const Case& k : {Case{"--samples 0", "--samples: expected an integer >= 1, got '0'"},
                          Case{"--samples 2 --prompt-ids '1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17'", "exceed the model's max sequence length 16"},
                          Case{"--samples 2 --prompt-ids '1 32'", "token 32 is out of range"}}) {
        std::string out;
        const int rc = run(std::string(kEmuBin) + " -e " + ck + " --device cuda --generate 2 " + k.args, &out);
        INFO(k.args << " -> " << out);
        CHECK(rc == 1);
        CHECK(out.find(k.expect) != std::string::npos);
        CHECK(std::count(out.begin(), out.end(), '\n') == 1);
    }
}
