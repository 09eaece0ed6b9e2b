// KV-cache inference on the GPU (kernels/gpu_decode.cuh) against the CPU decoder (kernels/cpu_decode.h),
// which test_decode.cpp holds to the full training forward. Built into the GPU test
// binaries: emulated on the CPU in every `make test`, natively where a GPU exists.
// Shape: D = 160, H = 2, Hkv = 1 (hd = 80: the kernel's second pass over output dims runs,
// and the head count is not a multiple of anything), L = 2, V = 97; in bf16 D = 128 (hd =
// 64: the bf16 attention's head sizes are multiples of 16; one pass, as the same templated
// kernel's second pass runs in fp32).
#include <vector>
#include <doctest/doctest.h>
#include "../kernels/cpu_decode.h"
#include "../kernels/gpu_decode.cuh"
#include "test_util.h"

static Config decode_config(const char* variant, int maxT, bool bf16 = false) {
    Config c = tiny_config(variant, 97, maxT);
    c.D = bf16 ? 128 : 160; c.H = 2; c.Hkv = 1; c.F = 96;
    REQUIRE(config_error(c).empty());
    return c;
}

// Runs both decoders over S sequences of one prompt: pre-fill of P tokens, then `steps`
// decode steps, sample s feeding its own tokens; after each block every sample's last-copy
// logits must agree and the caches must count the same entries. Logits within tol of their
// scale. bf16: the GPU decodes in bf16 (the CPU in fp32). Returns the split-K parts a step's
// attention takes (decode_splits, as the decoder sizes them for its longest context), the
// largest |diff| / scale seen and the hidden rows the pre-fill computed.
struct DecodeCheck {
    int splits;
    double worst;
    long prefill_hidden;  // hidden rows the pre-fill computed
};
static DecodeCheck check_gpu_decoder(const char* variant, int P, int steps, double tol = 1e-5, int S = 2, bool bf16 = false,
                                     const char* block = "llama") {
    Config c = with_block(decode_config(variant, P + steps, bf16), block);
    Model<float> M(c);
    init_params(c, M.params.data(), 91);
    // Sharper attention: a wrong or missing key shows. Not in bf16, whose rounding of q and k
    // (2^-9 relative) the sharper scores would amplify to ~4e-2 of the logits; unsharpened, one
    // key left out still moves them by ~30 % of their scale.
    for (float& x : M.params) x *= bf16 ? 1 : 3;
    GpuModel G(c, M.params.data(), false, false, bf16);
    const std::vector<int> prompt = random_tokens(P, c.V, 200 + P);
    Decoder<float> cpu(M, S);
    GpuDecoder gpu(G, S);
    cpu.prefill(prompt.data(), P);
    gpu.prefill(prompt.data(), P);
    INFO(std::string(variant) << " " << block << " prompt " << P);
    CHECK(gpu.hidden_computed == cpu.hidden_computed);
    const long prefill_hidden = gpu.hidden_computed;
    double seen = 0;
    for (int step = 0; step <= steps; step++) {
        if (step > 0) {
            const std::vector<int> next = random_tokens(S, c.V, 300 + step);
            cpu.step(next);
            gpu.step(next);
        }
        CHECK(gpu.cache_entries() == cpu.cache_entries());
        CHECK(gpu.t == cpu.t);
        for (int s = 0; s < S; s++) {
            const std::vector<float> got = gpu.logits(s), want = cpu.logits(s);
            double worst = 0, scale = 0;
            for (int j = 0; j < c.V; j++) {
                worst = max_nan(worst, (double)std::fabs(got[j] - want[j]));
                scale = max_nan(scale, (double)std::fabs(want[j]));
            }
            // float on both sides, other summation orders and exp implementations: by default 1e-5
            // of the logits' scale (the GPU training forward meets 2e-6 of it on one step; decode
            // chains L layers; measured up to 6e-6 here, 8.3e-6 in the ThreadSanitizer build)
            INFO("sample " << s << " after " << step << " decode steps: max |diff| " << worst << " of logits up to " << scale);
            CHECK(worst <= tol * scale);
            CHECK(scale > 0.1);  // logits that vanished would agree vacuously
            seen = std::max(seen, worst / scale);
        }
    }
    CHECK(gpu.hidden_computed == cpu.hidden_computed);
    return {gpu.step_splits, seen, prefill_hidden};
}

