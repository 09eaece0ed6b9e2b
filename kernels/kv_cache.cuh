// kernels/kv_cache.cuh: the PHD KV cache on the GPU (PHD.md section 6): one layer's cache,
// the attention of a block of new rows against it and against themselves, and the append
// that moves the block into it. cpu/decode.h is the CPU version of the same steps; the tests
// hold this one to it.
//
// One layer's cache (device), holding what cpu/decode.h's holds: every original, and the hidden
// tokens at or past hidden_live_from(t) (model.h), t the positions so far:
//   kept   k, v (cap, Hkv*hd), nc (cap): the originals, appended; with them the live hidden
//          tokens when there is no window (naive-K: no hidden token ever dies).
//   window k, v (W, Hkv*hd), nc (W): W = the most hidden tokens live at once (phd-swa,
//          phd-cswa). The hidden token of stream index h lives in slot h % W, so the slots
//          hold every live hidden token. A slot of a dead token or one never written
//          (n = -1) is a candidate that phd_visible rejects: no eviction pass is needed.
// A block (DecodeBlock): R rows in the row order: Ro originals of consecutive positions n0.., then
// the hidden tokens of consecutive stream indices h0.. (every block the decoder makes, a
// pre-fill or a decode step, has this form).
//
// The candidate keys of query (n, c) are one index space [kept | window | block originals
// 0..n | block hidden rows inside visible_hidden_range]: its visible keys plus at most W
// window slots, each masked with phd_visible. So the work tracks the visible pairs (§7).
#pragma once
#include <algorithm>
#include "attention.cuh"
#include "layers.cuh"

static constexpr int kDecodeThreads = 64;  // threads per (row, head): keys per tile, output dims per pass

struct KVLayer {
    float *kept_k = nullptr, *kept_v = nullptr;  // (cap, Hkv*hd)
    int2* kept_nc = nullptr;                     // (cap) token (n, c) of each entry
    float *win_k = nullptr, *win_v = nullptr;    // (W, Hkv*hd)
    int2* win_nc = nullptr;                      // (W), n = -1 when empty
    int kept = 0;                                // entries in kept
    int win_slots = 0;                           // W, 0 without a window
};

struct DecodeBlock { int R, Ro, n0, h0; };

// The first of the block's hidden rows that a later query can still see, as a stream index:
// the block's live hidden rows are [it, h0 + R - Ro - 1]. Every block holds the originals
// of all its positions, so the context then has n0 + Ro positions.
PHD_HOST_DEVICE inline int block_live_from(const DecodeBlock& b, const Config& c) {
    const int live = hidden_live_from(c, b.n0 + b.Ro);
    return live > b.h0 ? live : b.h0;
}

// Where candidate j of a query lies: counts of the four parts of its index space.
struct Candidates {
    int kept, win, orig, hid, hid0;  // hid0: the first block hidden row, counted from row Ro
    __device__ int count() const { return kept + win + orig + hid; }
};
static __device__ Candidates decode_candidates(const Config& c, const KVLayer& L, const DecodeBlock& b, int n, int copy) {
    Candidates s;
    s.kept = L.kept;
    s.win = L.win_slots;
    s.orig = min(max(n - b.n0 + 1, 0), b.Ro);
    int lo, hi;
    visible_hidden_range(c, n, copy, &lo, &hi);
    lo = max(lo, b.h0);
    hi = min(hi, b.h0 + b.R - b.Ro - 1);
    s.hid0 = lo - b.h0;
    s.hid = hi >= lo ? hi - lo + 1 : 0;
    return s;
}

// Candidate j: its token (*m, *d) (m = -1: an empty slot) and its k and v rows (all kv heads).
static __device__ void decode_key(const Candidates& s, int j, const KVLayer& L, const float* qkv, const int2* nc, const DecodeBlock& b,
                           const Config& c, int* m, int* d, const float** k, const float** v) {
    const size_t kvdim = (size_t)c.Hkv * c.hd(), ld = c.qkv_dim();
    int2 t;
    if (j < s.kept) {
        t = L.kept_nc[j];
        *k = L.kept_k + j * kvdim;
        *v = L.kept_v + j * kvdim;
    } else if (j < s.kept + s.win) {
        j -= s.kept;
        t = L.win_nc[j];
        *k = L.win_k + j * kvdim;
        *v = L.win_v + j * kvdim;
    } else {
        j -= s.kept + s.win;
        const int row = j < s.orig ? j : b.Ro + s.hid0 + j - s.orig;
        t = nc[row];
        *k = qkv + row * ld + c.H * c.hd();
        *v = *k + kvdim;
    }
    *m = t.x;
    *d = t.y;
}

