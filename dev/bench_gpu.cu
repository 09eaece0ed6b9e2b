// GPU kernel lab and training-step benchmark (issue 5), after llm.c's dev/cuda. It uses the
// production kernels themselves (kernels/*.cuh), so it cannot drift from them.
//
// 1. Kernel lab: every kernel of a training step, at the benchmark's shape, is first checked
//    against its CPU counterpart in model.h on the same inputs (max |error| relative to the
//    tensor's largest value, against a stated tolerance), then timed. The checks are the
//    table of dev/kernel_checks.h, which the GPU tests run at their shapes too; a line shows
//    the tensor closest to its tolerance. Attention reports
//    FLOP/s over visible pairs only (FlashAttention's convention: 4*hd FLOPs per visible
//    pair and head forward, 2.5x that backward); GEMMs report FLOP/s; the rest GB/s of the
//    bytes they must read and write. Where the head size allows, the tensor-core (TF32)
//    attention kernels get their own rows next to the fp32 ones: their ratio in one run.
// 2. Attention vs the cost model (model.h §7): forward + backward time per variant
//    next to its visible pairs, and the time per million pairs (all B sequences, per layer
//    with all H heads): flat across variants when time tracks the pairs. --tf32 1: the
//    tensor-core kernels.
// 3. Training steps (zero grads, forward, backward, grad norm, AdamW): ms/step, original
//    tokens/s and MFU, for each --variant, as train_phd's step line computes them: model
//    FLOPs per original token from model_flops_per_token (the cost model of model.h §7),
//    against peak_tflops (kernels/engine.h): the device's FP32 peak, its dense TF32 tensor
//    peak with --tf32 1, or its dense bf16 peak with --bf16 1.
// 4. --budget V (instead of 1-3; repeatable): the counted budget of one bf16 training step of
//    variant V. Every launch the step makes, in order, with the bytes and FLOPs its launcher
//    counts (count_launch, kernels/cuda_compat.h) and its floor: the longer of bytes at the
//    H200's 4.3 TB/s (device-to-device copies, measured) and FLOPs at 790 TFLOP/s (dense bf16
//    matrix products, measured); then the launches summed by name, and `counted step: X ms`,
//    the design's floor. On a GPU each launch is timed too (measured beside floor); on the
//    emulation the step is a dry run (nothing runs), so it counts GPT-2-small in a second.
//
// 5. --memory T (alone; no GPU needed, the emulated build prints it as well): the device memory
//    of training the paper's models (model.h's kModels) at T positions, as the start-up
//    `memory:` line counts it (GpuEngine::memory), for K = 1, 2, 3, each --recompute level,
//    and the largest micro-batch that fits an 80 GB and a 141 GB GPU: README's table.
//
//   make bench-gpu        (nvcc and a GPU; GPT-2-small-like: L=12 D=768 H=12 T=1024, B=8)
//   ./build/bench_gpu [--variant V]... [-b B] [-t T] [--layers L] [--dim D] [--heads H]
//                     [--steps N] [--tf32 0|1] [--bf16 0|1] [--lab 0|1] [--lab-variant V] [--tiny]
//   ./build/bench_gpu --budget V [--budget V]... [-b B] [-t T] [--model NAME] [--logits-chunk ROWS] ...
// --logits-chunk ROWS: the budget's step with train_phd's --logits-chunk (the head in chunks).
// --model NAME (gpt2-124m, paper-550m, paper-1.2b): that size, block and vocabulary instead of
// --layers/--dim/--heads: on the emulation a dry run of the paper's model's step, whose
// launches are all checked, though none computes.
// --bf16 1: sections 2 and 3 in bf16 (train_phd's --dtype bf16: matmuls and attention on
// bf16 tensor cores; the lab checks every kernel, fp32 and bf16, whatever the flags); --lab 0 leaves the lab out (its CPU references at
// GPT-2 size take most of a run's time).
// --tiny is a small shape that the CUDA emulation runs in seconds: `make test` runs
// build/bench_gpu_emu --tiny, so the lab keeps building and its checks keep passing.
// The last line is "lab: N passed, M failed" over the kernel checks.
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <string>
#include "../kernels/engine.h"
#include "kernel_checks.h"

