// kernels/attention.cuh: PHD attention on the GPU, forward and backward, flash-style, fp32.
//
// Layout: rows are regrouped per sequence as [originals | hidden] (the paper's layout):
// row r < T is the original (r, 0); row T + h is the hidden token with hidden-stream index
// h = n*(K-1) + c-1. Then every query's visible keys are two intervals of rows (the
// originals 0..n, and one range of hidden rows: visible_hidden_range in model.h), so whole
// tiles of keys can be skipped: a query tile visits a key tile only if some query in it has
// a visible key in it. Work then tracks the visible pairs of PHD.md section 7 (O(K*T^2)),
// not the (K*T)^2 of the interleaved order. Inside a visited tile every pair is masked
// with the one predicate, phd_visible.
//
// Tensors (regrouped rows, TK = T*K):
//   qkv  (B, TK, qkv_dim)  q | k | v, RoPE applied     o    (B, TK, H*hd)
//   lse  (B, H, TK)        log-sum-exp of each query's scores, for the backward
//   dqkv (B, TK, qkv_dim)  written whole by the backward (dq, dk, dv)
// Scores never touch global memory. The backward is deterministic: dk/dv are summed by
// the thread that owns the key row, dq by the thread that owns the query row, each in a
// fixed order, with no atomics.
#pragma once
#include <type_traits>
#include <vector>
#include "../model.h"
#include "cuda_compat.h"

static constexpr int kAttnTile = 32;   // query rows and key rows per tile: one warp
static constexpr int kAttnMaxHd = 128;

// (n, c) of regrouped row r.
PHD_HOST_DEVICE inline void regrouped_token(const Config& c, int T, int r, int* n, int* copy) {
    if (r < T) { *n = r; *copy = 0; return; }
    *n = (r - T) / (c.K - 1);
    *copy = (r - T) % (c.K - 1) + 1;
}
// Position n of regrouped row r.
PHD_HOST_DEVICE inline int regrouped_position(const Config& c, int T, int r) {
    int n, copy;
    regrouped_token(c, T, r, &n, &copy);
    return n;
}
// Regrouped row of token (n, c).
PHD_HOST_DEVICE inline int regrouped_row(const Config& c, int T, int n, int copy) {
    return copy == 0 ? n : T + n * (c.K - 1) + copy - 1;
}

// Host copy of a (B, T*K, width) tensor moved between the logical order and the regrouped
// one: for checking GPU tensors against the CPU's.
inline std::vector<float> regroup_rows(const std::vector<float>& x, const Config& c, int B, int T, int width, bool to_regrouped) {
    std::vector<float> y(x.size());
    const int TK = T * c.K;
    for (int b = 0; b < B; b++)
        for (int n = 0; n < T; n++)
            for (int k = 0; k < c.K; k++) {
                size_t logical = ((size_t)b * TK + n * c.K + k) * width, grouped = ((size_t)b * TK + regrouped_row(c, T, n, k)) * width;
                std::copy_n(&x[to_regrouped ? logical : grouped], width, &y[to_regrouped ? grouped : logical]);
            }
    return y;
}

// Does query row r (regrouped) have a visible key among rows [k0, k1)?
static __device__ bool query_meets_tile(const Config& c, int T, int r, int k0, int k1) {
    int n, copy, lo, hi;
    regrouped_token(c, T, r, &n, &copy);
    if (k0 < T && k0 <= n) return true;                              // originals 0..n
    visible_hidden_range(c, n, copy, &lo, &hi);
    int h0 = k0 > T ? k0 - T : 0, h1 = k1 - T;                       // hidden part [h0, h1)
    return h1 > h0 && lo <= hi && lo < h1 && hi >= h0;
}

// Each thread keeps its row's vectors (q and the output accumulators; dk and dv) in
// registers, which needs the head size at compile time: the kernels are instantiated for
// HD in {16, 32, 64}, where the loops over it unroll, and for HD = 0, any other head size
// up to kAttnMaxHd read at run time (the arrays then live in local memory: slower, same
// results). with_head_dim picks the instance.
template<int HD> struct Hd {
    static constexpr int max = HD ? HD : kAttnMaxHd;  // array extent
    static PHD_HOST_DEVICE int get(const Config& c) { return HD ? HD : c.hd(); }
};