TEST_CASE("GPU decoder: pre-fill + decode steps of 2 samples equal the CPU decoder, every variant, prompts across chunk boundaries") {
    const int C = 5;
    // Under ThreadSanitizer two prompt lengths a variant: the same kernel instances run.
    for (const char* v : {"vanilla", "phd-3", "phd-swa-3-4", "phd-cswa-3-4-5", "naive-2"})
        for (int P : {1, C - 1, C, C + 1, 3 * C + 2})
            if (!kUnderTsan || P == C + 1 || P == 3 * C + 2) check_gpu_decoder(v, P, 4);
}

TEST_CASE("GPU decoder with the OLMo 2 block (model.h §10): equals the CPU decoder in fp32, within bf16's precision in bf16") {
    // fp32 to 1e-4 of the logits' scale, not 1e-5: the weights tripled (as above) triple
    // qk-norm's gains, and q . k of two unit-rms vectors times 9 makes scores sharper than
    // plain q and k do (seen 1.6e-5; 3.3e-5 in the ThreadSanitizer build). A missing key moves them by ~30 %.
    for (const char* v : {"phd-3", "phd-cswa-3-4-5"}) {
        if (kUnderTsan && std::string(v) == "phd-3") continue;  // under ThreadSanitizer: the same kernels, one variant
        check_gpu_decoder(v, 6, 3, 1e-4, 2, false, "olmo2");
        check_gpu_decoder(v, 6, 3, 2e-2, 2, true, "olmo2");
    }
}

TEST_CASE("decode kernels: a long prompt spans several key tiles; the decoder still equals the CPU") {
    // 70 originals > kDecodeThreads candidates per tile; naive-2 keeps 140 entries
    for (const char* v : {"phd-cswa-3-4-5", "phd-swa-2-70", "naive-2"}) check_gpu_decoder(v, 70, 3);
}

TEST_CASE("decode kernels: more query rows than a thread block holds (kDecodeRows = 16); the decoder still equals the CPU") {
    // A step of 6 samples of phd-cswa-3-4-5: 18 rows, two thread blocks, the first ending in
    // sample 5's first row; a pre-fill of phd-cswa-5-32-6 whose last chunk's 5 positions
    // give 20 hidden rows that attend through the decode kernel.
    check_gpu_decoder("phd-cswa-3-4-5", 12, 2, 1e-5, 6);
    CHECK(check_gpu_decoder("phd-cswa-5-32-6", 17, 2).prefill_hidden == 20);
}

TEST_CASE("GPU decoder: decode steps over 500+ candidate keys take split-K and still equal the CPU decoder") {
    // phd-cswa-3-4-5 after a 510-token prompt: 510 shared prompt originals, then each
    // sample's own, 4 window slots and the step's 3 rows: up to 513 + 4 + 3 candidates, 3
    // splits (kDecodeKeysPerSplit = 256), each of up to 3 tiles of 64 keys (kDecodeThreads),
    // the last partial. The steps start a new chunk (510 = 102 C): the window's slots hold
    // the last chunk's hidden tokens, which no query sees, then this chunk's. The pre-fill's
    // 20 hidden rows attend to the 510 originals through the decode kernel, in 1 split. Logits
    // to 3e-5 of their scale: sums over 500 keys (measured 7.3e-6, 9.3e-6 in the
    // ThreadSanitizer build, 1.15e-5 there with a 600-token prompt).
    CHECK(check_gpu_decoder("phd-cswa-3-4-5", 510, 3, 3e-5, 1).splits == 3);
}