struct Options {
    std::vector<std::string> variants, budgets;
    std::string lab_variant = "phd-cswa-2-16-32";
    std::string model;  // --model NAME: a size of model.h's kModels (its block and vocabulary), over -t's T
    int B = 8, T = 1024, L = 12, D = 768, H = 12, steps = 10, tf32 = 0, bf16 = 0, lab = 1, logits_chunk = 0;
    bool tiny = false;
};

static Config make_config(const std::string& variant, const Options& o) {
    Config c;
    std::string err = parse_variant(variant.c_str(), &c);
    if (!err.empty()) die("bench_gpu: %s", err.c_str());
    c.V = o.tiny ? 97 : 50257; c.Vp = pad_vocab(c.V); c.L = o.L; c.D = o.D; c.H = o.H; c.Hkv = o.H;
    c.F = (8 * o.D / 3 + 63) / 64 * 64; c.maxT = o.T;
    for (const NamedModel& m : kModels)
        if (o.model == m.name) {
            c.V = m.V; c.Vp = pad_vocab(c.V); c.L = m.L; c.D = m.D; c.H = m.H; c.Hkv = m.Hkv; c.F = m.F;
            set_block(&c, std::string(m.block) == "olmo2");
        }
    err = config_error(c);
    if (!err.empty()) die("bench_gpu: %s", err.c_str());
    return c;
}

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

// Every check of the table at the benchmark's shape, then its kernel timed.
static void kernel_lab(const Options& o, const std::vector<float>& params) {
    const Config c = make_config(o.lab_variant, o);
    const int B = o.B, T = o.T, N = B * T * c.K;
    printf("kernel lab: %s, B=%d T=%d (N=%d rows), D=%d H=%d hd=%d F=%d V=%d; visible pairs/sequence %.4g\n",
           variant_name(c).c_str(), B, T, N, c.D, c.H, c.hd(), c.F, c.V, visible_pairs(c, T));
    printf("%-38s %12s %14s  %s\n", "kernel", "time", "rate", "check against the CPU (model.h): the tensor nearest its tolerance");
    GpuModel G(c, params.data(), o.tf32 != 0);
    for (const KernelCheck& k : kernel_checks()) {
        float ms = 0;
        const CheckResult r = k.run(G, B, T, [&](const std::function<void()>& fn) { ms = time_ms(o.tiny ? 1 : 10, fn); });
        if (r.errors.empty()) {
            printf("%-38s (no instance for head size %d)\n", k.name, c.hd());
            continue;
        }
        const TensorError* worst = &r.errors[0];
        bool ok = true;
        for (const TensorError& e : r.errors) {
            ok &= e.ok();
            if (!e.ok() || (worst->ok() && e.err / std::max(e.tol, 1e-300) > worst->err / std::max(worst->tol, 1e-300))) worst = &e;
        }
        (ok ? g_passed : g_failed)++;
        printf("%-38s %9.3f ms %9.1f %-7s  %s: err %8.1e (tol %.0e) %s\n", k.name, ms, r.work / (ms * 1e6), k.unit, worst->tensor.c_str(),
               worst->err, worst->tol, ok ? "ok" : "FAILED");
    }
}

