// GPU kernel lab and training-step benchmark (issue 5), after llm.c's dev/cuda. It uses the
// production kernels themselves (kernels/*.cuh), so it cannot drift from them.
//
// 1. Kernel lab: every kernel of a training step, at the benchmark's shape, is first checked
//    against its CPU counterpart in model.h on the same inputs (max |error| relative to the
//    tensor's largest value, against a stated tolerance), then timed. Attention reports
//    FLOP/s over visible pairs only (FlashAttention's convention: 4*hd FLOPs per visible
//    pair and head forward, 2.5x that backward); GEMMs report FLOP/s; the rest GB/s of the
//    bytes they must read and write. Where the head size allows, the tensor-core (TF32)
//    attention kernels get their own rows next to the fp32 ones: their ratio in one run.
// 2. Attention vs the cost model (PHD.md section 7): forward + backward time per variant
//    next to its visible pairs, and the time per million pairs (all B sequences, per layer
//    with all H heads): flat across variants when time tracks the pairs. --tf32 1: the
//    tensor-core kernels.
// 3. Training steps (zero grads, forward, backward, grad norm, AdamW): ms/step, original
//    tokens/s and MFU, for each --variant. Model FLOPs per original token:
//    6*(N_body*K + D*V) + 12*L*H*hd*(visible pairs per original token): the body runs on
//    K rows per position, the LM head on one; attention is 3x its forward.
//    MFU is against the device's FP32 peak (SMs x clock x FP32 lanes x 2), or its dense
//    TF32 tensor peak with --tf32 1 (cuBLAS and attention on tensor cores).
//
//   make bench-gpu        (nvcc and a GPU; GPT-2-small-like: L=12 D=768 H=12 T=1024, B=8)
//   ./build/bench_gpu [--variant V]... [-b B] [-t T] [--layers L] [--dim D] [--heads H]
//                     [--steps N] [--tf32 0|1] [--lab-variant V] [--tiny]
// --tiny is a small shape that the CUDA emulation runs in seconds: `make test` runs
// build/bench_gpu_emu --tiny, so the lab keeps building and its checks keep passing.
// The last line is "lab: N passed, M failed" over the kernel checks.
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <string>
#include "../common/engine.h"
#include "../test/tensor_util.h"
#include "../test/test_gpu_util.h"

struct Options {
    std::vector<std::string> variants;
    std::string lab_variant = "phd-cswa-2-16-32";
    int B = 8, T = 1024, L = 12, D = 768, H = 12, steps = 10, tf32 = 0;
    bool tiny = false;
};

static Config make_config(const std::string& variant, const Options& o) {
    Config c;
    std::string err = parse_variant(variant.c_str(), &c);
    if (!err.empty()) die("bench_gpu: %s", err.c_str());
    c.V = o.tiny ? 97 : 50257; c.Vp = pad_vocab(c.V); c.L = o.L; c.D = o.D; c.H = o.H; c.Hkv = o.H;
    c.F = (8 * o.D / 3 + 63) / 64 * 64; c.maxT = o.T;
    err = config_error(c);
    if (!err.empty()) die("bench_gpu: %s", err.c_str());
    return c;
}

// Visible (query, key) pairs of one sequence, from the intervals the kernels skip tiles by.
static double visible_pairs(const Config& c, int T) {
    double pairs = 0;
    for (int n = 0; n < T; n++)
        for (int k = 0; k < c.K; k++) {
            int lo, hi;
            visible_hidden_range(c, n, k, &lo, &hi);
            pairs += (n + 1) + (hi >= lo ? hi - lo + 1 : 0);
        }
    return pairs;
}

// Device buffers freed at the end of the lab.
struct Buffers {
    std::vector<void*> all;
    template<typename T> T* up(const std::vector<T>& h) {
        T* d = to_device(h);
        all.push_back(d);
        return d;
    }
    template<typename T> T* zeros(size_t n) { return up(std::vector<T>(n)); }
    ~Buffers() { for (void* p : all) cudaFree(p); }
};

