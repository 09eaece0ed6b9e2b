// KV-cache inference benchmark (issues 6 and 17): the shape of the paper's latency study, and
// batched decoding. Two tables, each row printed as soon as it is measured:
//   latency, batch 1: for K = 1..256, vanilla (measured next to the row's variants, as this
//     machine's speed drifts) and phd-K, phd-swa-K-16, phd-cswa-K-16-32: the pre-fill of a
//     P-token prompt, the decode time per token, tokens/s, the bytes a decode step must read
//     (the weights once, and the KV cache its queries see) and the bandwidth that achieves;
//   throughput: vanilla and phd-cswa-2-16-32 decoding batches of 1, 8 and 64 samples of one
//     prompt (one shared pre-fill), tokens/s and its ratio to batch 1.
// Pre-fill: the prompt's block and the first draw; a decode step: one step and its draw, as
// generation runs them (on the GPU, one graph launch and S tokens copied back). The first step
// after the pre-fill (which captures the GPU's step graph) is not timed. Every time is the
// best of --reps runs. The same code drives kernels/cpu_decode.h's CPU decoder and, in the nvcc build,
// kernels/gpu_decode.cuh's GPU decoder.
//
// The weights are initialised once (they do not depend on the variant or K) and each model
// is built from them once, then reused by all its runs, each from a fresh decoder: building
// a model per run (host initialisation and, on the GPU, a 0.6 GB upload at GPT-2-small size)
// took most of the time. phd-swa's pre-fill computes K*P rows: a variant whose pre-fill
// computed more than --max-prefill (8) times P rows is not run at larger K (rows, not
// seconds, so that every machine, busy or not, measures the same cells; 0: no limit).
//   CPU: make build/bench_decode && OMP_NUM_THREADS=2 ./build/bench_decode
// On the GPU the decoder runs in bf16 (bf16 weights, matmul inputs and KV cache) where the
// head size allows and --tf32 is 0, as train_phd's --dtype auto; --bf16 0 keeps fp32.
//   GPU: make build/bench_decode_gpu && ./build/bench_decode_gpu --device cuda -P 2048 --layers 12 --dim 768 --heads 12
#include <omp.h>
#include <chrono>
#include <memory>
#include <string>
#include "../kernels/engine.h"

static double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Options {
    std::string device = "cpu";
    int P = 512, steps = 8, reps = 3, L = 4, D = 256, H = 4, tf32 = 0;
    int bf16 = -1;  // -1: bf16 on the GPU where the head size allows and tf32 is 0
    double max_prefill = 8;
};
struct Result {
    double prefill_ms, decode_ms;  // the pre-fill; a step (S tokens)
    size_t kib;                    // one sample's KV cache after the run
    double step_bytes;             // what a step must read: the weights, the shared prompt's cache once, each sample's own
    long prefill_rows;
};

static Config make_config(const std::string& variant, const Options& o) {
    Config c;
    std::string err = parse_variant(variant.c_str(), &c);
    if (!err.empty()) die("bench_decode: %s", err.c_str());
    c.V = 50257; c.Vp = pad_vocab(c.V); c.L = o.L; c.D = o.D; c.H = o.H; c.Hkv = o.H; c.F = (8 * o.D / 3 + 63) / 64 * 64;
    c.maxT = o.P + o.steps + 2;
    err = config_error(c);
    if (!err.empty()) die("bench_decode: %s", err.c_str());
    return c;
}

