// kernels/cpu_decode.h: inference with the PHD KV cache (model.h §6), on the CPU.
//
// Per layer and sample the cache keeps the keys/values that later tokens can still see:
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
// With S samples (--samples) the pre-fill runs once and every sample's cache gets a copy of
// it; each decode step is one block of S*K rows, each sample's against its own cache.
#pragma once
#include <vector>
#include "decode_blocks.h"

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

// Next token from logits (Vp, first V real), by the Sampling rule (kernels/decode_blocks.h): greedy at temperature
// 0, else a draw from the softmax at the temperature over the ids whose logits are at or
// above the top_k-th largest (all when top_k <= 0 or >= V), walked in id order. Non-finite
// logits as the device's sampler takes them (kernels/sampling.cuh).
template<typename Real> int sample_token(const Real* logits, int V, float temperature, int top_k, Rng& rng) {
    std::vector<double> z(V);  // as the device sees them (kernels/sampling.cuh): NaN as -inf
    for (int j = 0; j < V; j++) z[j] = std::isnan((double)logits[j]) ? -INFINITY : (double)logits[j];
    const int best = (int)(std::max_element(z.begin(), z.end()) - z.begin());
    if (temperature <= 0) return best;
    const double mx = z[best];
    double cut = -INFINITY;
    if (top_k > 0 && top_k < V) {
        std::vector<double> sorted = z;
        std::nth_element(sorted.begin(), sorted.begin() + top_k - 1, sorted.end(), std::greater<double>());
        cut = sorted[top_k - 1];
    }
    // exp((z - mx) / T), with its limits where mx is infinite: 1 at the largest, 0 below it.
    auto weight = [&](double x) {
        if (x < cut || (x == -INFINITY && mx > -INFINITY)) return 0.0;
        return x == mx ? 1.0 : exp((x - mx) / temperature);
    };
    std::vector<double> p(V);
    double sum = 0;
    for (int j = 0; j < V; j++) sum += p[j] = weight(z[j]);
    double u = rng.uniform() * sum;
    int last = 0;
    for (int j = 0; j < V; j++) {
        if (p[j] == 0) continue;
        last = j;
        if ((u -= p[j]) < 0) return j;
    }
    return last;  // where rounding left u past the sum
}