// Runs fn once to warm up, then reps times between two events: ms per run.
template<typename Fn> static float time_ms(int reps, Fn fn) {
    cudaEvent_t e0, e1;
    cudaCheck(cudaEventCreate(&e0));
    cudaCheck(cudaEventCreate(&e1));
    fn();
    cudaCheck(cudaEventRecord(e0));
    for (int i = 0; i < reps; i++) fn();
    cudaCheck(cudaEventRecord(e1));
    cudaCheck(cudaEventSynchronize(e1));
    float ms;
    cudaCheck(cudaEventElapsedTime(&ms, e0, e1));
    cudaCheck(cudaEventDestroy(e0));
    cudaCheck(cudaEventDestroy(e1));
    return ms / reps;
}

static int g_passed = 0, g_failed = 0;

// One lab line: the check against the CPU, then the timing; work in FLOPs or bytes.
static void report(const char* name, double err, double tol, float ms, double work, const char* unit) {
    const bool ok = err <= tol;  // false for NaN
    (ok ? g_passed : g_failed)++;
    printf("%-28s %9.3f ms %9.1f %s  err %8.1e (tol %.0e) %s\n", name, ms, work / (ms * 1e6), unit, err, tol, ok ? "ok" : "FAILED");
}

static void kernel_lab(const Options& o, const std::vector<float>& params) {
    const Config c = make_config(o.lab_variant, o);
    const int B = o.B, T = o.T, TK = T * c.K, N = B * TK, BT = B * T, D = c.D, F = c.F, ld = c.qkv_dim(), od = c.H * c.hd();
    const int reps = o.tiny ? 1 : 10;
    const double pairs = visible_pairs(c, T) * B;
    printf("kernel lab: %s, B=%d T=%d (N=%d rows), D=%d H=%d hd=%d F=%d V=%d; visible pairs/sequence %.4g\n",
           variant_name(c).c_str(), B, T, N, D, c.H, c.hd(), F, c.V, pairs / B);
    printf("%-28s %12s %14s  %s\n", "kernel", "time", "rate", "check against the CPU (model.h)");
    Buffers buf;
    cudaStream_t s = nullptr;

    // attention, forward and backward, in the regrouped layout
    std::vector<float> qkv = random_vec<float>((size_t)N * ld, 1), dout = random_vec<float>((size_t)N * od, 2);
    std::vector<float> o_ref((size_t)N * od), lse_ref((size_t)B * c.H * TK), dqkv_ref(qkv.size());
    attention_forward(o_ref.data(), lse_ref.data(), qkv.data(), c, B, T);
    attention_backward(dqkv_ref.data(), dout.data(), qkv.data(), o_ref.data(), lse_ref.data(), c, B, T);
    float *d_qkv = buf.up(regroup_rows(qkv, c, B, T, ld, true)), *d_dout = buf.up(regroup_rows(dout, c, B, T, od, true));
    float *d_o = buf.zeros<float>(o_ref.size()), *d_lse = buf.zeros<float>(lse_ref.size()), *d_dqkv = buf.zeros<float>(qkv.size());
    const double attn_flops = 4.0 * c.hd() * c.H * pairs;
    float ms = time_ms(reps, [&] { attention_forward(d_o, d_lse, d_qkv, c, B, T, s); });
    report("attention_forward", max_rel(regroup_rows(to_host(d_o, o_ref.size()), c, B, T, od, false), o_ref), 1e-5, ms, attn_flops,
           "GFLOP/s");
    ms = time_ms(reps, [&] { attention_backward(d_dqkv, d_dout, d_qkv, d_o, d_lse, c, B, T, s); });
    report("attention_backward", max_rel(regroup_rows(to_host(d_dqkv, qkv.size()), c, B, T, ld, false), dqkv_ref), 1e-4, ms,
           2.5 * attn_flops, "GFLOP/s");
    if (compiled_head_dim(c)) {  // the tensor-core kernels' head sizes (--tf32 in training)
        float *d_o_tc = buf.zeros<float>(o_ref.size()), *d_lse_tc = buf.zeros<float>(lse_ref.size());
        ms = time_ms(reps, [&] { attention_forward(d_o_tc, d_lse_tc, d_qkv, c, B, T, s, nullptr, true); });
        report("attention_forward TF32 mma", max_rel(regroup_rows(to_host(d_o_tc, o_ref.size()), c, B, T, od, false), o_ref), 5e-3, ms,
               attn_flops, "GFLOP/s");
        ms = time_ms(reps, [&] { attention_backward(d_dqkv, d_dout, d_qkv, d_o_tc, d_lse_tc, c, B, T, s, true); });
        report("attention_backward TF32 mma", max_rel(regroup_rows(to_host(d_dqkv, qkv.size()), c, B, T, ld, false), dqkv_ref), 5e-3, ms,
               2.5 * attn_flops, "GFLOP/s");
    }

    // the QKV projection through cuBLAS, as GpuModel runs it
    GpuModel G(c, params.data(), o.tf32 != 0);
    std::vector<float> a = random_vec<float>((size_t)N * D, 4), proj_ref((size_t)N * ld);
    const float* wqkv = params.data() + param_tensors(c)[2].offset;
    matmul_forward(proj_ref.data(), a.data(), wqkv, N, D, ld);
    float *d_a = buf.up(a), *d_proj = buf.zeros<float>(proj_ref.size());
    ms = time_ms(reps, [&] { G.matmul(d_proj, d_a, G.p.layer[0].wqkv, N, D, ld, false); });
    report("matmul qkv (cuBLAS)", max_rel(to_host(d_proj, proj_ref.size()), proj_ref), o.tf32 ? 5e-3 : 1e-5, ms, 2.0 * N * D * ld,
           "GFLOP/s");

    // rmsnorm
    std::vector<float> x = random_vec<float>((size_t)N * D, 5), g = random_vec<float>(D, 6), dy = random_vec<float>((size_t)N * D, 7);
    std::vector<float> out_ref(x.size()), rstd_ref(N), dx_ref(x.size()), dg_ref(D, 0.0f);
    rmsnorm_forward(out_ref.data(), rstd_ref.data(), x.data(), g.data(), N, D);
    rmsnorm_backward(dx_ref.data(), dg_ref.data(), dy.data(), x.data(), g.data(), rstd_ref.data(), N, D);
    float *d_x = buf.up(x), *d_g = buf.up(g), *d_out = buf.zeros<float>(x.size()), *d_rstd = buf.zeros<float>(N);
    float *d_dy = buf.up(dy), *d_dx = buf.zeros<float>(x.size()), *d_dg = buf.zeros<float>(D), *d_scr = buf.zeros<float>((size_t)kDgChunks * D);
    ms = time_ms(reps, [&] { rmsnorm_forward(d_out, d_rstd, d_x, d_g, N, D, s); });
    report("rmsnorm_forward", max_rel(to_host(d_out, x.size()), out_ref), 1e-5, ms, 2.0 * N * D * 4, "GB/s");
    cudaCheck(cudaMemset(d_dg, 0, D * sizeof(float)));
    rmsnorm_backward(d_dx, d_dg, d_dy, d_x, d_g, d_rstd, N, D, d_scr, s);
    const double dg_err = max_rel(to_host(d_dg, D), dg_ref);
    ms = time_ms(reps, [&] { rmsnorm_backward(d_dx, d_dg, d_dy, d_x, d_g, d_rstd, N, D, d_scr, s); });
    report("rmsnorm_backward", std::max(max_rel(to_host(d_dx, x.size()), dx_ref), dg_err), 1e-4, ms, 5.0 * N * D * 4, "GB/s");

    // rope on the q and k heads
    std::vector<int> pos(N);
    for (int i = 0; i < N; i++) pos[i] = i % TK / c.K;
    std::vector<float> rot_ref = qkv;
    Model<float> M(c);  // its RoPE tables
    rope_forward(rot_ref.data(), pos.data(), c, N, M.rope_cos.data(), M.rope_sin.data());
    float* d_rot = buf.up(qkv);
    int* d_pos = buf.up(pos);
    rope_forward(d_rot, d_pos, c, N, G.rope_cos, G.rope_sin, s);
    const double rope_err = max_rel(to_host(d_rot, qkv.size()), rot_ref);
    ms = time_ms(reps, [&] { rope_forward(d_rot, d_pos, c, N, G.rope_cos, G.rope_sin, s); });
    report("rope_forward", rope_err, 1e-5, ms, 2.0 * N * (c.H + c.Hkv) * c.hd() * 4, "GB/s");

    // swiglu
    std::vector<float> h13 = random_vec<float>((size_t)N * 2 * F, 8, 3.0f), dgg = random_vec<float>((size_t)N * F, 9);
    std::vector<float> gg_ref((size_t)N * F), dh_ref(h13.size());
    swiglu_forward(gg_ref.data(), h13.data(), N, F);
    swiglu_backward(dh_ref.data(), dgg.data(), h13.data(), N, F);
    float *d_h13 = buf.up(h13), *d_gg = buf.zeros<float>(gg_ref.size()), *d_dgg = buf.up(dgg), *d_dh = buf.zeros<float>(h13.size());
    ms = time_ms(reps, [&] { swiglu_forward(d_gg, d_h13, N, F, s); });
    report("swiglu_forward", max_rel(to_host(d_gg, gg_ref.size()), gg_ref), 1e-5, ms, 3.0 * N * F * 4, "GB/s");
    ms = time_ms(reps, [&] { swiglu_backward(d_dh, d_dgg, d_h13, N, F, s); });
    report("swiglu_backward", max_rel(to_host(d_dh, h13.size()), dh_ref), 1e-5, ms, 5.0 * N * F * 4, "GB/s");

    // fused softmax + cross-entropy on the B*T last-copy rows; the backward overwrites logits
    std::vector<float> logits = random_vec<float>((size_t)BT * c.Vp, 10, 2.0f), losses_ref(BT), lse2_ref(BT);
    std::vector<int> targets(BT);
    Rng rng{11};
    for (int& t : targets) t = (int)(rng.next_u64() % c.V);
    crossentropy_forward(losses_ref.data(), lse2_ref.data(), logits.data(), targets.data(), BT, c.V, c.Vp);
    std::vector<float> dlogits_ref = logits;
    crossentropy_backward(dlogits_ref.data(), lse2_ref.data(), targets.data(), 1.0f / BT, BT, c.V, c.Vp);
    float *d_logits = buf.up(logits), *d_losses = buf.zeros<float>(BT), *d_lse2 = buf.zeros<float>(BT);
    int* d_targets = buf.up(targets);
    ms = time_ms(reps, [&] { crossentropy_forward(d_losses, d_lse2, d_logits, d_targets, BT, c.V, c.Vp, s); });
    report("crossentropy_forward", max_rel(to_host(d_losses, BT), losses_ref), 1e-5, ms, (double)BT * c.Vp * 4, "GB/s");
    crossentropy_backward(d_logits, d_lse2, d_targets, 1.0f / BT, BT, c.V, c.Vp, s);
    const double ce_err = max_rel(to_host(d_logits, logits.size()), dlogits_ref);
    ms = time_ms(reps, [&] {  // timed on its own output: the same work
        crossentropy_backward(d_logits, d_lse2, d_targets, 1.0f / BT, BT, c.V, c.Vp, s);
    });
    report("crossentropy_backward", ce_err, 1e-5, ms, 2.0 * BT * c.Vp * 4, "GB/s");

    // embedding: every copy of a position gets its token's row; the backward sums them back
    std::vector<int> tok(BT), row_tok(N);
    for (int& t : tok) t = (int)(rng.next_u64() % c.V);
    for (int i = 0; i < N; i++) row_tok[i] = tok[i / TK * T + regrouped_position(c, T, i % TK)];
    const std::vector<float> E(params.begin(), params.begin() + (size_t)c.Vp * D), dxe = random_vec<float>((size_t)N * D, 13);
    std::vector<float> xe_ref((size_t)N * D), dE_ref(E.size(), 0.0f);
    embedding_forward(xe_ref.data(), tok.data(), E.data(), B, T, c.K, D);
    embedding_backward(dE_ref.data(), regroup_rows(dxe, c, B, T, D, false).data(), tok.data(), B, T, c.K, D);
    int* d_row_tok = buf.up(row_tok);
    float *d_xe = buf.zeros<float>(xe_ref.size()), *d_dxe = buf.up(dxe), *d_dE = buf.zeros<float>(E.size());
    ms = time_ms(reps, [&] { embedding_forward(d_xe, d_row_tok, G.p.E, N, D, s); });
    report("embedding_forward", max_rel(regroup_rows(to_host(d_xe, xe_ref.size()), c, B, T, D, false), xe_ref), 0, ms, 2.0 * N * D * 4,
           "GB/s");
    TokenGroups groups;
    groups.set(row_tok);
    embedding_backward(d_dE, d_dxe, groups, D, s);
    const double emb_err = max_rel(to_host(d_dE, E.size()), dE_ref);
    ms = time_ms(reps, [&] { embedding_backward(d_dE, d_dxe, groups, D, s); });
    report("embedding_backward", emb_err, 1e-5, ms, 2.0 * N * D * 4, "GB/s");

    // AdamW over every parameter (one step from zero moments, against the CPU's)
    const size_t P = params.size();
    std::vector<float> grads = random_vec<float>(P, 12, 0.01f), p_ref = params, m_ref(P), v_ref(P);
    AdamW opt;
    adamw_update(c, opt, p_ref.data(), grads.data(), m_ref.data(), v_ref.data(), 0, 1e-3f, 1.0);
    float *d_p = buf.up(params), *d_gr = buf.up(grads), *d_m = buf.zeros<float>(P), *d_v = buf.zeros<float>(P);
    adamw_update(c, opt, d_p, d_gr, d_m, d_v, 0, 1e-3f, 1.0, s);
    const double adam_err = max_rel(to_host(d_p, P), p_ref);
    ms = time_ms(reps, [&] { adamw_update(c, opt, d_p, d_gr, d_m, d_v, 1, 1e-3f, 1.0, s); });
    report("adamw_update", adam_err, 1e-5, ms, 7.0 * P * 4, "GB/s");
}

