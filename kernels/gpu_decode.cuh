// kernels/gpu_decode.cuh: KV-cache inference on the GPU, the same steps as Decoder in
// kernels/cpu_decode.h (read that first), and the same blocks (DecodeBlocks in kernels/decode_blocks.h: the
// pre-fill's rows, then the K copies of each sample's new token, in the row order that
// kernels/kv_cache.cuh needs), for S samples at once. The weights, GEMMs and the RoPE tables
// are a GpuModel's, and so is the dtype: a bf16 model (--dtype bf16) decodes as its training
// forward runs, bf16 weights and matmul inputs (GpuModel::layer_forward<__nv_bfloat16>, on
// the decoder's LayerIn<bf16> buffers), and keeps K and V in bf16 in the cache; the residual
// stream, norms, softmax and the logits stay fp32. Only each sample's last copy of its newest
// position goes through the LM head.
//
// Pre-fill: one block of one sample, whose keys and values every sample's cache shares (the
// prompt part of kv_cache.cuh). Its attention runs in the training kernels
// (GpuModel::attention: attention.cuh's, or attention_bf16.cuh's in bf16): where the
// pre-fill computes every copy (vanilla, naive-K, phd-swa, or a prompt inside the first
// chunk) its rows are exactly a training sequence of P positions;
// otherwise (phd, phd-cswa) the originals are a vanilla sequence of P positions, and the few
// hidden rows (the last position's, or the last chunk's) then attend by the split-K decode
// kernel to the block's originals and to each other (the training kernels lay the hidden
// rows of every position out from position 0, so they cannot take a tail of them alone).
// One kv_cache_append per layer then writes what the cache keeps.
//
// A decode step: the block's shape (S*K rows) is the same at every token and everything that
// changes (the position, the rows' tokens (n, c), the cache's counts, the window's ring
// index h % W) lives in device memory (DecodeState), advanced by the step's first kernel. So
// the step's work (that kernel, the embedding of the fed tokens, L layers, the LM head and
// the sampling kernel of kernels/sampling.cuh) is captured once as a CUDA graph and replayed
// for every token: one launch per token. Each block ends by sampling each sample's next token
// into feed (S), which the next step embeds: while generating nothing goes to the device, and
// sample() copies S ints back, once per token.
#pragma once
#include <vector>
#include "decode_blocks.h"
#include "gpu_model.cuh"
#include "kv_cache.cuh"
#include "sampling.cuh"

// grid 1, block 128: a decode step's block from the positions so far: K rows (t, 0..K-1) a
// sample, pos (S*K) their positions, nc (K) their tokens, then t moves past them. prompt: the
// pre-fill's positions; per_step: the entries each step adds to a sample's own part.
static __global__ void decode_step_begin_kernel(DecodeState* st, int* pos, int2* nc, Config c, int S, int prompt, int per_step) {
    const int t = st->t;
    for (int r = threadIdx.x; r < S * c.K; r += blockDim.x) pos[r] = t;
    for (int k = threadIdx.x; k < c.K; k += blockDim.x) nc[k] = make_int2(t, k);
    __syncthreads();  // every thread has read st->t
    if (threadIdx.x > 0) return;
    st->b = DecodeBlock{c.K, 1, t, t * (c.K - 1)};
    st->own = (t - prompt) * per_step;
    st->t = t + 1;
}
// grid S (launch_rows): xlast (S, D) = each sample's last block row (sample s % B's).
template<int V> static __global__ void last_rows_kernel(float* xlast, const float* x, const DecodeState* st, int B, int D) {
    const int R = st->b.R, s = blockIdx.x;
    copy_row<V>(xlast + (size_t)s * D, x + ((size_t)(s % B) * R + R - 1) * D, D);
}

// What a decoder holds in its dtype In (float, or bf16 in bf16 runs; the other dtype's set
// stays empty): the cache, and the block's matmul inputs.
template<typename In> struct DecodeTyped {
    std::vector<KVLayer<In>> cache;  // (L)
    LayerIn<In> in{};                // (rows, .) each, as LayerIn's; in.qkv: the qkv matmul's output (RoPE in place)
    In* flast = nullptr;             // (S, D) rmsnorm of each sample's last row: the LM head's input
};

