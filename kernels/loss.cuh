// kernels/loss.cuh: fused softmax + cross-entropy on the last-copy rows, fp32. Probabilities
// are never stored: the forward keeps each row's log-sum-exp, the backward turns the logits
// into their gradient (in place, or into bf16 for bf16 matmuls). Padded vocabulary columns (V..Vp-1) never count.
#pragma once
#include "cuda_compat.h"

static constexpr int kLossThreads = 256;

// grid (N), block kLossThreads: losses (N), lse (N) from logits (N, Vp), in one pass over
// the row (online softmax): each thread keeps its running max and its sum of exp relative to
// it, rescaled when the max grows; then the block combines the threads' (max, sum) pairs.
// A NaN logit makes its row's loss NaN (as the CPU's); a -inf logit has probability 0.
static __global__ void crossentropy_forward_kernel(float* losses, float* lse, const float* logits, const int* targets, int V, int Vp) {
    const float* z = logits + (size_t)blockIdx.x * Vp;
    float mx = -INFINITY, sum = 0.0f;
    for (int j = threadIdx.x; j < V; j += kLossThreads) {
        const float x = z[j];
        if (x > mx) {
            sum = sum * __expf(mx - x) + 1.0f;  // 0 * exp(-inf) at the first
            mx = x;
        } else {
            sum += x == -INFINITY ? 0.0f : __expf(x - mx);  // NaN: the sum becomes NaN
        }
    }
    const float row_max = block_reduce(mx, true);
    sum = block_reduce(sum != 0.0f ? sum * __expf(mx - row_max) : 0.0f, false);  // a thread without (finite) columns adds 0
    if (threadIdx.x == 0) {
        lse[blockIdx.x] = row_max + __logf(sum);
        losses[blockIdx.x] = lse[blockIdx.x] - z[targets[blockIdx.x]];
    }
}
inline void crossentropy_forward(float* losses, float* lse, const float* logits, const int* targets, int N, int V, int Vp, cudaStream_t s) {
    count_launch("crossentropy_forward", 4.0 * N * V + 16.0 * N, 0, s);
    launch(crossentropy_forward_kernel, dim3(N), dim3(kLossThreads), 0, s, losses, lse, logits, targets, V, Vp);
    cudaCheck(cudaGetLastError());
}

// grid (N), block kLossThreads: dlogits (N, Vp) = dloss_row * (softmax - onehot), padding 0;
// dlogits is the logits themselves (fp32, in place) or a bf16 tensor for bf16 matmuls
template<typename Out>
static __global__ void crossentropy_backward_kernel(Out* dlogits, const float* logits, const float* lse, const int* targets, float dloss_row,
                                                    int V, int Vp) {
    const float* z = logits + (size_t)blockIdx.x * Vp;
    Out* dz = dlogits + (size_t)blockIdx.x * Vp;
    const float l = lse[blockIdx.x];
    const int y = targets[blockIdx.x];
    for (int j = threadIdx.x; j < Vp; j += kLossThreads)
        store(dz + j, j < V ? dloss_row * (__expf(z[j] - l) - (j == y ? 1.0f : 0.0f)) : 0.0f);
}
template<typename Out>
inline void crossentropy_backward(Out* dlogits, const float* logits, const float* lse, const int* targets, float dloss_row, int N, int V,
                                  int Vp, cudaStream_t s) {
    count_launch("crossentropy_backward", 4.0 * N * V + (double)N * Vp * sizeof(Out) + 8.0 * N, 0, s);
    launch(crossentropy_backward_kernel<Out>, dim3(N), dim3(kLossThreads), 0, s, dlogits, logits, lse, targets, dloss_row, V, Vp);
    cudaCheck(cudaGetLastError());
}