// Forward + backward attention time per variant next to its visible pairs (PHD.md section 7).
static void attention_vs_pairs(const Options& o) {
    printf("\nattention forward + backward vs visible pairs (B=%d T=%d H=%d hd=%d, %s)\n%-18s %14s %10s %10s %12s\n", o.B, o.T,
           o.H, o.D / o.H, o.tf32 ? "TF32 tensor cores" : "fp32", "variant", "pairs/seq", "fwd ms", "bwd ms", "ns/Mpairs");
    for (const std::string& v : o.variants) {
        const Config c = make_config(v, o);
        const int TK = o.T * c.K;
        Buffers buf;
        float* d_qkv = buf.up(random_vec<float>((size_t)o.B * TK * c.qkv_dim(), 1));
        float *d_o = buf.zeros<float>((size_t)o.B * TK * c.H * c.hd()), *d_lse = buf.zeros<float>((size_t)o.B * c.H * TK);
        float *d_dout = buf.up(random_vec<float>((size_t)o.B * TK * c.H * c.hd(), 2)), *d_dqkv = buf.zeros<float>((size_t)o.B * TK * c.qkv_dim());
        const int reps = o.tiny ? 1 : 5;
        float f = time_ms(reps, [&] { attention_forward(d_o, d_lse, d_qkv, c, o.B, o.T, nullptr, nullptr, o.tf32 != 0); });
        float b = time_ms(reps, [&] { attention_backward(d_dqkv, d_dout, d_qkv, d_o, d_lse, c, o.B, o.T, nullptr, o.tf32 != 0); });
        const double pairs = visible_pairs(c, o.T);
        printf("%-18s %14.4g %10.3f %10.3f %12.1f\n", v.c_str(), pairs, f, b, (f + b) * 1e6 / (pairs * o.B / 1e6));
    }
}

