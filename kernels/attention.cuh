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

// Keys and values of rows [k0, k1) of kv head kv into shared memory, one row per thread.
static __device__ void load_kv_tile(float (*ks)[kAttnMaxHd], float (*vs)[kAttnMaxHd], const float* base, const Config& c, int kv,
                             int k0, int k1) {
    const int hd = c.hd(), ld = c.qkv_dim(), r = k0 + threadIdx.x;
    if (r < k1)
        for (int e = 0; e < hd; e++) {
            ks[threadIdx.x][e] = base[(size_t)r * ld + (c.H + kv) * hd + e];
            vs[threadIdx.x][e] = base[(size_t)r * ld + (c.H + c.Hkv + kv) * hd + e];
        }
    __syncthreads();
}

// The query row a thread owns in the kernels over grid (query tiles, H, B): its head, its
// batch's qkv rows, and its token (n, copy); rows past the end are not valid.
struct QueryRow {
    int TK, hd, ld, h, b, kv, r, n, copy;
    bool valid;
    const float* base;  // (TK, qkv_dim) of this batch
    float scale;
};
static __device__ QueryRow query_row(const float* qkv, const Config& c, int T) {
    QueryRow q;
    q.TK = T * c.K; q.hd = c.hd(); q.ld = c.qkv_dim(); q.h = blockIdx.y; q.b = blockIdx.z;
    q.kv = q.h / (c.H / c.Hkv);
    q.r = blockIdx.x * kAttnTile + threadIdx.x;
    q.valid = q.r < q.TK;
    q.base = qkv + (size_t)q.b * q.TK * q.ld;
    q.scale = 1.0f / sqrtf((float)q.hd);
    q.n = q.copy = 0;
    if (q.valid) regrouped_token(c, T, q.r, &q.n, &q.copy);
    return q;
}

// grid (query tiles, H, B), block kAttnTile: thread = query row.
// visited, when not null, counts the (query tile, key tile) pairs computed.
static __global__ void attention_forward_kernel(float* o, float* lse, const float* qkv, Config c, int T, int* visited) {
    __shared__ float ks[kAttnTile][kAttnMaxHd], vs[kAttnTile][kAttnMaxHd];
    const QueryRow Q = query_row(qkv, c, T);
    const int TK = Q.TK, hd = Q.hd, ld = Q.ld, h = Q.h, b = Q.b, kv = Q.kv, r = Q.r, n = Q.n, copy = Q.copy;
    const bool valid = Q.valid;
    const float* base = Q.base;
    const float scale = Q.scale;
    float q[kAttnMaxHd], acc[kAttnMaxHd];
    for (int e = 0; e < hd; e++) { q[e] = valid ? base[(size_t)r * ld + h * hd + e] : 0.0f; acc[e] = 0.0f; }
    float mx = -INFINITY, l = 0.0f;
    for (int k0 = 0; k0 < TK; k0 += kAttnTile) {
        const int k1 = min(k0 + kAttnTile, TK);
        if (!__ballot_sync(0xffffffffu, valid && query_meets_tile(c, T, r, k0, k1))) continue;
        if (visited && threadIdx.x == 0) atomicAdd(visited, 1);
        load_kv_tile(ks, vs, base, c, kv, k0, k1);
        for (int j = 0; valid && j < k1 - k0; j++) {
            int m, d;
            regrouped_token(c, T, k0 + j, &m, &d);
            if (!phd_visible(c, n, copy, m, d)) continue;
            float s = 0.0f;
            for (int e = 0; e < hd; e++) s += q[e] * ks[j][e];
            s *= scale;
            const float mnew = fmaxf(mx, s), corr = __expf(mx - mnew), p = __expf(s - mnew);
            for (int e = 0; e < hd; e++) acc[e] = acc[e] * corr + p * vs[j][e];
            l = l * corr + p;
            mx = mnew;
        }
        __syncthreads();
    }
    if (!valid) return;
    for (int e = 0; e < hd; e++) o[((size_t)b * TK + r) * c.H * hd + h * hd + e] = acc[e] / l;
    lse[((size_t)b * c.H + h) * TK + r] = mx + __logf(l);
}

// grid (query tiles, H, B), block kAttnTile: thread = query row; writes its dq.
static __global__ void attention_backward_dq_kernel(float* dqkv, const float* dout, const float* qkv, const float* o,
                                             const float* lse, Config c, int T) {
    __shared__ float ks[kAttnTile][kAttnMaxHd], vs[kAttnTile][kAttnMaxHd];
    const QueryRow Q = query_row(qkv, c, T);
    const int TK = Q.TK, hd = Q.hd, ld = Q.ld, h = Q.h, b = Q.b, kv = Q.kv, r = Q.r, n = Q.n, copy = Q.copy;
    const bool valid = Q.valid;
    const float* base = Q.base;
    const float scale = Q.scale;
    const size_t orow = ((size_t)b * TK + (valid ? r : 0)) * c.H * hd + h * hd;
    float q[kAttnMaxHd], dO[kAttnMaxHd], dq[kAttnMaxHd], Di = 0.0f;
    for (int e = 0; e < hd; e++) {
        q[e] = valid ? base[(size_t)r * ld + h * hd + e] : 0.0f;
        dO[e] = valid ? dout[orow + e] : 0.0f;
        Di += valid ? dO[e] * o[orow + e] : 0.0f;  // sum_j p_j dp_j
        dq[e] = 0.0f;
    }
    const float L = valid ? lse[((size_t)b * c.H + h) * TK + r] : 0.0f;
    for (int k0 = 0; k0 < TK; k0 += kAttnTile) {
        const int k1 = min(k0 + kAttnTile, TK);
        if (!__ballot_sync(0xffffffffu, valid && query_meets_tile(c, T, r, k0, k1))) continue;
        load_kv_tile(ks, vs, base, c, kv, k0, k1);
        for (int j = 0; valid && j < k1 - k0; j++) {
            int m, d;
            regrouped_token(c, T, k0 + j, &m, &d);
            if (!phd_visible(c, n, copy, m, d)) continue;
            float s = 0.0f, dp = 0.0f;
            for (int e = 0; e < hd; e++) { s += q[e] * ks[j][e]; dp += dO[e] * vs[j][e]; }
            const float ds = __expf(s * scale - L) * (dp - Di) * scale;
            for (int e = 0; e < hd; e++) dq[e] += ds * ks[j][e];
        }
        __syncthreads();
    }
    if (!valid) return;
    for (int e = 0; e < hd; e++) dqkv[((size_t)b * TK + r) * ld + h * hd + e] = dq[e];
}

