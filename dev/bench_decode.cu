// KV-cache inference benchmark (issue 6): the shape of the paper's latency study. Pre-fill
// time of a P-token prompt vs K, and per-token decode latency vs K, for vanilla, phd-K,
// phd-swa-K-16 and phd-cswa-K-16-32, batch 1; ratios to vanilla from the same run, and
// KV-cache bytes per sequence. Every time is the best of --reps runs, and each row has its
// own vanilla measurement: the development machine's neighbours add noise to single runs
// and its speed drifts. The K=1 row (each variant at K=1 computes what vanilla does) shows
// what noise is left. The same code drives cpu/decode.h's CPU decoder and, in the nvcc build,
// kernels/gpu_decode.cuh's GPU decoder.
//
// The weights are initialised once (they do not depend on the variant or K) and each model
// is built from them once, then reused by all its runs, each from a fresh decoder: building
// a model per run (host initialisation and, on the GPU, a 0.6 GB upload at GPT-2-small size)
// took most of the time. phd-swa's pre-fill computes K*P rows (1-2 minutes a run at K=256 on
// the development machine): a variant whose pre-fill computed more than --max-prefill (8)
// times P rows is not run at larger K (its cells print "-"; --max-prefill 0: no limit).
// Rows, not seconds, so that every machine, busy or not, measures the same cells.
//   CPU: make build/bench_decode && OMP_NUM_THREADS=2 ./build/bench_decode
//   GPU: make build/bench_decode_gpu && ./build/bench_decode_gpu --device cuda -P 2048 --layers 12 --dim 768 --heads 12
#include <omp.h>
#include <chrono>
#include <memory>
#include <string>
#include "../common/engine.h"

static double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Options { std::string device = "cpu"; int P = 512, steps = 8, reps = 3, L = 4, D = 256, H = 4; double max_prefill = 8; };
struct Result { double prefill_ms, decode_ms; size_t bytes; long prefill_rows; };

static Config make_config(const std::string& variant, const Options& o) {
    Config c;
    std::string err = parse_variant(variant.c_str(), &c);
    if (!err.empty()) die("bench_decode: %s", err.c_str());
    c.V = 50257; c.Vp = pad_vocab(c.V); c.L = o.L; c.D = o.D; c.H = o.H; c.Hkv = o.H; c.F = (8 * o.D / 3 + 63) / 64 * 64;
    c.maxT = o.P + o.steps + 1;
    err = config_error(c);
    if (!err.empty()) die("bench_decode: %s", err.c_str());
    return c;
}

// Pre-fill, then steps decode steps; both decoders return only after their logits are on the host.
template<typename Dec> static Result time_decoder(Dec& dec, const Config& c, int P, int steps) {
    Rng rng{2};
    std::vector<int> prompt(P);
    for (int& t : prompt) t = (int)(rng.next_u64() % c.V);
    double t0 = now_ms();
    dec.prefill(prompt.data(), P);
    double t1 = now_ms();
    const long prefill_rows = P + dec.hidden_computed;
    for (int s = 0; s < steps; s++) dec.step((int)(rng.next_u64() % c.V));
    double t2 = now_ms();
    return {t1 - t0, (t2 - t1) / steps, dec.cache_bytes(), prefill_rows};
}

