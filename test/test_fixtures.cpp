// The C++ CPU path against fixtures from the independent PyTorch reference
// (dev/phd_reference.py, float64; regenerate with `make fixtures`).
#include <fstream>
#include "../data/checkpoint.h"
#include "test_util.h"

// A variant with model.h §9's block, or olmo2-VARIANT: §10's three options (z-loss 0.05).
static const char* kFixtureVariants[] = {"vanilla", "phd-3", "phd-swa-3-2", "phd-cswa-3-2-2", "naive-2", "olmo2-vanilla",
                                         "olmo2-phd-cswa-3-2-2"};

// test/fixtures/NAME.ckpt and NAME.state, loaded into a float model.
struct Fixture {
    std::string base;
    std::vector<float> params;
    Config c;
    DebugState s;
    explicit Fixture(const char* variant)
        : base(std::string("test/fixtures/") + variant), c(load_checkpoint((base + ".ckpt").c_str(), &params)),
          s(load_debug_state((base + ".state").c_str())) {
        const bool olmo2 = std::string(variant).rfind("olmo2-", 0) == 0;
        REQUIRE((olmo2 ? "olmo2-" : "") + variant_name(c) == variant);
        REQUIRE(block_name(c) == (olmo2 ? "qk-norm 1, norm reordered, z-loss 0.05" : "llama"));
    }
};

TEST_CASE("logits, loss and every gradient equal the PyTorch reference") {
    for (const char* v : kFixtureVariants) {
        Fixture fx(v);
        const Config& c = fx.c;
        const DebugState& s = fx.s;
        Model<float> M(c);
        M.params = fx.params;
        float loss = model_forward(M, s.tokens.data(), s.targets.data(), s.B, s.T);
        std::vector<float> logits;  // (B*T, V): read before the backward turns them into dlogits
        for (int i = 0; i < s.B * s.T; i++) logits.insert(logits.end(), M.logits + (size_t)i * c.Vp, M.logits + (size_t)i * c.Vp + c.V);
        model_backward(M, 1.0f);
        INFO(std::string(v));
        CHECK(std::fabs(loss - s.loss) <= 1e-6f * s.loss);  // loss: 1e-6 relative
        CHECK(max_rel(logits.data(), s.logits.data(), logits.size()) < 1e-5);  // logits: 1e-5 of their scale
        for (const ParamTensor& t : param_tensors(c)) {
            INFO(t.name);  // every gradient: 1e-5 of its tensor's scale (seen: <= 7e-7)
            CHECK(max_rel(M.grads.data() + t.offset, s.grads.data() + t.offset, t.size()) < 1e-5);
        }
    }
}

TEST_CASE("10 AdamW steps reproduce the reference's losses") {
    for (const char* v : kFixtureVariants) {
        Fixture fx(v);
        const Config& c = fx.c;
        const DebugState& s = fx.s;
        std::ifstream f(fx.base + ".adamw");
        std::string comment;
        std::getline(f, comment);
        AdamW o;
        f >> o.lr_max >> o.warmup >> o.total_steps >> o.final_frac >> o.weight_decay;
        std::vector<double> want(o.total_steps);
        for (double& x : want) f >> x;
        REQUIRE(f);
        Model<float> M(c);
        M.params = fx.params;
        std::vector<float> m(fx.params.size()), vv(fx.params.size());
        for (int step = 0; step < o.total_steps; step++) {
            std::fill(M.grads.begin(), M.grads.end(), 0.0f);
            float loss = model_forward(M, s.tokens.data(), s.targets.data(), s.B, s.T);
            INFO(std::string(v) << " step " << step << ": " << loss << " vs " << want[step]);
            CHECK(std::fabs(loss - want[step]) <= 1e-5 * want[step]);  // 1e-5 relative after up to 9 updates
            model_backward(M, 1.0f);
            adamw_update(c, o, M.params.data(), M.grads.data(), m.data(), vv.data(), step, learning_rate(o, step),
                         grad_norm(M.grads.data(), M.grads.size()));
        }
    }
}

TEST_CASE("train_phd --check-state accepts every reference fixture") {
    for (const char* v : kFixtureVariants) {
        std::string base = std::string("test/fixtures/") + v, cmd = std::string("./train_phd -e ") + base + ".ckpt --check-state " + base + ".state > /dev/null";
        INFO(cmd);
        CHECK(system(cmd.c_str()) == 0);
    }
}
