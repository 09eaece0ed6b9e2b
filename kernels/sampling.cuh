// kernels/sampling.cuh: each sample's next token, drawn on the device from its logits, by
// the rule of model.h's Sampling that sample_token (kernels/cpu_decode.h) follows on the host:
// greedy at temperature 0 (the lowest id among the largest logits, as std::max_element),
// else a draw from the softmax at the temperature over the logits at or above the top_k-th
// largest (ties with it are kept too; every id when top_k <= 0 or >= V). The draw u comes
// from the sample's Rng (kernels/utils.h), one per call. The host walks the kept ids in id
// order and the device in its own fixed order (thread by thread, each thread's ids in
// order): the same distribution, not the same id for the same u.
//
// One block per sample: the decoder samples S rows of logits at once and its step needs
// nothing from the host (kernels/gpu_decode.cuh).
#pragma once
#include <cstring>
#include "cuda_compat.h"

static constexpr int kSampleThreads = 1024;

// The bits of f as an unsigned int that orders like f (negatives below positives).
static __device__ uint32_t order_key(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

// grid (S), block a multiple of 32 up to kSampleThreads: feed (S) the token drawn for each
// sample from logits (S, Vp) (the first V real), rng (S) each sample's generator. Thread t
// owns the ids t, t + blockDim.x, ... (coalesced reads).
static __global__ void sample_kernel(int* feed, Rng* rng, const float* logits, int V, int Vp, float temperature, int top_k) {
    PHD_SHARED(int, hist, [256]);
    PHD_SHARED(double, part, [kSampleThreads]);
    PHD_SHARED(double, u, );
    PHD_SHARED(uint32_t, cut, );  // the ids with order_key(z) >= cut are kept
    PHD_SHARED(int, rank, );
    const float* z = logits + (size_t)blockIdx.x * Vp;
    const int t = threadIdx.x, nt = blockDim.x;
    // The largest logit, and its lowest id: greedy's token and the softmax's shift.
    float best = -INFINITY;
    int arg = V;
    for (int j = t; j < V; j += nt)
        if (z[j] > best) { best = z[j]; arg = j; }
    const float mx = block_reduce(best, true);
    const int first = V - (int)block_reduce(best == mx ? (float)(V - arg) : 0.0f, true);  // ids < 2^24: exact in float
    // An id in [0, V) whatever the logits: all NaN leave first at V.
    const int fallback = min(first, V - 1);
    if (temperature <= 0) {
        if (t == 0) feed[blockIdx.x] = fallback;
        return;
    }
    // top_k: the top_k-th largest key by radix selection, 8 bits a pass from the top: each
    // pass counts the digits of the keys that match the bits found so far.
    if (t == 0) { cut = 0; rank = top_k; }
    if (top_k > 0 && top_k < V)
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int i = t; i < 256; i += nt) hist[i] = 0;
            __syncthreads();
            const uint32_t high = shift == 24 ? 0 : ~0u << (shift + 8);
            for (int j = t; j < V; j += nt) {
                const uint32_t key = order_key(z[j]);
                if ((key & high) == (cut & high)) atomicAdd(&hist[key >> shift & 255], 1);
            }
            __syncthreads();
            if (t == 0) {
                int digit = 255;
                while (hist[digit] < rank) rank -= hist[digit--];
                cut |= (uint32_t)digit << shift;
            }
            __syncthreads();
        }
    __syncthreads();
    // Each thread's sum of the kept weights, then u in [0, total) from the sample's Rng: the
    // thread whose share of the running sum holds u finds the id in its own ids. Its share's
    // bounds add up part[] in the one order thread 0 summed it in, so exactly one thread owns u.
    const float inv_t = 1.0f / temperature;
    double sum = 0.0;
    for (int j = t; j < V; j += nt)
        if (order_key(z[j]) >= cut) sum += __expf((z[j] - mx) * inv_t);
    part[t] = sum;
    __syncthreads();
    if (t == 0) {
        double total = 0.0;
        for (int i = 0; i < nt; i++) total += part[i];
        u = rng[blockIdx.x].uniform() * total;
        feed[blockIdx.x] = fallback;  // kept only where non-finite logits leave u with no owner
    }
    __syncthreads();
    double before = 0.0;
    for (int i = 0; i < t; i++) before += part[i];
    if (part[t] > 0.0 && before <= u && u < before + part[t]) {
        int pick = -1;
        for (int j = t; j < V; j += nt) {
            if (order_key(z[j]) < cut) continue;
            before += __expf((z[j] - mx) * inv_t);
            pick = j;
            if (u < before) break;
        }
        feed[blockIdx.x] = pick;  // the last kept id where rounding left u past the sum
    }
}

// Launcher: feed (S) from logits (S, Vp) and the samples' rng (S), all device pointers.
inline void sample_tokens(int* feed, Rng* rng, const float* logits, int S, int V, int Vp, float temperature, int top_k, cudaStream_t s) {
    const int threads = std::min(kSampleThreads, (V + 31) / 32 * 32);
    launch(sample_kernel, dim3(S), dim3(threads), 0, s, feed, rng, logits, V, Vp, temperature, top_k);
    cudaCheck(cudaGetLastError());
}
