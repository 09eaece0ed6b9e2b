// kernels/gpu_decode.cuh: KV-cache inference on the GPU, the same steps as Decoder in
// cpu/decode.h (read that first), and the same blocks (DecodeBlocks in model.h: the
// pre-fill's rows, then the K copies of each new token, in the row order that
// kernels/kv_cache.cuh needs). The weights, cuBLAS and the RoPE tables are a GpuModel's;
// only the block's last row, the last copy of the newest position, goes through the LM head.
#pragma once
#include <vector>
#include "../model.h"
#include "gpu_model.cuh"
#include "kv_cache.cuh"

struct GpuDecoder : DecodeBlocks<GpuDecoder> {
    GpuModel& G;
    std::vector<KVLayer> cache;       // (L)
    int t = 0;                        // positions in the context so far
    long hidden_computed = 0;         // hidden-token rows computed so far (pre-fill + decode)
    size_t window_entries = 0;        // live hidden tokens in the window (cpu/decode.h's hidden store)
    std::vector<float> logits;        // (Vp) last copy of the newest position

    // The block's activations, (rows, .) each, for up to `rows` rows (grown on demand).
    int rows = 0;
    float *x = nullptr, *a = nullptr, *xm = nullptr, *f = nullptr, *rstd = nullptr;  // (rows, D), rstd (rows)
    float *qkv = nullptr, *o = nullptr, *h13 = nullptr, *g = nullptr;              // (rows, qkv_dim), (rows, H*hd), (rows, 2F), (rows, F)
    float* d_logits = nullptr;                                                    // (Vp)
    float* d_part = nullptr;                                                      // (kDecodeMaxParts, hd + 2) split-K parts
    int* d_pos = nullptr;                                                         // (rows) each row's position
    int* d_context = nullptr;                                                     // (maxT) the tokens so far
    int2* d_nc = nullptr;                                                         // (rows) (n, c)

    explicit GpuDecoder(GpuModel& model) : G(model), cache(model.cfg.L), logits(model.cfg.Vp) {
        const Config& c = G.cfg;
        // The window: as many slots as hidden tokens are ever live at once; where none ever
        // dies (naive-K), the live ones go to kept instead and there is no window.
        int live_max = 0;
        bool dies = false;
        for (int n = 1; n <= c.maxT; n++) {
            live_max = std::max(live_max, n * (c.K - 1) - hidden_live_from(c, n));
            dies |= hidden_live_from(c, n) > 0;
        }
        const int W = dies ? live_max : 0;
        const size_t kvdim = (size_t)c.Hkv * c.hd(), cap = (size_t)c.maxT + (dies ? 0 : live_max);
        gpu_check_fits(c.L * ((cap + W) * (2 * kvdim * sizeof(float) + sizeof(int2))), "KV-cache buffers");
        for (KVLayer& L : cache) {
            L.win_slots = W;
            cudaCheck(cudaMalloc(&L.kept_k, cap * kvdim * sizeof(float)));
            cudaCheck(cudaMalloc(&L.kept_v, cap * kvdim * sizeof(float)));
            cudaCheck(cudaMalloc(&L.kept_nc, cap * sizeof(int2)));
            if (W == 0) continue;
            cudaCheck(cudaMalloc(&L.win_k, W * kvdim * sizeof(float)));
            cudaCheck(cudaMalloc(&L.win_v, W * kvdim * sizeof(float)));
            cudaCheck(cudaMalloc(&L.win_nc, W * sizeof(int2)));
            std::vector<int2> empty(W, make_int2(-1, 0));
            cudaCheck(cudaMemcpy(L.win_nc, empty.data(), W * sizeof(int2), cudaMemcpyHostToDevice));
        }
        cudaCheck(cudaMalloc(&d_logits, c.Vp * sizeof(float)));
        cudaCheck(cudaMalloc(&d_context, c.maxT * sizeof(int)));
        cudaCheck(cudaMalloc(&d_part, (size_t)kDecodeMaxParts * (c.hd() + 2) * sizeof(float)));
    }
    ~GpuDecoder() {
        free_block();
        for (KVLayer& L : cache)
            for (void* p : {(void*)L.kept_k, (void*)L.kept_v, (void*)L.kept_nc, (void*)L.win_k, (void*)L.win_v, (void*)L.win_nc}) cudaFree(p);
        cudaFree(d_logits);
        cudaFree(d_part);
        cudaFree(d_context);
    }
    GpuDecoder(const GpuDecoder&) = delete;
    GpuDecoder& operator=(const GpuDecoder&) = delete;

