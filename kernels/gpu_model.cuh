// kernels/gpu_model.cuh: the PHD-Transformer on the GPU, forward and backward: the same
// steps as model_forward/model_backward in model.h, on device buffers in the same row order,
// with plain GEMMs through cuBLASLt (kernels/gemm.cuh). fp32 runs keep the CPU's precision
// (TF32 off unless asked for). bf16 runs (--dtype bf16) multiply on bf16 tensor cores with fp32 accumulation: the
// weights' bf16 copy (written by AdamW), and bf16 matmul inputs that the kernels before
// each matmul write directly (rmsnorm, RoPE, attention, swiglu, the loss's and the residual
// stream's gradients); the residual stream, norms' statistics, softmax, loss, the weights'
// gradients and AdamW's state stay fp32. One templated sequence serves both (In = float or
// __nv_bfloat16): StepIn<In> names where each matmul input lives.
// Parameters and gradients use the checkpoint order of param_tensors() (model.h).
#pragma once
#include <cstring>
#include <functional>
#include <memory>
#include <vector>
#include "adamw.cuh"
#include "attention.cuh"
#include "gemm.cuh"
#include "layers.cuh"
#include "loss.cuh"

// A clear error, before allocating, when `what` does not fit in the device's free memory.
inline void gpu_check_fits(size_t bytes, const char* what, const char* hint = "") {
    size_t free_bytes, total_bytes;
    cudaCheck(cudaMemGetInfo(&free_bytes, &total_bytes));
    if (bytes > free_bytes)
        die("GPU memory: %s need %.1f MiB, %.1f MiB free of %.1f MiB%s", what, bytes / 1048576.0, free_bytes / 1048576.0,
            total_bytes / 1048576.0, hint);
}

// --dtype bf16: what the bf16 matmuls read, in bf16. One layer's inputs, kept for its
// backward (fp32 runs point them at the fp32 tensors of LayerActs instead):
template<typename In> struct LayerIn {
    In* a;    // (B, TK, D) rmsnorm(x): the qkv matmul's input (reordered norm: x itself)
    In* qkv;  // (B, TK, qkv_dim) q | k | v after RoPE: the attention's input
    In* o;    // (B, TK, H*hd) the attention's output: the wo matmul's input
    In* f;    // (B, TK, D) rmsnorm(xm): the w13 matmul's input (reordered norm: xm itself)
    In* h13;  // (B, TK, 2F) f w13^T: the SwiGLU's input, forward and backward
    In* g;    // (B, TK, F) swiglu(h13): the w2 matmul's input
};
// ... and the gradients that matmuls (and the attention backward) read, one set for all
// layers, with the LM head's input and output gradient.
template<typename In> struct StepIn {
    std::vector<LayerIn<In>> layer;  // (L)
    In* dx;                          // (B, TK, D) what the w2 and wo matmuls' backward reads: the residual stream's
                                     // gradient (pre-norm), or that of their own output before its norm (reordered)
    In* dg;                          // (B, TK, F) the gradient of g (fp32 runs: dtmp)
    In* dh13;                        // (B, TK, 2F)
    In* dout;                        // (B, TK, H*hd) the attention output's gradient
    In* dqkv;                        // (B, TK, qkv_dim)
    In* xn;                          // (B, T, D) rmsnorm(xlast): the LM head's input
    In* dlogits;                     // (B, T, Vp)
};

struct GpuModel : Activations<float> {
    Config cfg;
    bool tf32;                                   // TF32 tensor cores: GEMMs and attention (fp32 runs)
    bool bf16;                                   // matmuls and attention on bf16 tensor cores
    size_t P = 0;
    float *params = nullptr, *grads = nullptr;   // (P) device arenas; no grads for inference
    ParamView<float> p, g;                       // named views into them
    __nv_bfloat16* params16 = nullptr;           // (P) bf16 copy of params (bf16 runs), rewritten by AdamW
    ParamView<__nv_bfloat16> p16;
    float *rope_cos = nullptr, *rope_sin = nullptr;  // (maxT, hd/2)
    float* norm_scratch = nullptr;               // (dg_chunks(B*T*K), D) rmsnorm_backward's partial sums (training)
    std::unique_ptr<AdamWTensors> tensors;       // the parameter tensors as AdamW's one launch sees them (training)
    std::unique_ptr<Gemm> blas;                  // every matmul
    cudaStream_t stream = nullptr;

