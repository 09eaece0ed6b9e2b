// kernels/kv_cache.cuh: the PHD KV cache on the GPU (model.h §6) for S samples of one
// prompt: one layer's cache, the attention of a block of new rows against it and against
// themselves, and the append that moves the block into it. kernels/cpu_decode.h is the CPU version of
// the same steps; the tests hold this one to it.
//
// One layer's cache (device), holding for each sample what kernels/cpu_decode.h's holds: every
// original, and the hidden tokens at or past hidden_live_from(t) (model.h), t the positions so
// far. Keys and values are of the decoder's dtype T (float, or bf16 in bf16 runs, which halves
// the bytes a step reads; the attention's arithmetic is fp32 in both). Samples decode in
// lockstep, so the token (n, c) of every entry is the same in each:
//   prompt k, v (pre, Hkv*hd), nc (pre): what the pre-fill keeps (its originals; naive-K: with
//          every hidden token, none of which ever dies), once for all the samples.
//   own    k, v (S, own_cap, Hkv*hd), nc (own_cap): what each sample keeps after the prompt,
//          appended step by step (the original; naive-K: every copy).
//   window k, v (S, W, Hkv*hd), nc (W): W = the most hidden tokens live at once (phd-swa,
//          phd-cswa). The hidden token of stream index h lives in slot h % W, so the slots
//          hold every live hidden token. A slot of a dead token or one never written
//          (n = -1) is a candidate that phd_visible rejects: no eviction pass is needed.
// A block (DecodeBlock): R rows in the row order: Ro originals of consecutive positions n0..,
// then the hidden tokens of consecutive stream indices h0.. (every block the decoder makes, a
// pre-fill or a decode step, has this form), for B samples: B = 1 (the pre-fill, whose
// entries every sample shares) or S (a step), rows (B, R). The block and the count of own
// entries live in device memory (DecodeState), which every kernel here reads: a decode step
// captured once as a CUDA graph then replays for every token (kernels/gpu_decode.cuh).
//
// The candidate keys of a block's queries are one index space [prompt | own | window | the
// block's rows], the same for each of them and each masked with phd_visible: a query's
// visible keys plus at most W window slots and the block's R rows (K for a step). So the work
// tracks the visible pairs (model.h §7), and a thread block of queries reads each key tile once.
#pragma once
#include <algorithm>
#include <array>
#include "attention.cuh"
#include "layers.cuh"

static constexpr int kDecodeThreads = 64;  // threads per block: keys per tile, output dims per pass
static constexpr int kDecodeRows = 16;     // query rows per block, each key and value tile read once for all of them

template<typename T> struct KVLayer {
    T *pre_k = nullptr, *pre_v = nullptr;      // (pre, Hkv*hd)
    int2* pre_nc = nullptr;                    // (pre) token (n, c) of each entry
    T *own_k = nullptr, *own_v = nullptr;      // (S, own_cap, Hkv*hd)
    int2* own_nc = nullptr;                    // (own_cap)
    T *win_k = nullptr, *win_v = nullptr;      // (S, W, Hkv*hd)
    int2* win_nc = nullptr;                    // (W), n = -1 when empty
    int pre = 0;                               // entries in the prompt part (0 until the pre-fill is in)
    int own_cap = 0;                           // entries each sample's own part holds
    int win_slots = 0;                         // W, 0 without a window
    // Every pointer it holds: the CUDA emulation checks them at launch, as a kernel's own.
    std::array<const void*, 9> device_pointers() const { return {pre_k, pre_v, pre_nc, own_k, own_v, own_nc, win_k, win_v, win_nc}; }
};

struct DecodeBlock { int R, Ro, n0, h0; };
// In device memory: the block the kernels run, each sample's own entries before it, and the
// positions in the context once it is in.
struct DecodeState { DecodeBlock b; int own, t; };

// The first of the block's hidden rows that a later query can still see, as a stream index:
// the block's live hidden rows are [it, h0 + R - Ro - 1]. Every block holds the originals
// of all its positions, so the context then has n0 + Ro positions.
PHD_HOST_DEVICE inline int block_live_from(const DecodeBlock& b, const Config& c) {
    const int live = hidden_live_from(c, b.n0 + b.Ro);
    return live > b.h0 ? live : b.h0;
}
// Entries a block adds to a kept part (prompt or own) of each sample: its originals, and its
// live hidden rows where there is no window.
PHD_HOST_DEVICE inline int block_kept(const DecodeBlock& b, int win_slots, const Config& c) {
    const int hid = b.h0 + b.R - b.Ro - block_live_from(b, c);
    return b.Ro + (win_slots == 0 && hid > 0 ? hid : 0);
}

