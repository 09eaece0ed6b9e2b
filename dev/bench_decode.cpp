// KV-cache inference benchmark (issue 6), the shape of the paper's latency study on the CPU:
// pre-fill time of a P-token prompt vs K, and per-token decode latency vs K, for vanilla,
// phd-K, phd-swa-K-16 and phd-cswa-K-16-32, batch 1; ratios to vanilla from the same run,
// and KV-cache bytes per sequence.
//   make build/bench_decode && OMP_NUM_THREADS=2 ./build/bench_decode [P] [decode steps]
#include <omp.h>
#include <chrono>
#include "../decode.h"

static double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Result { double prefill_ms, decode_ms; size_t bytes; };

static Result run(const std::string& variant, int P, int steps) {
    Config c;
    parse_variant(variant.c_str(), &c);
    c.V = 50257; c.Vp = pad_vocab(c.V); c.L = 4; c.D = 256; c.H = 4; c.Hkv = 4; c.F = 683; c.maxT = P + steps + 1;
    Model<float> M(c);
    init_params(c, M.params.data(), 1);
    Rng rng{2};
    std::vector<int> prompt(P);
    for (int& t : prompt) t = (int)(rng.next_u64() % c.V);
    Decoder<float> dec(M);
    double t0 = now_ms();
    dec.prefill(prompt.data(), P);
    double t1 = now_ms();
    for (int s = 0; s < steps; s++) dec.step((int)(rng.next_u64() % c.V));
    double t2 = now_ms();
    return {t1 - t0, (t2 - t1) / steps, dec.cache_bytes()};
}

int main(int argc, char** argv) {
    const int P = argc > 1 ? atoi(argv[1]) : 512, steps = argc > 2 ? atoi(argv[2]) : 8;
    printf("L=4 D=256 H=4 F=683 V=50257, prompt P=%d, %d decode steps, batch 1, %d OpenMP threads\n", P, steps,
           omp_get_max_threads());
    Result base = run("vanilla", P, steps);
    printf("vanilla: pre-fill %.1f ms, decode %.2f ms/token, KV cache %.1f KiB\n\n", base.prefill_ms, base.decode_ms,
           base.bytes / 1024.0);
    printf("pre-fill, ratio to vanilla\n%5s %18s %18s %18s\n", "K", "phd-K", "phd-swa-K-16", "phd-cswa-K-16-32");
    for (int K : {2, 4, 8, 16}) {
        printf("%5d", K);
        for (std::string v : {"phd-" + std::to_string(K), "phd-swa-" + std::to_string(K) + "-16",
                              "phd-cswa-" + std::to_string(K) + "-16-32"}) {
            Result r = run(v, P, 1);
            printf(" %9.1f ms %6.2fx", r.prefill_ms, r.prefill_ms / base.prefill_ms);
        }
        printf("\n");
    }
    printf("\ndecode per token, ratio to vanilla (KV cache KiB after the run)\n%5s %24s %24s %24s\n", "K", "phd-K",
           "phd-swa-K-16", "phd-cswa-K-16-32");
    for (int K : {2, 4, 8, 16, 32, 64, 128, 256}) {
        printf("%5d", K);
        for (std::string v : {"phd-" + std::to_string(K), "phd-swa-" + std::to_string(K) + "-16",
                              "phd-cswa-" + std::to_string(K) + "-16-32"}) {
            // phd-swa's K x pre-fill is slow at large K and not what this row measures: start it from a short prompt
            Result r = run(v, v.rfind("phd-swa", 0) == 0 && K > 16 ? 64 : P, steps);
            printf(" %7.2f ms %5.2fx %6.0f", r.decode_ms, r.decode_ms / base.decode_ms, r.bytes / 1024.0);
        }
        printf("\n");
    }
    return 0;
}
