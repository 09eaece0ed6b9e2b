// CPU training-step benchmark (issue 2): ms/step and original tokens/s of one full step
// (forward, backward, grad norm, AdamW) for several variants at one fixed size, split into
// the transformer body and the LM head. The body is timed directly, as the same step with a
// 128-token vocabulary (its head and embedding are negligible); the head is the difference.
// model.h §7: the body should cost about K x vanilla, the head 1 x.
// Each number is the best of N steps after one warm-up: this machine's neighbours add
// noise, never speed.
//   make bench            (OMP_NUM_THREADS=2)
//   ./build/bench_cpu [steps]
#include <omp.h>
#include <chrono>
#include "../model.h"

static double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct StepTime { double step, fwdbwd; };

static StepTime time_step(const char* variant, int V, int B, int T, int steps) {
    Config c;
    parse_variant(variant, &c);
    c.V = V; c.Vp = pad_vocab(c.V); c.L = 4; c.D = 256; c.H = 4; c.Hkv = 4; c.F = 683; c.maxT = T;
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
    const char* variants[] = {"vanilla", "phd-2", "phd-cswa-2-16-32", "phd-cswa-3-16-32"};
    printf("L=4 D=256 H=4 F=683 V=50257 B=%d T=%d, %d OpenMP threads, best of %d steps after 1 warm-up\n", B, T,
           omp_get_max_threads(), steps);
    printf("%-18s %8s %11s | %8s %8s %8s | %12s\n", "variant", "ms/step", "orig tok/s", "fwd+bwd", "body", "head",
           "body/vanilla");
    double body_vanilla = 0;
    for (const char* v : variants) {
        StepTime full = time_step(v, 50257, B, T, steps), body = time_step(v, 128, B, T, steps);
        if (!strcmp(v, "vanilla")) body_vanilla = body.fwdbwd;
        printf("%-18s %8.1f %11.0f | %8.1f %8.1f %8.1f | %12.2f\n", v, full.step, B * T / (full.step / 1000), full.fwdbwd,
               body.fwdbwd, full.fwdbwd - body.fwdbwd, body.fwdbwd / body_vanilla);
    }
    return 0;
}