// Forward + backward attention time per variant next to its visible pairs (model.h §7).
static void attention_vs_pairs(const Options& o) {
    printf("\nattention forward + backward vs visible pairs (B=%d T=%d H=%d hd=%d, %s)\n%-18s %14s %10s %10s %12s\n", o.B, o.T,
           o.H, o.D / o.H, o.bf16 ? "bf16 tensor cores" : o.tf32 ? "TF32 tensor cores" : "fp32", "variant", "pairs/seq", "fwd ms",
           "bwd ms", "ns/Mpairs");
    for (const std::string& v : o.variants) {
        const Config c = make_config(v, o);
        const int TK = o.T * c.K;
        CheckBuffers buf;
        float* d_qkv = buf.up(random_vec<float>((size_t)o.B * TK * c.qkv_dim(), 1));
        float *d_o = buf.nan((size_t)o.B * TK * c.H * c.hd()), *d_lse = buf.nan((size_t)o.B * c.H * TK);
        float *d_dout = buf.up(random_vec<float>((size_t)o.B * TK * c.H * c.hd(), 2)), *d_dqkv = buf.nan((size_t)o.B * TK * c.qkv_dim());
        const int reps = o.tiny ? 1 : 5;
        float f, b;
        if (o.bf16) {
            __nv_bfloat16 *q16 = buf.up(to_bf16(random_vec<float>((size_t)o.B * TK * c.qkv_dim(), 1))), *o16 = buf.up(to_bf16(std::vector<float>((size_t)o.B * TK * c.H * c.hd())));
            __nv_bfloat16 *do16 = buf.up(to_bf16(random_vec<float>((size_t)o.B * TK * c.H * c.hd(), 2))), *dq16 = buf.up(to_bf16(std::vector<float>((size_t)o.B * TK * c.qkv_dim())));
            float* D = buf.nan((size_t)o.B * c.H * TK);
            f = time_ms(reps, [&] { attention_forward_bf16(o16, d_lse, q16, c, o.B, o.T, nullptr); });
            b = time_ms(reps, [&] { attention_backward_bf16(dq16, do16, q16, o16, d_lse, D, c, o.B, o.T, nullptr); });
        } else {
            f = time_ms(reps, [&] { attention_forward(d_o, d_lse, d_qkv, c, o.B, o.T, nullptr, nullptr, o.tf32 != 0); });
            b = time_ms(reps, [&] { attention_backward(d_dqkv, d_dout, d_qkv, d_o, d_lse, c, o.B, o.T, nullptr, o.tf32 != 0); });
        }
        const double pairs = visible_pairs(c, o.T);
        printf("%-18s %14.4g %10.3f %10.3f %12.1f\n", v.c_str(), pairs, f, b, (f + b) * 1e6 / (pairs * o.B / 1e6));
    }
}

// The step the benchmarks time and count, as train_phd's with one micro-batch: forward,
// backward, grad norm, AdamW (a CUDA graph where E was made with graphs).
static void train_step(GpuEngine& E, const std::vector<int>& tok, const std::vector<int>& tgt, const Options& o, int step) {
    AdamW opt;
    E.stage(tok.data(), tgt.data(), 1, o.B, o.T, opt, step, 1e-4f);
    E.step(1, 1.0f, opt, true);
    E.norm();  // the step's one wait
    E.take_loss();
}
static void random_batch(const Config& c, const Options& o, std::vector<int>* tok, std::vector<int>* tgt) {
    Rng rng{2};
    tok->resize(o.B * o.T);
    tgt->resize(o.B * o.T);
    for (size_t i = 0; i < tok->size(); i++) { (*tok)[i] = (int)(rng.next_u64() % c.V); (*tgt)[i] = (int)(rng.next_u64() % c.V); }
}

static constexpr double kH200Bytes = 4.3e12, kH200Flops = 790e12;  // per second (see section 4 above)

