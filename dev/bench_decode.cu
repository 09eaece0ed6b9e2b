// KV-cache inference benchmark (issue 6): the shape of the paper's latency study. Pre-fill
// time of a P-token prompt vs K, and per-token decode latency vs K, for vanilla, phd-K,
// phd-swa-K-16 and phd-cswa-K-16-32, batch 1; ratios to vanilla from the same run, and
// KV-cache bytes per sequence. Every time is the best of --reps runs, each from a fresh
// decoder, and each row has its own vanilla measurement: the development machine's
// neighbours add noise to single runs and its speed drifts. The K=1 row (each variant at
// K=1 computes what vanilla does) shows what noise is left. The same code drives decode.h's
// CPU decoder and, in the nvcc build, kernels/gpu_decode.cuh's GPU decoder.
//   CPU: make build/bench_decode && OMP_NUM_THREADS=2 ./build/bench_decode
//   GPU: make build/bench_decode_gpu && ./build/bench_decode_gpu --device cuda -P 2048 --layers 12 --dim 768 --heads 12
#include <omp.h>
#include <chrono>
#include <string>
#include "../engine.h"

static double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Options { std::string device = "cpu"; int P = 512, steps = 8, reps = 3, L = 4, D = 256, H = 4; };
struct Result { double prefill_ms, decode_ms; size_t bytes; };

// Pre-fill, then steps decode steps; both decoders return only after their logits are on the host.
template<typename Dec> static Result time_decoder(Dec& dec, const Config& c, int P, int steps) {
    Rng rng{2};
    std::vector<int> prompt(P);
    for (int& t : prompt) t = (int)(rng.next_u64() % c.V);
    double t0 = now_ms();
    dec.prefill(prompt.data(), P);
    double t1 = now_ms();
    for (int s = 0; s < steps; s++) dec.step((int)(rng.next_u64() % c.V));
    double t2 = now_ms();
    return {t1 - t0, (t2 - t1) / std::max(steps, 1), dec.cache_bytes()};
}

static Result run_once(const std::string& variant, const Options& o, int P, int steps) {
    Config c;
    std::string err = parse_variant(variant.c_str(), &c);
    if (!err.empty()) die("%s", err.c_str());
    c.V = 50257; c.Vp = pad_vocab(c.V); c.L = o.L; c.D = o.D; c.H = o.H; c.Hkv = o.H; c.F = (8 * o.D / 3 + 63) / 64 * 64;
    c.maxT = P + steps + 1;
    std::vector<float> params(num_params(c));
    init_params(c, params.data(), 1);
#ifdef PHD_GPU
    if (o.device == "cuda") {
        GpuModel G(c, params.data(), false);
        GpuDecoder dec(G);
        return time_decoder(dec, c, P, steps);
    }
#endif
    Model<float> M(c);
    M.params = params;
    Decoder<float> dec(M);
    return time_decoder(dec, c, P, steps);
}

// The best pre-fill and the best decode time of o.reps runs (the cache size is the same in each).
static Result run(const std::string& variant, const Options& o, int P, int steps) {
    Result best = run_once(variant, o, P, steps);
    for (int r = 1; r < o.reps; r++) {
        Result x = run_once(variant, o, P, steps);
        best.prefill_ms = std::min(best.prefill_ms, x.prefill_ms);
        best.decode_ms = std::min(best.decode_ms, x.decode_ms);
    }
    return best;
}

int main(int argc, char** argv) {
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
        else die("bench_decode: unknown flag %s (--device cpu|cuda, -P, --steps, --reps, --layers, --dim, --heads)", f.c_str());
    }
#ifdef PHD_GPU
    std::string why;
    if (o.device == "cuda" && !gpu_available(&why)) die("bench_decode: --device cuda: %s", why.c_str());
#endif
    if (o.device != "cpu" && o.device != "cuda") die("bench_decode: --device must be cpu or cuda");
    if (o.P < 1 || o.steps < 1 || o.reps < 1) die("bench_decode: -P, --steps and --reps must be >= 1");
    setvbuf(stdout, nullptr, _IOLBF, 0);  // a row at a time: the whole run takes minutes
    run_once("vanilla", o, o.P, o.steps);  // warm-up at full size: first-touch memory, OpenMP threads, CUDA context, cuBLAS
    printf("L=%d D=%d H=%d V=50257, prompt P=%d, %d decode steps, batch 1, best of %d runs, on %s", o.L, o.D, o.H, o.P, o.steps,
           o.reps, o.device.c_str());
    if (o.device == "cpu") printf(" (%d OpenMP threads)", omp_get_max_threads());
    printf("\n\nEach row: vanilla measured next to the variants (this machine's speed drifts over tens of\n"
           "seconds), then each variant's pre-fill and decode-per-token time as ratios to it, and its\n"
           "KV cache after the run.\n");
    printf("%4s %22s | %25s | %25s | %25s\n", "K", "vanilla pre-fill decode", "phd-K pre-fill decode KiB", "phd-swa-K-16",
           "phd-cswa-K-16-32");
    for (int K : {1, 2, 4, 8, 16, 32, 64, 128, 256}) {
        Result base = run("vanilla", o, o.P, o.steps);
        printf("%4d %8.1f ms %7.2f ms", K, base.prefill_ms, base.decode_ms);
        for (std::string v : {"phd-" + std::to_string(K), "phd-swa-" + std::to_string(K) + "-16",
                              "phd-cswa-" + std::to_string(K) + "-16-32"}) {
            Result r = run(v, o, o.P, o.steps);
            printf(" | %7.2fx %7.2fx %7.0f", r.prefill_ms / base.prefill_ms, r.decode_ms / base.decode_ms, r.bytes / 1024.0);
        }
        printf("\n");
    }
    return 0;
}