// A block's candidate keys: one index space [prompt | own | window | the block's R rows],
// the same for every query of the block (phd_visible masks each pair), so that a key tile is
// read once for all the queries a thread block holds.
struct Candidates {
    int pre, own, win, blk;
    __device__ int count() const { return pre + own + win + blk; }
};
template<typename T> static __device__ Candidates decode_candidates(const KVLayer<T>& L, const DecodeState& st) {
    return {L.pre, st.own, L.win_slots, st.b.R};
}
// True where candidate j is the same entry for every sample (the shared prompt part).
static __device__ bool candidate_shared(const Candidates& s, int j) { return j < s.pre; }

// Candidate j for sample smp: its token (*m, *d) (m = -1: an empty slot) and its k and v rows
// (all kv heads). qkv, nc: the sample's block rows (R, .) and the rows' tokens.
template<typename T>
static __device__ void decode_key(const Candidates& s, int j, const KVLayer<T>& L, int smp, const T* qkv, const int2* nc, const Config& c,
                                  int* m, int* d, const T** k, const T** v) {
    const size_t kvdim = (size_t)c.Hkv * c.hd(), ld = c.qkv_dim();
    int2 t;
    if (j < s.pre) {
        t = L.pre_nc[j];
        *k = L.pre_k + j * kvdim;
        *v = L.pre_v + j * kvdim;
    } else if ((j -= s.pre) < s.own) {
        t = L.own_nc[j];
        *k = L.own_k + ((size_t)smp * L.own_cap + j) * kvdim;
        *v = L.own_v + ((size_t)smp * L.own_cap + j) * kvdim;
    } else if ((j -= s.own) < s.win) {
        t = L.win_nc[j];
        *k = L.win_k + ((size_t)smp * s.win + j) * kvdim;
        *v = L.win_v + ((size_t)smp * s.win + j) * kvdim;
    } else {
        j -= s.win;
        t = nc[j];
        *k = qkv + j * ld + c.H * c.hd();
        *v = *k + kvdim;
    }
    *m = t.x;
    *d = t.y;
}

// Per-row max of v (kDecodeRows, the first nq used) over the block's kDecodeThreads threads;
// every thread gets them. red: kDecodeRows * kDecodeThreads / 32 floats of shared scratch.
static __device__ void rows_max(float (&v)[kDecodeRows], int nq, float* red) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = kDecodeThreads / 32;
    PHD_UNROLL
    for (int r = 0; r < kDecodeRows; r++) {
        if (r >= nq) break;  // the same in every thread
        for (int o = 16; o > 0; o /= 2) {
            const float w = __shfl_xor_sync(0xffffffffu, v[r], o);
            v[r] = fmaxf(v[r], w);
        }
        if (lane == 0) red[r * warps + warp] = v[r];
    }
    __syncthreads();
    PHD_UNROLL
    for (int r = 0; r < kDecodeRows; r++) {
        if (r >= nq) break;
        v[r] = red[r * warps];
        for (int w = 1; w < warps; w++) v[r] = fmaxf(v[r], red[r * warps + w]);
    }
    __syncthreads();  // before red is reused
}