// Pre-fill, one untimed step, then `steps` timed steps of S samples; each ends with the draws
// on the host (sample()).
template<typename Dec> static Result time_decoder(Dec& dec, const Config& c, int P, int steps) {
    Rng rng{2};
    std::vector<int> prompt(P);
    for (int& t : prompt) t = (int)(rng.next_u64() % c.V);
    double t0 = now_ms();
    dec.prefill(prompt.data(), P);
    std::vector<int> next = dec.sample();
    double t1 = now_ms();
    const long prefill_rows = P + dec.hidden_computed;
    const size_t prompt_entries = dec.cache_entries();
    dec.step(next);
    next = dec.sample();
    double t2 = now_ms();
    for (int s = 0; s < steps; s++) {
        dec.step(next);
        next = dec.sample();
    }
    double t3 = now_ms();
    // The weights: every layer's matrices and the LM head's at the decoder's width (a bf16
    // run reads the bf16 copy: the cache's value width), the norms' gains and the fed rows of
    // E in fp32; and the cache entries the step's queries see.
    const size_t gains = (size_t)(2 * c.L + 1) * c.D, matrices = num_params(c) - (size_t)c.Vp * c.D - gains;
    const double width = dec.entry_bytes() / (2.0 * c.Hkv * c.hd());
    const size_t entries = prompt_entries + (size_t)dec.S * (dec.cache_entries() - prompt_entries);
    const double bytes = width * matrices + 4.0 * (gains + (size_t)dec.S * c.D) + (double)dec.entry_bytes() * c.L * entries;
    return {t1 - t0, (t3 - t2) / steps, dec.cache_bytes() / 1024, bytes, prefill_rows};
}

// One variant's model on o.device, built once from the shared weights; run() times a fresh
// decoder of S samples on it (a decoder is only its cache and buffers).
struct Bench {
    Config c;
    std::unique_ptr<Model<float>> cpu;
#ifdef PHD_GPU
    std::unique_ptr<GpuModel> gpu;
#endif
    Bench(const std::string& variant, const Options& o, const std::vector<float>& params) : c(make_config(variant, o)) {
#ifdef PHD_GPU
        if (o.device == "cuda") {
            gpu = std::make_unique<GpuModel>(c, params.data(), o.tf32 != 0, false, o.bf16 == 1);
            return;
        }
#endif
        cpu = std::make_unique<Model<float>>(c);
        std::copy(params.begin(), params.end(), cpu->params.begin());
    }
    Result run(int P, int steps, int S) {
#ifdef PHD_GPU
        if (gpu) {
            GpuDecoder dec(*gpu, S);
            return time_decoder(dec, c, P, steps);
        }
#endif
        Decoder<float> dec(*cpu, S);
        return time_decoder(dec, c, P, steps);
    }
    // The best pre-fill and the best decode time of o.reps runs (the rest is the same in each).
    Result measure(const Options& o, int S = 1) {
        Result best = run(o.P, o.steps, S);
        for (int r = 1; r < o.reps; r++) {
            Result x = run(o.P, o.steps, S);
            best.prefill_ms = std::min(best.prefill_ms, x.prefill_ms);
            best.decode_ms = std::min(best.decode_ms, x.decode_ms);
        }
        return best;
    }
};

int main(int argc, char** argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);  // a line at a time even into a file or pipe: a run stopped early keeps its rows
    const double start = now_ms();
    Options o;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string f = argv[i];
        int v = atoi(argv[i + 1]);
        if (f == "--device") o.device = argv[i + 1];
        else if (f == "-P") o.P = v;
        else if (f == "--steps") o.steps = v;
        else if (f == "--reps") o.reps = v;
        else if (f == "--layers") o.L = v;
        else if (f == "--dim") o.D = v;
        else if (f == "--heads") o.H = v;
        else if (f == "--tf32") o.tf32 = v;
        else if (f == "--bf16") o.bf16 = v;
        else if (f == "--max-prefill") o.max_prefill = atof(argv[i + 1]);
        else die("bench_decode: unknown flag %s (--device cpu|cuda, -P, --steps, --reps, --layers, --dim, --heads, --tf32, --bf16, "
                 "--max-prefill)", f.c_str());
    }
#ifdef PHD_GPU
    std::string why;
    if (o.device == "cuda" && !gpu_available(&why)) die("bench_decode: --device cuda: %s", why.c_str());
