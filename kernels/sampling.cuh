// kernels/sampling.cuh: each sample's next token, drawn on the device from its logits, by
// the rule of Sampling (kernels/decode_blocks.h) that sample_token (kernels/cpu_decode.h) follows on the host:
// greedy at temperature 0 (the lowest id among the largest logits, as std::max_element),
// else a draw from the softmax at the temperature over the logits at or above the top_k-th
// largest (every id when top_k <= 0 or >= V). Ties with the top_k-th largest are all kept,
// so more than top_k ids may be drawn, each with its own weight: which of equal logits to
// drop has no answer that does not depend on their ids. The draw u comes from the sample's
// Rng (kernels/utils.h), one per call. The host walks the kept ids in id order and the
// device in its own fixed order (thread by thread, each thread's ids in order): the same
// distribution, not the same id for the same u.
//
// Logits that are not finite (a diverged model) still give an id in [0, V), by the softmax's
// limits: a NaN counts as -inf, -0 as +0; an id at -inf is never drawn, and the ids at the
// largest logit weigh exp(0) = 1 even when it is infinite, so one or more at +inf are drawn
// evenly and the others never, and where every logit is -inf or NaN every id is equally
// likely (greedy: id 0). sample_token follows the same rule on the host.
//
// One block per sample: the decoder samples S rows of logits at once and its step needs
// nothing from the host (kernels/gpu_decode.cuh).
#pragma once
#include <cstring>
#include "cuda_compat.h"

static constexpr int kSampleThreads = 1024;

// A logit as the sampler sees it: NaN as -inf, -0 as +0 (equal logits, one key).
static __device__ float sampled(float f) { return f != f ? -INFINITY : f == 0.0f ? 0.0f : f; }

// The bits of a sampled() logit as an unsigned int that orders like it (negatives below
// positives).
static __device__ uint32_t order_key(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

// grid (S), block a multiple of 32 up to kSampleThreads: feed (S) the token drawn for each
// sample from logits (S, Vp) (the first V real), rng (S) each sample's generator. Thread t
// owns the ids t, t + blockDim.x, ... (coalesced reads). temperature finite. Bounded at
// kSampleThreads: 1024 threads may use 64 registers each, and ptxas, unbounded, may give a
// thread more, which the GPU then refuses to launch (29 on sm_90 with the bound).
static __global__ void __launch_bounds__(kSampleThreads) sample_kernel(int* feed, Rng* rng, const float* logits, int V, int Vp,
                                                                       float temperature, int top_k) {
    PHD_SHARED(int, hist, [256]);
    PHD_SHARED(double, part, [kSampleThreads]);
    PHD_SHARED(double, u, );
    PHD_SHARED(uint32_t, cut, );  // the ids with order_key(sampled(z)) >= cut are kept
    PHD_SHARED(int, rank, );
    const float* z = logits + (size_t)blockIdx.x * Vp;
    const int t = threadIdx.x, nt = blockDim.x;
    // The largest logit, and its lowest id: greedy's token and the softmax's shift. A
    // thread's first id counts even at -inf, so that a row of -inf and NaN has id 0.
    float best = -INFINITY;
    int arg = V;
    for (int j = t; j < V; j += nt) {
        const float x = sampled(z[j]);
        if (x > best || arg == V) { best = x; arg = j; }
    }
    const float mx = block_reduce(best, true);
    const int first = V - (int)block_reduce(best == mx ? (float)(V - arg) : 0.0f, true);  // ids < 2^24: exact in float
    if (temperature <= 0) {
        if (t == 0) feed[blockIdx.x] = first;
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
                const uint32_t key = order_key(sampled(z[j]));
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
    // Id j's weight in the softmax: 0 unless kept, 1 at the largest logit (also where that
    // is infinite: x - mx would be NaN), in [0, 1] below it. The largest is always kept, so
    // the total is at least 1.
    const float inv_t = 1.0f / temperature;
    auto weight = [&](int j) {
        const float x = sampled(z[j]);
        return order_key(x) < cut ? 0.0f : x == mx ? 1.0f : __expf((x - mx) * inv_t);
    };
    // Each thread's sum of the weights, then u in [0, total) from the sample's Rng: the
    // thread whose share of the running sum holds u finds the id in its own ids. Its share's
    // bounds add up part[] in the one order thread 0 summed it in, so the shares tile [0,
    // total) and exactly one thread, with a share above 0, owns u.
    double sum = 0.0;
    for (int j = t; j < V; j += nt) sum += weight(j);
    part[t] = sum;
    __syncthreads();
    if (t == 0) {
        double total = 0.0;
        for (int i = 0; i < nt; i++) total += part[i];
        u = rng[blockIdx.x].uniform() * total;
    }
    __syncthreads();
    double before = 0.0;
    for (int i = 0; i < t; i++) before += part[i];
    if (before <= u && u < before + part[t]) {
        int pick = -1;
        for (int j = t; j < V; j += nt) {
            const float w = weight(j);
            if (w == 0.0f) continue;
            before += w;
            pick = j;
            if (u < before) break;
        }
        feed[blockIdx.x] = pick;  // the last id of weight above 0 where rounding left u past the sum
    }
}

// Launcher: feed (S) from logits (S, Vp) and the samples' rng (S), all device pointers.
inline void sample_tokens(int* feed, Rng* rng, const float* logits, int S, int V, int Vp, float temperature, int top_k, cudaStream_t s) {
    const int threads = std::min(kSampleThreads, (V + 31) / 32 * 32);
    launch(sample_kernel, dim3(S), dim3(threads), 0, s, feed, rng, logits, V, Vp, temperature, top_k);
    cudaCheck(cudaGetLastError());
}
