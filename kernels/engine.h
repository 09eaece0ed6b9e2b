// kernels/engine.h: where a training step runs. CpuEngine wraps the CPU model of model.h;
// GpuEngine (built by nvcc, or by g++ over the CUDA emulation with PHD_EMULATE_GPU) wraps
// kernels/gpu_model.cuh. Both offer the same calls, so train_phd's loop is written once;
// parameters and AdamW moments cross between them in checkpoint order, so a model trained
// on one device resumes on the other. A training step is stage() (the host: the micro-batches'
// tokens, the step's learning rate) then step() (step_body below: the work, which on one GPU is
// a CUDA graph). With several ranks (kernels/dist.h) each engine keeps the AdamW moments of
// its shard of the parameters only (ZeRO-1): reduce_grads, clip and update are the step's
// collectives, moment() gathers the whole moments. A step's last backward is told so
// (backward's last): the GPU starts each layer's reduction there.
#pragma once
#include <cmath>
#include <memory>
#include <utility>
#include <vector>
#include "cpu_decode.h"
#include "dist.h"

// How an engine runs. training false: only what the KV-cache decoder needs (the parameters),
// for --generate. recompute: what the backward recomputes instead of keeping (model.h's
// Activations::point; --recompute). The GPU's: tf32 (--tf32), bf16 (--dtype bf16: matmuls
// and attention on bf16 tensor cores), overlap (reductions during the last backward), graphs
// (one rank: each step one CUDA graph launch), logits_chunk (bf16: rows of logits at once,
// GpuModel::head_rows; --logits-chunk).
struct EngineOptions {
    bool training = true;
    int recompute = 0, logits_chunk = 0;
    bool tf32 = false, bf16 = false, overlap = true, graphs = true;
};

// Memory of a run in bytes, by what holds it: every buffer its engine allocates (the host's
// on the CPU, the device's on the GPU), CUDA's context and cuBLASLt's own memory aside. The
// start-up `memory:` line and bench_gpu --memory's table print it; GPU runs check it against
// the free memory before they allocate.
struct MemoryCount {
    size_t params = 0;       // fp32 weights, and their bf16 copy in bf16 runs
    size_t grads = 0;
    size_t moments = 0;      // AdamW's m and v of this rank's shard, and the shard's summed gradients with several ranks
    size_t activations = 0;  // for one micro-batch (B, T), with the tokens and every scratch buffer
    size_t other = 0;        // RoPE's tables and small buffers
    size_t total() const { return params + grads + moments + activations + other; }
};

// One training step's work once stage() has put its `micro` batches and its step number and
// learning rate in place: each micro-batch's forward and backward (the gradients of dloss
// times its mean loss, summed), the gradients' reduction over the ranks, their norm and clip
// scale, and with `update` AdamW and the gather of the updated parameters. Nothing in it
// reads the host's memory except through stage's pinned buffers, so on one GPU it is captured
// once as a CUDA graph and replayed (GpuEngine::step).
template<typename Engine> void step_body(Engine& E, int micro, float dloss, const AdamW& o, bool update) {
    E.zero_grads();
    for (int k = 0; k < micro; k++) {
        E.forward_staged(k);
        E.backward(dloss, k == micro - 1);
    }
    E.reduce_grads();
    E.clip(o);
    if (update) E.update(o);
}