// Keys and values of rows [k0, k1) of kv head kv into shared memory. Consecutive threads
// read consecutive elements of a row: the loads coalesce.
// ks, vs: (kAttnTile, hd) each, in shared memory.
template<int HD> static __device__ void load_kv_tile(float* ks, float* vs, const float* base, const Config& c, int kv, int k0, int k1) {
    const int hd = Hd<HD>::get(c), ld = c.qkv_dim();
    for (int idx = threadIdx.x; idx < (k1 - k0) * hd; idx += blockDim.x) {
        ks[idx] = base[(size_t)(k0 + idx / hd) * ld + (c.H + kv) * hd + idx % hd];
        vs[idx] = base[(size_t)(k0 + idx / hd) * ld + (c.H + c.Hkv + kv) * hd + idx % hd];
    }
    __syncthreads();
}

// The query row a thread owns in the kernels over grid (query tiles, H, B): its head, its
// batch's qkv rows, and its token (n, copy); rows past the end are not valid.
struct QueryRow {
    int TK, ld, h, b, kv, r, n, copy;
    bool valid;
    const float* base;  // (TK, qkv_dim) of this batch
    float scale;
};
static __device__ QueryRow query_row(const float* qkv, const Config& c, int T) {
    QueryRow q;
    q.TK = T * c.K; q.ld = c.qkv_dim(); q.h = blockIdx.y; q.b = blockIdx.z;
    q.kv = q.h / (c.H / c.Hkv);
    q.r = blockIdx.x * kAttnTile + threadIdx.x;
    q.valid = q.r < q.TK;
    q.base = qkv + (size_t)q.b * q.TK * q.ld;
    q.scale = 1.0f / sqrtf((float)c.hd());
    q.n = q.copy = 0;
    if (q.valid) regrouped_token(c, T, q.r, &q.n, &q.copy);
    return q;
}

// The loops below run to Hd<HD>::max and stop at hd: for HD > 0 the two are the same
// constant, the test folds away and the loop unrolls. Tiles live in dynamic shared memory
// sized for hd (attention_smem): up to 66 KB at hd = 128, past the 48 KB default, so the
// launchers raise the kernels' limit.

// grid (query tiles, H, B), block kAttnTile: thread = query row.
// visited, when not null, counts the (query tile, key tile) pairs computed.
template<int HD> static __global__ void attention_forward_kernel(float* o, float* lse, const float* qkv, Config c, int T, int* visited) {
    constexpr int MAX = Hd<HD>::max;
    const QueryRow Q = query_row(qkv, c, T);
    const int hd = Hd<HD>::get(c);
    float* ks = dynamic_shared<float>();  // (kAttnTile, hd)
    float* vs = ks + kAttnTile * hd;      // (kAttnTile, hd)
    float q[MAX], acc[MAX];
    PHD_UNROLL
    for (int e = 0; e < MAX; e++) {
        if (e >= hd) break;
        q[e] = Q.valid ? Q.base[(size_t)Q.r * Q.ld + Q.h * hd + e] : 0.0f;
        acc[e] = 0.0f;
    }
    float mx = -INFINITY, l = 0.0f;
    for (int k0 = 0; k0 < Q.TK; k0 += kAttnTile) {
        const int k1 = min(k0 + kAttnTile, Q.TK);
        if (!__ballot_sync(0xffffffffu, Q.valid && query_meets_tile(c, T, Q.r, k0, k1))) continue;
        if (visited && threadIdx.x == 0) atomicAdd(visited, 1);
        load_kv_tile<HD>(ks, vs, Q.base, c, Q.kv, k0, k1);
        for (int j = 0; Q.valid && j < k1 - k0; j++) {
            int m, d;
            regrouped_token(c, T, k0 + j, &m, &d);
            if (!phd_visible(c, Q.n, Q.copy, m, d)) continue;
            float s = 0.0f;
            PHD_UNROLL
            for (int e = 0; e < MAX; e++) {
                if (e >= hd) break;
                s += q[e] * ks[j * hd + e];
            }
            s *= Q.scale;
            const float mnew = fmaxf(mx, s), corr = __expf(mx - mnew), p = __expf(s - mnew);
            PHD_UNROLL
            for (int e = 0; e < MAX; e++) {
                if (e >= hd) break;
                acc[e] = acc[e] * corr + p * vs[j * hd + e];
            }
            l = l * corr + p;
            mx = mnew;
        }
        __syncthreads();
    }
    if (!Q.valid) return;
    PHD_UNROLL
    for (int e = 0; e < MAX; e++) {
        if (e >= hd) break;
        o[((size_t)Q.b * Q.TK + Q.r) * c.H * hd + Q.h * hd + e] = acc[e] / l;
    }
    lse[((size_t)Q.b * c.H + Q.h) * Q.TK + Q.r] = mx + __logf(l);
}