struct GpuDecoder : DecodeBlocks<GpuDecoder> {
    GpuModel& G;
    int S;                            // samples decoded together
    Sampling sampling;
    bool graphs;                      // steps replay a captured graph (false: launched kernel by kernel)
    bool bf16;                        // G's dtype: bf16 weights, matmul inputs and cache
    DecodeTyped<float> f32;           // fp32 runs' cache and inputs
    DecodeTyped<__nv_bfloat16> b16;   // bf16 runs'
    int win_slots = 0;                // W: each layer's window slots a sample (0: no window)
    int prompt_kept = 0;              // each layer's prompt entries, once the pre-fill is in
    int t = 0;                        // positions in the context so far
    int prompt = 0;                   // positions the pre-fill put in (shared by the samples)
    long hidden_computed = 0;         // hidden-token rows computed so far (pre-fill + decode), one sample's
    size_t window_entries = 0;        // live hidden tokens in the window (kernels/cpu_decode.h's hidden store)
    int step_splits = 1;              // split-K parts of a step's attention, for the longest context (a graph's grid is fixed)
    int per_step = 1;                 // entries a step adds to each sample's own part

    DecodeState* state = nullptr;     // (1) the block being run (device)
    int* feed = nullptr;              // (S) each sample's next token: sampled on the device, or put there by step()
    Rng* rng = nullptr;               // (S) each sample's generator (Sampling: seed + s)
    float* d_logits = nullptr;        // (S, Vp)
    float *xlast = nullptr, *rlast = nullptr;  // (S, D), (S): the LM head's rows and their rstd
    float* part = nullptr;            // (kDecodeMaxParts, hd + 2) split-K parts
    int* sample_of_row = nullptr;     // (S*K) a step's embedding index: row -> its sample's token in feed
    int* prompt_tokens = nullptr;     // (P) the pre-fill's embedding reads them by position
    std::vector<int> fed;             // (S) what feed holds, as the host last saw it (empty: unknown)

    // The block's fp32 activations, (rows, .) each, for up to `rows` rows (grown on demand,
    // before any step is captured); the matmul inputs are the dtype's, in f32.in or b16.in.
    int rows = 0;
    float *x = nullptr, *xm = nullptr, *rstd = nullptr;  // (rows, D), (rows, D), (rows)
    float* lse = nullptr;                                // (H, rows) the training attention's
    float *qk = nullptr, *rstd_qk = nullptr, *uy = nullptr;  // model.h §10, where used: (rows, qk_dim), (2, rows), (rows, D)
    int* pos = nullptr;                                                           // (rows) each row's position
    int2* nc = nullptr;                                                           // (rows) (n, c) of one sample's rows

    cudaGraphExec_t step_graph = nullptr;

    // graphs_ false: each step's kernels launched one by one (the tests compare the two).
    explicit GpuDecoder(GpuModel& model, int samples = 1, Sampling s = {}, bool graphs_ = true)
        : G(model), S(samples), sampling(s), graphs(graphs_), bf16(model.bf16) {
        const Config& c = G.cfg;
        // The window: as many slots as hidden tokens are ever live at once; where none ever
        // dies (naive-K), the live ones are kept instead and there is no window.
        int live_max = 0;
        bool dies = false;
        for (int n = 1; n <= c.maxT; n++) {
            live_max = std::max(live_max, n * (c.K - 1) - hidden_live_from(c, n));
            dies |= hidden_live_from(c, n) > 0;
        }
        win_slots = dies ? live_max : 0;
        per_step = dies ? 1 : c.K;
        step_splits = decode_splits(c.maxT * per_step + win_slots + c.K, S * c.K, c);
        bf16 ? make_windows<__nv_bfloat16>() : make_windows<float>();
        std::vector<Rng> rngs;
        std::vector<int> row_sample;
        for (int i = 0; i < S; i++) rngs.push_back(Rng{s.seed + i});
        for (int r = 0; r < S * c.K; r++) row_sample.push_back(r / c.K);
        cudaCheck(cudaMalloc(&state, sizeof(DecodeState)));
        cudaCheck(cudaMalloc(&feed, S * sizeof(int)));
        cudaCheck(cudaMalloc(&rng, S * sizeof(Rng)));
        cudaCheck(cudaMemcpy(rng, rngs.data(), S * sizeof(Rng), cudaMemcpyHostToDevice));
        cudaCheck(cudaMalloc(&d_logits, (size_t)S * c.Vp * sizeof(float)));
        cudaCheck(cudaMalloc(&xlast, (size_t)S * c.D * sizeof(float)));
        cudaCheck(cudaMalloc(&rlast, S * sizeof(float)));
        bf16 ? alloc(&b16.flast, (size_t)S * c.D) : alloc(&f32.flast, (size_t)S * c.D);
        cudaCheck(cudaMalloc(&part, (size_t)kDecodeMaxParts * (c.hd() + 2) * sizeof(float)));
        sample_of_row = to_device(row_sample);
    }
    ~GpuDecoder() {
        free_block();
        free_typed(f32);
        free_typed(b16);
        for (void* p : {(void*)state, (void*)feed, (void*)rng, (void*)d_logits, (void*)xlast, (void*)rlast, (void*)part, (void*)sample_of_row,
                        (void*)prompt_tokens})
            cudaFree(p);
        if (step_graph) cudaGraphExecDestroy(step_graph);
    }
    GpuDecoder(const GpuDecoder&) = delete;
    GpuDecoder& operator=(const GpuDecoder&) = delete;

