// kernels/loss.cuh: the classifier's loss, fused: softmax + cross-entropy over the last-copy
// rows, and the logits' gradient written over the logits in the same launch, so that the LM
// head's output is read once and written once (a row waits in shared memory between the
// launch's two passes, where it fits), and nothing else of size (B*T, Vp) exists
// (probabilities never stored; bf16 runs keep the logits in bf16, as their matmuls take
// them). The gradient is softmax - onehot, unscaled: the head's backward GEMMs multiply by the
// loss's scale (their alpha), which the forward need not know. Each row's loss is summed on
// the device, into the step's loss, in a fixed order: no per-row copy to the host. Padded
// vocabulary columns (V..Vp-1) never count and get a zero gradient.
#pragma once
#include <algorithm>
#include "cuda_compat.h"

static constexpr int kLossThreads = 1024;  // at most: a thread a 16-byte group, in whole warps

// grid (N), block (up to kLossThreads): losses (N) and lse (N) from the logits z (N, Vp), fp32 or
// bf16, then z becomes softmax(z) (1 + 2 zc lse) - onehot(target): the gradient of the loss
// plus the z-loss zc lse^2 (model.h §10; zc 0 without). The row's max and sum of exponentials come from one
// online pass (each thread keeps its running max and its sum relative to it, rescaled when
// the max grows; the block then combines the threads' pairs); a second pass writes the
// gradient. RowShared: the first pass also keeps the row in shared memory (Vp elements of
// dynamic shared memory), where the second reads it: the logits cross memory once each way.
// Else (a row past the device's shared memory) the second pass reads them again. Each
// thread owns the same 16-byte groups in both passes, so the shared row needs no barrier
// of its own. A NaN logit makes its row's loss and gradient NaN
// (as the CPU's); a -inf logit has probability 0.
template<typename T, bool RowShared>
static __global__ void __launch_bounds__(kLossThreads) crossentropy_kernel(float* losses, float* lses, T* logits, const int* targets, int V,
                                                                          int Vp, float zc) {
    constexpr int W = 16 / sizeof(T);
    T* z = logits + (size_t)blockIdx.x * Vp;
    T* row = RowShared ? dynamic_shared<T>() : z;  // what the second pass reads
    const int y = targets[blockIdx.x];
    const float zy = to_f32(z[y]);  // read before the second pass overwrites it (block_reduce syncs between)
    float mx = -INFINITY, sum = 0.0f;
    for (int j = threadIdx.x * W; j < Vp; j += blockDim.x * W) {
        const Vec<T, W> v = *reinterpret_cast<const Vec<T, W>*>(z + j);
        if (RowShared) *reinterpret_cast<Vec<T, W>*>(row + j) = v;
        for (int e = 0; e < W && j + e < V; e++) {
            const float x = to_f32(v.v[e]);
            if (x > mx) {
                sum = sum * __expf(mx - x) + 1.0f;  // 0 * exp(-inf) at the first
                mx = x;
            } else {
                sum += x == -INFINITY ? 0.0f : __expf(x - mx);  // NaN: the sum becomes NaN
            }
        }
    }
    const float row_max = block_reduce(mx, true);
    sum = block_reduce(sum != 0.0f ? sum * __expf(mx - row_max) : 0.0f, false);  // a thread without (finite) columns adds 0
    const float lse = row_max + __logf(sum), scale = 1.0f + 2.0f * zc * lse;
    if (threadIdx.x == 0) {
        losses[blockIdx.x] = lse - zy;
        lses[blockIdx.x] = lse;
    }
    for (int j = threadIdx.x * W; j < Vp; j += blockDim.x * W) {
        float g[W];
        load_group<W>(g, row + j, W);
        PHD_UNROLL
        for (int e = 0; e < W; e++) g[e] = j + e < V ? scale * __expf(g[e] - lse) - (j + e == y ? 1.0f : 0.0f) : 0.0f;
        store_group<W>(z + j, g, W);
    }
}
// Whether a row of Vp logits of type T fits the block's shared memory (with block_reduce's).
template<typename T> inline bool crossentropy_row_shared(int Vp) { return (size_t)Vp * sizeof(T) + 1024 <= shared_optin(); }
// Bytes a launch moves: the row read once (twice without the shared row) and written once.
template<typename T> inline double crossentropy_bytes(int N, int Vp) {
    return (double)N * Vp * sizeof(T) * (crossentropy_row_shared<T>(Vp) ? 2 : 3) + 12.0 * N;
}
// The logits as the head's GEMM wrote them (T float or __nv_bfloat16), overwritten: rows of
// Vp, a multiple of 128, 16-byte aligned.
template<typename T>
inline void crossentropy(float* losses, float* lse, T* logits, const int* targets, int N, int V, int Vp, float zc, cudaStream_t s) {
    if (!vectorizable<T>(Vp, {logits})) die("crossentropy: logits rows of %d elements at %p are not whole 16-byte groups", Vp, (void*)logits);
    count_launch("crossentropy", crossentropy_bytes<T>(N, Vp), 0, s);
    const bool shared = crossentropy_row_shared<T>(Vp);
    const int groups = Vp / (16 / sizeof(T)), threads = std::min(kLossThreads, (groups + 31) / 32 * 32);
    launch_with_shared(shared ? crossentropy_kernel<T, true> : crossentropy_kernel<T, false>, dim3(N), dim3(threads),
                       shared ? (size_t)Vp * sizeof(T) : 0, s, losses, lse, logits, targets, V, Vp, zc);
    cudaCheck(cudaGetLastError());
}

static constexpr int kLossSumThreads = 1024;

// grid 1, block kLossSumThreads: *total += mean of losses (N), or with zc the z-loss's mean
// of zc lse^2 from lse (N) (model.h §10), summed in double over a fixed strided share a thread
// and a fixed tree: the same bits on every run.
static __global__ void __launch_bounds__(kLossSumThreads) loss_sum_kernel(float* total, const float* losses, int N, float zc) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < N; i += kLossSumThreads) acc += zc > 0 ? (double)zc * losses[i] * losses[i] : losses[i];
    const double sum = block_sum_fixed<kLossSumThreads>(acc);
    if (threadIdx.x == 0) *total += (float)(sum / N);
}
inline void loss_sum(float* total, const float* losses, int N, cudaStream_t s, float zc = 0.0f) {
    count_launch("loss_sum", 4.0 * N + 8, 0, s);
    launch(loss_sum_kernel, dim3(1), dim3(kLossSumThreads), 0, s, total, losses, N, zc);
    cudaCheck(cudaGetLastError());
}