// The same forward on tensor cores (--tf32): S = Q K^T and O += P V as mma_tf32 tiles
// (cuda_compat.h), inputs rounded to TF32, so results match the fp32 kernel to ~1e-3. A
// block of kTcWarps warps owns 16 query rows per warp; each key tile it loads (rounded once)
// serves all of them, and a warp none of whose rows sees a key in the tile skips it. The
// padded shared-memory strides make the fragment reads conflict-free. HD in {16, 32, 64}.
static constexpr int kTcRows = 16, kTcWarps = 4;  // query rows per warp (the mma's M); warps per block

template<int HD> struct TcSmem {
    static constexpr int KLD = HD + 4, VLD = HD + 8, PLD = kAttnTile + 4;  // row strides of ks, vs, ps
    static constexpr size_t bytes = (kAttnTile * (KLD + VLD) + kTcWarps * kTcRows * PLD) * sizeof(float);
};

// grid (query blocks of kTcWarps*kTcRows rows, H, B), block 32*kTcWarps. visited, when not
// null, counts the (16-row query tile, key tile) pairs computed.
template<int HD> static __global__ void attention_forward_tc_kernel(float* o, float* lse, const float* qkv, Config c, int T, int* visited) {
    static_assert(HD > 0 && HD % 8 == 0 && kTcWarps * kTcRows == 64, "two ballots cover a block's rows");
    using S = TcSmem<HD>;
    constexpr int NT = kAttnTile / 8, HT = HD / 8;  // 8-wide column tiles of S (keys) and of O (head)
    const int TK = T * c.K, ld = c.qkv_dim(), h = blockIdx.y, b = blockIdx.z, kv = h / (c.H / c.Hkv);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const int q0 = blockIdx.x * kTcWarps * kTcRows, r0 = q0 + warp * kTcRows;  // the block's and the warp's first row
    const float* base = qkv + (size_t)b * TK * ld;
    const float scale = 1.0f / sqrtf((float)HD);
    float* ks = dynamic_shared<float>();                    // (kAttnTile, KLD) keys
    float* vs = ks + kAttnTile * S::KLD;                    // (kAttnTile, VLD) values
    float* ps = vs + kAttnTile * S::VLD + warp * kTcRows * S::PLD;  // (kTcRows, PLD) this warp's P
    // This thread's rows r0 + g and r0 + g + 8 (d's rows): their tokens, Q as a fragments.
    int rn[2] = {0, 0}, rc[2] = {0, 0};
    bool rv[2];
    for (int i = 0; i < 2; i++) {
        rv[i] = r0 + g + 8 * i < TK;
        if (rv[i]) regrouped_token(c, T, r0 + g + 8 * i, &rn[i], &rc[i]);
    }
    float qa[HT][4], acc[HT][4];
    PHD_UNROLL
    for (int ht = 0; ht < HT; ht++)
        for (int i = 0; i < 4; i++) {
            const int r = r0 + g + 8 * (i % 2);
            qa[ht][i] = r < TK ? to_tf32(base[(size_t)r * ld + h * HD + 8 * ht + t + 4 * (i / 2)]) : 0.0f;
            acc[ht][i] = 0.0f;
        }
    float mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // per row; l sums this thread's columns only
    for (int k0 = 0; k0 < TK; k0 += kAttnTile) {
        const int k1 = min(k0 + kAttnTile, TK);
        // Bit i: block row q0 + i sees a key in the tile. Every warp computes all 64, so the
        // skip needs no vote in shared memory.
        const unsigned lo = __ballot_sync(0xffffffffu, q0 + lane < TK && query_meets_tile(c, T, q0 + lane, k0, k1));
        const unsigned hi = __ballot_sync(0xffffffffu, q0 + 32 + lane < TK && query_meets_tile(c, T, q0 + 32 + lane, k0, k1));
        if (!(lo | hi)) continue;
        for (int idx = threadIdx.x; idx < kAttnTile * HD; idx += blockDim.x) {
            const int j = idx / HD, e = idx % HD;
            const float* row = base + (size_t)(k0 + j) * ld;
            ks[j * S::KLD + e] = k0 + j < k1 ? to_tf32(row[(c.H + kv) * HD + e]) : 0.0f;
            vs[j * S::VLD + e] = k0 + j < k1 ? to_tf32(row[(c.H + c.Hkv + kv) * HD + e]) : 0.0f;
        }
        __syncthreads();
        if (((warp < 2 ? lo : hi) >> (16 * (warp % 2))) & 0xffffu) {
            if (visited && lane == 0) atomicAdd(visited, 1);
            float s[NT][4];  // S (16, kAttnTile): b = K^T, b[0] = K[key 8nt + g][dim 8ht + t]
            PHD_UNROLL
            for (int nt = 0; nt < NT; nt++) {
                s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
                PHD_UNROLL
                for (int ht = 0; ht < HT; ht++) {
                    const float* kr = ks + (8 * nt + g) * S::KLD + 8 * ht + t;
                    const float kb[2] = {kr[0], kr[4]};
                    mma_tf32(s[nt], qa[ht], kb);
                }
            }
            // Mask with the predicate, scale; each row's max over the tile (its 4 threads hold its keys).
            float tmax[2] = {-INFINITY, -INFINITY};
            PHD_UNROLL
            for (int nt = 0; nt < NT; nt++)
                for (int i = 0; i < 4; i++) {
                    const int j = k0 + 8 * nt + 2 * t + i % 2, row = i / 2;
                    int m = 0, d = 0;
                    if (j < k1) regrouped_token(c, T, j, &m, &d);
                    const bool vis = rv[row] && j < k1 && phd_visible(c, rn[row], rc[row], m, d);
                    s[nt][i] = vis ? s[nt][i] * scale : -INFINITY;
                    tmax[row] = fmaxf(tmax[row], s[nt][i]);
                }
            float corr[2], msafe[2];
            for (int row = 0; row < 2; row++) {
                tmax[row] = fmaxf(tmax[row], __shfl_xor_sync(0xffffffffu, tmax[row], 1));
                tmax[row] = fmaxf(tmax[row], __shfl_xor_sync(0xffffffffu, tmax[row], 2));
                const float mnew = fmaxf(mx[row], tmax[row]);
                msafe[row] = mnew == -INFINITY ? 0.0f : mnew;  // a row with nothing visible yet: p = 0, no NaN
                corr[row] = __expf(mx[row] - msafe[row]);
                mx[row] = mnew;
                l[row] *= corr[row];
            }
            // P = exp(S - max), rounded as the mma will read it; l sums what it reads.
            PHD_UNROLL
            for (int nt = 0; nt < NT; nt++)
                for (int i = 0; i < 4; i++) {
                    const float p = to_tf32(__expf(s[nt][i] - msafe[i / 2]));
                    l[i / 2] += p;
                    ps[(g + 8 * (i / 2)) * S::PLD + 8 * nt + 2 * t + i % 2] = p;
                }
            __syncwarp();
            // O = O * corr + P V: a = P[row][key 8kt + t], b = V[key 8kt + t][dim 8ht + g].
            PHD_UNROLL
            for (int ht = 0; ht < HT; ht++)
                for (int i = 0; i < 4; i++) acc[ht][i] *= corr[i / 2];
            PHD_UNROLL
            for (int kt = 0; kt < NT; kt++) {
                const float* pr = ps + g * S::PLD + 8 * kt + t;
                const float pa[4] = {pr[0], pr[8 * S::PLD], pr[4], pr[8 * S::PLD + 4]};
                PHD_UNROLL
                for (int ht = 0; ht < HT; ht++) {
                    const float* vr = vs + (8 * kt + t) * S::VLD + 8 * ht + g;
                    const float vb[2] = {vr[0], vr[4 * S::VLD]};
                    mma_tf32(acc[ht], pa, vb);
                }
            }
            __syncwarp();  // ps is rewritten by the next tile
        }
        __syncthreads();  // ks, vs too
    }
    for (int row = 0; row < 2; row++) {
        l[row] += __shfl_xor_sync(0xffffffffu, l[row], 1);
        l[row] += __shfl_xor_sync(0xffffffffu, l[row], 2);
    }
    PHD_UNROLL
    for (int ht = 0; ht < HT; ht++)
        for (int i = 0; i < 4; i++) {
            const int row = i / 2, r = r0 + g + 8 * row;
            if (rv[row]) o[((size_t)b * TK + r) * c.H * HD + h * HD + 8 * ht + 2 * t + i % 2] = acc[ht][i] / l[row];
        }
    for (int row = 0; row < 2; row++)
        if (t == 0 && rv[row]) lse[((size_t)b * c.H + h) * TK + r0 + g + 8 * row] = mx[row] + __logf(l[row]);
}