// grid (ceil(B * (R - row0) / kDecodeRows), H, splits), block kDecodeThreads: o (B, R, H*hd)
// for the block's rows row0..R-1 of each sample; qkv (B, R, qkv_dim) with RoPE applied; nc
// (R) the rows' tokens. qkv, o and the cache are of type T; scores, softmax and sums are fp32.
// A thread block holds kDecodeRows query rows (the B * (R - row0) rows in order, samples
// after one another) and walks the candidates in tiles of kDecodeThreads: thread t reads
// candidate t's key once and scores it against every row, then owns output dims t, t + 64 of
// every row and reads each value row once for all of them. So a tile of the shared prompt
// part is read once for up to kDecodeRows rows of any samples (a step's K copies, and the
// samples of a batch); a tile of a sample's own part or window, once for that sample's rows
// in the block (one pass per sample there). Online softmax per row. With splits > 1
// (split-K, as in flash-decoding: a decode step has too few rows to fill the GPU) split z
// takes the z-th share of the candidates and writes each row's unnormalised output, max and
// sum to part (B * (R - row0), H, splits, hd + 2); attention_decode_combine_kernel merges them.
template<typename T>
static __global__ void attention_decode_kernel(T* o, float* part, const T* qkv, const int2* nc, KVLayer<T> L, const DecodeState* state,
                                               Config c, int B, int row0) {
    PHD_SHARED(float, q, [kDecodeRows][kAttnMaxHd]);
    PHD_SHARED(float, p, [kDecodeRows][kDecodeThreads]);
    PHD_SHARED(float, red, [kDecodeRows * kDecodeThreads / 32]);
    PHD_SHARED(const T*, vrow, [kDecodeThreads]);
    PHD_SHARED(int, rn, [kDecodeRows]);
    PHD_SHARED(int, rcopy, [kDecodeRows]);
    PHD_SHARED(int, rsmp, [kDecodeRows]);
    PHD_SHARED(int, ri, [kDecodeRows]);
    const DecodeState st = *state;
    const int R = st.b.R, rows = R - row0, first = blockIdx.x * kDecodeRows, nq = min(kDecodeRows, B * rows - first);
    const int h = blockIdx.y, t = threadIdx.x, hd = c.hd(), off = h / (c.H / c.Hkv) * hd, ld = c.qkv_dim();
    const float scale = 1.0f / sqrtf((float)hd);
    if (t < kDecodeRows) {  // rows past the block's last (nq) get sample -1: no pass is theirs
        const int smp = (first + t) / rows, i = row0 + (first + t) % rows;
        rsmp[t] = t < nq ? smp : -1;
        ri[t] = i;
        rn[t] = t < nq ? nc[i].x : 0;
        rcopy[t] = t < nq ? nc[i].y : 0;
    }
    __syncthreads();
    for (int x = t; x < nq * hd; x += kDecodeThreads) {
        const int r = x / hd, e = x % hd;
        q[r][e] = to_f32(qkv[((size_t)rsmp[r] * R + ri[r]) * ld + h * hd + e]);
    }
    const int s_lo = rsmp[0], s_hi = rsmp[nq - 1];
    __syncthreads();
    const Candidates s = decode_candidates(L, st);
    const int share = (s.count() + gridDim.z - 1) / gridDim.z, lo = blockIdx.z * share, hi = min(s.count(), lo + share);
    float mx[kDecodeRows], l[kDecodeRows], acc[kDecodeRows][kAttnMaxHd / kDecodeThreads];
    PHD_UNROLL
    for (int r = 0; r < kDecodeRows; r++) {
        mx[r] = -INFINITY;
        l[r] = 0.0f;
        for (int u = 0; u < kAttnMaxHd / kDecodeThreads; u++) acc[r][u] = 0.0f;
    }
    for (int j0 = lo; j0 < hi; j0 += kDecodeThreads) {
        // One pass for the rows of each sample; a tile wholly in the shared part, one for all.
        const int last = candidate_shared(s, min(hi, j0 + kDecodeThreads) - 1) ? s_lo : s_hi;
        for (int smp = s_lo; smp <= last; smp++) {
            const int j = j0 + t;
            float score[kDecodeRows];
            const T* vr = nullptr;
            int m = -1, d = 0;
            const T* kr = nullptr;
            const bool shared = candidate_shared(s, j);  // scored in the first pass only, for every row
            if (j < hi && (!shared || smp == s_lo)) decode_key(s, j, L, smp, qkv + (size_t)smp * R * ld, nc, c, &m, &d, &kr, &vr);
            PHD_UNROLL
            for (int r = 0; r < kDecodeRows; r++) score[r] = 0.0f;
            if (m >= 0)
                for (int e = 0; e < hd; e++) {
                    const float k = to_f32(kr[off + e]);
                    PHD_UNROLL
                    for (int r = 0; r < kDecodeRows; r++) {
                        if (r >= nq) break;  // the block's last rows may be fewer
                        score[r] += q[r][e] * k;
                    }
                }
            bool any = false;
            PHD_UNROLL
            for (int r = 0; r < kDecodeRows; r++) {
                const bool mine = rsmp[r] >= 0 && (shared || rsmp[r] == smp);
                const bool vis = m >= 0 && mine && phd_visible(c, rn[r], rcopy[r], m, d);
                score[r] = vis ? score[r] * scale : -INFINITY;
                any |= vis;
            }
            float mnew[kDecodeRows];
            PHD_UNROLL
            for (int r = 0; r < kDecodeRows; r++) mnew[r] = score[r];
            rows_max(mnew, nq, red);
            PHD_UNROLL
            for (int r = 0; r < kDecodeRows; r++) {
                mnew[r] = fmaxf(mx[r], mnew[r]);
                p[r][t] = score[r] > -INFINITY ? __expf(score[r] - mnew[r]) : 0.0f;
            }
            vrow[t] = any ? vr + off : nullptr;
            __syncthreads();  // p and vrow published
            PHD_UNROLL
            for (int r = 0; r < kDecodeRows; r++) {
                if (mnew[r] == -INFINITY) continue;  // the same for every thread: nothing visible to row r yet
                const float corr = __expf(mx[r] - mnew[r]);
                float psum = 0.0f;
                for (int jj = 0; jj < kDecodeThreads; jj++) psum += p[r][jj];
                l[r] = l[r] * corr + psum;
                mx[r] = mnew[r];
                PHD_UNROLL
                for (int u = 0; u < kAttnMaxHd / kDecodeThreads; u++) acc[r][u] *= corr;
            }
            PHD_UNROLL
            for (int u = 0; u < kAttnMaxHd / kDecodeThreads; u++) {
                const int e = u * kDecodeThreads + t;
                if (e >= hd) break;
                for (int jj = 0; jj < kDecodeThreads; jj++) {
                    if (!vrow[jj]) continue;
                    const float v = to_f32(vrow[jj][e]);
                    PHD_UNROLL
                    for (int r = 0; r < kDecodeRows; r++) {
                        if (r >= nq) break;
                        acc[r][u] += p[r][jj] * v;
                    }
                }
            }
            __syncthreads();  // before the next pass overwrites p and vrow
        }
    }
    PHD_UNROLL
    for (int r = 0; r < kDecodeRows; r++) {
        if (r >= nq) break;
        if (gridDim.z == 1) {  // l > 0: a query always sees itself
            T* orow = o + ((size_t)rsmp[r] * R + ri[r]) * c.H * hd + h * hd;
            for (int u = 0; u < kAttnMaxHd / kDecodeThreads; u++)
                if (u * kDecodeThreads + t < hd) store(orow + u * kDecodeThreads + t, acc[r][u] / l[r]);
            continue;
        }
        float* pz = part + (((size_t)(first + r) * c.H + h) * gridDim.z + blockIdx.z) * (hd + 2);  // a share may see nothing: l = 0
        for (int u = 0; u < kAttnMaxHd / kDecodeThreads; u++)
            if (u * kDecodeThreads + t < hd) pz[u * kDecodeThreads + t] = acc[r][u];
        if (t == 0) { pz[hd] = mx[r]; pz[hd + 1] = l[r]; }
    }
}

