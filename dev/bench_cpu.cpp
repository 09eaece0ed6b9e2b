// CPU benchmarks (`make bench`): the machine's fp32 peak, the GEMM of kernels/cpu_gemm.h at
// the model's shapes against it, and one training step.
//
// Peak: an FMA-bound loop on every thread, 12 independent chains of the widest vector the
// build targets (GCC vector extensions: 64 bytes under AVX-512, 32 under AVX, else 16), as
// many FMAs in flight as two FMA pipes of 4-cycle latency need. The GEMM rows: each product
// of the bench's model, in the three orientations a linear layer uses (forward y = x W^T,
// backward dx = dy W and dW += dy^T x), in GFLOP/s and as a share of that peak.
// Step: ms/step and original tokens/s of one full step (forward, backward, grad norm, AdamW)
// for several variants at one fixed size, split into the transformer body and the LM head.
// The body is timed directly, as the same step with a 128-token vocabulary (its head and
// embedding are negligible); the head is the difference. model.h §7: the body should cost
// about K x vanilla, the head 1 x.
// Each number is the best of N runs after one warm-up: this machine's neighbours add noise,
// never speed.
//   make bench            (OMP_NUM_THREADS=2)
//   ./build/bench_cpu [steps [variant...]]     variants given: only their full steps
#include <omp.h>
#include <chrono>
#include <functional>
#include "../model.h"

static double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
static double best_ms(int runs, const std::function<void()>& f) {
    double best = 1e30;
    for (int r = 0; r <= runs; r++) {
        const double t0 = now_ms();
        f();
        if (r > 0) best = std::min(best, now_ms() - t0);
    }
    return best;
}

#if defined(__AVX512F__)
static constexpr int kVecBytes = 64;
static const char* kVecName = "AVX-512";
#elif defined(__AVX__)
static constexpr int kVecBytes = 32;
static const char* kVecName = "AVX";
#else
static constexpr int kVecBytes = 16;
static const char* kVecName = "128-bit";
#endif
typedef float VecF __attribute__((vector_size(kVecBytes)));

// GFLOP/s of fp32 FMAs on every OpenMP thread.
static double fp32_peak() {
    constexpr int chains = 12, lanes = kVecBytes / 4;
    const long iters = 20000000;
    const double ms = best_ms(3, [&] {
        float sink = 0;
        #pragma omp parallel reduction(+ : sink)
        {
            VecF acc[chains], mul, add;
            for (int l = 0; l < lanes; l++) { mul[l] = 0.999999f; add[l] = 1e-7f; }
            for (int i = 0; i < chains; i++) acc[i] = mul * (float)(i + 1);
            for (long it = 0; it < iters; it++)
                for (int i = 0; i < chains; i++) acc[i] = acc[i] * mul + add;  // one FMA each (-march: FMA units)
            for (int i = 0; i < chains; i++)
                for (int l = 0; l < lanes; l++) sink += acc[i][l];
        }
        if (sink == 12345.0f) printf(" ");  // keeps the loop
    });
    return 2.0 * chains * lanes * iters * omp_get_max_threads() / (ms / 1000) / 1e9;
}

// The three products of a linear layer of `in` to `out` features over `rows` rows.
static void gemm_rows(const char* name, int rows, int in, int out, double peak, int runs) {
    std::vector<float> x((size_t)rows * in, 0.5f), w((size_t)out * in, 0.25f), y((size_t)rows * out, 0.125f), dx(x.size()), dw(w.size());
    const double flop = 2.0 * rows * in * out;
    const double ms[3] = {
        best_ms(runs, [&] { gemm(y.data(), out, x.data(), in, 1, w.data(), 1, in, rows, out, in, false); }),      // y = x W^T
        best_ms(runs, [&] { gemm(dx.data(), in, y.data(), out, 1, w.data(), in, 1, rows, in, out, false); }),     // dx = dy W
        best_ms(runs, [&] { gemm(dw.data(), in, y.data(), 1, out, x.data(), in, 1, out, in, rows, true); })};     // dW += dy^T x
    printf("%-8s %5d x %5d -> %5d |", name, rows, in, out);
    for (double t : ms) printf(" %7.1f (%3.0f%%)", flop / (t / 1000) / 1e9, 100 * flop / (t / 1000) / 1e9 / peak);
    printf("\n");
}