// grid (query tiles, H, B), block kAttnTile: thread = query row; writes its dq. Its dO row
// waits in shared memory (padded: each thread reads its own row, conflict-free), so that
// q and dq fit in registers.
template<int HD>
static __global__ void attention_backward_dq_kernel(float* dqkv, const float* dout, const float* qkv, const float* o, const float* lse,
                                                    Config c, int T) {
    constexpr int MAX = Hd<HD>::max;
    const QueryRow Q = query_row(qkv, c, T);
    const int hd = Hd<HD>::get(c), t = threadIdx.x;
    float* ks = dynamic_shared<float>();         // (kAttnTile, hd)
    float* vs = ks + kAttnTile * hd;             // (kAttnTile, hd)
    float* dO = vs + kAttnTile * hd + t * (hd + 1);  // this thread's row of (kAttnTile, hd + 1)
    const size_t orow = ((size_t)Q.b * Q.TK + (Q.valid ? Q.r : 0)) * c.H * hd + Q.h * hd;
    float q[MAX], dq[MAX], Di = 0.0f;
    PHD_UNROLL
    for (int e = 0; e < MAX; e++) {
        if (e >= hd) break;
        q[e] = Q.valid ? Q.base[(size_t)Q.r * Q.ld + Q.h * hd + e] : 0.0f;
        dO[e] = Q.valid ? dout[orow + e] : 0.0f;
        Di += Q.valid ? dO[e] * o[orow + e] : 0.0f;  // sum_j p_j dp_j
        dq[e] = 0.0f;
    }
    const float L = Q.valid ? lse[((size_t)Q.b * c.H + Q.h) * Q.TK + Q.r] : 0.0f;
    for (int k0 = 0; k0 < Q.TK; k0 += kAttnTile) {
        const int k1 = min(k0 + kAttnTile, Q.TK);
        if (!__ballot_sync(0xffffffffu, Q.valid && query_meets_tile(c, T, Q.r, k0, k1))) continue;
        load_kv_tile<HD>(ks, vs, Q.base, c, Q.kv, k0, k1);
        for (int j = 0; Q.valid && j < k1 - k0; j++) {
            int m, d;
            regrouped_token(c, T, k0 + j, &m, &d);
            if (!phd_visible(c, Q.n, Q.copy, m, d)) continue;
            float s = 0.0f, dp = 0.0f;
            PHD_UNROLL
            for (int e = 0; e < MAX; e++) {
                if (e >= hd) break;
                s += q[e] * ks[j * hd + e];
                dp += dO[e] * vs[j * hd + e];
            }
            const float ds = __expf(s * Q.scale - L) * (dp - Di) * Q.scale;
            PHD_UNROLL
            for (int e = 0; e < MAX; e++) {
                if (e >= hd) break;
                dq[e] += ds * ks[j * hd + e];
            }
        }
        __syncthreads();
    }
    if (!Q.valid) return;
    PHD_UNROLL
    for (int e = 0; e < MAX; e++) {
        if (e >= hd) break;
        dqkv[((size_t)Q.b * Q.TK + Q.r) * Q.ld + Q.h * hd + e] = dq[e];
    }
}