// grid (B * (R - row0), H), block kDecodeThreads: o from the splits' parts, rescaled to their
// common max.
template<typename T>
static __global__ void attention_decode_combine_kernel(T* o, const float* part, int splits, const DecodeState* state, Config c, int row0) {
    const int R = state->b.R, rows = R - row0, smp = blockIdx.x / rows, i = row0 + blockIdx.x % rows, h = blockIdx.y, hd = c.hd();
    const float* pi = part + ((size_t)blockIdx.x * c.H + h) * splits * (hd + 2);
    float M = -INFINITY, l = 0.0f;
    for (int z = 0; z < splits; z++) M = fmaxf(M, pi[z * (hd + 2) + hd]);
    for (int z = 0; z < splits; z++) l += __expf(pi[z * (hd + 2) + hd] - M) * pi[z * (hd + 2) + hd + 1];
    for (int e = threadIdx.x; e < hd; e += kDecodeThreads) {
        float a = 0.0f;
        for (int z = 0; z < splits; z++) a += __expf(pi[z * (hd + 2) + hd] - M) * pi[z * (hd + 2) + e];
        store(o + ((size_t)smp * R + i) * c.H * hd + h * hd + e, a / l);
    }
}

// grid (R, S), block 128: the block's keys and values enter the cache of every sample s, from
// its rows (a step's, B = S) or the pre-fill's (B = 1, every sample's copy of the prompt);
// run after every row of the block has attended. Originals append to the kept part (to_prompt:
// the prompt part, written once; else the sample's own); live hidden rows go to their window
// slot, or to the kept part where there is no window; dead ones nowhere. Sample 0 writes the
// tokens (n, c), the same for every sample.
template<typename T>
static __global__ void kv_cache_append_kernel(KVLayer<T> L, const T* qkv, const int2* nc, const DecodeState* state, Config c, int B,
                                              bool to_prompt) {
    const DecodeBlock b = state->b;
    const int j = blockIdx.x, smp = blockIdx.y, kvdim = c.Hkv * c.hd(), hid = b.h0 + j - b.Ro, live = block_live_from(b, c);
    const T* kr = qkv + ((size_t)(smp % B) * b.R + j) * c.qkv_dim() + c.H * c.hd();
    if (j >= b.Ro && hid < live) return;
    T *kd, *vd;
    int2* ncd;
    if (j < b.Ro || L.win_slots == 0) {
        const int e = j < b.Ro ? j : b.Ro + hid - live;
        if (to_prompt && smp > 0) return;
        const size_t slot = to_prompt ? (size_t)e : (size_t)smp * L.own_cap + state->own + e;
        kd = (to_prompt ? L.pre_k : L.own_k) + slot * kvdim;
        vd = (to_prompt ? L.pre_v : L.own_v) + slot * kvdim;
        ncd = (to_prompt ? L.pre_nc : L.own_nc) + (to_prompt ? e : state->own + e);
    } else {
        const int slot = hid % L.win_slots;
        kd = L.win_k + ((size_t)smp * L.win_slots + slot) * kvdim; vd = L.win_v + ((size_t)smp * L.win_slots + slot) * kvdim; ncd = L.win_nc + slot;
    }
    for (int e = threadIdx.x; e < kvdim; e += blockDim.x) {
        kd[e] = kr[e];
        vd[e] = kr[kvdim + e];
    }
    if (threadIdx.x == 0 && smp == 0) *ncd = nc[j];
}