// params: the weights do not change what is counted, nor (much) the time it takes.
static void budget(const Options& o, const std::vector<float>& params, const std::string& v) {
#ifndef __CUDACC__
    cuda_emu::dry_run() = true;
#endif
    const Config c = make_config(v, o);
    EngineOptions eo;
    eo.bf16 = true;
    eo.logits_chunk = o.logits_chunk;
    eo.graphs = false;  // each launch counted, and timed between events
    GpuEngine E(c, params, eo);
    std::vector<int> tok, tgt;
    random_batch(c, o, &tok, &tgt);
    Ledger ledger;
#ifdef __CUDACC__
    ledger.timed = true;
    train_step(E, tok, tgt, o, 0);  // warm-up: cuBLAS's first calls, the first launch of each kernel
#endif
    open_ledger() = &ledger;
    train_step(E, tok, tgt, o, 1);
    open_ledger() = nullptr;
    cudaEvent_t end;
    cudaCheck(cudaEventCreate(&end));
    cudaCheck(cudaEventRecord(end, E.G.stream));
    cudaCheck(cudaEventSynchronize(end));
    printf("\ncounted budget of one bf16 training step: %s, B=%d T=%d L=%d D=%d H=%d; floor = max(bytes / %.1f TB/s, FLOPs / %.0f TFLOP/s)\n",
           v.c_str(), o.B, o.T, c.L, c.D, c.H, kH200Bytes / 1e12, kH200Flops / 1e12);
    printf("%4s  %-30s %10s %10s %10s %12s\n", "#", "launch", "MB", "GFLOP", "floor us", ledger.timed ? "measured us" : "");
    struct Sum { int n = 0; double bytes = 0, flops = 0, floor = 0, measured = 0; };
    std::vector<std::pair<std::string, Sum>> by_name;
    double floor_ms = 0, measured_ms = 0;
    for (size_t i = 0; i < ledger.launches.size(); i++) {
        const CountedLaunch& l = ledger.launches[i];
        const double floor = std::max(l.bytes / kH200Bytes, l.flops / kH200Flops) * 1e3;  // ms
        float ms = 0;
        if (ledger.timed) cudaCheck(cudaEventElapsedTime(&ms, l.start, i + 1 < ledger.launches.size() ? ledger.launches[i + 1].start : end));
        printf("%4zu  %-30s %10.2f %10.3f %10.1f", i, l.what.c_str(), l.bytes / 1e6, l.flops / 1e9, floor * 1e3);
        printf(ledger.timed ? " %12.1f\n" : "\n", ms * 1e3);
        auto it = std::find_if(by_name.begin(), by_name.end(), [&](const auto& p) { return p.first == l.what; });
        if (it == by_name.end()) it = by_name.insert(by_name.end(), {l.what, Sum{}});
        it->second.n++;
        it->second.bytes += l.bytes;
        it->second.flops += l.flops;
        it->second.floor += floor;
        it->second.measured += ms;
        floor_ms += floor;
        measured_ms += ms;
        if (l.start) cudaCheck(cudaEventDestroy(l.start));
    }
    std::stable_sort(by_name.begin(), by_name.end(), [](const auto& a, const auto& b) { return a.second.floor > b.second.floor; });
    printf("\nby launch name, largest floor first:\n%-30s %5s %10s %10s %10s %7s %12s\n", "launch", "count", "GB", "TFLOP", "floor ms", "share",
           ledger.timed ? "measured ms" : "");
    for (const auto& [name, t] : by_name) {
        printf("%-30s %5d %10.3f %10.3f %10.3f %6.1f%%", name.c_str(), t.n, t.bytes / 1e9, t.flops / 1e12, t.floor, 100 * t.floor / floor_ms);
        printf(ledger.timed ? " %12.3f\n" : "\n", t.measured);
    }
    printf("launches: %zu\ncounted step: %.2f ms\n", ledger.launches.size(), floor_ms);
    if (ledger.timed) printf("measured step: %.2f ms\n", measured_ms);
    cudaCheck(cudaEventDestroy(end));
#ifndef __CUDACC__
    cuda_emu::dry_run() = false;
#endif
}