// grid (key tiles, Hkv, B), block kAttnTile: thread = key row; sums its dk and dv over
// the query heads of its group and every query tile that sees its key tile. Its k and v
// rows wait in shared memory (padded, conflict-free), so that dk and dv fit in registers;
// the query tile's q and dO rows are loaded coalesced.
template<int HD>
static __global__ void attention_backward_dkdv_kernel(float* dqkv, const float* dout, const float* qkv, const float* o,
                                                      const float* lse, Config c, int T) {
    constexpr int MAX = Hd<HD>::max;
    __shared__ float ls[kAttnTile], Ds[kAttnTile];
    __shared__ int qn[kAttnTile], qc[kAttnTile];
    const int TK = T * c.K, hd = Hd<HD>::get(c), ld = c.qkv_dim(), kv = blockIdx.y, b = blockIdx.z, t = threadIdx.x;
    float* qs = dynamic_shared<float>();             // (kAttnTile, hd)
    float* dos = qs + kAttnTile * hd;                // (kAttnTile, hd)
    float* kr = dos + kAttnTile * hd + t * (hd + 1);  // this thread's rows of (kAttnTile, hd + 1) each
    float* vr = kr + kAttnTile * (hd + 1);
    const int k0 = blockIdx.x * kAttnTile, k1 = min(k0 + kAttnTile, TK), r = k0 + t;
    const bool valid = r < TK;
    const float* base = qkv + (size_t)b * TK * ld;
    const float scale = 1.0f / sqrtf((float)hd);
    int m = 0, d = 0;
    if (valid) regrouped_token(c, T, r, &m, &d);
    float dk[MAX], dv[MAX];
    PHD_UNROLL
    for (int e = 0; e < MAX; e++) {
        if (e >= hd) break;
        kr[e] = valid ? base[(size_t)r * ld + (c.H + kv) * hd + e] : 0.0f;
        vr[e] = valid ? base[(size_t)r * ld + (c.H + c.Hkv + kv) * hd + e] : 0.0f;
        dk[e] = dv[e] = 0.0f;
    }
    const int group = c.H / c.Hkv;
    for (int h = kv * group; h < (kv + 1) * group; h++)
        for (int q0 = 0; q0 < TK; q0 += kAttnTile) {
            const int qr = q0 + t, q1 = min(q0 + kAttnTile, TK);
            if (!__ballot_sync(0xffffffffu, qr < q1 && query_meets_tile(c, T, qr, k0, k1))) continue;
            for (int idx = t; idx < (q1 - q0) * hd; idx += kAttnTile) {  // the query tile's q and dO rows
                qs[idx] = base[(size_t)(q0 + idx / hd) * ld + h * hd + idx % hd];
                dos[idx] = dout[((size_t)b * TK + q0 + idx / hd) * c.H * hd + h * hd + idx % hd];
            }
            __syncthreads();
            if (qr < q1) {  // this thread's query row: D = dO . o, lse, token
                const size_t orow = ((size_t)b * TK + qr) * c.H * hd + h * hd;
                float Di = 0.0f;
                for (int e = 0; e < hd; e++) Di += dos[t * hd + e] * o[orow + e];
                Ds[t] = Di;
                ls[t] = lse[((size_t)b * c.H + h) * TK + qr];
                regrouped_token(c, T, qr, &qn[t], &qc[t]);
            }
            __syncthreads();
            for (int i = 0; valid && i < q1 - q0; i++) {
                if (!phd_visible(c, qn[i], qc[i], m, d)) continue;
                float s = 0.0f, dp = 0.0f;
                PHD_UNROLL
                for (int e = 0; e < MAX; e++) {
                    if (e >= hd) break;
                    s += qs[i * hd + e] * kr[e];
                    dp += dos[i * hd + e] * vr[e];
                }
                const float p = __expf(s * scale - ls[i]), ds = p * (dp - Ds[i]) * scale;
                PHD_UNROLL
                for (int e = 0; e < MAX; e++) {
                    if (e >= hd) break;
                    dv[e] += p * dos[i * hd + e];
                    dk[e] += ds * qs[i * hd + e];
                }
            }
            __syncthreads();
        }
    if (!valid) return;
    PHD_UNROLL
    for (int e = 0; e < MAX; e++) {
        if (e >= hd) break;
        dqkv[((size_t)b * TK + r) * ld + (c.H + kv) * hd + e] = dk[e];
        dqkv[((size_t)b * TK + r) * ld + (c.H + c.Hkv + kv) * hd + e] = dv[e];
    }
}

