// cpu/decode.h: inference with the PHD KV cache (PHD.md section 6), on the CPU.
//
// Per layer the cache keeps the keys/values that later tokens can still see:
//   originals - every original: grows by one per position
//   hidden    - the hidden tokens with stream index >= hidden_live_from(t) (model.h), t the
//               positions so far: phd-swa, the last W; phd-cswa, those of the current chunk,
//               at most W; naive-K, all; vanilla and phd, none.
// Work happens in blocks of rows (n, c): a decode step is the K copies of the newest token,
// a pre-fill is the rows of the prompt that its variant needs. Each layer is model.h's
// layer_forward with the attention below: every row attends to the cache and to the
// block's own rows, and the one predicate phd_visible decides which of those it sees: the
// cache only bounds the candidates, so the decoder computes exactly the training forward's
// function as long as nothing visible was evicted (the tests check the logits).
//
// Pre-fill of a prompt of P tokens computes only the hidden tokens the variant needs, in one
// block: vanilla and phd, the originals and the copies of position P-1; phd-cswa, the
// originals and every copy of the last chunk; phd-swa and naive, every copy (all needed).
#pragma once
#include <vector>
#include "../model.h"

template<typename Real> struct KVStore {
    std::vector<Real> k, v;  // (entries, Hkv*hd): keys after RoPE, values
    std::vector<int> n, c;   // (entries): the position and copy of each entry
    size_t size() const { return n.size(); }
    void push(const Real* kr, const Real* vr, int dim, int n_, int c_) {
        k.insert(k.end(), kr, kr + dim);
        v.insert(v.end(), vr, vr + dim);
        n.push_back(n_);
        c.push_back(c_);
    }
    // Drops the first `count` entries.
    void pop_front(int count, int dim) {
        k.erase(k.begin(), k.begin() + (size_t)count * dim);
        v.erase(v.begin(), v.begin() + (size_t)count * dim);
        n.erase(n.begin(), n.begin() + count);
        c.erase(c.begin(), c.begin() + count);
    }
};