static void training_steps(const Options& o, const std::vector<float>& params) {
    const MatmulDtype dt = o.bf16 ? MatmulDtype::BF16 : o.tf32 ? MatmulDtype::TF32 : MatmulDtype::FP32;
    const char* dt_name = o.bf16 ? "bf16" : o.tf32 ? "TF32" : "fp32";
    const double peak = peak_tflops(dt);
    printf("\ntraining step (forward, backward, grad norm, AdamW: one CUDA graph; 'no graph': launched one by one), B=%d T=%d L=%d D=%d "
           "H=%d, matmuls and attention in %s, median of %d after 1 warm-up; peak %.1f TFLOP/s (%s)\n", o.B, o.T, o.L, o.D, o.H, dt_name, o.steps, peak,
           peak > 0 ? (o.bf16 ? "dense bf16" : o.tf32 ? "dense TF32" : "FP32") : "unknown here: no MFU");
    printf("%-18s %9s %7s %12s %12s %9s %6s %10s\n", "variant", "ms/step", "ratio", "orig tok/s", "GFLOP/token", "TFLOP/s", "MFU",
           "no graph");
    double base = 0;
    for (const std::string& v : o.variants) {
        const Config c = make_config(v, o);
        std::vector<int> tok, tgt;
        random_batch(c, o, &tok, &tgt);
        auto median_ms = [&](bool graphs) {  // the step as one CUDA graph, or launched kernel by kernel (--graph 0)
            EngineOptions eo;
            eo.tf32 = o.tf32 != 0;
            eo.bf16 = o.bf16 != 0;
            eo.graphs = graphs;
            GpuEngine E(c, params, eo);
            std::vector<double> times;
            for (int s = 0; s <= o.steps; s++) {
                cudaCheck(cudaDeviceSynchronize());
                auto t0 = std::chrono::steady_clock::now();
                train_step(E, tok, tgt, o, s);
                cudaCheck(cudaDeviceSynchronize());
                if (s > 0) times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
            }
            std::sort(times.begin(), times.end());
            return times[times.size() / 2];
        };
        const double ms = median_ms(true), ungraphed = median_ms(false);
        if (base == 0) base = ms;
        const double per_token = model_flops_per_token(c, o.T);
        const double tokens = (double)o.B * o.T, tflops = per_token * tokens / (ms * 1e9);
        printf("%-18s %9.2f %7.2f %12.0f %12.3f %9.2f ", v.c_str(), ms, ms / base, tokens / (ms / 1e3), per_token / 1e9, tflops);
        printf(peak > 0 ? "%5.1f%% " : "    - ", 100 * tflops / std::max(peak, 1e-30));
        printf("%10.2f\n", ungraphed);
    }
}

// Section 5: a Markdown table. What a GPU offers training: the memory a device of that name
// reports (cudaMemGetInfo's total: 79.1 GiB on an H100 80 GB, 139.8 GiB on an H200) less 2 GiB
// for the CUDA context, cuBLASLt's own memory and the allocator's slack, which the count leaves
// out.
static void memory_table(int T) {
    const double GiB = 1024.0 * 1024 * 1024;
    const struct { const char* name; double bytes; } gpus[] = {{"80 GB", 77.1 * GiB}, {"141 GB", 137.8 * GiB}};
    printf("| model | variant | dtype | weights, grads, AdamW | activations a sequence, recompute 0 / 1 / 2 / 2c | largest B, 80 GB: 0 / 1 / 2 / 2c "
           "| largest B, 141 GB: 0 / 1 / 2 / 2c |\n|---|---|---|---|---|---|---|\n");
    for (const NamedModel& m : kModels) {
        if (std::string(m.block) != "olmo2") continue;
        for (const char* v : {"vanilla", "phd-cswa-2-16-32", "phd-cswa-3-16-32"}) {
            Config c;
            parse_variant(v, &c);
            c.V = m.V; c.Vp = pad_vocab(c.V); c.L = m.L; c.D = m.D; c.H = m.H; c.Hkv = m.Hkv; c.F = m.F; c.maxT = T;
            set_block(&c, true);
            EngineOptions o;
            o.bf16 = bf16_attention_head(c.hd());  // train_phd's --dtype auto
            const size_t P = num_params(c);
            const MemoryCount fixed = GpuEngine::memory(c, 0, T, o, P, 1);
            std::string acts, fits[2];
            for (int r = 0; r < 4; r++) {  // 2c: --recompute 2 with --logits-chunk 1024 (bf16 runs only)
                o.recompute = std::min(r, 2);
                o.logits_chunk = r == 3 ? 1024 : 0;
                const bool none = r == 3 && !o.bf16;
                char buf[64];
                snprintf(buf, sizeof buf, "%.1f", GpuEngine::memory(c, 1, T, o, P, 1).activations / GiB);
                acts += std::string(r ? " / " : "") + (none ? "-" : buf);
                for (int g = 0; g < 2; g++) {
                    int B = 0;
                    while (!none && GpuEngine::memory(c, B + 1, T, o, P, 1).total() <= gpus[g].bytes) B++;
                    fits[g] += (r ? " / " : "") + (none ? std::string("-") : std::to_string(B));
                }
            }
            printf("| %s | %s | %s | %.1f GiB | %s GiB | %s | %s |\n", m.name, v, o.bf16 ? "bf16" : "fp32",
                   (fixed.params + fixed.grads + fixed.moments + fixed.other) / GiB, acts.c_str(), fits[0].c_str(), fits[1].c_str());
        }
    }
}