// Calls f(std::integral_constant<int, HD>()) with the kernels' instance for c's head size.
template<typename F> void with_head_dim(const Config& c, F f) {
    if (c.hd() > kAttnMaxHd) die("attention kernel: head size %d exceeds %d", c.hd(), kAttnMaxHd);
    switch (c.hd()) {
        case 16: f(std::integral_constant<int, 16>()); break;
        case 32: f(std::integral_constant<int, 32>()); break;
        case 64: f(std::integral_constant<int, 64>()); break;
        default: f(std::integral_constant<int, 0>());
    }
}

// Launchers. qkv, o, lse, dout, dqkv are device pointers in the regrouped layout.
// Dynamic shared memory of each kernel at head size hd: the key (or query) tile, plus the
// padded own rows of the backward kernels.
struct AttentionSmem {
    size_t forward, dq, dkdv;
    explicit AttentionSmem(int hd)
        : forward(2 * kAttnTile * hd * sizeof(float)), dq((2 * hd + hd + 1) * kAttnTile * sizeof(float)),
          dkdv((2 * hd + 2 * (hd + 1)) * kAttnTile * sizeof(float)) {}
};
template<typename Kernel, typename... Args>
void launch_attention(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args... args) {
    cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    launch(kernel, grid, block, smem, stream, args...);
}

