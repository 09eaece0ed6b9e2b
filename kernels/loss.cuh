// kernels/loss.cuh: the classifier's loss, fused: softmax + cross-entropy over the last-copy
// rows, and the logits' gradient written over the logits in the same launch, so that the LM
// head's output is read twice and written once, and nothing else of size (B*T, Vp) exists
// (probabilities never stored; bf16 runs keep the logits in bf16, as their matmuls take
// them). The gradient is softmax - onehot, unscaled: the head's backward GEMMs multiply by the
// loss's scale (their alpha), which the forward need not know. Each row's loss is summed on
// the device, into the step's loss, in a fixed order: no per-row copy to the host. Padded
// vocabulary columns (V..Vp-1) never count and get a zero gradient.
#pragma once
#include "cuda_compat.h"

static constexpr int kLossThreads = 256;

// grid (N), block kLossThreads: losses (N) and lse (N) from the logits z (N, Vp), fp32 or
// bf16, then z becomes softmax(z) (1 + 2 zc lse) - onehot(target): the gradient of the loss
// plus the z-loss zc lse^2 (model.h §10; zc 0 without). The row's max and sum of exponentials come from one
// online pass (each thread keeps its running max and its sum relative to it, rescaled when
// the max grows; the block then combines the threads' pairs); a second pass writes the
// gradient. A NaN logit makes its row's loss and gradient NaN (as the CPU's); a -inf logit
// has probability 0.
template<typename T>
static __global__ void crossentropy_kernel(float* losses, float* lses, T* logits, const int* targets, int V, int Vp, float zc) {
    T* z = logits + (size_t)blockIdx.x * Vp;
    const int y = targets[blockIdx.x];
    const float zy = to_f32(z[y]);  // read before the second pass overwrites it (block_reduce syncs between)
    float mx = -INFINITY, sum = 0.0f;
    for (int j = threadIdx.x; j < V; j += kLossThreads) {
        const float x = to_f32(z[j]);
        if (x > mx) {
            sum = sum * __expf(mx - x) + 1.0f;  // 0 * exp(-inf) at the first
            mx = x;
        } else {
            sum += x == -INFINITY ? 0.0f : __expf(x - mx);  // NaN: the sum becomes NaN
        }
    }
    const float row_max = block_reduce(mx, true);
    sum = block_reduce(sum != 0.0f ? sum * __expf(mx - row_max) : 0.0f, false);  // a thread without (finite) columns adds 0
    const float lse = row_max + __logf(sum), scale = 1.0f + 2.0f * zc * lse;
    if (threadIdx.x == 0) {
        losses[blockIdx.x] = lse - zy;
        lses[blockIdx.x] = lse;
    }
    for (int j = threadIdx.x; j < Vp; j += kLossThreads)
        store(z + j, j < V ? scale * __expf(to_f32(z[j]) - lse) - (j == y ? 1.0f : 0.0f) : 0.0f);
}
// The logits as the head's GEMM wrote them (T float or __nv_bfloat16), overwritten.
template<typename T>
inline void crossentropy(float* losses, float* lse, T* logits, const int* targets, int N, int V, int Vp, float zc, cudaStream_t s) {
    count_launch("crossentropy", (double)N * (2.0 * V + Vp) * sizeof(T) + 12.0 * N, 0, s);  // read twice, written once
    launch(crossentropy_kernel<T>, dim3(N), dim3(kLossThreads), 0, s, losses, lse, logits, targets, V, Vp, zc);
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