TEST_CASE("GPU decoder in bf16: pre-fill + decode steps within bf16's precision of the CPU decoder, every variant; not within fp32's") {
    // bf16 weights, matmul inputs, q, k, v, the attention's output and the cache keep 8 bits
    // of mantissa (2^-9 relative a rounding), through L = 2 layers: logits to 2e-2 of their
    // scale, as the bf16 training step's check (measured up to 5.4e-3 here). fp32 meets 1e-5:
    // a worst case above 1e-4 shows the bf16 kernels ran.
    const int C = 5;
    double worst = 0;
    for (const char* v : {"vanilla", "phd-3", "phd-swa-3-4", "phd-cswa-3-4-5", "naive-2"})
        for (int P : {C - 1, 3 * C + 2})
            if (!kUnderTsan || P == 3 * C + 2)  // under ThreadSanitizer: the same instances, one prompt
                worst = std::max(worst, check_gpu_decoder(v, P, 3, 2e-2, 2, true).worst);
    MESSAGE("bf16 decoder: largest |diff| / scale " << worst);
    CHECK(worst > 1e-4);
}

TEST_CASE("GPU decoder: a step replayed from its CUDA graph gives the bits of the step launched kernel by kernel, fp32 and bf16") {
    // Two samples drawn at temperature 1 with top-k 4: the graph holds the sampling too, and
    // every step after the first replays it, with the position, the counts and the window's
    // slot read from device memory; a value frozen at capture would show from the second
    // replay on. phd-cswa-3-4-5 with 8 prompt tokens and 8 new ones: the window wraps and a
    // chunk starts.
    for (bool bf16 : {false, true}) {
        INFO((bf16 ? "bf16" : "fp32"));
        Config c = decode_config("phd-cswa-3-4-5", 16, bf16);
        std::vector<float> params(num_params(c));
        init_params(c, params.data(), 5);
        for (float& x : params) x *= 3;
        GpuModel G(c, params.data(), false, false, bf16);
        const std::vector<int> prompt = random_tokens(8, c.V, 6);
        const Sampling sm{1.0f, 4, 77};
        GpuDecoder graph(G, 2, sm, true), direct(G, 2, sm, false);
        graph.prefill(prompt.data(), 8);
        direct.prefill(prompt.data(), 8);
        for (int i = 0; i < 8; i++) {
            const std::vector<int> a = graph.sample(), b = direct.sample();
            INFO("token " << i);
            REQUIRE(a == b);
            for (int s = 0; s < 2; s++) {
                const std::vector<float> x = graph.logits(s), y = direct.logits(s);
                CHECK(memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
            }
            graph.step(a);
            direct.step(b);
        }
        CHECK(graph.step_graph != nullptr);
        CHECK(direct.step_graph == nullptr);
        CHECK(graph.cache_entries() == direct.cache_entries());
    }
}

TEST_CASE("GPU decoder: each sample of a batch is the sample its seed gives alone, greedy and drawn; samples differ") {
    Config c = decode_config("phd-swa-3-4", 20);
    std::vector<float> params(num_params(c));
    init_params(c, params.data(), 9);
    for (float& x : params) x *= 3;
    GpuModel G(c, params.data(), false, false);
    const std::vector<int> prompt = random_tokens(7, c.V, 10);
    for (Sampling sm : {Sampling{0.0f, 0, 3}, Sampling{1.5f, 5, 40}}) {
        GpuDecoder batch(G, 3, sm);
        const std::vector<std::vector<int>> got = generated(batch, prompt, 5);
        for (int s = 0; s < 3; s++) {
            GpuDecoder alone(G, 1, Sampling{sm.temperature, sm.top_k, sm.seed + s});
            INFO("temperature " << sm.temperature << " top-k " << sm.top_k << " sample " << s);
            CHECK(got[s] == generated(alone, prompt, 5)[0]);
        }
        if (sm.temperature > 0) CHECK(got[0] != got[1]);
    }
}

// n draws by the device sampler (kernels/sampling.cuh) from the logits z (Vp = z.size(),
// the first V real) at temperature T with top_k: S rows holding z in one launch, row s with
// its own Rng (seed + s), launched n / S times (each launch carries the Rngs on).
static std::vector<int> device_draws(const std::vector<float>& z, int V, float T, int top_k, int n, int S = 500, uint64_t seed = 500) {
    S = std::min(S, n);
    REQUIRE(n % S == 0);
    std::vector<float> rows;
    std::vector<Rng> rngs;
    for (int s = 0; s < S; s++) {
        rows.insert(rows.end(), z.begin(), z.end());
        rngs.push_back(Rng{seed + (uint64_t)s});
    }
    float* logits = to_device(rows);
    int* feed = to_device(std::vector<int>(S, -1));
    Rng* rng = to_device(rngs);
    std::vector<int> draws;
    for (int i = 0; i < n / S; i++) {
        sample_tokens(feed, rng, logits, S, V, (int)z.size(), T, top_k, nullptr);
        const std::vector<int> got = to_host(feed, S);
        draws.insert(draws.end(), got.begin(), got.end());
    }
    for (void* p : {(void*)logits, (void*)feed, (void*)rng}) cudaCheck(cudaFree(p));
    return draws;
}

// The logits of the CPU's sampling test: ids 8, 9 padding (largest, never drawn).
static const std::vector<float> kDeviceLogits = {1.2f, 2.0f, -1.0f, 1.3f, 0.5f, 1.6f, 1.25f, -0.3f, 9.0f, 9.0f};

TEST_CASE("device sampling: greedy is the lowest id of the largest logit; draws follow the softmax of the top k at temperature T") {
    const std::vector<float>& z = kDeviceLogits;
    const int V = 8;
    CHECK(device_draws(z, V, 0.0f, 0, 1)[0] == 1);
    CHECK(device_draws(z, V, 0.0f, 3, 1)[0] == 1);
    check_draws(z, V, 0.7f, 3, device_draws(z, V, 0.7f, 3, 2500));
    check_draws(z, V, 1.0f, 0, device_draws(z, V, 1.0f, 0, 2500));
    const std::vector<float> tie = {0.5f, 3.0f, 1.0f, 3.0f, 3.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    CHECK(device_draws(tie, V, 0.0f, 0, 1)[0] == 1);  // as std::max_element
}

TEST_CASE("device sampling: top-k at or past V keeps every id; 4000 draws tell temperature 0.7 from 0.9") {
    // top_k 0, V and past V keep the same ids: the same draws from the same seeds.
    const std::vector<float>& z = kDeviceLogits;
    const int V = 8, n = 4000;
    const std::vector<int> all = device_draws(z, V, 0.7f, 0, n);
    CHECK(device_draws(z, V, 0.7f, V, n) == all);
    CHECK(device_draws(z, V, 0.7f, V + 5, n) == all);
    // At 0.7 the drawn logit has mean 1.530 and standard deviation 0.482, at 0.9 1.445 and
    // 0.553: over 4000 draws the means are 11.1 standard errors (0.7's) apart, so a sampler
    // at 0.9 lands within check_draws' 5 only 5.3 of its own standard errors off its mean:
    // probability 6e-8 (3000 draws would leave it 3e-5). One id's count, alone, would need
    // 7600 draws to do as well.
    check_draws(z, V, 0.7f, 0, all);
}

TEST_CASE("device sampling: every id tied with the k-th largest logit is kept, -0 with +0") {
    // Ids 1, 3, 6 tie at 1.0 (ranks 2 to 4): top-k 2, 3 and 4 keep the same 4 ids and give
    // the same draws. Top-k 5 adds 0.3; 6 and 7 add 0.0 and -0.0 (ranks 6 and 7) together.
    const std::vector<float> z = {0.3f, 1.0f, -0.5f, 1.0f, 2.0f, 0.0f, 1.0f, -0.0f, 9.0f, 9.0f};
    const int V = 8, n = 1000;
    const std::vector<int> top2 = device_draws(z, V, 1.0f, 2, n);
    check_draws(z, V, 1.0f, 2, top2);
    CHECK(device_draws(z, V, 1.0f, 3, n) == top2);
    CHECK(device_draws(z, V, 1.0f, 4, n) == top2);
    check_draws(z, V, 1.0f, 5, device_draws(z, V, 1.0f, 5, n));
    const std::vector<int> top6 = device_draws(z, V, 1.0f, 6, n);
    check_draws(z, V, 1.0f, 6, top6);
    CHECK(device_draws(z, V, 1.0f, 7, n) == top6);
}

TEST_CASE("device sampling: NaN counts as -inf, -inf is never drawn, +inf ones evenly; a row of -inf and NaN draws every id") {
    const float nan = NAN, neg_nan = std::copysign(NAN, -1.0f), inf = INFINITY;
    const int V = 8, n = 1000;
    struct Row { std::vector<float> z; int greedy; };
    const Row rows[] = {
        {{nan, 1.0f, -inf, 0.5f, neg_nan, -inf, 1.5f, 0.0f, 9.0f, 9.0f}, 6},  // the finite ids by their softmax
        {{1.0f, inf, nan, inf, -inf, 2.0f, 0.0f, 0.0f, 9.0f, 9.0f}, 1},        // ids 1 and 3 half each
        {{nan, -inf, neg_nan, -inf, nan, nan, -inf, -inf, 9.0f, 9.0f}, 0},     // every id, 1/8 each
    };
    for (const Row& r : rows)
        for (int top_k : {0, 1, 2}) {
            INFO("row with greedy id " << r.greedy << ", top-k " << top_k);
            CHECK(device_draws(r.z, V, 0.0f, top_k, 1)[0] == r.greedy);
            check_draws(r.z, V, 1.0f, top_k, device_draws(r.z, V, 1.0f, top_k, n));
        }
}

TEST_CASE("device sampling at GPT-2's vocabulary (V = 50257, Vp = 50304): 1024 threads of 49 or 50 ids, ties across threads, NaN, -inf") {
    // A tail of 50257 logits in [-3, 0), 14 % of the mass at T = 1, and above it ids owned
    // by different threads, several ids into their rows: 2049 (thread 1's third) and 50256
    // (the last, thread 80's 50th) tie for the largest, greedy's lowest id across threads;
    // then 0; 1023 and 30000 (thread 304's 30th) tie at top-k 4's cut, which keeps 5 ids. A
    // NaN (ids 5 and 40000) and -inf (7000) are never drawn; the padding, largest, neither.
    // 168 draws, 21 launches of 8 rows (each a block of 1024 threads: the emulation's
    // costliest): the rarest id kept at top-k 4 is expected 30 times; at top-k 0 ids 2049 and
    // 50256 are counted alone and the rest in check_draws' pooled count.
    const int V = 50257, Vp = 50304, n = 168, S = 8;
    std::vector<float> z(Vp, 50.0f);
    Rng rng{77};
    for (int j = 0; j < V; j++) z[j] = (float)(-3.0 * rng.uniform());
    z[2049] = z[50256] = 10.0f;
    z[0] = 9.9f;
    z[1023] = z[30000] = 9.8f;
    z[5] = z[40000] = NAN;
    z[7000] = -INFINITY;
    CHECK(device_draws(z, V, 0.0f, 0, 1)[0] == 2049);
    for (int top_k : {4, 0}) check_draws(z, V, 1.0f, top_k, device_draws(z, V, 1.0f, top_k, n, S));
}

// A kernel that adds v to x[0], for the graph tests.
static __global__ void add_kernel(float* x, float v) {
    if (threadIdx.x == 0) x[0] += v;
}

TEST_CASE("CUDA graphs: a captured launch replays with its arguments; work on the legacy stream during a capture invalidates it") {
    float* x = to_device(std::vector<float>{1.0f});
    cudaStream_t s;
    cudaCheck(cudaStreamCreate(&s));
    cudaGraph_t graph = nullptr;  // set by the calls below (GCC cannot tell at -O1)
    cudaGraphExec_t exec = nullptr;
    CHECK(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeGlobal) != cudaSuccess);  // the legacy stream cannot capture
    cudaCheck(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    launch(add_kernel, dim3(1), dim3(32), 0, s, x, 2.0f);
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaStreamEndCapture(s, &graph));
    CHECK(to_host(x, 1)[0] == 1.0f);  // captured, not run
    cudaCheck(cudaGraphInstantiate(&exec, graph, 0));
    for (int i = 0; i < 3; i++) cudaCheck(cudaGraphLaunch(exec, nullptr));
    CHECK(to_host(x, 1)[0] == 7.0f);
    cudaCheck(cudaGraphExecDestroy(exec));
    cudaCheck(cudaGraphDestroy(graph));
    cudaCheck(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    launch(add_kernel, dim3(1), dim3(32), 0, nullptr, x, 5.0f);
    CHECK(cudaGetLastError() != cudaSuccess);
    CHECK(cudaStreamEndCapture(s, &graph) == cudaErrorStreamCaptureInvalidated);
    CHECK(to_host(x, 1)[0] == 7.0f);
    cudaCheck(cudaStreamDestroy(s));
    cudaCheck(cudaFree(x));
}

TEST_CASE("decode kernels: split-K (2, 3, 7, 28 splits) equals one split, including splits that see no key") {
    // A decode step of phd-swa-3-4 at position 200 for 6 samples (18 rows: two thread blocks
    // of kDecodeRows, the second holding sample 5's last two rows): 190 shared prompt
    // originals, 10 own ones a sample, 4 window slots (one empty), the block's 3 copies: 207
    // candidates. 28 splits (the most the part buffer holds for 18 rows of 2 heads) take 8
    // candidates each, and the last 2 none.
    Config c = decode_config("phd-swa-3-4", 256);
    const int R = 3, S = 6, t = 200, pre = 190, kvdim = c.Hkv * c.hd(), W = c.W;
    KVLayer<float> L;
    L.pre = pre;
    L.own_cap = 16;
    L.win_slots = W;
    std::vector<int2> pre_nc, own_nc(L.own_cap, make_int2(-1, 0)), win_nc(W, make_int2(-1, 0)), nc;
    for (int n = 0; n < pre; n++) pre_nc.push_back(make_int2(n, 0));
    for (int n = pre; n < t; n++) own_nc[n - pre] = make_int2(n, 0);
    for (int h = t * 2 - 3; h < t * 2; h++) win_nc[h % W] = make_int2(h / 2, h % 2 + 1);  // the last 3 hidden tokens
    for (int k = 0; k < R; k++) nc.push_back(make_int2(t, k));
    std::vector<void*> bufs;
    auto up = [&](auto v) { auto* d = to_device(v); bufs.push_back(d); return d; };
    L.pre_k = up(random_vec<float>((size_t)pre * kvdim, 1));
    L.pre_v = up(random_vec<float>((size_t)pre * kvdim, 2));
    L.pre_nc = up(pre_nc);
    L.own_k = up(random_vec<float>((size_t)S * L.own_cap * kvdim, 3));
    L.own_v = up(random_vec<float>((size_t)S * L.own_cap * kvdim, 4));
    L.own_nc = up(own_nc);
    L.win_k = up(random_vec<float>((size_t)S * W * kvdim, 5));
    L.win_v = up(random_vec<float>((size_t)S * W * kvdim, 6));
    L.win_nc = up(win_nc);
    DecodeState* st = up(std::vector<DecodeState>{DecodeState{{R, 1, t, t * 2}, t - pre, t + 1}});
    float* qkv = up(random_vec<float>((size_t)S * R * c.qkv_dim(), 7, 2.0));
    int2* d_nc = up(nc);
    float* part = up(std::vector<float>((size_t)kDecodeMaxParts * (c.hd() + 2)));
    const size_t osize = (size_t)S * R * c.H * c.hd();
    float* o = up(std::vector<float>(osize));
    attention_decode(o, part, qkv, d_nc, L, st, c, S, R, 0, 1, nullptr);
    const std::vector<float> one = to_host(o, osize);
    for (int splits : {2, 3, 7, 28}) {
        attention_decode(o, part, qkv, d_nc, L, st, c, S, R, 0, splits, nullptr);
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
