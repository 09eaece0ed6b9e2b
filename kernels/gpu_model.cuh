// kernels/gpu_model.cuh: the PHD-Transformer on the GPU, forward and backward, fp32: the
// same steps as model_forward/model_backward in model.h, on device buffers in the same row
// order, with plain GEMMs through
// cuBLAS (TF32 off unless asked for, so that results stay close to the CPU's). With bf16
// attention (--dtype bf16) each layer's attention runs on the bf16 tensor-core kernels of
// attention_bf16.cuh: q, k, v (and in the backward o and dO) are rounded to bf16 copies
// around it, and the rest of the step stays fp32 (bf16 GEMMs and activations are to come).
// Parameters and gradients use the checkpoint order of param_tensors() (model.h).
#pragma once
#include <vector>
#include "adamw.cuh"
#include "attention.cuh"
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

struct GpuModel : Activations<float> {
    Config cfg;
    bool tf32;                                   // TF32 tensor cores: cuBLAS and attention
    bool bf16;                                   // attention on bf16 tensor cores
    size_t P = 0;
    float *params = nullptr, *grads = nullptr;   // (P) device arenas; no grads for inference
    ParamView<float> p, g;                       // named views into them
    float *rope_cos = nullptr, *rope_sin = nullptr;  // (maxT, hd/2)
    float* norm_scratch = nullptr;               // (kDgChunks, D) rmsnorm_backward's partial sums (training)
    cublasHandle_t blas;
    cudaStream_t stream = nullptr;

    int B = 0, T = 0;
    float* act = nullptr;                        // the activations' arena (Activations in model.h)
    int *d_tokens = nullptr, *d_targets = nullptr;     // (B, T) of the last forward
    int *d_row_index = nullptr, *d_row_pos = nullptr;  // (B*T*K) each row's b*T + n, and n: set once per shape
    uint64_t* d_sort_keys = nullptr;                   // (token_sort_slots(B*T)) the embedding backward's scratch
    // bf16 attention's copies, one set for every layer: (B*T*K, qkv_dim), (B*T*K, H*hd) x 2,
    // (B*T*K, qkv_dim), and D (B, H, T*K) fp32
    __nv_bfloat16 *qkv16 = nullptr, *o16 = nullptr, *do16 = nullptr, *dqkv16 = nullptr;
    float* attn_D = nullptr;