int main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);  // a line at a time even into a file or pipe: a run stopped early keeps its lines
    if (argc == 3 && std::string(argv[1]) == "--memory") {
        memory_table(atoi(argv[2]));
        return 0;
    }
    Options o;
    for (int i = 1; i < argc; i++) {
        std::string f = argv[i];
        if (f == "--tiny") { o.tiny = true; o.B = 1; o.T = 24; o.L = 2; o.D = 64; o.H = 2; o.steps = 1; continue; }
        if (i + 1 >= argc) die("bench_gpu: %s needs a value", f.c_str());
        std::string v = argv[++i];
        if (f == "--variant") o.variants.push_back(v);
        else if (f == "--budget") o.budgets.push_back(v);
        else if (f == "--lab-variant") o.lab_variant = v;
        else if (f == "--model") o.model = v;
        else if (f == "-b") o.B = atoi(v.c_str());
        else if (f == "-t") o.T = atoi(v.c_str());
        else if (f == "--layers") o.L = atoi(v.c_str());
        else if (f == "--dim") o.D = atoi(v.c_str());
        else if (f == "--heads") o.H = atoi(v.c_str());
        else if (f == "--steps") o.steps = atoi(v.c_str());
        else if (f == "--tf32") o.tf32 = atoi(v.c_str());
        else if (f == "--bf16") o.bf16 = atoi(v.c_str());
        else if (f == "--lab") o.lab = atoi(v.c_str());
        else if (f == "--logits-chunk") o.logits_chunk = atoi(v.c_str());
        else die("bench_gpu: unknown flag %s", f.c_str());
    }
    if (o.B < 1 || o.T < 1 || o.steps < 1) die("bench_gpu: -b, -t and --steps must be >= 1");
    if (!o.model.empty() && std::none_of(std::begin(kModels), std::end(kModels), [&](const NamedModel& m) { return o.model == m.name; }))
        die("bench_gpu: --model: unknown model '%s'", o.model.c_str());
    if (o.tiny) o.lab_variant = "phd-cswa-3-5-4";
    if (o.variants.empty() && o.tiny) o.variants = {"vanilla", o.lab_variant};
    if (o.variants.empty()) o.variants = {"vanilla", "phd-2", "phd-cswa-2-16-32", "phd-cswa-3-16-32"};
    std::string why;
    if (!gpu_available(&why)) die("bench_gpu: no CUDA device (%s)", why.c_str());
    // One set of weights for the lab and every variant's steps (they do not depend on the
    // variant): initialising GPT-2-small's on the host takes seconds.
    const Config shape = make_config(o.lab_variant, o);
    std::vector<float> params(num_params(shape));
    if (!o.budgets.empty()) {
        for (const std::string& v : o.budgets) budget(o, params, v);
        return 0;
    }
    init_params(shape, params.data(), 1);
    if (o.lab) kernel_lab(o, params);
    attention_vs_pairs(o);
    training_steps(o, params);
    printf("lab: %d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