struct CpuEngine {
    Model<float> M;
    Shards S;                     // this rank's shard of the parameters: one bucket, one run of the arena (all of it alone)
    std::vector<float> m, v;      // (S.size) AdamW moments of the shard; empty for inference
    std::vector<float> gshard;    // (S.size) the gradients of the shard summed over the ranks; several ranks only
    double step_loss = 0;         // forward_async's losses since take_loss
    double step_z = 0;            // and their z-loss terms (model.h §10)
    double grad_norm_ = 0;        // clip's
    EngineOptions opt;
    const int *staged_in = nullptr, *staged_tg = nullptr;  // (micro, B, T) stage's, read by the step
    int staged_B = 0, staged_T = 0, staged_step = 0;
    float staged_lr = 0;
    CpuEngine(const Config& c, const std::vector<float>& params, const EngineOptions& o = {})
        : M(c), S(dist.shards({0, params.size()})), m(o.training ? S.size : 0), v(m.size()), gshard(dist.size > 1 ? m.size() : 0), opt(o) {
        M.params = params;
        M.recompute = o.recompute;
    }
    static const char* name() { return "cpu"; }
    float forward(const int* in, const int* tg, int B, int T) { return model_forward(M, in, tg, B, T); }
    // A step's forward: its loss is added to the step's, which take_loss returns (and resets;
    // z, when given, receives the z-loss terms' sum likewise).
    void forward_async(const int* in, const int* tg, int B, int T) {
        step_loss += forward(in, tg, B, T);
        step_z += M.z_term;
    }
    double take_loss(double* z = nullptr) {
        if (z) *z = step_z;
        step_z = 0;
        return std::exchange(step_loss, 0.0);
    }
    // (B*T) each position's loss in the last forward with targets: -log p(target).
    std::vector<float> row_losses() const { return std::vector<float>(M.losses, M.losses + (size_t)M.B * M.T); }
    // last (the step's last backward) is the GPU's business: the CPU reduces after it, in reduce_grads.
    void backward(float dloss, bool /*last*/ = false) { model_backward(M, dloss); }
    void zero_grads() { std::fill(M.grads.begin(), M.grads.end(), 0.0f); }
    // A step's batches (micro of (B, T) each, in and tg; they must outlive the step) and the
    // step number (0-based) and learning rate of its update.
    void stage(const int* in, const int* tg, int /*micro*/, int B, int T, const AdamW&, int step, float lr) {
        staged_in = in; staged_tg = tg; staged_B = B; staged_T = T; staged_step = step; staged_lr = lr;
    }
    void forward_staged(int k) {
        const size_t at = (size_t)k * staged_B * staged_T;
        forward_async(staged_in + at, staged_tg + at, staged_B, staged_T);
    }
    void step(int micro, float dloss, const AdamW& o, bool update) { step_body(*this, micro, dloss, o, update); }
    // The summed gradients of the shard: gshard, or alone the gradients themselves.
    const float* gsum() const { return dist.size > 1 ? gshard.data() : M.grads.data(); }
    void reduce_grads() { dist.reduce_scatter(M.grads.data(), gshard.data(), S, 0); }
    // The norm of all the gradients (the shards' sums of squares, summed), for update and norm().
    void clip(const AdamW&) { grad_norm_ = std::sqrt(dist.sum(grad_sumsq(gsum(), S.size))); }
    double norm() const { return grad_norm_; }
    static bool clips_on_device() { return false; }
    // AdamW at the staged step on this rank's shard, then every rank gets every updated parameter.
    void update(const AdamW& o) {
        for (const Piece& p : S.mine)
            adamw_update(M.cfg, o, M.params.data(), gsum() + p.at, m.data() + p.at, v.data() + p.at, staged_step, staged_lr, grad_norm_,
                         p.lo, p.hi);
        dist.all_gather(M.params.data(), S);
    }
    std::vector<float> params() const { return M.params; }
    std::vector<float> grads() const { return M.grads; }
    // m_, v_: (P), whole; the engine keeps its shard.
    void set_state(const std::vector<float>& p, const std::vector<float>& m_, const std::vector<float>& v_) {
        M.params = p;
        m = S.cut(m_);
        v = S.cut(v_);
    }
    std::vector<float> moment(bool second) const { return dist.gather((second ? v : m).data(), S); }  // (P), collective
    std::vector<float> logits() const {  // (B*T, V) of the last forward
        std::vector<float> out;
        for (int i = 0; i < M.B * M.T; i++) out.insert(out.end(), M.logits + (size_t)i * M.cfg.Vp, M.logits + (size_t)i * M.cfg.Vp + M.cfg.V);
        return out;
    }
    // No MFU on the CPU: its peak hangs on vector width, cores and clocks not modelled here.
    static double peak_tflops() { return 0; }
    // A KV-cache decoder of `samples` continuations over the current weights (kernels/cpu_decode.h).
    Decoder<float> decoder(int samples = 1, Sampling s = {}) const { return Decoder<float>(M, samples, s); }
    // shard: this rank's share of the parameters; ranks: how many there are.
    static MemoryCount memory(const Config& c, int B, int T, const EngineOptions& o, size_t shard, int ranks) {
        const size_t P = num_params(c), N = (size_t)B * T * c.K, f = sizeof(float);
        MemoryCount m;
        m.params = P * f;
        m.grads = P * f;
        m.moments = o.training ? (ranks > 1 ? 3 : 2) * shard * f : 0;
        m.activations = Activations<float>::floats(c, B, T, true, o.recompute) * f + (2 * (size_t)B * T + N) * sizeof(int);
        m.other = (size_t)c.maxT * c.hd() * f;
        return m;
    }
    MemoryCount memory(int B, int T) const { return memory(M.cfg, B, T, opt, S.size, dist.size); }
};

#if defined(__CUDACC__) || defined(PHD_EMULATE_GPU)
#define PHD_GPU 1
#include "gpu_decode.cuh"