struct StepTime { double step, fwdbwd; };

static Config bench_config(const char* variant, int V, int T) {
    Config c;
    parse_variant(variant, &c);
    c.V = V; c.Vp = pad_vocab(c.V); c.L = 4; c.D = 256; c.H = 4; c.Hkv = 4; c.F = 683; c.maxT = T;
    return c;
}

static StepTime time_step(const char* variant, int V, int B, int T, int steps) {
    const Config c = bench_config(variant, V, T);
    Model<float> M(c);
    init_params(c, M.params.data(), 1);
    std::vector<float> m(M.params.size()), v(M.params.size());
    Rng rng{2};
    std::vector<int> tok(B * T), tgt(B * T);
    for (int i = 0; i < B * T; i++) { tok[i] = (int)(rng.next_u64() % c.V); tgt[i] = (int)(rng.next_u64() % c.V); }
    AdamW o;
    StepTime best{1e30, 1e30};
    for (int s = 0; s <= steps; s++) {
        double t0 = now_ms();
        std::fill(M.grads.begin(), M.grads.end(), 0.0f);
        double t1 = now_ms();
        model_forward(M, tok.data(), tgt.data(), B, T);
        model_backward(M, 1.0f);
        double t2 = now_ms();
        adamw_update(c, o, M.params.data(), M.grads.data(), m.data(), v.data(), s, 1e-4f, grad_norm(M.grads.data(), M.grads.size()));
        if (s > 0) best = {std::min(best.step, now_ms() - t0), std::min(best.fwdbwd, t2 - t1)};
    }
    return best;
}

int main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);  // a line at a time even into a file or pipe: a run stopped early keeps its rows
    const int steps = argc > 1 ? atoi(argv[1]) : 5, B = 4, T = 256;
    std::vector<const char*> variants(argv + std::min(argc, 2), argv + argc);
    const bool all = variants.empty();
    if (all) variants = {"vanilla", "phd-2", "phd-cswa-2-16-32", "phd-cswa-3-16-32"};
    printf("L=4 D=256 H=4 F=683 V=50257 B=%d T=%d, %d OpenMP threads, best of %d after 1 warm-up\n", B, T, omp_get_max_threads(), steps);
    if (all) {
        const double peak = fp32_peak();
        printf("fp32 peak: %.1f GFLOP/s (%s FMA loop on every thread)\n", peak, kVecName);
        const Config c = bench_config("vanilla", 50257, T);
        printf("GEMM, GFLOP/s (share of peak), rows = B*T: y = x W^T | dx = dy W | dW += dy^T x\n");
        gemm_rows("qkv", B * T, c.D, c.qkv_dim(), peak, steps);
        gemm_rows("wo", B * T, c.D, c.D, peak, steps);
        gemm_rows("w13", B * T, c.D, 2 * c.F, peak, steps);
        gemm_rows("w2", B * T, c.F, c.D, peak, steps);
        gemm_rows("lm_head", B * T, c.D, c.Vp, peak, steps);
    }
    printf("%-18s %8s %11s | %8s %8s %8s | %12s\n", "variant", "ms/step", "orig tok/s", "fwd+bwd", "body", "head", "body/vanilla");
    double body_vanilla = 0;
    for (const char* v : variants) {
        const StepTime full = time_step(v, 50257, B, T, steps);
        if (!all) {
            printf("%-18s %8.1f %11.0f | %8.1f\n", v, full.step, B * T / (full.step / 1000), full.fwdbwd);
            continue;
        }
        const StepTime body = time_step(v, 128, B, T, steps);
        if (!strcmp(v, "vanilla")) body_vanilla = body.fwdbwd;
        printf("%-18s %8.1f %11.0f | %8.1f %8.1f %8.1f | %12.2f\n", v, full.step, B * T / (full.step / 1000), full.fwdbwd,
               body.fwdbwd, full.fwdbwd - body.fwdbwd, body.fwdbwd / body_vanilla);
    }
    return 0;
}