    int B = 0, T = 0;
    int recompute = 0;                           // 0, 1, 2: what the backward recomputes (Activations::point); set before the first forward
    int logits_chunk = 0;                        // rows of logits held at once (0: all B*T; saves memory in bf16 runs); set before the first forward
    float* act = nullptr;                        // the activations' arena (Activations in model.h)
    int *d_tokens = nullptr, *d_targets = nullptr;     // (B, T) of the last forward
    int *d_row_index = nullptr, *d_row_pos = nullptr;  // (B*T*K) each row's b*T + n, and n: set once per shape
    uint64_t* d_sort_keys = nullptr;                   // (token_sort_slots(B*T)) the embedding backward's scratch
    StepIn<float> in32;                          // fp32 runs: the tensors of Activations, as matmul inputs
    StepIn<__nv_bfloat16> in16;                  // bf16 runs: their bf16 tensors, in the arena act16
    __nv_bfloat16* act16 = nullptr;
    float* attn_D = nullptr;                     // (B, H, TK) the bf16 attention backward's rowsum(dO o)
    bool fresh_grads = false;                    // zero_grads was called: the next backward overwrites grads
    float* d_loss = nullptr;                     // (2) the mean losses of the forwards since take_loss, summed, and
                                                 // their z-loss terms (model.h §10)
    bool logits_kept = false;                    // the last forward had no targets: its logits are kept (logits_host)
    // Tokens and targets reach the device from pinned memory, which a copy reads when it runs
    // (from pageable memory CUDA may wait for the whole stream first, and a graph could not
    // replay the copy): slots of (2, B*T) ints, tokens then targets. staged[k] is recorded once
    // the copies that read slot k are queued, and the host waits on it before it refills the
    // slot. Lone forwards take slots 0 and 1 in turn, so that one fills while the other's
    // copies wait; a training step (GpuEngine::step) puts its micro-batches in slots 0, 1, ...
    int* h_stage = nullptr;                      // (slots, 2, B*T) pinned
    std::vector<cudaEvent_t> staged;             // (slots)
    int stage_next = 0;
    // Counts the reallocations of the activations and the slots: a captured graph's pointers
    // hold while it stays the same.
    uint64_t layout = 0;
    // The positions B*T the activations were allocated for, and the pinned slots' ints. A batch
    // of no more positions (an eval's rows, shorter than training's) is laid out in the same
    // buffers instead of new ones, so that training's shape comes back to the addresses its
    // captured step graph holds (GpuEngine::step replays it instead of capturing anew).
    size_t BT_alloc = 0, stage_ints = 0;
    cudaStream_t capture_stream = nullptr;       // where capture() records (the legacy stream cannot)

