// kernels/adamw.cuh: global gradient norm (deterministic) and the AdamW update of
// model.h §9, fp32 parameters, gradients and moments (and the bf16 copy of the parameters
// under --dtype bf16).
#pragma once
#include "../model.h"
#include "cuda_compat.h"

// Enough blocks (8 an SM on a 132-SM H200) and 16-byte loads that the reads in flight cover
// the memory's latency: 256 blocks of 4-byte loads keep ~0.3 MB in flight, where 4.3 TB/s
// needs ~2.5 MB.
static constexpr int kNormBlocks = 1024, kNormThreads = 256;

// grid (at most kNormBlocks), block kNormThreads: partial[b] = sum of squares of a fixed
// strided share of the 4-float groups (of single floats where g is not 16-byte aligned; the
// last n % 4 in block 0), in double, reduced in a fixed tree order: the same bits on every run.
static __global__ void grad_norm_partial_kernel(double* partial, const float* g, size_t n) {
    double acc = 0.0;
    const size_t stride = (size_t)gridDim.x * kNormThreads, first = (size_t)blockIdx.x * kNormThreads + threadIdx.x;
    if ((uintptr_t)g % 16 == 0) {
        const Vec<float, 4>* g4 = reinterpret_cast<const Vec<float, 4>*>(g);
        for (size_t i = first; i < n / 4; i += stride) {
            const Vec<float, 4> v = g4[i];
            acc += (double)v.v[0] * v.v[0] + (double)v.v[1] * v.v[1] + (double)v.v[2] * v.v[2] + (double)v.v[3] * v.v[3];
        }
        const size_t done = n / 4 * 4;
        if (blockIdx.x == 0 && done + threadIdx.x < n) acc += (double)g[done + threadIdx.x] * g[done + threadIdx.x];
    } else {
        for (size_t i = first; i < n; i += stride) acc += (double)g[i] * g[i];
    }
    const double sum = block_sum_fixed<kNormThreads>(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}
// One thread: *norm2 = the partials summed in order, *scale = AdamW's clip scale of its
// square root (clip_scale_of, model.h; NaN for a NaN norm, which train_phd stops on before
// any checkpoint).
static __global__ void grad_norm_finish_kernel(double* norm2, float* scale, const double* partial, int blocks, float clip) {
    double sum = 0.0;
    for (int b = 0; b < blocks; b++) sum += partial[b];
    *norm2 = sum;
    *scale = (float)clip_scale_of(clip, sqrt(sum));
}

// The gradient norm and the clip scale AdamW reads, on the device: run() queues them and
// nothing waits, so that the update can follow on the stream at once; sumsq() brings the
// sum of squares to the host (it waits). Several ranks sum theirs on the host and give the
// scale back with set_scale.
struct GradNorm {
    double* partial = nullptr;  // (kNormBlocks)
    double* norm2 = nullptr;    // (1) the sum of squares
    float* scale = nullptr;     // (1) the clip scale
    GradNorm() {
        cudaCheck(cudaMalloc(&partial, kNormBlocks * sizeof(double)));
        cudaCheck(cudaMalloc(&norm2, sizeof(double)));
        cudaCheck(cudaMalloc(&scale, sizeof(float)));
    }
    ~GradNorm() {
        cudaFree(partial);
        cudaFree(norm2);
        cudaFree(scale);
    }
    GradNorm(const GradNorm&) = delete;
    GradNorm& operator=(const GradNorm&) = delete;
    // g (n), clip: AdamW's.
    void run(const float* g, size_t n, float clip, cudaStream_t s) {
        const int blocks = (int)std::max<size_t>(1, std::min<size_t>(kNormBlocks, (n / 4 + kNormThreads - 1) / kNormThreads));
        count_launch("grad_norm", 4.0 * n, 0, s);
        launch(grad_norm_partial_kernel, dim3(blocks), dim3(kNormThreads), 0, s, partial, g, n);
        count_launch("grad_norm finish", 8.0 * blocks + 12, 0, s);
        launch(grad_norm_finish_kernel, dim3(1), dim3(1), 0, s, norm2, scale, (const double*)partial, blocks, clip);
        cudaCheck(cudaGetLastError());
    }
    double sumsq() const {
        double h;
        cudaCheck(cudaMemcpy(&h, norm2, sizeof h, cudaMemcpyDeviceToHost));
        return h;
    }
    void set_scale(float x, cudaStream_t s) { cudaCheck(cudaMemcpyAsync(scale, &x, sizeof x, cudaMemcpyHostToDevice, s)); }
};

// The parameter tensors as the one AdamW launch looks its elements up in them (param_tensors
// order, model.h): each one's end offset and whether it decays, on the device. GpuModel keeps
// one for its Config.
struct AdamWTensors {
    size_t* end = nullptr;           // (n)
    unsigned char* decay = nullptr;  // (n) 1: matrices and embeddings; 0: the norms' gains
    int n = 0;
    size_t P = 0;                    // every parameter: end[n - 1]
    explicit AdamWTensors(const Config& c) {
        std::vector<size_t> e;
        std::vector<unsigned char> d;
        for (const ParamTensor& t : param_tensors(c)) {
            e.push_back(t.offset + t.size());
            d.push_back(t.decay);
        }
        n = (int)e.size();
        P = e.back();
        end = to_device(e);
        decay = to_device(d);
    }
    ~AdamWTensors() {
        cudaFree(end);
        cudaFree(decay);
    }
    AdamWTensors(const AdamWTensors&) = delete;
    AdamWTensors& operator=(const AdamWTensors&) = delete;
};
// What AdamW takes from the step it updates at: the learning rate and the bias corrections,
// which the kernel reads from device memory, so that a step captured once as a CUDA graph
// (kernels/engine.h) replays with each step's own. set() writes them into pinned memory on
// the host; upload(), queued before the update, copies them when it runs (a replay's copy
// reads what the host set last); read_by() records, after the copy (outside any capture), the
// event that the next set() waits on before it writes.
struct AdamWStep {
    struct Values { float lr, bc1, bc2; };
    Values* host = nullptr;  // (1) pinned
    Values* dev = nullptr;   // (1)
    cudaEvent_t read = nullptr;
    AdamWStep() {
        cudaCheck(cudaMallocHost(&host, sizeof(Values)));
        cudaCheck(cudaMalloc(&dev, sizeof(Values)));
        cudaCheck(cudaEventCreateWithFlags(&read, cudaEventDisableTiming));
    }
    ~AdamWStep() {
        cudaEventSynchronize(read);  // the last copy has read host
        cudaEventDestroy(read);
        cudaFree(dev);
        cudaFreeHost(host);
    }
    AdamWStep(const AdamWStep&) = delete;
    AdamWStep& operator=(const AdamWStep&) = delete;
    // step: 0-based, as adamw_update's in model.h.
    void set(const AdamW& o, int step, float lr) {
        cudaCheck(cudaEventSynchronize(read));
        *host = {lr, (float)(1.0 - pow(o.beta1, step + 1)), (float)(1.0 - pow(o.beta2, step + 1))};
    }
    void upload(cudaStream_t s) const { cudaCheck(cudaMemcpyAsync(dev, host, sizeof(Values), cudaMemcpyHostToDevice, s)); }
    void read_by(cudaStream_t s) const { cudaCheck(cudaEventRecord(read, s)); }
};
// grid (ceil(n / (256 V))), block 256: parameters lo .. lo + n - 1 of every tensor in one
// launch (p, g, m, v and p16 start at parameter lo), V consecutive ones a thread (4: 16-byte
// accesses, 8 bytes of p16, where the launcher finds them aligned); each element decays as
// its tensor does, found by a binary search of the tensors' ends (a group may cross one).
// p16, when given, receives the updated parameters rounded to bf16: the copy that --dtype
// bf16's matmuls read, written in the same pass instead of a conversion of its own.
template<int V>
static __global__ void adamw_kernel(float* p, __nv_bfloat16* p16, const float* g, float* m, float* v, size_t lo, size_t n,
                                    const size_t* ends, const unsigned char* decays, int tensors, float b1, float b2, float eps, float wd,
                                    const AdamWStep::Values* now, const float* clip) {
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i >= n) return;
    const int w = n - i < V ? (int)(n - i) : V;
    const float scale = *clip, lr = now->lr, bc1 = now->bc1, bc2 = now->bc2;
    int t = 0;  // the first tensor that ends past parameter lo + i
    for (int hi = tensors - 1; t < hi;) {
        const int mid = (t + hi) / 2;
        if (ends[mid] > lo + i) hi = mid;
        else t = mid + 1;
    }
    float pr[V], gr[V], mr[V], vr[V];
    load_group<V>(pr, p + i, w);
    load_group<V>(gr, g + i, w);
    load_group<V>(mr, m + i, w);
    load_group<V>(vr, v + i, w);
    PHD_UNROLL
    for (int e = 0; e < V; e++) {
        while (t + 1 < tensors && ends[t] <= lo + i + e) t++;
        const float decay = decays[t] ? wd : 0.0f;
        const float gi = gr[e] * scale;
        mr[e] = b1 * mr[e] + (1 - b1) * gi;
        vr[e] = b2 * vr[e] + (1 - b2) * gi * gi;
        pr[e] -= lr * ((mr[e] / bc1) / (sqrtf(vr[e] / bc2) + eps) + decay * pr[e]);
    }
    store_group<V>(p + i, pr, w);
    store_group<V>(m + i, mr, w);
    store_group<V>(v + i, vr, w);
    if (p16) store_group<V>(p16 + i, pr, w);
}
// As adamw_update in model.h: decay on matrices and embeddings only, after clipping by the
// scale GradNorm left on the device (clip), at the step and learning rate `now` holds (on the
// device: AdamWStep::dev, uploaded); only the parameters [lo, hi) (a rank's shard,
// kernels/dist.h), grads, m and v holding just those. params16: (P) the bf16 copy to
// refresh, or nullptr. One launch, whatever the tensors.
inline void adamw_update(const AdamWTensors& t, const AdamW& o, float* params, const float* grads, float* m, float* v,
                         const AdamWStep::Values* now, const float* clip, cudaStream_t s, __nv_bfloat16* params16 = nullptr, size_t lo = 0,
                         size_t hi = SIZE_MAX) {
    hi = std::min(hi, t.P);
    if (lo >= hi) return;
    const size_t n = hi - lo;
    count_launch("adamw", (double)n * (28 + (params16 ? 2 : 0)), 0, s);  // p, m, v read and written, g read
    __nv_bfloat16* p16 = params16 ? params16 + lo : nullptr;
    const bool vec = aligned16({params + lo, grads, m, v}) && (uintptr_t)p16 % 8 == 0;
    launch(vec ? adamw_kernel<4> : adamw_kernel<1>, flat_grid(n, vec ? 4 : 1), dim3(256), 0, s, params + lo, p16, grads, m, v, lo, n, t.end,
           t.decay, t.n, o.beta1, o.beta2, o.eps, o.weight_decay, now, clip);
    cudaCheck(cudaGetLastError());
}