// True if a CUDA device can be used; else *why says why not.
inline bool gpu_available(std::string* why) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        *why = e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device";
        return false;
    }
    return true;
}

// The number format of a step's matrix products (GEMMs and attention), which sets the peak
// its MFU is measured against. FP32: the CUDA cores' FMA lanes (today's default path). TF32
// (--tf32 1) and BF16 (--dtype bf16): dense tensor-core math with fp32 accumulation.
enum class MatmulDtype { FP32, TF32, BF16 };

// Device 0's peak in TFLOP/s for dtype d, dense (no 2:4 sparsity): SMs x the clock the device
// reports (its highest) x FLOPs per SM per clock of its architecture, so MFU never flatters.
// 0 when unknown: a device that does not describe itself (the CUDA emulation) or an
// architecture not below (those the Makefile builds for; a new one adds its rates here).
inline double peak_tflops(MatmulDtype d) {
    int sms, khz, major, minor;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0) != cudaSuccess)
        return 0;
    // FLOPs per SM per clock, an FMA being 2 (NVIDIA's dense rates): sm_80 (A100) 64 FP32
    // lanes, TF32 1024, BF16 2048; sm_90 (H100, H200) 128 lanes, TF32 2048, BF16 4096. The
    // other sm_8x, which run the sm_80 code, have 128 lanes and tensor rates that vary by part.
    const int cc = major * 10 + minor;
    const double fp32 = cc == 80 ? 128 : major == 8 || cc == 90 ? 256 : 0, tensor = cc == 80 ? 1024 : cc == 90 ? 2048 : 0;
    const double per_clock = d == MatmulDtype::FP32 ? fp32 : d == MatmulDtype::TF32 ? tensor : 2 * tensor;
    return sms * (khz * 1e3) * per_clock / 1e12;
}