    void free_block() {
        for (void* p : {(void*)x, (void*)a, (void*)xm, (void*)f, (void*)rstd, (void*)qkv, (void*)o, (void*)h13, (void*)g, (void*)d_pos,
                        (void*)d_nc})
            cudaFree(p);
    }
    void reserve(int R) {
        if (R <= rows) return;
        const Config& c = G.cfg;
        free_block();
        rows = R;
        const size_t floats = (size_t)R * (4 * c.D + 1 + c.qkv_dim() + c.H * c.hd() + 3 * c.F);
        gpu_check_fits(floats * sizeof(float) + (size_t)R * (sizeof(int) + sizeof(int2)), "decoder activations");
        for (auto [buf, width] : {std::pair<float**, int>{&x, c.D}, {&a, c.D}, {&xm, c.D}, {&f, c.D}, {&rstd, 1}, {&qkv, c.qkv_dim()},
                                  {&o, c.H * c.hd()}, {&h13, 2 * c.F}, {&g, c.F}})
            cudaCheck(cudaMalloc(buf, (size_t)R * width * sizeof(float)));
        cudaCheck(cudaMalloc(&d_pos, R * sizeof(int)));
        cudaCheck(cudaMalloc(&d_nc, R * sizeof(int2)));
    }

    // Cache entries per layer (the same in every layer), as cpu/decode.h counts them: what an
    // evicting cache holds. The device keeps W window slots whatever the count.
    size_t cache_entries() const { return cache[0].kept + window_entries; }
    size_t cache_bytes() const { return cache_entries() * 2 * G.cfg.Hkv * G.cfg.hd() * sizeof(float) * G.cfg.L; }

    const Config& cfg() const { return G.cfg; }

    // A block of rows (n, c) in the row order (DecodeBlocks), as cpu/decode.h's run_block.
    void run_block(const std::vector<int>& ns, const std::vector<int>& cs, const std::vector<int>& toks) {
        const Config& c = G.cfg;
        if (ns.back() >= c.maxT) die("context of %d tokens exceeds the model's max sequence length %d", ns.back() + 1, c.maxT);
        const int R = (int)ns.size(), D = c.D;
        DecodeBlock b{R, 0, ns[0], 0};
        while (b.Ro < R && cs[b.Ro] == 0) b.Ro++;
        if (b.Ro < R) b.h0 = hidden_index(c, ns[b.Ro], cs[b.Ro]);
        std::vector<int2> nc(R);
        for (int r = 0; r < R; r++) nc[r] = make_int2(ns[r], cs[r]);
        reserve(R);
        cudaCheck(cudaMemcpy(d_context + b.n0, toks.data(), b.Ro * sizeof(int), cudaMemcpyHostToDevice));  // the originals' tokens
        cudaCheck(cudaMemcpy(d_pos, ns.data(), R * sizeof(int), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d_nc, nc.data(), R * sizeof(int2), cudaMemcpyHostToDevice));
        hidden_computed += R - b.Ro;
        embedding_forward(x, d_context, d_pos, G.p.E, R, D, G.stream);
        const LayerActs<float> acts{x, a, rstd, qkv, nullptr, o, xm, f, rstd, h13, g};  // one block, every layer, in place
        for (int l = 0; l < c.L; l++)
            G.layer_forward(acts, G.p.layer[l], x, R, d_pos, [&] {
                attention_decode(o, d_part, qkv, d_nc, cache[l], b, c, G.stream);
                kv_cache_append(cache[l], qkv, d_nc, b, c, G.stream);
            });
        t = ns.back() + 1;
        // The live hidden tokens: the pre-fill computes every one a later query sees.
        if (cache[0].win_slots > 0) window_entries = (size_t)t * (c.K - 1) - hidden_live_from(c, t);
        // Only the last copy of the newest position predicts: the block's last row.
        rmsnorm_forward(f, rstd, x + (size_t)(R - 1) * D, G.p.g_final, 1, D, G.stream);
        G.matmul(d_logits, f, G.p.wout, 1, D, c.Vp, false);
        cudaCheck(cudaMemcpy(logits.data(), d_logits, c.Vp * sizeof(float), cudaMemcpyDeviceToHost));
    }
};
