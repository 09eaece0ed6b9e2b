// Helpers shared by the tests: small configs, random tensors, finite differences.
#pragma once
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>
#include <algorithm>
#include <functional>
#include <string>
#include <vector>
#include "../model.h"
#include "../dev/tensor_util.h"

// Under ThreadSanitizer (every fiber a thread to it: ~20x slower) the GPU tests keep one case
// per kernel instance and partial-tile pattern; the emulated and ASan builds run every case.
#ifdef __SANITIZE_THREAD__
constexpr bool kUnderTsan = true;
#else
constexpr bool kUnderTsan = false;
#endif

// A tiny model with GQA (H = 4, Hkv = 2) for the given variant name.
static inline Config tiny_config(const char* variant, int V = 11, int maxT = 9) {
    Config c;
    std::string err = parse_variant(variant, &c);
    REQUIRE_MESSAGE(err.empty(), err);
    c.V = V; c.Vp = pad_vocab(V); c.L = 2; c.D = 16; c.H = 4; c.Hkv = 2; c.F = 24; c.maxT = maxT;
    REQUIRE(config_error(c).empty());
    return c;
}

// The blocks of model.h §9 and §10 the tests run every variant with: §9's, OLMo 2's, and each
// of its structural options alone. z: the z-loss coefficient for "olmo2" (a gradient check
// wants it large enough to see).
static inline const char* const kBlocks[] = {"llama", "olmo2", "qk-norm", "reordered"};
static inline Config with_block(Config c, const std::string& block, float z = kOlmo2ZLoss) {
    set_block(&c, block == "olmo2");
    if (block == "olmo2") c.z_loss = z;
    if (block == "qk-norm") c.qk_norm = 1;
    if (block == "reordered") c.norm = NORM_REORDERED;
    REQUIRE(config_error(c).empty());
    return c;
}

static inline std::vector<int> random_tokens(size_t n, int V, uint64_t seed) {
    Rng rng{seed};
    std::vector<int> t(n);
    for (int& x : t) x = (int)(rng.next_u64() % (uint64_t)V);
    return t;
}

// Central differences of loss() with respect to elements of x, compared with grad: every
// element, or max_elems of them evenly spread. The error is measured against the tensor's
// largest gradient so that elements whose true gradient is ~0 do not produce meaningless
// relative errors. loss() is called once more at the end, on the unperturbed x.
static inline void check_fd(const char* what, std::vector<double>& x, const std::vector<double>& grad,
                            const std::function<double()>& loss, double tol = 1e-7, double h = 1e-5,
                            size_t max_elems = SIZE_MAX) {
    REQUIRE(x.size() == grad.size());
    double gmax = 1e-12, worst = 0;
    size_t worst_i = 0, n = std::min(max_elems, x.size());
    for (double g : grad) gmax = std::max(gmax, std::fabs(g));
    for (size_t k = 0; k < n; k++) {
        size_t i = k * x.size() / n;
        double keep = x[i];
        x[i] = keep + h; double lp = loss();
        x[i] = keep - h; double lm = loss();
        x[i] = keep;
        double fd = (lp - lm) / (2 * h), err = std::fabs(fd - grad[i]) / gmax;
        if (std::isnan(err) || err > worst) { worst = err; worst_i = i; }  // a NaN stays the worst: it fails
    }
    loss();
    INFO(std::string(what) << ": worst relative error " << worst << " at element " << worst_i << " (max |grad| " << gmax << ")");
    CHECK(worst < tol);
    CHECK(gmax > 1e-9);  // a gradient that is identically zero would pass vacuously
}

// Runs f in a child process: its exit status, 42 when it crashed on a protected page, 43
// when it aborted.
template<typename F> static inline int in_child(F f) {
    fflush(nullptr);
    const pid_t child = fork();
    if (child == 0) {
        signal(SIGSEGV, [](int) { _exit(42); });
        signal(SIGABRT, [](int) { _exit(43); });
        f();
        _exit(0);
    }
    int status = 0;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status)) return -1;
    return WEXITSTATUS(status);
}