// With several ranks the gradients are reduced a bucket at a time, a bucket being the
// tensors of a layer (GpuModel::grad_buckets), on a stream of their own (comm): bucket b's
// reduction waits on the event ready[b], recorded on the compute stream once the backward's
// kernels that write its gradients are issued, so that it runs while the backward goes on to
// the layers below. With overlap off (--overlap 0) the same reductions are issued in the same
// order after the whole backward, so both give the same bits. The compute stream waits on
// `reduced` (recorded on comm after the last one) before it reads the sums.
struct GpuEngine {
    GpuModel G;
    Shards S;                          // this rank's shard of the parameters: its piece of each bucket (all of them alone)
    float *m = nullptr, *v = nullptr;  // (S.size) AdamW moments of the shard, on the device; none for inference
    float* gshard = nullptr;           // (S.size) the gradients of the shard summed over the ranks; several ranks only
    std::unique_ptr<GradNorm> gn;      // the gradient norm and clip scale, on the device
    cudaStream_t comm = nullptr;       // the reductions' stream; several ranks only
    std::vector<cudaEvent_t> ready;    // (buckets) bucket b's gradients are written
    cudaEvent_t reduced = nullptr;     // every reduction of the step is done
    double ranks_norm = 0;             // several ranks: clip's norm, summed on the host
    std::unique_ptr<AdamWStep> now;    // the staged step's learning rate and bias corrections
    cudaGraphExec_t step_graph = nullptr;
    int graph_steps = 0;               // steps launched as a graph (the tests read it)
    // What a graph was captured with, beyond what it reads from memory when replayed: the shape,
    // the micro-batches, dloss, whether it updates, the memory's layout and AdamW's constants.
    struct GraphKey {
        int B, T, micro;
        float dloss;
        bool update;
        uint64_t layout;
        AdamW o;
        bool operator==(const GraphKey& k) const {
            return B == k.B && T == k.T && micro == k.micro && dloss == k.dloss && update == k.update && layout == k.layout &&
                   memcmp(&o, &k.o, sizeof o) == 0;  // AdamW: 4-byte fields, no padding
        }
    } graph_key{};
    EngineOptions opt;                 // overlap: reductions during the last backward; graphs: the step as a CUDA graph
    GpuEngine(const Config& c, const std::vector<float>& params, const EngineOptions& o = {})
        : G(c, params.data(), o.tf32, o.training, o.bf16), S(dist.shards(GpuModel::grad_buckets(c))), opt(o) {
        G.recompute = o.recompute;
        G.logits_chunk = o.logits_chunk;
        if (!o.training) return;
        now = std::make_unique<AdamWStep>();
        const size_t n = S.size;
        gpu_check_fits((dist.size > 1 ? 3 : 2) * n * sizeof(float), "AdamW moments");
        cudaCheck(cudaMalloc(&m, n * sizeof(float)));
        cudaCheck(cudaMalloc(&v, n * sizeof(float)));
        gn = std::make_unique<GradNorm>();
        cudaCheck(cudaMemset(m, 0, n * sizeof(float)));
        cudaCheck(cudaMemset(v, 0, n * sizeof(float)));
        if (dist.size == 1) return;
        cudaCheck(cudaMalloc(&gshard, n * sizeof(float)));
        // Non-blocking: a stream created plainly would wait for, and hold up, the legacy
        // default stream the model runs on, and nothing would overlap.
        cudaCheck(cudaStreamCreateWithFlags(&comm, cudaStreamNonBlocking));
        ready.resize(S.buckets());
        for (cudaEvent_t& e : ready) cudaCheck(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        cudaCheck(cudaEventCreateWithFlags(&reduced, cudaEventDisableTiming));
    }
    ~GpuEngine() {
        if (step_graph) cudaGraphExecDestroy(step_graph);
        cudaFree(m);
        cudaFree(v);
        cudaFree(gshard);
        for (cudaEvent_t e : ready) cudaEventDestroy(e);
        if (reduced) cudaEventDestroy(reduced);
        if (comm) cudaStreamDestroy(comm);
    }
    GpuEngine(const GpuEngine&) = delete;
    GpuEngine& operator=(const GpuEngine&) = delete;
    static const char* name() { return "cuda"; }
    float forward(const int* in, const int* tg, int B, int T) { return G.forward(in, tg, B, T); }
    // As CpuEngine's; the losses are summed on the device, and only take_loss waits.
    void forward_async(const int* in, const int* tg, int B, int T) { G.forward_async(in, tg, B, T); }
    double take_loss(double* z = nullptr) { return G.take_loss(z); }
    std::vector<float> row_losses() const { return G.download(G.losses, (size_t)G.B * G.T); }
    // last: the step's last backward, whose gradients are the step's: with overlap each bucket's
    // reduction starts as soon as its gradients are written.
    void backward(float dloss, bool last = false) {
        if (last && opt.overlap && dist.size > 1) G.backward(dloss, [this](int b) { reduce_bucket(b); });
        else G.backward(dloss);
    }
    void zero_grads() { G.zero_grads(); }
    // As CpuEngine's: the batches into pinned slots, the step's numbers into AdamW's pinned
    // values (once the last update's copy has read them).
    void stage(const int* in, const int* tg, int micro, int B, int T, const AdamW& o, int step, float lr) {
        G.size_for(B, T);
        G.reserve_slots(micro);
        for (int k = 0; k < micro; k++) G.stage(k, in + (size_t)k * B * T, tg + (size_t)k * B * T);
        now->set(o, step, lr);
    }
    void forward_staged(int k) { G.forward_staged(k, true); }
    // step_body, as a CUDA graph on one rank, launched one kernel at a time otherwise (several
    // ranks: NCCL and the host's sum of the norms; --graph 0). The first step of a GraphKey
    // runs launch by launch, as a warm-up: what kernels make at their first launch (the bf16
    // attention's tile maps, shared-memory limits, cuBLASLt's plans) allocates and waits, which
    // a capture may not do; the second is captured, and later ones replay it. Either way the
    // host waits for nothing here.
    void step(int micro, float dloss, const AdamW& o, bool update) {
        const GraphKey key{G.B, G.T, micro, dloss, update, G.layout, o};
        if (!(key == graph_key)) {
            if (step_graph) cudaCheck(cudaGraphExecDestroy(step_graph));
            step_graph = nullptr;
            graph_key = key;
            step_body(*this, micro, dloss, o, update);
        } else if (opt.graphs && dist.size == 1) {
            if (!step_graph) step_graph = G.capture([&] { step_body(*this, micro, dloss, o, update); });
            cudaCheck(cudaGraphLaunch(step_graph, G.stream));
            G.after_replayed_step();
            graph_steps++;
        } else {
            step_body(*this, micro, dloss, o, update);
        }
        for (int k = 0; k < micro; k++) G.staged_read(k);  // after the copies that read the slots
        if (update) now->read_by(G.stream);
    }
    // As CpuEngine's, over NCCL.
    const float* gsum() const { return dist.size > 1 ? gshard : G.grads; }
    void reduce_bucket(int b) {
        cudaCheck(cudaEventRecord(ready[b], G.stream));
        cudaCheck(cudaStreamWaitEvent(comm, ready[b], 0));
        dist.reduce_scatter_device(G.grads, gshard, S, b, comm);
    }
    // Without overlap, all the reductions now, in the backward's order (the last bucket first).
    void reduce_grads() {
        if (dist.size == 1) return;
        if (!opt.overlap)
            for (int b = S.buckets() - 1; b >= 0; b--) reduce_bucket(b);
        cudaCheck(cudaEventRecord(reduced, comm));
        cudaCheck(cudaStreamWaitEvent(G.stream, reduced, 0));
    }
    // On one rank the norm and the clip scale stay on the device: the update is queued after
    // them at once, and norm() waits later. Several ranks sum their shards' squares on the
    // host first (a wait) and hand the scale back.
    void clip(const AdamW& o) {
        gn->run(gsum(), S.size, o.clip, G.stream);
        if (dist.size == 1) return;
        ranks_norm = std::sqrt(dist.sum(gn->sumsq()));
        gn->set_scale((float)clip_scale_of(o.clip, ranks_norm), G.stream);
    }
    double norm() const { return dist.size == 1 ? std::sqrt(gn->sumsq()) : ranks_norm; }
    bool clips_on_device() const { return dist.size == 1; }  // clip() has not waited: update may be queued before norm()
    // AdamW at the staged step: one launch for each run of pieces that lie next to each other
    // in the arena and in the shard (the whole arena on one rank); then every rank gets every
    // updated parameter.
    void update(const AdamW& o) {
        now->upload(G.stream);
        auto continues = [&](size_t k) {  // piece k starts where piece k - 1 ends, in both
            const Piece &a = S.mine[k - 1], &b = S.mine[k];
            return b.lo == a.hi && b.at == a.at + (a.hi - a.lo);
        };
        for (size_t i = 0, j; i < S.mine.size(); i = j) {
            for (j = i + 1; j < S.mine.size() && continues(j);) j++;
            const Piece& p = S.mine[i];
            adamw_update(*G.tensors, o, G.params, gsum() + p.at, m + p.at, v + p.at, now->dev, gn->scale, G.stream,
                         dist.size > 1 ? nullptr : G.params16, p.lo, S.mine[j - 1].hi);  // several ranks: the copy after the gather
        }
        dist.all_gather_device(G.params, S, G.stream);
        if (G.params16 && dist.size > 1) copy_to_bf16(G.params16, G.params, G.P, G.stream);  // the other shards came in fp32
        if (!G.capturing()) now->read_by(G.stream);  // a captured one: step() records it after the graph
    }
    std::vector<float> params() const { return G.download(G.params, G.P); }
    std::vector<float> grads() const { return G.download(G.grads, G.P); }
    void set_state(const std::vector<float>& p, const std::vector<float>& m_, const std::vector<float>& v_) {
        G.upload_params(p.data());
        cudaCheck(cudaMemcpy(m, S.cut(m_).data(), S.size * sizeof(float), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(v, S.cut(v_).data(), S.size * sizeof(float), cudaMemcpyHostToDevice));
    }
    std::vector<float> moment(bool second) const { return dist.gather(G.download(second ? v : m, S.size).data(), S); }
    std::vector<float> logits() const { return G.logits_host(); }
    MatmulDtype dtype() const { return G.bf16 ? MatmulDtype::BF16 : G.tf32 ? MatmulDtype::TF32 : MatmulDtype::FP32; }
    double peak_tflops() const { return ::peak_tflops(dtype()); }  // 0: unknown, no MFU
    // A KV-cache decoder over the current weights, on the device (kernels/gpu_decode.cuh).
    GpuDecoder decoder(int samples = 1, Sampling s = {}) { return GpuDecoder(G, samples, s); }
    // As CpuEngine's, on the device: what GpuModel's and this constructor allocate, and
    // GpuModel::size_for, which checks that the activations fit before it allocates them.
    static MemoryCount memory(const Config& c, int B, int T, const EngineOptions& o, size_t shard, int ranks) {
        const size_t P = num_params(c), f = sizeof(float);
        MemoryCount m;
        m.params = P * f + (o.bf16 ? P * sizeof(__nv_bfloat16) : 0);
        m.grads = o.training ? P * f : 0;
        m.moments = o.training ? (ranks > 1 ? 3 : 2) * shard * f : 0;
        m.activations = GpuModel::activation_bytes(c, B, T, o.bf16, o.training, o.recompute, o.logits_chunk);
        // GradNorm's partials, sum of squares and scale; AdamWStep's values
        m.other = GpuModel::beside_params(c, o.training) +
                  (o.training ? kNormBlocks * sizeof(double) + sizeof(double) + sizeof(float) + sizeof(AdamWStep::Values) : 0);
        return m;
    }
    MemoryCount memory(int B, int T) const { return memory(G.cfg, B, T, opt, S.size, dist.size); }
};
#endif