// One variant's model on o.device, built once from the shared weights; run() times a fresh
// decoder on it (a decoder is only its cache and buffers).
struct Bench {
    Config c;
    std::unique_ptr<Model<float>> cpu;
#ifdef PHD_GPU
    std::unique_ptr<GpuModel> gpu;
#endif
    Bench(const std::string& variant, const Options& o, const std::vector<float>& params) : c(make_config(variant, o)) {
#ifdef PHD_GPU
        if (o.device == "cuda") {
            gpu = std::make_unique<GpuModel>(c, params.data(), false, false);
            return;
        }
#endif
        cpu = std::make_unique<Model<float>>(c);
        std::copy(params.begin(), params.end(), cpu->params.begin());
    }
    Result run(int P, int steps) {
#ifdef PHD_GPU
        if (gpu) {
            GpuDecoder dec(*gpu);
            return time_decoder(dec, c, P, steps);
        }
#endif
        Decoder<float> dec(*cpu);
        return time_decoder(dec, c, P, steps);
    }
    // The best pre-fill and the best decode time of o.reps runs (the rest is the same in each).
    Result measure(const Options& o) {
        Result best = run(o.P, o.steps);
        for (int r = 1; r < o.reps; r++) {
            Result x = run(o.P, o.steps);
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
        else if (f == "--max-prefill") o.max_prefill = atof(argv[i + 1]);
        else die("bench_decode: unknown flag %s (--device cpu|cuda, -P, --steps, --reps, --layers, --dim, --heads, --max-prefill)",
                 f.c_str());
    }
#ifdef PHD_GPU
    std::string why;
    if (o.device == "cuda" && !gpu_available(&why)) die("bench_decode: --device cuda: %s", why.c_str());
#endif
    if (o.device != "cpu" && o.device != "cuda") die("bench_decode: --device must be cpu or cuda");
    if (o.P < 1 || o.steps < 1 || o.reps < 1) die("bench_decode: -P, --steps and --reps must be >= 1");
    const Config shape = make_config("vanilla", o);
    std::vector<float> params(num_params(shape));
    init_params(shape, params.data(), 1);
    Bench vanilla("vanilla", o, params);
    vanilla.run(o.P, o.steps);  // warm-up at full size: first-touch memory, OpenMP threads, CUDA context, cuBLAS
    printf("L=%d D=%d H=%d V=50257, prompt P=%d, %d decode steps, batch 1, best of %d runs, on %s", o.L, o.D, o.H, o.P,
           o.steps, o.reps, o.device.c_str());
    if (o.device == "cpu") printf(" (%d OpenMP threads)", omp_get_max_threads());
    printf("; set-up and warm-up %.1f s\n\nEach row: vanilla measured next to the variants (this machine's speed drifts over tens of\n"
           "seconds), then each variant's pre-fill and decode-per-token time as ratios to it, and its\n"
           "KV cache after the run. \"-\": not run, the variant's pre-fill at a smaller K computed over\n"
           "%g x P rows (--max-prefill). Last: seconds since the start when the row was done.\n",
           (now_ms() - start) / 1e3, o.max_prefill);
    printf("%4s %22s | %25s | %25s | %25s | %6s\n", "K", "vanilla pre-fill decode", "phd-K pre-fill decode KiB", "phd-swa-K-16",
           "phd-cswa-K-16-32", "done");
    bool stopped[3] = {};  // per variant column: its pre-fill computed over o.max_prefill * P rows
    for (int K : {1, 2, 4, 8, 16, 32, 64, 128, 256}) {
        Result base = vanilla.measure(o);
        printf("%4d %8.1f ms %7.2f ms", K, base.prefill_ms, base.decode_ms);
        const std::string k = std::to_string(K), variants[3] = {"phd-" + k, "phd-swa-" + k + "-16", "phd-cswa-" + k + "-16-32"};
        for (int v = 0; v < 3; v++) {
            if (stopped[v]) {
                printf(" | %25s", "-");
                continue;
            }
            Result r = Bench(variants[v], o, params).measure(o);
            printf(" | %7.2fx %7.2fx %7.0f", r.prefill_ms / base.prefill_ms, r.decode_ms / base.decode_ms, r.bytes / 1024.0);
            fflush(stdout);  // each cell as it is measured: a run stopped early keeps them
            stopped[v] = o.max_prefill > 0 && r.prefill_rows > o.max_prefill * o.P;
        }
        printf(" | %5.0fs\n", (now_ms() - start) / 1e3);
    }
    return 0;
}