    // What stays beside the parameters: RoPE's tables, the losses' sums, the process's
    // cuBLASLt workspace (kernels/gemm.cuh; a second model in one process shares it, so
    // this asks too much there), and for training AdamW's tensor table.
    static size_t beside_params(const Config& c, bool training) {
        return (size_t)c.maxT * c.hd() * sizeof(float) + 2 * sizeof(float) + Gemm::kWorkspace +
               (training ? param_tensors(c).size() * (sizeof(size_t) + 1) : 0);
    }
    // training false: inference only (the KV-cache decoder), the parameters without gradients.
    // bf16_: matmuls and attention on bf16 tensor cores (head sizes 16, 32, 64, 128).
    GpuModel(const Config& c, const float* host_params, bool tf32_, bool training = true, bool bf16_ = false)
        : cfg(c), tf32(tf32_), bf16(bf16_), P(num_params(c)) {
        if (bf16 && !bf16_attention_head(c.hd())) die("bf16 attention: head size %d has no instance (16, 32, 64, 128)", c.hd());
        gpu_check_fits((training ? 2 : 1) * P * sizeof(float) + (bf16 ? P * sizeof(__nv_bfloat16) : 0) + beside_params(c, training),
                       training ? "parameters and gradients" : "parameters");
        cudaCheck(cudaMalloc(&params, P * sizeof(float)));
        p = param_view(c, params);
        if (bf16) {
            cudaCheck(cudaMalloc(&params16, P * sizeof(__nv_bfloat16)));
            p16 = param_view(c, params16);
        }
        upload_params(host_params);
        if (training) {
            cudaCheck(cudaMalloc(&grads, P * sizeof(float)));
            cudaCheck(cudaMemset(grads, 0, P * sizeof(float)));
            g = param_view(c, grads);
            tensors = std::make_unique<AdamWTensors>(c);
        }
        std::vector<float> cs((size_t)c.maxT * c.hd() / 2), sn(cs.size());
        rope_tables(cs.data(), sn.data(), c.maxT, c.hd());
        cudaCheck(cudaMalloc(&rope_cos, cs.size() * sizeof(float)));
        cudaCheck(cudaMalloc(&rope_sin, sn.size() * sizeof(float)));
        cudaCheck(cudaMemcpy(rope_cos, cs.data(), cs.size() * sizeof(float), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(rope_sin, sn.data(), sn.size() * sizeof(float), cudaMemcpyHostToDevice));
        blas = std::make_unique<Gemm>(tf32);
        cudaCheck(cudaMalloc(&d_loss, 2 * sizeof(float)));
        cudaCheck(cudaMemset(d_loss, 0, 2 * sizeof(float)));
        cudaCheck(cudaStreamCreate(&capture_stream));
    }
    ~GpuModel() {
        for (void* q : {(void*)params, (void*)grads, (void*)params16, (void*)rope_cos, (void*)rope_sin, (void*)norm_scratch, (void*)act,
                        (void*)d_tokens, (void*)d_targets, (void*)d_row_index, (void*)d_row_pos, (void*)d_sort_keys, (void*)act16,
                        (void*)attn_D, (void*)d_loss})
            cudaFree(q);
        for (cudaEvent_t e : staged) {  // no queued copy still reads the pinned slots
            cudaEventSynchronize(e);
            cudaEventDestroy(e);
        }
        cudaFreeHost(h_stage);
        cudaStreamDestroy(capture_stream);
    }
    GpuModel(const GpuModel&) = delete;
    GpuModel& operator=(const GpuModel&) = delete;

    // New parameters (P, host): the fp32 masters and, in bf16 runs, their bf16 copy.
    void upload_params(const float* host) {
        cudaCheck(cudaMemcpy(params, host, P * sizeof(float), cudaMemcpyHostToDevice));
        if (bf16) copy_to_bf16(params16, params, P, stream);
    }

    // Rows of logits the LM head writes at once for BT rows: all, or chunks of logits_chunk
    // (--logits-chunk: the head and the loss a chunk at a time, the backward's head run again
    // chunk by chunk, so that the (B*T, Vp) logits never exist whole).
    static size_t head_rows(size_t BT, int logits_chunk) { return logits_chunk > 0 ? std::min(BT, (size_t)logits_chunk) : BT; }
    // Places in16's tensors for a batch (B, T) from mem (null: only counts) and returns their
    // elements; each starts on a 256-byte boundary, as the bf16 attention's 16-byte cp.async
    // loads and cuBLASLt's fastest kernels want. Layers share what recompute recomputes, as in
    // Activations::point: 1 a, f and g; 2 all of them.
    static size_t point16(const Config& c, int B_, int T_, int recompute, int logits_chunk, __nv_bfloat16* mem, StepIn<__nv_bfloat16>& in) {
        const size_t n = (size_t)B_ * T_ * c.K, BT = (size_t)B_ * T_, od = (size_t)c.H * c.hd();
        size_t used = 0;
        auto take = [&](size_t k) {
            __nv_bfloat16* r = mem ? mem + used : nullptr;
            used += (k + 127) / 128 * 128;
            return r;
        };
        in.layer.resize(c.L);
        for (size_t l = 0; l < in.layer.size(); l++) {
            auto per = [&](__nv_bfloat16* LayerIn<__nv_bfloat16>::*t, int level, size_t k) {
                in.layer[l].*t = l > 0 && recompute >= level ? in.layer[0].*t : take(k);
            };
            per(&LayerIn<__nv_bfloat16>::a, 1, n * c.D); per(&LayerIn<__nv_bfloat16>::qkv, 2, n * c.qkv_dim());
            per(&LayerIn<__nv_bfloat16>::o, 2, n * od); per(&LayerIn<__nv_bfloat16>::f, 1, n * c.D);
            per(&LayerIn<__nv_bfloat16>::h13, 2, n * 2 * c.F); per(&LayerIn<__nv_bfloat16>::g, 1, n * c.F);
        }
        in.dx = take(n * c.D); in.dg = take(n * c.F); in.dh13 = take(n * 2 * c.F);
        in.dout = take(n * od); in.dqkv = take(n * c.qkv_dim());
        in.xn = take(BT * c.D); in.dlogits = take(head_rows(BT, logits_chunk) * c.Vp);
        return used;
    }
    // Device memory of every buffer size_for allocates for a batch (B, T): Activations' fp32
    // arena (bf16 runs without the fp32 matmul inputs), the tokens, targets and row tables,
    // the embedding backward's sort keys, the RMSNorm backward's partial sums when training,
    // and in bf16 runs the bf16 tensors and D of the bf16 attention backward.
    static size_t activation_bytes(const Config& c, int B_, int T_, bool bf16_, bool training, int recompute, int logits_chunk) {
        const size_t N = (size_t)B_ * T_ * c.K, BT = (size_t)B_ * T_;
        StepIn<__nv_bfloat16> none;
        size_t bytes = floats(c, B_, T_, !bf16_, recompute) * sizeof(float) + (2 * N + 2 * BT) * sizeof(int) +
                       token_sort_slots((int)BT) * sizeof(uint64_t) + (training ? (size_t)dg_chunks((int)N) * c.D * sizeof(float) : 0);
        if (bf16_) bytes += point16(c, B_, T_, recompute, logits_chunk, nullptr, none) * sizeof(__nv_bfloat16) + N * c.H * sizeof(float);
        return bytes;
    }
    size_t activation_bytes(int B_, int T_) const { return activation_bytes(cfg, B_, T_, bf16, grads != nullptr, recompute, logits_chunk); }

    // Every buffer's size grows with B*T alone (and the config, dtype and --recompute, fixed
    // for a model), so a batch of no more positions fits the allocation; a larger one is
    // allocated exactly, the old buffers freed.
    void size_for(int B_, int T_) {
        if (B_ == B && T_ == T) return;
        B = B_; T = T_;
        const int N = B * T * cfg.K, TK = T * cfg.K;
        if ((size_t)B * T > BT_alloc) {
            for (void* q : {(void*)act, (void*)d_tokens, (void*)d_targets, (void*)d_row_index, (void*)d_row_pos, (void*)d_sort_keys,
                            (void*)act16, (void*)attn_D, (void*)norm_scratch})
                cudaFree(q);
            act16 = nullptr;
            attn_D = nullptr;
            norm_scratch = nullptr;
            char what[64];
            snprintf(what, sizeof what, "activations for B=%d T=%d", B, T);
            std::string hint = " (lower -b or -t";
            if (recompute < 2) hint += ", or --recompute 2";
            if (bf16 && !logits_chunk) hint += ", or --logits-chunk";
            gpu_check_fits(activation_bytes(B, T), what, (hint + ")").c_str());
            cudaCheck(cudaMalloc(&act, floats(cfg, B, T, !bf16, recompute) * sizeof(float)));
            cudaCheck(cudaMalloc(&d_tokens, (size_t)B * T * sizeof(int)));
            cudaCheck(cudaMalloc(&d_targets, (size_t)B * T * sizeof(int)));
            cudaCheck(cudaMalloc(&d_row_index, (size_t)N * sizeof(int)));
            cudaCheck(cudaMalloc(&d_row_pos, (size_t)N * sizeof(int)));
            cudaCheck(cudaMalloc(&d_sort_keys, token_sort_slots(B * T) * sizeof(uint64_t)));
            if (grads) cudaCheck(cudaMalloc(&norm_scratch, (size_t)dg_chunks(N) * cfg.D * sizeof(float)));
            if (bf16) {
                cudaCheck(cudaMalloc(&act16, point16(cfg, B, T, recompute, logits_chunk, nullptr, in16) * sizeof(__nv_bfloat16)));
                cudaCheck(cudaMalloc(&attn_D, (size_t)N * cfg.H * sizeof(float)));
            }
            BT_alloc = (size_t)B * T;
            layout++;
        }
        point(cfg, B, T, act, !bf16, recompute);
        const bool pre = cfg.norm == NORM_PRE;
        in32.layer.clear();
        for (const LayerActs<float>& a : layer) in32.layer.push_back({pre ? a.a : a.x, a.qkv, a.o, pre ? a.f : a.xm, a.h13, a.g});
        in32.dx = pre ? dx : dy; in32.dg = dtmp; in32.dh13 = dh13; in32.dout = dtmp; in32.dqkv = dqkv; in32.xn = xn; in32.dlogits = logits;
        if (bf16) point16(cfg, B, T, recompute, logits_chunk, act16, in16);
        std::vector<int> index(N), pos(N);
        for (int i = 0; i < N; i++) {
            pos[i] = row_position(cfg, T, i % TK);
            index[i] = i / TK * T + pos[i];
        }
        cudaCheck(cudaMemcpy(d_row_index, index.data(), N * sizeof(int), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d_row_pos, pos.data(), N * sizeof(int), cudaMemcpyHostToDevice));
        reserve_slots((int)std::max<size_t>(2, staged.size()), true);
    }
    // At least n staging slots of the current shape (reshaped: the shape changed, which moves
    // every slot), once no queued copy reads the old ones; reallocated only when they outgrow
    // the memory.
    void reserve_slots(int n, bool reshaped = false) {
        if (!reshaped && (int)staged.size() >= n) return;
        for (cudaEvent_t e : staged) cudaCheck(cudaEventSynchronize(e));
        while ((int)staged.size() < n) {
            staged.emplace_back();
            cudaCheck(cudaEventCreateWithFlags(&staged.back(), cudaEventDisableTiming));
        }
        const size_t need = staged.size() * 2 * (size_t)B * T;
        if (need <= stage_ints) return;
        if (h_stage) cudaCheck(cudaFreeHost(h_stage));
        cudaCheck(cudaMallocHost(&h_stage, need * sizeof(int)));
        stage_ints = need;
        layout++;
    }
    // Host: tokens and targets (B*T each; tgt may be null) into slot k, once the copies that
    // read it last have run.
    void stage(int k, const int* tok, const int* tgt) {
        const size_t BT = (size_t)B * T;
        cudaCheck(cudaEventSynchronize(staged[k]));
        int* h = h_stage + k * 2 * BT;
        memcpy(h, tok, BT * sizeof(int));
        if (tgt) memcpy(h + BT, tgt, BT * sizeof(int));
    }
    // Records on the stream that the copies reading slot k are queued (after them, or after a
    // step's graph that holds them).
    void staged_read(int k) { cudaCheck(cudaEventRecord(staged[k], stream)); }
    bool capturing() const { return stream == capture_stream; }
    // body's work, recorded as a CUDA graph on capture_stream, which the kernels and cuBLAS
    // use meanwhile. Nothing in it may wait for the device or allocate: the capture fails.
    cudaGraphExec_t capture(const std::function<void()>& body) {
        cudaStream_t keep = stream;
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t exec = nullptr;
        cudaCheck(cudaDeviceSynchronize());
        stream = capture_stream;
        cudaCheck(cudaStreamBeginCapture(capture_stream, cudaStreamCaptureModeThreadLocal));
        body();
        cudaCheck(cudaStreamEndCapture(capture_stream, &graph));
        stream = keep;
        cudaCheck(cudaGraphInstantiate(&exec, graph, 0));
        cudaCheck(cudaGraphDestroy(graph));
        return exec;
    }
    // The matmul inputs of the run's dtype, and the weights they multiply.
    template<typename In> const StepIn<In>& step_in() const {
        if constexpr (std::is_same_v<In, float>) return in32;
        else return in16;
    }
    template<typename In> const ParamView<In>& weights() const {
        if constexpr (std::is_same_v<In, float>) return p;
        else return p16;
    }

    // Column-major C (m, n) = alpha op(A) op(B) + beta C through cuBLASLt (kernels/gemm.cuh):
    // fp32 (TF32 when allowed) or bf16 inputs, fp32 accumulation, C fp32 or bf16; with
    // beta != 0, from Cin where given (out of place), else C itself.
    // Counted (dev/bench_gpu.cu --budget): A and B read once, C written (and read when beta != 0).
    template<typename In, typename Out>
    void gemm(const char* what, const char* part, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const In* A, int lda, const In* Bm,
              int ldb, Out* C, int ldc, float beta, float alpha = 1.0f, const Out* Cin = nullptr) {
        count_launch(what, ((double)m * k + (double)k * n) * sizeof(In) + (double)m * n * sizeof(Out) * (beta != 0.0f ? 2 : 1),
                     2.0 * m * n * k, stream, part);
        (*blas)(stream, ta, tb, m, n, k, alpha, A, lda, Bm, ldb, beta, Cin, C, ldc);
    }
    // Row-major out (N, O) = in (N, I) W^T [+ add], out fp32 or bf16: cuBLASLt sees the
    // column-major transposes. add: null, out itself (accumulate) or another (N, O) tensor
    // (a residual add, out of place). Rows of out (and add) lie ldo apart (0: O).
    template<typename In, typename Out>
    void matmul(const char* what, Out* out, const In* in, const In* W, int N, int I, int O, const std::common_type_t<Out>* add = nullptr,
                int ldo = 0) {
        gemm(what, nullptr, CUBLAS_OP_T, CUBLAS_OP_N, O, N, I, W, I, in, I, out, ldo ? ldo : O, add ? 1.0f : 0.0f, 1.0f, add);
    }
    // din (N, I) = scale dout W (overwritten, fp32 or bf16; added to with din_add); dW (O, I) +=
    // scale dout^T in (= in a step's first backward: fresh_grads). scale: the loss's, where dout
    // is unscaled.
    template<typename In, typename Din>
    void matmul_backward(const char* what, Din* din, float* dW, const In* dout, const In* in, const In* W, int N, int I, int O,
                         float scale = 1.0f, bool din_add = false, bool dW_add = false) {
        gemm(what, "backward dx", CUBLAS_OP_N, CUBLAS_OP_N, I, N, O, W, I, dout, O, din, I, din_add ? 1.0f : 0.0f, scale);
        gemm(what, "backward dW", CUBLAS_OP_N, CUBLAS_OP_T, I, O, N, in, I, dout, O, dW, I, dW_add || !fresh_grads ? 1.0f : 0.0f, scale);
    }

    // The training attention over B sequences of T positions of the variant c, from qkv to
    // o: fp32 (or TF32) kernels, or the bf16 ones; the log-sum-exp lse stays fp32. (The
    // KV-cache decoder's pre-fill runs it too, on its prompt.)
    template<typename In> void attention(In* o, float* lse, const In* qkv, const Config& c, int B_, int T_) {
        if constexpr (std::is_same_v<In, float>) attention_forward(o, lse, qkv, c, B_, T_, stream, nullptr, tf32);
        else attention_forward_bf16(o, lse, qkv, c, B_, T_, stream);
    }
    // Its backward: d.dqkv from d.dout.
    template<typename In> void attention_grad(const LayerActs<float>& a, const LayerIn<In>& in, const StepIn<In>& d) {
        if constexpr (std::is_same_v<In, float>) attention_backward(d.dqkv, d.dout, in.qkv, in.o, a.lse, cfg, B, T, stream, tf32);
        else attention_backward_bf16(d.dqkv, d.dout, in.qkv, in.o, a.lse, attn_D, cfg, B, T, stream);
    }

    // One layer's forward over N rows, as layer_forward in model.h: x_next = layer(a.x), which
    // may be a.x itself. in: where the matmul inputs go (fp32: a's own tensors), w: the
    // weights of their type, w32: the fp32 ones (for the norms' gains). pos (N): the rows'
    // positions, for RoPE; attend() fills in.o from in.qkv (the training attention here, the
    // KV-cache attention in gpu_decode.cuh). Reordered norm in bf16 runs: in.a holds x's bf16
    // copy, and x_next16 (the next layer's in.a, or null) receives x_next's.
    template<typename In, typename Attend>
    void layer_forward(const LayerActs<float>& a, const LayerIn<In>& in, const LayerView<In>& w, const LayerView<float>& w32, float* x_next,
                       int N, const int* pos, Attend attend, In* x_next16 = nullptr) {
        const Config& c = cfg;
        const int D = c.D;
        const bool pre = c.norm == NORM_PRE;
        auto bf16_copy = [](In* p) {
            if constexpr (std::is_same_v<In, float>) return (__nv_bfloat16*)nullptr;
            else return p;
        };
        // Pre-norm: each residual add is a GEMM that writes the stream's next buffer from its
        // last (xm = x + o wo^T, x_next = xm + g w2^T, out of place). Reordered: the GEMM
        // writes the sublayer's output, and its norm adds the stream.
        if (pre) rmsnorm_forward(in.a, a.rstd_a, a.x, w32.g_attn, N, D, stream);
        if (c.qk_norm) {  // q | k before their norms in fp32, kept for the backward; v straight to in.qkv
            matmul("matmul qkv", a.qk, in.a, w.wqkv, N, D, c.qk_dim());
            matmul("matmul qkv", in.qkv + c.qk_dim(), in.a, w.wqkv + (size_t)c.qk_dim() * D, N, D, c.Hkv * c.hd(), nullptr, c.qkv_dim());
            qk_norm_forward(in.qkv, a.rstd_qk, a.qk, w32.g_qk, c, N, stream);
        } else {
            matmul("matmul qkv", in.qkv, in.a, w.wqkv, N, D, c.qkv_dim());  // bf16 runs: the attention's bf16 input
        }
        rope_forward(in.qkv, pos, c, N, rope_cos, rope_sin, stream);
        attend();
        matmul("matmul wo", pre ? a.xm : a.u, in.o, w.wo, N, c.H * c.hd(), D, pre ? a.x : nullptr);
        if (pre) {
            rmsnorm_forward(in.f, a.rstd_f, a.xm, w32.g_ffn, N, D, stream);
        } else {
            NormIO<float> io{a.xm, D, a.u, D, a.rstd_a};
            io.residual = a.x;
            io.out16 = bf16_copy(in.f);
            rmsnorm_rows(io, w32.g_attn, N, D, stream);
        }
        matmul("matmul w13", in.h13, in.f, w.w13, N, D, 2 * c.F);
        swiglu_forward(in.g, in.h13, N, c.F, stream);
        matmul("matmul w2", pre ? x_next : a.y, in.g, w.w2, N, c.F, D, pre ? a.xm : nullptr);
        if (!pre) {
            NormIO<float> io{x_next, D, a.y, D, a.rstd_f};
            io.residual = a.xm;
            io.out16 = bf16_copy(x_next16);
            rmsnorm_rows(io, w32.g_ffn, N, D, stream);
        }
    }

    // What layer l's backward reads and recompute left to share, made again by the forward's
    // own kernels, as layer_recompute in model.h (the same bits). Reordered bf16 runs: the
    // matmuls' bf16 copies of x and xm are rounded again from them.
    template<typename In> void layer_recompute(int l) {
        const Config& c = cfg;
        const int N = B * T * c.K, D = c.D;
        const LayerActs<float>& a = layer[l];
        const LayerIn<In>& in = step_in<In>().layer[l];
        const bool pre = c.norm == NORM_PRE, reordered16 = !pre && !std::is_same_v<In, float>;
        if (reordered16) copy_to_bf16((__nv_bfloat16*)in.a, a.x, (size_t)N * D, stream);
        if (recompute == 2) {
            layer_forward(a, in, weights<In>().layer[l], p.layer[l], l + 1 < c.L ? layer[l + 1].x : xL, N, d_row_pos,
                          [&] { attention(in.o, a.lse, in.qkv, cfg, B, T); });
            return;
        }
        if (pre) {
            rmsnorm_forward(in.a, a.rstd_a, a.x, p.layer[l].g_attn, N, D, stream);
            rmsnorm_forward(in.f, a.rstd_f, a.xm, p.layer[l].g_ffn, N, D, stream);
        } else if (reordered16) {
            copy_to_bf16((__nv_bfloat16*)in.f, a.xm, (size_t)N * D, stream);
        }
        swiglu_forward(in.g, in.h13, N, c.F, stream);
    }

    // Its backward over the B*T*K rows of the last forward, as layer_backward in model.h: dx
    // (N, D), the gradient of x_next on entry (and d.dx, its copy in the matmuls' type,
    // pre-norm), becomes that of a.x; gradients add into gw. fp32 runs: d's tensors are
    // Activations'.
    template<typename In>
    void layer_backward(const LayerActs<float>& a, const LayerIn<In>& in, const StepIn<In>& d, const LayerView<In>& w,
                        const LayerView<float>& w32, const LayerView<float>& gw) {
        const Config& c = cfg;
        const int N = B * T * c.K, D = c.D;
        const bool pre = c.norm == NORM_PRE, add = !fresh_grads;
        float* dsub32 = std::is_same_v<In, float> ? dy : nullptr;  // reordered: a norm's backward writes d.dx only (bf16: no fp32 copy)
        // MLP: x_next = xm + swiglu(f) w2^T, or xm + rmsnorm(swiglu(xm) w2^T)
        if (!pre) rmsnorm_backward(dsub32, gw.g_ffn, dx, a.y, w32.g_ffn, a.rstd_f, N, D, norm_scratch, stream, false, d.dx, add);
        matmul_backward("matmul w2", d.dg, gw.w2, d.dx, in.g, w.w2, N, c.F, D);
        swiglu_backward(d.dh13, d.dg, in.h13, N, c.F, stream);
        if (pre) {
            matmul_backward("matmul w13", dtmp, gw.w13, d.dh13, in.f, w.w13, N, D, 2 * c.F);
            rmsnorm_backward(dx, gw.g_ffn, dtmp, a.xm, w32.g_ffn, a.rstd_f, N, D, norm_scratch, stream, true, d.dx, add);
        } else {
            matmul_backward("matmul w13", dx, gw.w13, d.dh13, in.f, w.w13, N, D, 2 * c.F, 1.0f, true);
            rmsnorm_backward(dsub32, gw.g_attn, dx, a.u, w32.g_attn, a.rstd_a, N, D, norm_scratch, stream, false, d.dx, add);
        }
        // attention: xm = x + attention(rope(a wqkv^T)) wo^T, or x + rmsnorm(attention(..(x)..) wo^T)
        matmul_backward("matmul wo", d.dout, gw.wo, d.dx, in.o, w.wo, N, c.H * c.hd(), D);
        attention_grad(a, in, d);
        rope_backward(d.dqkv, d_row_pos, c, N, rope_cos, rope_sin, stream);
        if (c.qk_norm) qk_norm_backward(d.dqkv, gw.g_qk, a.qk, a.rstd_qk, w32.g_qk, c, N, norm_scratch, stream, add);
        if (pre) {
            matmul_backward("matmul qkv", dtmp, gw.wqkv, d.dqkv, in.a, w.wqkv, N, D, c.qkv_dim());
            rmsnorm_backward(dx, gw.g_attn, dtmp, a.x, w32.g_attn, a.rstd_a, N, D, norm_scratch, stream, true, d.dx, add);
        } else {
            matmul_backward("matmul qkv", dx, gw.wqkv, d.dqkv, in.a, w.wqkv, N, D, c.qkv_dim(), 1.0f, true);
        }
    }

    // tokens, targets: host (B, T). With targets, the mean last-copy loss is added to the
    // device's sum (take_loss reads it) and the logits become their gradient for backward;
    // without, the logits stay (logits_host). Nothing waits for the device.
    void forward_async(const int* tok, const int* tgt, int B_, int T_) {
        size_for(B_, T_);
        const int k = stage_next;
        stage_next ^= 1;
        stage(k, tok, tgt);
        forward_staged(k, tgt != nullptr);
        staged_read(k);
    }
    // The forward of the batch in slot k (stage), at size_for's shape, with its targets or
    // not: work on the stream only, which capture() can record.
    void forward_staged(int k, bool targets) { bf16 ? forward_as<__nv_bfloat16>(k, targets) : forward_as<float>(k, targets); }
    // The mean losses of the forwards since the last call, summed (waits for them); z, when
    // given, receives their z-loss terms' (model.h §10), read in the same copy.
    float take_loss(double* z = nullptr) {
        float h[2];
        cudaCheck(cudaMemcpy(h, d_loss, sizeof h, cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemsetAsync(d_loss, 0, sizeof h, stream));
        if (z) *z = h[1];
        return h[0];
    }
    // Returns the mean last-copy loss (0 without targets): waits for it.
    float forward(const int* tok, const int* tgt, int B_, int T_) {
        forward_async(tok, tgt, B_, T_);
        return tgt ? take_loss() : 0.0f;
    }
    template<typename In> void forward_as(int k, bool tgt) {
        const Config& c = cfg;
        const int N = B * T * c.K, BT = B * T, D = c.D;
        const StepIn<In>& in = step_in<In>();
        const ParamView<In>& w = weights<In>();
        const int* h = h_stage + (size_t)k * 2 * BT;
        cudaCheck(cudaMemcpyAsync(d_tokens, h, BT * sizeof(int), cudaMemcpyHostToDevice, stream));
        if (tgt) cudaCheck(cudaMemcpyAsync(d_targets, h + BT, BT * sizeof(int), cudaMemcpyHostToDevice, stream));
        embedding_forward(layer[0].x, d_tokens, d_row_index, p.E, N, D, stream);
        const bool reordered16 = c.norm == NORM_REORDERED && !std::is_same_v<In, float>;  // the qkv matmuls read x in bf16
        if (reordered16) copy_to_bf16((__nv_bfloat16*)in.layer[0].a, layer[0].x, (size_t)N * D, stream);
        for (int l = 0; l < c.L; l++) {
            const LayerActs<float>& a = layer[l];
            layer_forward(a, in.layer[l], w.layer[l], p.layer[l], l + 1 < c.L ? layer[l + 1].x : xL, N, d_row_pos,
                          [&] { attention(in.layer[l].o, a.lse, in.layer[l].qkv, cfg, B, T); },
                          reordered16 && l + 1 < c.L ? in.layer[l + 1].a : nullptr);
        }
        last_copy_forward(xlast, xL, c, B, T, stream);
        rmsnorm_forward(in.xn, rstd_final, xlast, p.g_final, BT, D, stream);
        const int R = (int)head_rows(BT, logits_chunk);
        logits_kept = !tgt && R == BT;
        if (!tgt && R < BT) return;  // logits no one could read whole
        for (int r0 = 0; r0 < BT; r0 += R) head_forward<In>(r0, std::min(R, BT - r0), tgt);
        if (!tgt) return;
        loss_sum(d_loss, losses, BT, stream);
        if (c.z_loss > 0) loss_sum(d_loss + 1, lse, BT, stream, c.z_loss);
    }
    // The LM head over rows r0 .. r0 + n - 1 of xn into the logits buffer's first n rows, in
    // the matmuls' type (bf16 runs: bf16, as their backward GEMMs read them; no fp32 copy),
    // where their gradient goes (fp32 runs: logits itself); with targets, those rows' losses
    // and log-sum-exps, the logits becoming their gradient.
    template<typename In> void head_forward(int r0, int n, bool tgt) {
        const StepIn<In>& in = step_in<In>();
        const size_t at = (size_t)r0 * cfg.D;
        matmul("matmul lm_head", in.dlogits, in.xn + at, weights<In>().wout, n, cfg.D, cfg.Vp);
        if (tgt) crossentropy(losses + r0, lse + r0, in.dlogits, d_targets + r0, n, cfg.V, cfg.Vp, cfg.z_loss, stream);
    }

    // Where the backward's gradients complete: bucket 0 is E, 1 + l layer l, L + 1 g_final
    // and wout (the arena's offsets, param_tensors() order: 0, ..., P).
    static std::vector<size_t> grad_buckets(const Config& c) {
        const std::vector<ParamTensor> t = param_tensors(c);
        std::vector<size_t> bounds = {0};
        for (int l = 0; l < c.L; l++) bounds.push_back(t[1 + l * tensors_per_layer(c)].offset);  // layer l's g_attn
        bounds.push_back(t[1 + c.L * tensors_per_layer(c)].offset);                            // g_final
        bounds.push_back(num_params(c));
        return bounds;
    }

    // Gradients of dloss * (mean loss) of the last forward (with targets), added into grads (or
    // written: zero_grads). written(b), when
    // given, is called as soon as the kernels that write bucket b's gradients are on the
    // stream: b = L + 1, L, ..., 0 (grad_buckets), so that their reduction can start then.
    void backward(float dloss, const std::function<void(int)>& written = nullptr) {
        bf16 ? backward_as<__nv_bfloat16>(dloss, written) : backward_as<float>(dloss, written);
    }
    template<typename In> void backward_as(float dloss, const std::function<void(int)>& written) {
        const Config& c = cfg;
        const int BT = B * T, D = c.D;
        const StepIn<In>& in = step_in<In>();
        const ParamView<In>& w = weights<In>();
        // The forward's softmax - onehot; in chunks (--logits-chunk), last to first: the last is
        // still there, the others made again (the same plans, so the same bits; the losses
        // rewritten as they were), wout's gradient summed over them.
        const int R = (int)head_rows(BT, logits_chunk), last = (BT - 1) / R * R;
        for (int r0 = last; r0 >= 0; r0 -= R) {
            const int n = std::min(R, BT - r0);
            const size_t at = (size_t)r0 * D;
            if (r0 != last) head_forward<In>(r0, n, true);
            matmul_backward("matmul lm_head", dxlast + at, g.wout, in.dlogits, in.xn + at, w.wout, n, D, c.Vp, dloss / BT, false, r0 != last);
        }
        rmsnorm_backward(dxlast, g.g_final, dxlast, xlast, p.g_final, rstd_final, BT, D, norm_scratch, stream, false, (float*)nullptr,
                         !fresh_grads);
        if (written) written(c.L + 1);
        last_copy_backward(dx, dxlast, c, B, T, stream);
        if constexpr (!std::is_same_v<In, float>)
            if (c.norm == NORM_PRE) copy_to_bf16(in.dx, dx, (size_t)B * T * c.K * D, stream);
        for (int l = c.L - 1; l >= 0; l--) {
            if (recompute && l < c.L - 1) layer_recompute<In>(l);  // the last layer's shared tensors still hold its forward's
            layer_backward(layer[l], in.layer[l], in, w.layer[l], p.layer[l], g.layer[l]);
            if (written) written(1 + l);
        }
        embedding_backward(g.E, dx, d_tokens, d_sort_keys, c, B, T, stream, !fresh_grads);
        if (written) written(0);
        fresh_grads = false;
    }

    // The next backward writes the gradients instead of adding to them (every GEMM's dW with
    // beta = 0, the gains' sums stored, E's gradient zeroed before its scatter): no pass over
    // all P of its own. Until then grads holds the last step's.
    void zero_grads() { fresh_grads = true; }
    // The host's flags as a step's own run leaves them, after a replay of its graph (which
    // runs no host code): the gradients written, no logits kept (its forwards had targets).
    void after_replayed_step() {
        fresh_grads = false;
        logits_kept = false;
    }
    std::vector<float> download(const float* dev, size_t n) const {
        std::vector<float> h(n);
        cudaCheck(cudaMemcpy(h.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost));
        return h;
    }
    // The last-copy logits of the last forward, (B*T, V), as the CPU model lays them out (bf16
    // runs: the head's bf16 output); a forward with targets keeps none (they became their gradient).
    std::vector<float> logits_host() const {
        if (!logits_kept)
            die("GPU logits: the last forward had targets or ran its head in chunks (--logits-chunk); forward the whole batch without "
                "targets to keep them");
        const size_t n = (size_t)B * T * cfg.Vp;
        std::vector<float> all(n), out;
        if (bf16) {
            std::vector<__nv_bfloat16> h(n);
            cudaCheck(cudaMemcpy(h.data(), in16.dlogits, n * sizeof(__nv_bfloat16), cudaMemcpyDeviceToHost));
            for (size_t i = 0; i < n; i++) all[i] = __bfloat162float(h[i]);
        } else {
            all = download(logits, n);
        }
        for (int i = 0; i < B * T; i++) out.insert(out.end(), all.begin() + (size_t)i * cfg.Vp, all.begin() + (size_t)i * cfg.Vp + cfg.V);
        return out;
    }
};