    // The run's dtype's set.
    template<typename In> DecodeTyped<In>& typed() {
        if constexpr (std::is_same_v<In, float>) return f32;
        else return b16;
    }
    template<typename T> static void alloc(T** p, size_t n) { cudaCheck(cudaMalloc(p, n * sizeof(T))); }
    template<typename In> void free_inputs(DecodeTyped<In>& d) {
        for (void* p : {(void*)d.in.a, (void*)d.in.qkv, (void*)d.in.o, (void*)d.in.f, (void*)d.in.h13, (void*)d.in.g}) cudaFree(p);
        d.in = {};
    }
    template<typename In> void free_typed(DecodeTyped<In>& d) {
        free_inputs(d);
        cudaFree(d.flast);
        for (KVLayer<In>& L : d.cache)
            for (void* p : {(void*)L.pre_k, (void*)L.pre_v, (void*)L.pre_nc, (void*)L.own_k, (void*)L.own_v, (void*)L.own_nc, (void*)L.win_k,
                            (void*)L.win_v, (void*)L.win_nc})
                cudaFree(p);
    }
    // Each layer's window (win_slots of every sample), its slots empty.
    template<typename In> void make_windows() {
        const Config& c = G.cfg;
        const int W = win_slots;
        const size_t kvdim = (size_t)c.Hkv * c.hd();
        gpu_check_fits(c.L * W * (S * 2 * kvdim * sizeof(In) + sizeof(int2)), "KV-cache windows");
        std::vector<KVLayer<In>>& cache = typed<In>().cache;
        cache.resize(c.L);
        for (KVLayer<In>& L : cache) {
            L.win_slots = W;
            if (W == 0) continue;
            alloc(&L.win_k, S * W * kvdim);
            alloc(&L.win_v, S * W * kvdim);
            alloc(&L.win_nc, W);
            std::vector<int2> empty(W, make_int2(-1, 0));
            cudaCheck(cudaMemcpy(L.win_nc, empty.data(), W * sizeof(int2), cudaMemcpyHostToDevice));
        }
    }

    void free_block() {
        free_inputs(f32);
        free_inputs(b16);
        for (void* p : {(void*)x, (void*)xm, (void*)rstd, (void*)lse, (void*)qk, (void*)rstd_qk, (void*)uy, (void*)pos, (void*)nc})
            cudaFree(p);
        qk = rstd_qk = uy = nullptr;
    }
    void reserve(int R) {
        if (R <= rows) return;
        if (step_graph) die("GpuDecoder: a block of %d rows after the step graph was captured", R);
        const Config& c = G.cfg;
        free_block();
        rows = R;
        const bool reordered = c.norm == NORM_REORDERED;
        const size_t floats = (size_t)R * (2 * c.D + 1 + c.H + (c.qk_norm ? c.qk_dim() + 2 : 0) + (reordered ? c.D : 0));
        const size_t inputs = (size_t)R * (2 * c.D + c.qkv_dim() + c.H * c.hd() + 3 * c.F);  // a, qkv, o, f, h13, g
        gpu_check_fits(floats * sizeof(float) + inputs * (bf16 ? sizeof(__nv_bfloat16) : sizeof(float)) +
                           (size_t)R * (sizeof(int) + sizeof(int2)), "decoder activations");
        for (auto [buf, width] : {std::pair<float**, int>{&x, c.D}, {&xm, c.D}, {&rstd, 1}, {&lse, c.H}})
            alloc(buf, (size_t)R * width);
        if (c.qk_norm) {
            alloc(&qk, (size_t)R * c.qk_dim());
            alloc(&rstd_qk, (size_t)R * 2);
        }
        if (reordered) alloc(&uy, (size_t)R * c.D);
        bf16 ? alloc_inputs(b16.in, R) : alloc_inputs(f32.in, R);
        alloc(&pos, R);
        alloc(&nc, R);
    }
    template<typename In> void alloc_inputs(LayerIn<In>& in, int R) {
        const Config& c = G.cfg;
        alloc(&in.a, (size_t)R * c.D);
        alloc(&in.qkv, (size_t)R * c.qkv_dim());
        alloc(&in.o, (size_t)R * c.H * c.hd());
        alloc(&in.f, (size_t)R * c.D);
        alloc(&in.h13, (size_t)R * 2 * c.F);
        alloc(&in.g, (size_t)R * c.F);
    }