// Split-K: at least kDecodeKeysPerSplit candidates a split, and rows*H*splits <= kDecodeMaxParts
// (the part buffer's size, in units of hd + 2 floats); splits = 1 once rows*H fill the GPU.
// candidates: the most any query of the block has; rows: the block's query rows, all samples.
static constexpr int kDecodeKeysPerSplit = 256, kDecodeMaxParts = 1024, kDecodeMaxSplits = 32;
inline int decode_splits(int candidates, int rows, const Config& c) {
    const int by_keys = (candidates + kDecodeKeysPerSplit - 1) / kDecodeKeysPerSplit;
    return std::max(1, std::min({by_keys, kDecodeMaxSplits, kDecodeMaxParts / (rows * c.H)}));
}

// Launchers. o, qkv, nc, state are the block's device tensors (state as the host last wrote or
// a step's first kernel set it); B samples of R rows, of which rows row0..R-1 attend; part
// holds kDecodeMaxParts * (hd + 2) floats.
template<typename T>
inline void attention_decode(T* o, float* part, const T* qkv, const int2* nc, const KVLayer<T>& L, const DecodeState* state,
                             const Config& c, int B, int R, int row0, int splits, cudaStream_t s) {
    if (c.hd() > kAttnMaxHd) die("attention kernel: head size %d exceeds %d", c.hd(), kAttnMaxHd);
    const int rows = B * (R - row0);
    if (splits > 1 && rows * c.H * splits > kDecodeMaxParts) die("attention_decode: %d splits of %d rows exceed the part buffer", splits, rows);
    launch(attention_decode_kernel<T>, dim3((rows + kDecodeRows - 1) / kDecodeRows, c.H, splits), dim3(kDecodeThreads), 0, s, o, part, qkv, nc,
           L, state, c, B, row0);
    if (splits > 1)
        launch(attention_decode_combine_kernel<T>, dim3(rows, c.H), dim3(kDecodeThreads), 0, s, o, (const float*)part, splits, state, c, row0);
    cudaCheck(cudaGetLastError());
}
template<typename T>
inline void kv_cache_append(const KVLayer<T>& L, const T* qkv, const int2* nc, const DecodeState* state, const Config& c, int B, int R,
                            int S, bool to_prompt, cudaStream_t s) {
    launch(kv_cache_append_kernel<T>, dim3(R, S), dim3(128), 0, s, L, qkv, nc, state, c, B, to_prompt);
    cudaCheck(cudaGetLastError());
}