template<typename Real> struct Decoder : DecodeBlocks<Decoder<Real>> {
    const Model<Real>& M;
    int S;                                         // samples decoded together
    Sampling sampling;
    std::vector<Rng> rng;                          // (S) each sample's draws
    std::vector<KVStore<Real>> originals, hidden;  // (S, L) each; hidden in stream order
    int t = 0;                                     // positions in the context so far
    long hidden_computed = 0;                      // hidden-token rows computed so far (pre-fill + decode), one sample's
    std::vector<Real> last_logits;                 // (S, Vp) last copy of each sample's newest position

    Decoder(const Model<Real>& model, int samples = 1, Sampling s = {})
        : M(model), S(samples), sampling(s), originals((size_t)samples * model.cfg.L), hidden(originals.size()),
          last_logits((size_t)samples * model.cfg.Vp) {
        for (int i = 0; i < S; i++) rng.push_back(Rng{s.seed + i});
    }

    // Cache entries per layer of one sample (the same in every layer and sample).
    size_t cache_entries() const { return originals[0].size() + hidden[0].size(); }
    size_t entry_bytes() const { return 2 * M.cfg.Hkv * M.cfg.hd() * sizeof(float); }  // its k and v, as the GPU's fp32 cache
    size_t cache_bytes() const { return cache_entries() * entry_bytes() * M.cfg.L; }  // one sample's
    static const char* precision() { return "fp32"; }

    const Config& cfg() const { return M.cfg; }
    std::vector<Real> logits(int s) const { return {last_logits.begin() + (size_t)s * M.cfg.Vp, last_logits.begin() + (size_t)(s + 1) * M.cfg.Vp}; }
    // Each sample's next token from its logits (sample_token above), one draw of its Rng.
    std::vector<int> sample() {
        std::vector<int> next(S);
        for (int s = 0; s < S; s++) next[s] = sample_token(&last_logits[(size_t)s * M.cfg.Vp], M.cfg.V, sampling.temperature, sampling.top_k, rng[s]);
        return next;
    }

    // A block of rows (n, c) in the row order (DecodeBlocks), all layers; t moves past it.
    // toks (B, R): B = 1, the pre-fill, whose keys and values go to every sample's cache; or
    // B = S, a row block per sample against its own cache.
    void run_block(const std::vector<int>& ns, const std::vector<int>& cs, const std::vector<int>& toks) {
        const Config& c = M.cfg;
        const int R = (int)ns.size(), B = (int)toks.size() / R, N = B * R, D = c.D, hd = c.hd(), kvdim = c.Hkv * hd, ld = c.qkv_dim(),
                  group = c.H / c.Hkv, L = c.L;
        if (ns.back() >= c.maxT) die("context of %d tokens exceeds the model's max sequence length %d", ns.back() + 1, c.maxT);
        std::vector<Real> x((size_t)N * D), a(x.size()), xm(x.size()), f(x.size());  // (N, D)
        std::vector<Real> rstd(N), qkv((size_t)N * ld), o((size_t)N * c.H * hd);        // (N), (N, qkv_dim), (N, H*hd)
        std::vector<Real> h13((size_t)N * 2 * c.F), g((size_t)N * c.F);                // (N, 2F), (N, F)
        std::vector<int> pos(N);                                                       // (N) each row's position
        const bool qk = c.qk_norm, reordered = c.norm == NORM_REORDERED;                // model.h §10's buffers, where used:
        std::vector<Real> qkraw(qk ? (size_t)N * c.qk_dim() : 0), rstd_qk(qk ? 2 * N : 0);  // (N, qk_dim), (2, N)
        std::vector<Real> uy(reordered ? x.size() : 0);                                // (N, D) u, then y
        const LayerActs<Real> acts{x.data(), a.data(), rstd.data(), qkv.data(), nullptr, o.data(), xm.data(), f.data(), rstd.data(),
                                   h13.data(), g.data(), qkraw.data(), rstd_qk.data(), uy.data(), uy.data()};  // one block, every layer, in place
        for (int i = 0; i < N; i++) {
            std::copy(M.p.E + (size_t)toks[i] * D, M.p.E + (size_t)(toks[i] + 1) * D, x.begin() + (size_t)i * D);
            pos[i] = ns[i % R];
        }
        for (int r = 0; r < R; r++) hidden_computed += cs[r] > 0;
        t = ns.back() + 1;
        const int live = hidden_live_from(c, t);  // hidden tokens below it are dead once the block is in
        for (int l = 0; l < L; l++)
            layer_forward(M, acts, M.p.layer[l], x.data(), N, pos.data(), [&] {
                // Candidates of row i of sample b: its cache, then its block rows; the one predicate decides.
                std::vector<std::vector<const Real*>> keys(N), vals(N);  // (N) rows of all kv heads
                #pragma omp parallel for schedule(dynamic, 4)
                for (int i = 0; i < N; i++) {
                    const int b = i / R, r = i % R;
                    auto consider = [&](int n2, int c2, const Real* k2, const Real* v2) {
                        if (phd_visible(c, ns[r], cs[r], n2, c2)) { keys[i].push_back(k2); vals[i].push_back(v2); }
                    };
                    for (const KVStore<Real>* st : {&originals[(size_t)b * L + l], &hidden[(size_t)b * L + l]})
                        for (size_t e = 0; e < st->size(); e++) consider(st->n[e], st->c[e], &st->k[e * kvdim], &st->v[e * kvdim]);
                    for (int j = 0; j < R; j++) {
                        const Real* kr = &qkv[((size_t)b * R + j) * ld + c.H * hd];
                        consider(ns[j], cs[j], kr, kr + kvdim);
                    }
                }
                // (row, head) pairs in parallel: a decode step of vanilla has one row a sample
                #pragma omp parallel for collapse(2) schedule(dynamic, 4)
                for (int i = 0; i < N; i++)
                    for (int h = 0; h < c.H; h++) {
                        std::vector<Real> p(keys[i].size());
                        const int off = h / group * hd;
                        attend_query(&o[(size_t)i * c.H * hd + h * hd], p.data(), &qkv[(size_t)i * ld + h * hd], (int)p.size(), hd,
                                     [&](int j) { return keys[i][j] + off; }, [&](int j) { return vals[i][j] + off; });
                    }
                // The block's keys/values enter the caches once every row of it has attended
                // (the pre-fill's, one sample's, every sample's); then the hidden tokens no
                // later query can see leave them.
                for (int s = 0; s < S; s++) {
                    for (int j = 0; j < R; j++) {
                        const Real* kr = &qkv[((size_t)(s % B) * R + j) * ld + c.H * hd];
                        (cs[j] == 0 ? originals : hidden)[(size_t)s * L + l].push(kr, kr + kvdim, kvdim, ns[j], cs[j]);
                    }
                    KVStore<Real>& hid = hidden[(size_t)s * L + l];  // in stream order: the dead ones come first
                    int dead = 0;
                    while (dead < (int)hid.size() && hidden_index(c, hid.n[dead], hid.c[dead]) < live) dead++;
                    hid.pop_front(dead, kvdim);
                }
            });
        // Only the last copy of each sample's newest position predicts (its block's last row):
        // the LM head over the S of them at once.
        std::vector<Real> last((size_t)S * D), norm(last.size()), r(S);  // (S, D), (S, D), (S)
        for (int s = 0; s < S; s++) std::copy_n(x.begin() + ((size_t)(s % B) * R + R - 1) * D, D, last.begin() + (size_t)s * D);
        rmsnorm_forward(norm.data(), r.data(), last.data(), M.p.g_final, S, D);
        matmul_forward(last_logits.data(), norm.data(), M.p.wout, S, D, c.Vp);
    }
};