#endif
    if (o.device != "cpu" && o.device != "cuda") die("bench_decode: --device must be cpu or cuda");
    if (o.P < 1 || o.steps < 1 || o.reps < 1) die("bench_decode: -P, --steps and --reps must be >= 1");
    if (o.tf32 && o.device != "cuda") die("bench_decode: --tf32 1 is for --device cuda");
    if (o.bf16 == 1 && (o.device != "cuda" || o.tf32)) die("bench_decode: --bf16 1 is for --device cuda with --tf32 0");
    const Config shape = make_config("vanilla", o);
    const bool has_kernel = bf16_attention_head(shape.hd());
    if (o.bf16 == 1 && !has_kernel) die("bench_decode: --bf16 1: head size %d has no bf16 attention kernel (16, 32, 64 or 128)", shape.hd());
    if (o.bf16 < 0) o.bf16 = o.device == "cuda" && !o.tf32 && has_kernel;
    std::vector<float> params(num_params(shape));
    init_params(shape, params.data(), 1);
    Bench vanilla("vanilla", o, params);
    vanilla.run(o.P, o.steps, 1);  // warm-up at full size: first-touch memory, OpenMP threads, CUDA context, cuBLAS
    printf("L=%d D=%d H=%d V=50257, prompt P=%d, %d timed decode steps, best of %d runs, on %s", o.L, o.D, o.H, o.P, o.steps, o.reps,
           o.device.c_str());
    if (o.device == "cpu") printf(" (%d OpenMP threads)", omp_get_max_threads());
    else printf(o.bf16 ? " (bf16 weights, matmul inputs and KV cache)" : o.tf32 ? " (TF32 tensor cores)" : " (fp32)");
    printf("; set-up and warm-up %.1f s\n\nLatency, batch 1. Each K: vanilla, measured next to the variants, then each variant with\n"
           "its pre-fill and decode time as ratios to it. decode: ms per token (a step and its draw);\n"
           "MB/step: the weights and the KV cache a step must read; GB/s: MB/step over the decode time;\n"
           "KiB: the KV cache after the run. A variant whose pre-fill computed over %g x P rows is not\n"
           "run at larger K (--max-prefill). done: seconds since the start.\n",
           (now_ms() - start) / 1e3, o.max_prefill);
    printf("%4s %-18s %11s %6s %10s %6s %8s %8s %7s %8s %6s\n", "K", "variant", "pre-fill ms", "x", "decode ms", "x", "tok/s", "MB/step",
           "GB/s", "KiB", "done");
    auto row = [&](int K, const std::string& name, const Result& r, const Result& base) {
        printf("%4d %-18s %11.2f %5.2fx %10.3f %5.2fx %8.0f %8.1f %7.1f %8zu %5.0fs\n", K, name.c_str(), r.prefill_ms,
               r.prefill_ms / base.prefill_ms, r.decode_ms, r.decode_ms / base.decode_ms, 1e3 / r.decode_ms, r.step_bytes / 1e6,
               r.step_bytes / 1e6 / r.decode_ms, r.kib, (now_ms() - start) / 1e3);
    };
    bool stopped[3] = {};  // per variant: its pre-fill computed over o.max_prefill * P rows
    for (int K : {1, 2, 4, 8, 16, 32, 64, 128, 256}) {
        const Result base = vanilla.measure(o);
        row(K, "vanilla", base, base);
        const std::string k = std::to_string(K), variants[3] = {"phd-" + k, "phd-swa-" + k + "-16", "phd-cswa-" + k + "-16-32"};
        for (int v = 0; v < 3; v++) {
            if (stopped[v]) continue;
            const Result r = Bench(variants[v], o, params).measure(o);
            row(K, variants[v], r, base);
            stopped[v] = o.max_prefill > 0 && r.prefill_rows > o.max_prefill * o.P;
        }
    }
    printf("\nThroughput: S samples of the prompt decoded together (one shared pre-fill); decode: ms per\n"
           "step of S tokens; x: tokens/s over batch 1's.\n");
    printf("%5s %-18s %10s %9s %7s %8s %7s %6s\n", "batch", "variant", "decode ms", "tok/s", "x", "MB/step", "GB/s", "done");
    for (const char* variant : {"vanilla", "phd-cswa-2-16-32"}) {
        Bench b(variant, o, params);
        double one = 0;
        for (int S : {1, 8, 64}) {
            const Result r = b.measure(o, S);
            const double tps = 1e3 * S / r.decode_ms;
            if (S == 1) one = tps;
            printf("%5d %-18s %10.3f %9.0f %6.2fx %8.1f %7.1f %5.0fs\n", S, variant, r.decode_ms, tps, tps / one, r.step_bytes / 1e6,
                   r.step_bytes / 1e6 / r.decode_ms, (now_ms() - start) / 1e3);
        }
    }
    return 0;
}