// tensor_cores: the TF32 kernel where it has an instance for the head size (16, 32, 64),
// else the fp32 one.
inline void attention_forward(float* o, float* lse, const float* qkv, const Config& c, int B, int T, cudaStream_t stream,
                              int* visited = nullptr, bool tensor_cores = false) {
    const int TK = T * c.K;
    with_head_dim(c, [&](auto hd) {
        if constexpr (hd.value > 0) {
            if (tensor_cores) {
                const int rows = kTcWarps * kTcRows;
                launch_attention(attention_forward_tc_kernel<hd.value>, dim3((TK + rows - 1) / rows, c.H, B), dim3(32 * kTcWarps),
                                 TcSmem<hd.value>::bytes, stream, o, lse, qkv, c, T, visited);
                return;
            }
        }
        launch_attention(attention_forward_kernel<hd.value>, dim3((TK + kAttnTile - 1) / kAttnTile, c.H, B), dim3(kAttnTile),
                         AttentionSmem(c.hd()).forward, stream, o, lse, qkv, c, T, visited);
    });
    cudaCheck(cudaGetLastError());
}

inline void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* o, const float* lse,
                               const Config& c, int B, int T, cudaStream_t stream) {
    const int tiles = (T * c.K + kAttnTile - 1) / kAttnTile;
    const AttentionSmem smem(c.hd());
    with_head_dim(c, [&](auto hd) {
        launch_attention(attention_backward_dq_kernel<hd.value>, dim3(tiles, c.H, B), dim3(kAttnTile), smem.dq, stream, dqkv, dout, qkv, o, lse, c, T);
        launch_attention(attention_backward_dkdv_kernel<hd.value>, dim3(tiles, c.Hkv, B), dim3(kAttnTile), smem.dkdv, stream, dqkv, dout, qkv, o, lse, c,
                         T);
    });
    cudaCheck(cudaGetLastError());
}