// grid (R, H, splits), block kDecodeThreads: o (R, H*hd) for the block's rows; qkv (R, qkv_dim)
// with RoPE applied; nc (R) the rows' tokens. Online softmax over tiles of kDecodeThreads
// candidates: thread t scores candidate t of the tile, then owns output dims t, t + 64.
// With splits > 1 (split-K, as in flash-decoding: a decode step has too few rows to fill
// the GPU) split z takes the z-th share of the candidates and writes its unnormalised
// output, max and sum to part (R, H, splits, hd + 2); attention_decode_combine_kernel
// merges them.
static __global__ void attention_decode_kernel(float* o, float* part, const float* qkv, const int2* nc, KVLayer L, DecodeBlock b,
                                               Config c) {
    __shared__ float q[kAttnMaxHd], p[kDecodeThreads];
    __shared__ const float* vrow[kDecodeThreads];
    const int i = blockIdx.x, h = blockIdx.y, t = threadIdx.x, hd = c.hd(), off = h / (c.H / c.Hkv) * hd;
    const int n = nc[i].x, copy = nc[i].y;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int e = t; e < hd; e += kDecodeThreads) q[e] = qkv[(size_t)i * c.qkv_dim() + h * hd + e];
    __syncthreads();
    const Candidates s = decode_candidates(c, L, b, n, copy);
    const int share = (s.count() + gridDim.z - 1) / gridDim.z, lo = blockIdx.z * share, hi = min(s.count(), lo + share);
    float mx = -INFINITY, l = 0.0f, acc[kAttnMaxHd / kDecodeThreads] = {};
    for (int j0 = lo; j0 < hi; j0 += kDecodeThreads) {
        float score = -INFINITY;
        const float* vr = nullptr;
        if (j0 + t < hi) {
            int m, d;
            const float *kr, *v;
            decode_key(s, j0 + t, L, qkv, nc, b, c, &m, &d, &kr, &v);
            if (m >= 0 && phd_visible(c, n, copy, m, d)) {
                float dot = 0.0f;
                for (int e = 0; e < hd; e++) dot += q[e] * kr[off + e];
                score = dot * scale;
                vr = v + off;
            }
        }
        const float mnew = fmaxf(mx, block_reduce(score, true));
        const float pt = vr ? __expf(score - mnew) : 0.0f;
        p[t] = pt;
        vrow[t] = vr;
        const float psum = block_reduce(pt, false);  // its barriers publish p and vrow
        if (mnew > -INFINITY) {  // the same for every thread: some candidate so far was visible
            const float corr = __expf(mx - mnew);
            for (int u = 0; u < kAttnMaxHd / kDecodeThreads; u++) {
                const int e = u * kDecodeThreads + t;
                if (e >= hd) break;
                float a = acc[u] * corr;
                for (int j = 0; j < kDecodeThreads; j++)
                    if (vrow[j]) a += p[j] * vrow[j][e];
                acc[u] = a;
            }
            l = l * corr + psum;
            mx = mnew;
        }
        __syncthreads();  // before the next tile overwrites p and vrow
    }
    if (gridDim.z == 1) {
        for (int u = 0; u < kAttnMaxHd / kDecodeThreads; u++)  // l > 0: a query always sees itself
            if (u * kDecodeThreads + t < hd) o[(size_t)i * c.H * hd + h * hd + u * kDecodeThreads + t] = acc[u] / l;
        return;
    }
    float* pz = part + (((size_t)i * c.H + h) * gridDim.z + blockIdx.z) * (hd + 2);  // a share may see nothing: l = 0
    for (int u = 0; u < kAttnMaxHd / kDecodeThreads; u++)
        if (u * kDecodeThreads + t < hd) pz[u * kDecodeThreads + t] = acc[u];
    if (t == 0) { pz[hd] = mx; pz[hd + 1] = l; }
}

