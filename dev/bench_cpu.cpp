// CPU training-step benchmark (issue 2): ms/step and original tokens/s of one full step
// (forward, backward, grad norm, AdamW) for several variants at one fixed size, and the
// split of forward+backward into the LM head (final norm + head matmuls + cross-entropy on
// B*T rows, timed by running exactly those calls on their real shapes) and the transformer
// body (the rest), plus the optimizer (zeroing, grad norm, AdamW). PHD.md section 7: the
// body should cost about K x vanilla, the head 1 x.
//   make bench            (OMP_NUM_THREADS=2)
//   ./build/bench_cpu [steps]
#include <omp.h>
#include <chrono>
#include "../model.h"

static double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char** argv) {
    const int steps = argc > 1 ? atoi(argv[1]) : 5, B = 4, T = 256;
    const char* variants[] = {"vanilla", "phd-2", "phd-cswa-2-16-32", "phd-cswa-3-16-32"};
    printf("L=4 D=256 H=4 F=683 V=50257 B=%d T=%d, %d OpenMP threads, best of %d steps after 1 warm-up\n", B, T,
           omp_get_max_threads(), steps);
    printf("%-18s %8s %11s | %8s %8s %8s %8s | %12s\n", "variant", "ms/step", "orig tok/s", "fwd+bwd", "head", "body",
           "optim", "body/vanilla");
    double body_vanilla = 0;
    for (const char* v : variants) {
        Config c;
        parse_variant(v, &c);
        c.V = 50257; c.Vp = pad_vocab(c.V); c.L = 4; c.D = 256; c.H = 4; c.Hkv = 4; c.F = 683; c.maxT = T;
        Model<float> M(c);
        init_params(c, M.params.data(), 1);
        std::vector<float> m(M.params.size()), vv(M.params.size());
        Rng rng{2};
        std::vector<int> tok(B * T), tgt(B * T);
        for (int i = 0; i < B * T; i++) { tok[i] = (int)(rng.next_u64() % c.V); tgt[i] = (int)(rng.next_u64() % c.V); }
        AdamW o;
        double total = 1e30, fb = 1e30;  // best step: this machine's neighbours add noise, never speed
        for (int s = 0; s <= steps; s++) {
            double t0 = now_ms();
            std::fill(M.grads.begin(), M.grads.end(), 0.0f);
            double t1 = now_ms();
            model_forward(M, tok.data(), tgt.data(), B, T);
            model_backward(M, 1.0f);
            double t2 = now_ms();
            double n = grad_norm(M.grads.data(), M.grads.size());
            adamw_update(c, o, M.params.data(), M.grads.data(), m.data(), vv.data(), s, 1e-4f, n);
            if (s > 0) { total = std::min(total, now_ms() - t0); fb = std::min(fb, t2 - t1); }
        }
        // The head alone, same calls and shapes as inside model_forward/model_backward.
        const int BT = B * T;
        double head = 1e30;
        for (int s = 0; s <= steps; s++) {
            double t0 = now_ms();
            rmsnorm_forward(M.xn, M.rstd_final, M.xlast, M.p.g_final, BT, c.D);
            matmul_forward(M.logits, M.xn, M.p.wout, BT, c.D, c.Vp);
            crossentropy_forward(M.losses, M.lse, M.logits, tgt.data(), BT, c.V, c.Vp);
            crossentropy_backward(M.logits, M.lse, tgt.data(), 1.0f / BT, BT, c.V, c.Vp);
            matmul_backward(M.dxlast, M.g.wout, M.logits, M.xn, M.p.wout, BT, c.D, c.Vp);
            rmsnorm_backward(M.dxlast, M.g.g_final, M.dxlast, M.xlast, M.p.g_final, M.rstd_final, BT, c.D);
            if (s > 0) head = std::min(head, now_ms() - t0);
        }
        double ms = total, fbms = fb, hms = head, body = fbms - hms;
        if (c.variant == VANILLA) body_vanilla = body;
        printf("%-18s %8.1f %11.0f | %8.1f %8.1f %8.1f %8.1f | %12.2f\n", v, ms, BT / (ms / 1000), fbms, hms, body,
               ms - fbms, body / body_vanilla);
    }
    return 0;
}