// Runs a shell command, returns its exit status; *out gets stdout and stderr.
static inline int run(const std::string& cmd, std::string* out) {
    FILE* p = popen((cmd + " 2>&1").c_str(), "r");
    REQUIRE(p != nullptr);
    char buf[4096];
    out->clear();
    while (size_t n = fread(buf, 1, sizeof buf, p)) out->append(buf, n);
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

// A path in build/NAME-PID/, a scratch directory emptied on its first use in this run, so that
// no file of an earlier run (say, a later checkpoint for --resume to find) leaks in, and of
// this process alone, so that two suites running the same binary at once (data and tiktoken)
// do not empty each other's. test/run_tests.sh clears them all before a run.
inline std::string scratch_path(const char* dir, const std::string& name) {  // inline, not static: one list of emptied directories for every test file
    static std::vector<std::string> fresh;
    std::string d = std::string("build/") + dir + "-" + std::to_string(getpid());
    if (std::find(fresh.begin(), fresh.end(), d) == fresh.end()) {
        REQUIRE(system(("rm -rf " + d + " && mkdir -p " + d).c_str()) == 0);
        fresh.push_back(d);
    }
    return d + "/" + name;
}

// sum(out * R): a scalar whose gradient with respect to out is R.
static inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}

// Each sample's n tokens after the prompt from a KV-cache decoder (DecodeBlocks::generate),
// (S, n).
template<typename Dec> std::vector<std::vector<int>> generated(Dec& dec, const std::vector<int>& prompt, int n) {
    std::vector<std::vector<int>> out(dec.S);
    dec.generate(prompt, n, [&](const std::vector<int>& next) {
        for (int s = 0; s < dec.S; s++) out[s].push_back(next[s]);
    });
    return out;
}

// Draws from logits z (the first V real) at temperature T with top_k (kernels/decode_blocks.h's Sampling),
// made by the code under test, against the rule's distribution p, computed here as
// kernels/sampling.cuh states it: every id tied with the top_k-th largest logit kept, a NaN
// counted as -inf, the ids at the largest logit weighing 1 even where it is infinite. Every
// draw must be an id of p > 0. Ids expected at least 30 times are counted one by one, the
// others together (a vocabulary's tail): each count must be within 5 standard deviations of
// n p, so an id expected 30 times must be drawn. The temperature is checked through the mean
// of the drawn logits, within 5 standard errors of its value under p: the softmax at 1/T is
// an exponential family in the logit, whose mean is the statistic most sensitive to T (it
// is skipped where the ids of p > 0 share one logit, +inf or all -inf, and T changes
// nothing). The draws are seeded, hence reproducible; 5 sigma keeps each bound from
// depending on the seed (a count or mean leaves it with probability < 1e-6) yet rejects a
// wrong k, and a wrong T given enough draws (the tests say how many).
static inline void check_draws(const std::vector<float>& z, int V, float T, int top_k, const std::vector<int>& draws) {
    const int k = top_k > 0 && top_k < V ? top_k : V;
    const long n = (long)draws.size();
    std::vector<double> x(V);
    for (int j = 0; j < V; j++) x[j] = std::isnan(z[j]) ? -INFINITY : z[j];
    std::vector<double> sorted = x;
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    const double kth = sorted[k - 1], mx = sorted[0];
    std::vector<double> p(V, 0.0);
    double sum = 0;
    for (int j = 0; j < V; j++)
        if (x[j] >= kth) sum += p[j] = x[j] == mx ? 1.0 : std::exp((x[j] - mx) / T);
    for (double& q : p) q /= sum;
    std::vector<long> count(V, 0);
    long outside = 0;  // ids of p = 0: outside the top k, at -inf, padding
    for (int t : draws) {
        if (t < 0 || t >= V || p[t] == 0) outside++;
        else count[t]++;
    }
    INFO("temperature " << T << ", top-k " << top_k << ", " << n << " draws");
    CHECK(outside == 0);
    auto check_count = [&](long got, double q) {
        INFO("drawn " << got << " times, expected " << n * q);
        CHECK(std::fabs(got - n * q) <= 5 * std::sqrt(n * q * (1 - q)));
    };
    long rest = 0;
    double p_rest = 0, mean = 0, drawn_mean = 0, var = 0, lo = INFINITY, hi = -INFINITY;
    for (int j = 0; j < V; j++) {
        if (p[j] == 0) continue;
        mean += p[j] * x[j];
        drawn_mean += count[j] * x[j] / n;
        lo = std::min(lo, x[j]);
        hi = std::max(hi, x[j]);
        if (n * p[j] < 30) {
            rest += count[j];
            p_rest += p[j];
        } else {
            INFO("id " << j << " (logit " << z[j] << ")");
            check_count(count[j], p[j]);
        }
    }
    if (p_rest > 0) {
        INFO("the ids expected fewer than 30 times each, together");
        check_count(rest, p_rest);
    }
    if (lo < hi) {
        for (int j = 0; j < V; j++)
            if (p[j] > 0) var += p[j] * (x[j] - mean) * (x[j] - mean);
        INFO("mean drawn logit " << drawn_mean << ", expected " << mean << " with standard error " << std::sqrt(var / n));
        CHECK(std::fabs(drawn_mean - mean) <= 5 * std::sqrt(var / n));
    }
}