// grid (R, H), block kDecodeThreads: o from the splits' parts, rescaled to their common max.
static __global__ void attention_decode_combine_kernel(float* o, const float* part, int splits, Config c) {
    const int i = blockIdx.x, h = blockIdx.y, hd = c.hd();
    const float* pi = part + ((size_t)i * c.H + h) * splits * (hd + 2);
    float M = -INFINITY, l = 0.0f;
    for (int z = 0; z < splits; z++) M = fmaxf(M, pi[z * (hd + 2) + hd]);
    for (int z = 0; z < splits; z++) l += __expf(pi[z * (hd + 2) + hd] - M) * pi[z * (hd + 2) + hd + 1];
    for (int e = threadIdx.x; e < hd; e += kDecodeThreads) {
        float a = 0.0f;
        for (int z = 0; z < splits; z++) a += __expf(pi[z * (hd + 2) + hd] - M) * pi[z * (hd + 2) + e];
        o[(size_t)i * c.H * hd + h * hd + e] = a / l;
    }
}

// grid (R), block 128: the block's keys and values enter the cache; run after every row of
// the block has attended. Originals append to kept; live hidden rows go to their window
// slot, or to kept when there is no window; dead ones nowhere.
static __global__ void kv_cache_append_kernel(KVLayer L, const float* qkv, const int2* nc, DecodeBlock b, Config c) {
    const int j = blockIdx.x, kvdim = c.Hkv * c.hd(), hid = b.h0 + j - b.Ro, live = block_live_from(b, c);
    const float* kr = qkv + (size_t)j * c.qkv_dim() + c.H * c.hd();
    if (j >= b.Ro && hid < live) return;
    float *kd, *vd;
    int2* ncd;
    if (j < b.Ro || L.win_slots == 0) {
        const int slot = L.kept + (j < b.Ro ? j : b.Ro + hid - live);
        kd = L.kept_k + (size_t)slot * kvdim; vd = L.kept_v + (size_t)slot * kvdim; ncd = L.kept_nc + slot;
    } else {
        const int slot = hid % L.win_slots;
        kd = L.win_k + (size_t)slot * kvdim; vd = L.win_v + (size_t)slot * kvdim; ncd = L.win_nc + slot;
    }
    for (int e = threadIdx.x; e < kvdim; e += blockDim.x) {
        kd[e] = kr[e];
        vd[e] = kr[kvdim + e];
    }
    if (threadIdx.x == 0) *ncd = nc[j];
}

// Split-K: at least kDecodeKeysPerSplit candidates a split, and R*H*splits <= kDecodeMaxParts
// (the part buffer's size, in units of hd + 2 floats); splits = 1 once R*H rows fill the GPU.
static constexpr int kDecodeKeysPerSplit = 256, kDecodeMaxParts = 1024, kDecodeMaxSplits = 32;
inline int decode_splits(const KVLayer& L, const DecodeBlock& b, const Config& c) {
    const int candidates = L.kept + L.win_slots + b.R, by_keys = (candidates + kDecodeKeysPerSplit - 1) / kDecodeKeysPerSplit;
    return std::max(1, std::min({by_keys, kDecodeMaxSplits, kDecodeMaxParts / (b.R * c.H)}));
}

// Launchers: o, qkv, nc are the block's device tensors; L's counts are the host's; part holds
// kDecodeMaxParts * (hd + 2) floats; splits = 0 chooses with decode_splits (tests force others).
inline void attention_decode(float* o, float* part, const float* qkv, const int2* nc, const KVLayer& L, const DecodeBlock& b,
                             const Config& c, cudaStream_t s, int splits = 0) {
    if (c.hd() > kAttnMaxHd) die("attention kernel: head size %d exceeds %d", c.hd(), kAttnMaxHd);
    if (splits == 0) splits = decode_splits(L, b, c);
    if (splits > 1 && b.R * c.H * splits > kDecodeMaxParts) die("attention_decode: %d splits of %d rows exceed the part buffer", splits, b.R);
    launch(attention_decode_kernel, dim3(b.R, c.H, splits), dim3(kDecodeThreads), 0, s, o, part, qkv, nc, L, b, c);
    if (splits > 1) launch(attention_decode_combine_kernel, dim3(b.R, c.H), dim3(kDecodeThreads), 0, s, o, (const float*)part, splits, c);
    cudaCheck(cudaGetLastError());
}
inline void kv_cache_append(KVLayer& L, const float* qkv, const int2* nc, const DecodeBlock& b, const Config& c, cudaStream_t s) {
    launch(kv_cache_append_kernel, dim3(b.R), dim3(128), 0, s, L, qkv, nc, b, c);
    cudaCheck(cudaGetLastError());
    L.kept += b.Ro + (L.win_slots == 0 ? std::max(0, b.h0 + b.R - b.Ro - block_live_from(b, c)) : 0);
}