// The device's peak in TFLOP/s (FP32 lanes, or dense TF32 tensor cores), 0 when unknown.
static double peak_tflops(bool tf32) {
    int sms, khz, major, minor;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0) != cudaSuccess)
        return 0;
    // per SM per clock: FP32 FMA lanes x 2; dense TF32 tensor FLOPs (A100: 1024, H100: 2048)
    const double fp32 = (major == 8 && minor == 0 ? 64 : 128) * 2.0, tensor = major == 8 ? 1024 : major == 9 ? 2048 : 0;
    return sms * (khz * 1e3) * (tf32 ? tensor : fp32) / 1e12;
}

static void training_steps(const Options& o, const std::vector<float>& params) {
    const double peak = peak_tflops(o.tf32 != 0);
    printf("\ntraining step (zero grads, forward, backward, grad norm, AdamW), B=%d T=%d L=%d D=%d H=%d, TF32 %s, "
           "median of %d after 1 warm-up; peak %.1f TFLOP/s (%s)\n", o.B, o.T, o.L, o.D, o.H, o.tf32 ? "on" : "off", o.steps, peak,
           peak > 0 ? (o.tf32 ? "dense TF32" : "FP32") : "unknown here: no MFU");
    printf("%-18s %9s %7s %12s %12s %9s %6s\n", "variant", "ms/step", "ratio", "orig tok/s", "GFLOP/token", "TFLOP/s", "MFU");
    double base = 0;
    for (const std::string& v : o.variants) {
        const Config c = make_config(v, o);
        GpuEngine E(c, params, o.tf32 != 0);
        Rng rng{2};
        std::vector<int> tok(o.B * o.T), tgt(o.B * o.T);
        for (size_t i = 0; i < tok.size(); i++) { tok[i] = (int)(rng.next_u64() % c.V); tgt[i] = (int)(rng.next_u64() % c.V); }
        AdamW opt;
        std::vector<double> times;
        for (int s = 0; s <= o.steps; s++) {
            cudaCheck(cudaDeviceSynchronize());
            auto t0 = std::chrono::steady_clock::now();
            E.zero_grads();
            E.forward(tok.data(), tgt.data(), o.B, o.T);
            E.backward(1.0f);
            E.update(opt, s, 1e-4f, E.norm());
            cudaCheck(cudaDeviceSynchronize());
            if (s > 0) times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        }
        std::sort(times.begin(), times.end());
        const double ms = times[times.size() / 2];
        if (base == 0) base = ms;
        const size_t body = num_params(c) - 2 * (size_t)c.Vp * c.D - c.D;  // every layer tensor
        const double per_token = 6.0 * ((double)body * c.K + (double)c.D * c.V) + 12.0 * c.L * c.H * c.hd() * visible_pairs(c, o.T) / o.T;
        const double tokens = (double)o.B * o.T, tflops = per_token * tokens / (ms * 1e9);
        printf("%-18s %9.2f %7.2f %12.0f %12.3f %9.2f ", v.c_str(), ms, ms / base, tokens / (ms / 1e3), per_token / 1e9, tflops);
        printf(peak > 0 ? "%5.1f%%\n" : "    -\n", 100 * tflops / std::max(peak, 1e-30));
    }
}