    // training false: inference only (the KV-cache decoder), the parameters without gradients.
    // bf16_: attention on bf16 tensor cores (head sizes 16, 32, 64, 128).
    GpuModel(const Config& c, const float* host_params, bool tf32_, bool training = true, bool bf16_ = false)
        : cfg(c), tf32(tf32_), bf16(bf16_), P(num_params(c)) {
        if (bf16 && (c.hd() % 16 || c.hd() > 128)) die("bf16 attention: head size %d has no instance (16, 32, 64, 128)", c.hd());
        gpu_check_fits((training ? 2 : 1) * P * sizeof(float), training ? "parameters and gradients" : "parameters");
        cudaCheck(cudaMalloc(&params, P * sizeof(float)));
        cudaCheck(cudaMemcpy(params, host_params, P * sizeof(float), cudaMemcpyHostToDevice));
        p = param_view(c, params);
        if (training) {
            cudaCheck(cudaMalloc(&grads, P * sizeof(float)));
            cudaCheck(cudaMemset(grads, 0, P * sizeof(float)));
            g = param_view(c, grads);
            cudaCheck(cudaMalloc(&norm_scratch, (size_t)kDgChunks * c.D * sizeof(float)));
        }
        std::vector<float> cs((size_t)c.maxT * c.hd() / 2), sn(cs.size());
        rope_tables(cs.data(), sn.data(), c.maxT, c.hd());
        cudaCheck(cudaMalloc(&rope_cos, cs.size() * sizeof(float)));
        cudaCheck(cudaMalloc(&rope_sin, sn.size() * sizeof(float)));
        cudaCheck(cudaMemcpy(rope_cos, cs.data(), cs.size() * sizeof(float), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(rope_sin, sn.data(), sn.size() * sizeof(float), cudaMemcpyHostToDevice));
        cublasCheck(cublasCreate(&blas));
        cublasCheck(cublasSetMathMode(blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    }
    ~GpuModel() {
        for (void* q : {(void*)params, (void*)grads, (void*)rope_cos, (void*)rope_sin, (void*)norm_scratch, (void*)act, (void*)d_tokens, (void*)d_targets,
                         (void*)d_row_index, (void*)d_row_pos, (void*)d_sort_keys, (void*)qkv16, (void*)o16, (void*)do16, (void*)dqkv16,
                         (void*)attn_D})
            cudaFree(q);
        cublasDestroy(blas);
    }
    GpuModel(const GpuModel&) = delete;
    GpuModel& operator=(const GpuModel&) = delete;

    void size_for(int B_, int T_) {
        if (B_ == B && T_ == T) return;
        B = B_; T = T_;
        for (void* q : {(void*)act, (void*)d_tokens, (void*)d_targets, (void*)d_row_index, (void*)d_row_pos, (void*)d_sort_keys, (void*)qkv16,
                        (void*)o16, (void*)do16, (void*)dqkv16, (void*)attn_D})
            cudaFree(q);
        const int N = B * T * cfg.K, TK = T * cfg.K;
        const size_t slots = token_sort_slots(B * T);
        char what[64];
        snprintf(what, sizeof what, "activations for B=%d T=%d", B, T);
        gpu_check_fits(floats(cfg, B, T) * sizeof(float) + (2 * (size_t)N + 2 * B * T) * sizeof(int) + slots * sizeof(uint64_t) +
                           attention_copy_bytes(B, T),
                       what, " (lower -b or -t)");
        cudaCheck(cudaMalloc(&act, floats(cfg, B, T) * sizeof(float)));
        cudaCheck(cudaMalloc(&d_tokens, (size_t)B * T * sizeof(int)));
        cudaCheck(cudaMalloc(&d_targets, (size_t)B * T * sizeof(int)));
        cudaCheck(cudaMalloc(&d_row_index, (size_t)N * sizeof(int)));
        cudaCheck(cudaMalloc(&d_row_pos, (size_t)N * sizeof(int)));
        cudaCheck(cudaMalloc(&d_sort_keys, slots * sizeof(uint64_t)));
        if (bf16) {
            const size_t od = (size_t)N * cfg.H * cfg.hd();
            cudaCheck(cudaMalloc(&qkv16, (size_t)N * cfg.qkv_dim() * sizeof(__nv_bfloat16)));
            cudaCheck(cudaMalloc(&o16, od * sizeof(__nv_bfloat16)));
            cudaCheck(cudaMalloc(&do16, od * sizeof(__nv_bfloat16)));
            cudaCheck(cudaMalloc(&dqkv16, (size_t)N * cfg.qkv_dim() * sizeof(__nv_bfloat16)));
            cudaCheck(cudaMalloc(&attn_D, (size_t)N * cfg.H * sizeof(float)));
        }
        point(cfg, B, T, act);
        std::vector<int> index(N), pos(N);
        for (int i = 0; i < N; i++) {
            pos[i] = row_position(cfg, T, i % TK);
            index[i] = i / TK * T + pos[i];
        }
        cudaCheck(cudaMemcpy(d_row_index, index.data(), N * sizeof(int), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d_row_pos, pos.data(), N * sizeof(int), cudaMemcpyHostToDevice));
    }

    // Row-major out (N, O) = in (N, I) W^T [+ out]: cuBLAS sees the column-major transposes.
    void matmul(float* out, const float* in, const float* W, int N, int I, int O, bool accumulate) {
        const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
        cublasCheck(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, O, N, I, &one, W, I, in, I, &beta, out, O));
    }
    // din (N, I) = dout W (overwritten); dW (O, I) += dout^T in
    void matmul_backward(float* din, float* dW, const float* dout, const float* in, const float* W, int N, int I, int O) {
        const float one = 1.0f, zero = 0.0f;
        cublasCheck(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, I, N, O, &one, W, I, dout, O, &zero, din, I));
        cublasCheck(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, I, O, N, &one, in, I, dout, O, &one, dW, I));
    }
    void copy(float* dst, const float* src, size_t n) {
        cudaCheck(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream));
    }

    // Device memory of bf16 attention's copies for a batch (B, T): 0 without bf16.
    size_t attention_copy_bytes(int B_, int T_) const {
        const size_t N = (size_t)B_ * T_ * cfg.K;
        return bf16 ? N * (2 * cfg.qkv_dim() + 2 * cfg.H * cfg.hd()) * sizeof(__nv_bfloat16) + N * cfg.H * sizeof(float) : 0;
    }

    // The training attention of one layer: fp32 (or TF32) kernels, or the bf16 ones on
    // rounded copies of q, k, v; a.o and a.lse stay fp32 for the rest of the step.
    void attention(const LayerActs<float>& a) {
        const size_t N = (size_t)B * T * cfg.K, od = N * cfg.H * cfg.hd();
        if (!bf16) {
            attention_forward(a.o, a.lse, a.qkv, cfg, B, T, stream, nullptr, tf32);
            return;
        }
        copy_to_bf16(qkv16, a.qkv, N * cfg.qkv_dim(), stream);
        attention_forward_bf16(o16, a.lse, qkv16, cfg, B, T, stream);
        copy_from_bf16(a.o, o16, od, stream);
    }
    // Its backward: dqkv from dout (N, H*hd). o rounds back to the bf16 the forward wrote.
    void attention_grad(const LayerActs<float>& a, const float* dout) {
        const size_t N = (size_t)B * T * cfg.K, od = N * cfg.H * cfg.hd();
        if (!bf16) {
            attention_backward(dqkv, dout, a.qkv, a.o, a.lse, cfg, B, T, stream, tf32);
            return;
        }
        copy_to_bf16(qkv16, a.qkv, N * cfg.qkv_dim(), stream);
        copy_to_bf16(o16, a.o, od, stream);
        copy_to_bf16(do16, dout, od, stream);
        attention_backward_bf16(dqkv16, do16, qkv16, o16, a.lse, attn_D, cfg, B, T, stream);
        copy_from_bf16(dqkv, dqkv16, N * cfg.qkv_dim(), stream);
    }

    // One layer's forward over N rows, as layer_forward in model.h: x_next = layer(a.x), which
    // may be a.x itself. pos (N): the rows' positions, for RoPE; attend() fills a.o from a.qkv
    // (the training attention here, the KV-cache attention in gpu_decode.cuh).
    template<typename Attend>
    void layer_forward(const LayerActs<float>& a, const LayerView<float>& w, float* x_next, int N, const int* pos, Attend attend) {
        const Config& c = cfg;
        const int D = c.D;
        rmsnorm_forward(a.a, a.rstd_a, a.x, w.g_attn, N, D, stream);
        matmul(a.qkv, a.a, w.wqkv, N, D, c.qkv_dim(), false);
        rope_forward(a.qkv, pos, c, N, rope_cos, rope_sin, stream);
        attend();
        copy(a.xm, a.x, (size_t)N * D);
        matmul(a.xm, a.o, w.wo, N, c.H * c.hd(), D, true);
        rmsnorm_forward(a.f, a.rstd_f, a.xm, w.g_ffn, N, D, stream);
        matmul(a.h13, a.f, w.w13, N, D, 2 * c.F, false);
        swiglu_forward(a.g, a.h13, N, c.F, stream);
        copy(x_next, a.xm, (size_t)N * D);
        matmul(x_next, a.g, w.w2, N, c.F, D, true);
    }

    // Its backward over the B*T*K rows of the last forward, as layer_backward in model.h: dx
    // (N, D), the gradient of x_next on entry, becomes that of a.x; gradients add into gw.
    void layer_backward(const LayerActs<float>& a, const LayerView<float>& w, const LayerView<float>& gw) {
        const Config& c = cfg;
        const int N = B * T * c.K, D = c.D;
        // x_next = xm + swiglu(f) w2^T
        matmul_backward(dtmp, gw.w2, dx, a.g, w.w2, N, c.F, D);
        swiglu_backward(dh13, dtmp, a.h13, N, c.F, stream);
        matmul_backward(dtmp, gw.w13, dh13, a.f, w.w13, N, D, 2 * c.F);
        rmsnorm_backward(dtmp, gw.g_ffn, dtmp, a.xm, w.g_ffn, a.rstd_f, N, D, norm_scratch, stream);
        add_inplace(dx, dtmp, (size_t)N * D, stream);
        // xm = x + attention(rope(a wqkv^T)) wo^T
        matmul_backward(dtmp, gw.wo, dx, a.o, w.wo, N, c.H * c.hd(), D);
        attention_grad(a, dtmp);
        rope_backward(dqkv, d_row_pos, c, N, rope_cos, rope_sin, stream);
        matmul_backward(dtmp, gw.wqkv, dqkv, a.a, w.wqkv, N, D, c.qkv_dim());
        rmsnorm_backward(dtmp, gw.g_attn, dtmp, a.x, w.g_attn, a.rstd_a, N, D, norm_scratch, stream);
        add_inplace(dx, dtmp, (size_t)N * D, stream);
    }

    // tokens, targets: host (B, T). Returns the mean last-copy loss (0 without targets).
    float forward(const int* tok, const int* tgt, int B_, int T_) {
        const Config& c = cfg;
        size_for(B_, T_);
        const int N = B * T * c.K, BT = B * T, D = c.D;
        cudaCheck(cudaMemcpyAsync(d_tokens, tok, BT * sizeof(int), cudaMemcpyHostToDevice, stream));
        embedding_forward(layer[0].x, d_tokens, d_row_index, p.E, N, D, stream);
        for (int l = 0; l < c.L; l++) {
            const LayerActs<float>& a = layer[l];
            layer_forward(a, p.layer[l], l + 1 < c.L ? layer[l + 1].x : xL, N, d_row_pos,
                          [&] { attention(a); });
        }
        last_copy_forward(xlast, xL, c, B, T, stream);
        rmsnorm_forward(xn, rstd_final, xlast, p.g_final, BT, D, stream);
        matmul(logits, xn, p.wout, BT, D, c.Vp, false);
        if (!tgt) return 0;
        cudaCheck(cudaMemcpyAsync(d_targets, tgt, BT * sizeof(int), cudaMemcpyHostToDevice, stream));
        crossentropy_forward(losses, lse, logits, d_targets, BT, c.V, c.Vp, stream);
        std::vector<float> l(BT);
        cudaCheck(cudaMemcpy(l.data(), losses, BT * sizeof(float), cudaMemcpyDeviceToHost));
        float sum = 0;  // summed as model_forward sums
        for (float x : l) sum += x;
        return sum / BT;
    }

    // Gradients of dloss * (mean loss) of the last forward, added into grads.
    void backward(float dloss) {
        const Config& c = cfg;
        const int BT = B * T, D = c.D;
        crossentropy_backward(logits, lse, d_targets, dloss / BT, BT, c.V, c.Vp, stream);
        matmul_backward(dxlast, g.wout, logits, xn, p.wout, BT, D, c.Vp);
        rmsnorm_backward(dxlast, g.g_final, dxlast, xlast, p.g_final, rstd_final, BT, D, norm_scratch, stream);
        last_copy_backward(dx, dxlast, c, B, T, stream);
        for (int l = c.L - 1; l >= 0; l--) layer_backward(layer[l], p.layer[l], g.layer[l]);
        embedding_backward(g.E, dx, d_tokens, d_sort_keys, c, B, T, stream);
    }

    void zero_grads() { cudaCheck(cudaMemsetAsync(grads, 0, P * sizeof(float), stream)); }
    std::vector<float> download(const float* dev, size_t n) const {
        std::vector<float> h(n);
        cudaCheck(cudaMemcpy(h.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost));
        return h;
    }
    // The last-copy logits of the last forward, (B*T, V), as the CPU model lays them out.
    std::vector<float> logits_host() const {
        std::vector<float> all = download(logits, (size_t)B * T * cfg.Vp), out;
        for (int i = 0; i < B * T; i++) out.insert(out.end(), all.begin() + (size_t)i * cfg.Vp, all.begin() + (size_t)i * cfg.Vp + cfg.V);
        return out;
    }
};