template<typename Real> struct Decoder : DecodeBlocks<Decoder<Real>> {
    const Model<Real>& M;
    std::vector<KVStore<Real>> originals, hidden;  // (L) each; hidden in stream order
    int t = 0;                       // positions in the context so far
    long hidden_computed = 0;        // hidden-token rows computed so far (pre-fill + decode)
    std::vector<Real> logits;        // (Vp) last copy of the newest position

    explicit Decoder(const Model<Real>& model) : M(model), originals(model.cfg.L), hidden(model.cfg.L), logits(model.cfg.Vp) {}

    // Cache entries per layer (the same in every layer).
    size_t cache_entries() const { return originals[0].size() + hidden[0].size(); }
    size_t cache_bytes() const { return cache_entries() * 2 * M.cfg.Hkv * M.cfg.hd() * sizeof(float) * M.cfg.L; }

    const Config& cfg() const { return M.cfg; }

    // A block of rows (n, c) in the row order (DecodeBlocks), all layers; t moves past it.
    void run_block(const std::vector<int>& ns, const std::vector<int>& cs, const std::vector<int>& toks) {
        const Config& c = M.cfg;
        const int R = (int)ns.size(), D = c.D, hd = c.hd(), kvdim = c.Hkv * hd, ld = c.qkv_dim(), group = c.H / c.Hkv;
        if (ns.back() >= c.maxT) die("context of %d tokens exceeds the model's max sequence length %d", ns.back() + 1, c.maxT);
        std::vector<Real> x((size_t)R * D), a(x.size()), xm(x.size()), f(x.size());  // (R, D)
        std::vector<Real> rstd(R), qkv((size_t)R * ld), o((size_t)R * c.H * hd);        // (R), (R, qkv_dim), (R, H*hd)
        std::vector<Real> h13((size_t)R * 2 * c.F), g((size_t)R * c.F);                // (R, 2F), (R, F)
        const LayerActs<Real> acts{x.data(), a.data(), rstd.data(), qkv.data(), nullptr, o.data(),
                                   xm.data(), f.data(), rstd.data(), h13.data(), g.data()};  // one block, every layer, in place
        for (int r = 0; r < R; r++) std::copy(M.p.E + (size_t)toks[r] * D, M.p.E + (size_t)(toks[r] + 1) * D, x.begin() + (size_t)r * D);
        for (int r = 0; r < R; r++) hidden_computed += cs[r] > 0;
        t = ns.back() + 1;
        const int live = hidden_live_from(c, t);  // hidden tokens below it are dead once the block is in
        for (int l = 0; l < c.L; l++)
            layer_forward(M, acts, M.p.layer[l], x.data(), R, ns.data(), [&] {
                // Candidates of row i: the cache, then the block's rows; the one predicate decides.
                std::vector<std::vector<const Real*>> keys(R), vals(R);  // (R) rows of all kv heads
                #pragma omp parallel for schedule(dynamic, 4)
                for (int i = 0; i < R; i++) {
                    auto consider = [&](int n2, int c2, const Real* k2, const Real* v2) {
                        if (phd_visible(c, ns[i], cs[i], n2, c2)) { keys[i].push_back(k2); vals[i].push_back(v2); }
                    };
                    for (const KVStore<Real>* s : {&originals[l], &hidden[l]})
                        for (size_t e = 0; e < s->size(); e++) consider(s->n[e], s->c[e], &s->k[e * kvdim], &s->v[e * kvdim]);
                    for (int j = 0; j < R; j++)
                        consider(ns[j], cs[j], &qkv[(size_t)j * ld + c.H * hd], &qkv[(size_t)j * ld + (c.H + c.Hkv) * hd]);
                }
                // (row, head) pairs in parallel: a decode step of vanilla has one row
                #pragma omp parallel for collapse(2) schedule(dynamic, 4)
                for (int i = 0; i < R; i++)
                    for (int h = 0; h < c.H; h++) {
                        std::vector<Real> p(keys[i].size());
                        const int off = h / group * hd;
                        attend_query(&o[(size_t)i * c.H * hd + h * hd], p.data(), &qkv[(size_t)i * ld + h * hd], (int)p.size(), hd,
                                     [&](int j) { return keys[i][j] + off; }, [&](int j) { return vals[i][j] + off; });
                    }
                // The block's keys/values enter the cache once every row of it has attended;
                // then the hidden tokens no later query can see leave it.
                for (int j = 0; j < R; j++) {
                    const Real* kr = &qkv[(size_t)j * ld + c.H * hd];
                    (cs[j] == 0 ? originals[l] : hidden[l]).push(kr, kr + kvdim, kvdim, ns[j], cs[j]);
                }
                KVStore<Real>& hid = hidden[l];  // in stream order: the dead ones come first
                int dead = 0;
                while (dead < (int)hid.size() && hidden_index(c, hid.n[dead], hid.c[dead]) < live) dead++;
                hid.pop_front(dead, kvdim);
            });
        // Only the last copy of the newest position predicts: the block's last row.
        Real r;
        rmsnorm_forward(f.data(), &r, x.data() + (size_t)(R - 1) * D, M.p.g_final, 1, D);
        matmul_forward(logits.data(), f.data(), M.p.wout, 1, D, c.Vp);
    }
};

// Next token from logits (Vp, first V real): greedy at temperature 0, else softmax over the
// top_k largest (all when top_k <= 0) at the given temperature.
template<typename Real> int sample_token(const Real* logits, int V, float temperature, int top_k, Rng& rng) {
    std::vector<int> idx(V);
    for (int j = 0; j < V; j++) idx[j] = j;
    if (temperature <= 0) return (int)(std::max_element(logits, logits + V) - logits);
    int k = top_k > 0 && top_k < V ? top_k : V;
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) { return logits[a] > logits[b]; });
    std::vector<double> p(k);
    double sum = 0;
    for (int i = 0; i < k; i++) sum += p[i] = exp(((double)logits[idx[i]] - logits[idx[0]]) / temperature);
    double u = rng.uniform() * sum;
    for (int i = 0; i < k - 1; i++)
        if ((u -= p[i]) < 0) return idx[i];
    return idx[k - 1];
}