    // Cache entries per layer of one sample (the same in every layer and sample), as
    // kernels/cpu_decode.h counts them: what an evicting cache holds. The device keeps W window slots
    // whatever the count, and the prompt's entries once for all the samples.
    size_t cache_entries() const { return prompt_kept + (size_t)(t - prompt) * per_step + window_entries; }
    size_t entry_bytes() const { return 2 * G.cfg.Hkv * G.cfg.hd() * (bf16 ? sizeof(__nv_bfloat16) : sizeof(float)); }  // its k and v
    size_t cache_bytes() const { return cache_entries() * entry_bytes() * G.cfg.L; }  // one sample's
    const char* precision() const { return bf16 ? "bf16 weights, matmul inputs and KV cache; fp32 sums and logits" : "fp32"; }

    const Config& cfg() const { return G.cfg; }
    std::vector<float> logits(int s) const { return G.download(d_logits + (size_t)s * G.cfg.Vp, G.cfg.Vp); }
    // Each sample's next token, drawn on the device at the end of the last block: S ints back.
    std::vector<int> sample() {
        fed.resize(S);
        cudaCheck(cudaMemcpy(fed.data(), feed, S * sizeof(int), cudaMemcpyDeviceToHost));
        return fed;
    }

    // A block of rows (n, c) in the row order (DecodeBlocks), as kernels/cpu_decode.h's run_block:
    // toks (B, R), the pre-fill's (B = 1) first, then steps' (B = S).
    void run_block(const std::vector<int>& ns, const std::vector<int>& cs, const std::vector<int>& toks) {
        const Config& c = G.cfg;
        if (ns.back() >= c.maxT) die("context of %d tokens exceeds the model's max sequence length %d", ns.back() + 1, c.maxT);
        const int R = (int)ns.size();
        hidden_computed += R - std::count(cs.begin(), cs.end(), 0);
        t = ns.back() + 1;
        // The live hidden tokens: the pre-fill computes every one a later query sees.
        if (win_slots > 0) window_entries = (size_t)t * (c.K - 1) - hidden_live_from(c, t);
        if (!prompt) return bf16 ? prefill_block<__nv_bfloat16>(ns, cs, toks) : prefill_block<float>(ns, cs, toks);  // the first block
        step_tokens(toks);
    }

private:
    template<typename In> void prefill_block(const std::vector<int>& ns, const std::vector<int>& cs, const std::vector<int>& toks) {
        const Config& c = G.cfg;
        const int R = (int)ns.size(), P = t, kvdim = c.Hkv * c.hd();
        DecodeState st{{R, P, 0, 0}, 0, P};
        if (R > P) st.b.h0 = hidden_index(c, ns[P], cs[P]);
        std::vector<int2> ncs(R);
        for (int r = 0; r < R; r++) ncs[r] = make_int2(ns[r], cs[r]);
        reserve(std::max(R, S * c.K));
        // The cache: the prompt's kept rows once, and each sample's room for the rest.
        const int pre = block_kept(st.b, win_slots, c), own_cap = (c.maxT - P) * per_step;
        gpu_check_fits(c.L * ((size_t)pre + (size_t)S * own_cap) * (2 * kvdim * sizeof(In) + sizeof(int2)), "KV-cache buffers");
        DecodeTyped<In>& d = typed<In>();
        for (KVLayer<In>& L : d.cache) {
            L.own_cap = own_cap;
            alloc(&L.pre_k, (size_t)pre * kvdim);
            alloc(&L.pre_v, (size_t)pre * kvdim);
            alloc(&L.pre_nc, pre);
            alloc(&L.own_k, (size_t)S * own_cap * kvdim);
            alloc(&L.own_v, (size_t)S * own_cap * kvdim);
            alloc(&L.own_nc, own_cap);
        }
        prompt_tokens = to_device(std::vector<int>(toks.begin(), toks.begin() + P));
        cudaCheck(cudaMemcpy(state, &st, sizeof st, cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(pos, ns.data(), R * sizeof(int), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(nc, ncs.data(), R * sizeof(int2), cudaMemcpyHostToDevice));
        embedding_forward(x, prompt_tokens, pos, G.p.E, R, c.D, G.stream);
        // Every copy of the P positions: a training sequence; else its originals are one (a
        // vanilla model's), and the hidden rows attend through the decode kernel.
        const bool whole = st.b.h0 == 0 && R == P * c.K;
        Config originals = c;
        originals.variant = VANILLA; originals.K = 1; originals.W = 0; originals.C = 0;
        const int splits = decode_splits(R, std::max(1, R - P), c);  // a hidden row's candidates: at most the block
        const LayerIn<In>& in = d.in;
        for (int l = 0; l < c.L; l++)
            layer<In>(l, R, [&] {
                G.attention(in.o, lse, in.qkv, whole ? c : originals, 1, P);
                if (!whole) attention_decode(in.o, part, in.qkv, nc, d.cache[l], state, c, 1, R, P, splits, G.stream);
                kv_cache_append(d.cache[l], in.qkv, nc, state, c, 1, R, S, true, G.stream);
            });
        for (KVLayer<In>& L : d.cache) L.pre = pre;
        prompt_kept = pre;
        prompt = P;
        head<In>(1);
    }

    // Layer l over the block's R rows (one block, every layer, in place), attend() filling
    // the attention's output from its qkv.
    template<typename In, typename Attend> void layer(int l, int R, Attend attend) {
        LayerIn<In> in = typed<In>().in;
        const LayerActs<float> acts{x, nullptr, rstd, nullptr, lse, nullptr, xm, nullptr, rstd, nullptr, nullptr,
                                    qk, rstd_qk, uy, uy};  // layer_forward's fp32 tensors
        In* x16 = nullptr;  // reordered norm: the qkv matmul reads x (bf16 runs: its bf16 copy, which each layer rewrites in place)
        if (G.cfg.norm == NORM_REORDERED) {
            if constexpr (std::is_same_v<In, float>) {
                in.a = x;
                in.f = xm;
            } else {
                if (l == 0) copy_to_bf16(in.a, x, (size_t)R * G.cfg.D, G.stream);
                x16 = in.a;
            }
        }
        G.layer_forward(acts, in, G.weights<In>().layer[l], G.p.layer[l], x, R, pos, attend, x16);
    }

    // The LM head on each sample's last row (of sample s % B's rows), then each sample's draw.
    template<typename In> void head(int B) {
        const Config& c = G.cfg;
        In* flast = typed<In>().flast;
        launch_rows(last_rows_kernel<4>, last_rows_kernel<1>, vectorizable<float>(c.D, {xlast, x}), S, c.D, G.stream, xlast, (const float*)x,
                    (const DecodeState*)state, B, c.D);
        rmsnorm_forward(flast, rlast, xlast, G.p.g_final, S, c.D, G.stream);
        G.matmul("matmul lm_head", d_logits, flast, G.weights<In>().wout, S, c.D, c.Vp);
        sample_tokens(feed, rng, d_logits, S, c.V, c.Vp, sampling.temperature, sampling.top_k, G.stream);
        fed.clear();  // feed holds new draws: sample() reads them
    }

    // A decode step's work, all of it on G.stream and read from device memory.
    void enqueue_step() { bf16 ? enqueue_step_as<__nv_bfloat16>() : enqueue_step_as<float>(); }
    template<typename In> void enqueue_step_as() {
        const Config& c = G.cfg;
        const int N = S * c.K;
        launch(decode_step_begin_kernel, dim3(1), dim3(128), 0, G.stream, state, pos, nc, c, S, prompt, per_step);
        cudaCheck(cudaGetLastError());
        embedding_forward(x, feed, sample_of_row, G.p.E, N, c.D, G.stream);
        DecodeTyped<In>& d = typed<In>();
        for (int l = 0; l < c.L; l++)
            layer<In>(l, N, [&] {
                attention_decode(d.in.o, part, d.in.qkv, nc, d.cache[l], state, c, S, c.K, 0, step_splits, G.stream);
                kv_cache_append(d.cache[l], d.in.qkv, nc, state, c, S, c.K, S, false, G.stream);
            });
        head<In>(S);
    }

    // The step of tokens (S*K, each sample's K copies): feed gets them unless it holds them
    // already (they are the last draws); then the step, by graph or kernel by kernel.
    void step_tokens(const std::vector<int>& toks) {
        const Config& c = G.cfg;
        std::vector<int> next(S);
        for (int s = 0; s < S; s++) next[s] = toks[(size_t)s * c.K];
        if (next != fed) cudaCheck(cudaMemcpy(feed, next.data(), S * sizeof(int), cudaMemcpyHostToDevice));
        reserve(S * c.K);
        if (!graphs) return enqueue_step();
        if (!step_graph) step_graph = G.capture([this] { enqueue_step(); });
        cudaCheck(cudaGraphLaunch(step_graph, G.stream));
    }
};