int main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);  // a line at a time even into a file or pipe: a run stopped early keeps its lines
    Options o;
    for (int i = 1; i < argc; i++) {
        std::string f = argv[i];
        if (f == "--tiny") { o.tiny = true; o.B = 1; o.T = 24; o.L = 2; o.D = 64; o.H = 2; o.steps = 1; continue; }
        if (i + 1 >= argc) die("bench_gpu: %s needs a value", f.c_str());
        std::string v = argv[++i];
        if (f == "--variant") o.variants.push_back(v);
        else if (f == "--lab-variant") o.lab_variant = v;
        else if (f == "-b") o.B = atoi(v.c_str());
        else if (f == "-t") o.T = atoi(v.c_str());
        else if (f == "--layers") o.L = atoi(v.c_str());
        else if (f == "--dim") o.D = atoi(v.c_str());
        else if (f == "--heads") o.H = atoi(v.c_str());
        else if (f == "--steps") o.steps = atoi(v.c_str());
        else if (f == "--tf32") o.tf32 = atoi(v.c_str());
        else die("bench_gpu: unknown flag %s", f.c_str());
    }
    if (o.B < 1 || o.T < 1 || o.steps < 1) die("bench_gpu: -b, -t and --steps must be >= 1");
    if (o.tiny) o.lab_variant = "phd-cswa-3-5-4";
    if (o.variants.empty() && o.tiny) o.variants = {"vanilla", o.lab_variant};
    if (o.variants.empty()) o.variants = {"vanilla", "phd-2", "phd-cswa-2-16-32", "phd-cswa-3-16-32"};
    std::string why;
    if (!gpu_available(&why)) die("bench_gpu: no CUDA device (%s)", why.c_str());
    // One set of weights for the lab and every variant's steps (they do not depend on the
    // variant): initialising GPT-2-small's on the host takes seconds.
    const Config shape = make_config(o.lab_variant, o);
    std::vector<float> params(num_params(shape));
    init_params(shape, params.data(), 1);
    kernel_lab(o, params);
    attention_vs_pairs(o);
    training_steps(o, params);
    printf("lab: %d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