// grid (key tiles, Hkv, B), block kAttnTile: thread = key row; sums its dk and dv over
// the query heads of its group and every query tile that sees its key tile.
static __global__ void attention_backward_dkdv_kernel(float* dqkv, const float* dout, const float* qkv, const float* o,
                                               const float* lse, Config c, int T) {
    __shared__ float qs[kAttnTile][kAttnMaxHd], dos[kAttnTile][kAttnMaxHd], ls[kAttnTile], Ds[kAttnTile];
    __shared__ int qn[kAttnTile], qc[kAttnTile];
    const int TK = T * c.K, hd = c.hd(), ld = c.qkv_dim(), kv = blockIdx.y, b = blockIdx.z;
    const int k0 = blockIdx.x * kAttnTile, k1 = min(k0 + kAttnTile, TK), r = k0 + threadIdx.x;
    const bool valid = r < TK;
    const float* base = qkv + (size_t)b * TK * ld;
    const float scale = 1.0f / sqrtf((float)hd);
    int m = 0, d = 0;
    if (valid) regrouped_token(c, T, r, &m, &d);
    float k[kAttnMaxHd], v[kAttnMaxHd], dk[kAttnMaxHd], dv[kAttnMaxHd];
    for (int e = 0; e < hd; e++) {
        k[e] = valid ? base[(size_t)r * ld + (c.H + kv) * hd + e] : 0.0f;
        v[e] = valid ? base[(size_t)r * ld + (c.H + c.Hkv + kv) * hd + e] : 0.0f;
        dk[e] = dv[e] = 0.0f;
    }
    const int group = c.H / c.Hkv;
    for (int h = kv * group; h < (kv + 1) * group; h++)
        for (int q0 = 0; q0 < TK; q0 += kAttnTile) {
            const int qr = q0 + threadIdx.x, q1 = min(q0 + kAttnTile, TK);
            if (!__ballot_sync(0xffffffffu, qr < q1 && query_meets_tile(c, T, qr, k0, k1))) continue;
            if (qr < q1) {  // this thread loads query row qr of the tile
                const size_t orow = ((size_t)b * TK + qr) * c.H * hd + h * hd;
                float Di = 0.0f;
                for (int e = 0; e < hd; e++) {
                    qs[threadIdx.x][e] = base[(size_t)qr * ld + h * hd + e];
                    dos[threadIdx.x][e] = dout[orow + e];
                    Di += dout[orow + e] * o[orow + e];
                }
                Ds[threadIdx.x] = Di;
                ls[threadIdx.x] = lse[((size_t)b * c.H + h) * TK + qr];
                regrouped_token(c, T, qr, &qn[threadIdx.x], &qc[threadIdx.x]);
            }
            __syncthreads();
            for (int i = 0; valid && i < q1 - q0; i++) {
                if (!phd_visible(c, qn[i], qc[i], m, d)) continue;
                float s = 0.0f, dp = 0.0f;
                for (int e = 0; e < hd; e++) { s += qs[i][e] * k[e]; dp += dos[i][e] * v[e]; }
                const float p = __expf(s * scale - ls[i]), ds = p * (dp - Ds[i]) * scale;
                for (int e = 0; e < hd; e++) { dv[e] += p * dos[i][e]; dk[e] += ds * qs[i][e]; }
            }
            __syncthreads();
        }
    if (!valid) return;
    for (int e = 0; e < hd; e++) {
        dqkv[((size_t)b * TK + r) * ld + (c.H + kv) * hd + e] = dk[e];
        dqkv[((size_t)b * TK + r) * ld + (c.H + c.Hkv + kv) * hd + e] = dv[e];
    }
}

// Launchers. qkv, o, lse, dout, dqkv are device pointers in the regrouped layout.
inline void attention_forward(float* o, float* lse, const float* qkv, const Config& c, int B, int T, cudaStream_t stream,
                              int* visited = nullptr) {
    if (c.hd() > kAttnMaxHd) die("attention kernel: head size %d exceeds %d", c.hd(), kAttnMaxHd);
    const int tiles = (T * c.K + kAttnTile - 1) / kAttnTile;
    launch(attention_forward_kernel, dim3(tiles, c.H, B), dim3(kAttnTile), 0, stream, o, lse, qkv, c, T, visited);
    cudaCheck(cudaGetLastError());
}

inline void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* o, const float* lse,
                               const Config& c, int B, int T, cudaStream_t stream) {
    const int tiles = (T * c.K + kAttnTile - 1) / kAttnTile;
    launch(attention_backward_dq_kernel, dim3(tiles, c.H, B), dim3(kAttnTile), 0, stream, dqkv, dout, qkv, o, lse, c, T);
    launch(attention_backward_dkdv_kernel, dim3(tiles, c.Hkv, B), dim3(kAttnTile), 0, stream, dqkv, dout, qkv, o, lse, c, T);
    cudaCheck(cudaGetLastError());
}
