// kernels/attention.cuh: PHD attention on the GPU, forward and backward, flash-style, fp32
// (one thread per row), plus the launchers, which pick the tensor-core kernels of
// attention_tc.cuh for --tf32. The layout and the tile skipping: attention_common.cuh.
//
// Scores never touch global memory. The backward is deterministic: dk/dv are summed by
// the thread that owns the key row, dq by the thread that owns the query row, each in a
// fixed order, with no atomics.
#pragma once
#include "attention_common.cuh"
#include "attention_bf16.cuh"
#include "attention_tc.cuh"

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
    if (q.valid) row_token(c, T, q.r, &q.n, &q.copy);
    return q;
}

// Does the thread's query see key row j? Do all of its tile's queries see every key row in
// [k0, k1) (tile_all_visible)? Then the forward skips the mask; the backward kernels do not,
// since at hd = 64 the second version of their loop spills (dev/ptxas_report.sh).
static __device__ bool query_sees(const Config& c, int T, const QueryRow& Q, int j) {
    int m, d;
    row_token(c, T, j, &m, &d);
    return phd_visible(c, Q.n, Q.copy, m, d);
}
static __device__ bool query_tile_all_visible(const Config& c, int T, const QueryRow& Q, int k0, int k1) {
    return tile_all_visible(c, T, blockIdx.x * kAttnTile, min((int)(blockIdx.x + 1) * kAttnTile, Q.TK), k0, k1);
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
        if (!__ballot_sync(0xffffffffu, Q.valid && row_keys(c, T, Q.r).meets(k0, k1))) continue;
        if (visited && threadIdx.x == 0) atomicAdd(visited, 1);
        load_kv_tile<HD>(ks, vs, Q.base, c, Q.kv, k0, k1);
        const bool full = query_tile_all_visible(c, T, Q, k0, k1);
        for (int j = 0; Q.valid && j < k1 - k0; j++) {
            if (!full && !query_sees(c, T, Q, k0 + j)) continue;
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
        if (!__ballot_sync(0xffffffffu, Q.valid && row_keys(c, T, Q.r).meets(k0, k1))) continue;
        load_kv_tile<HD>(ks, vs, Q.base, c, Q.kv, k0, k1);
        for (int j = 0; Q.valid && j < k1 - k0; j++) {
            if (!query_sees(c, T, Q, k0 + j)) continue;
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
    PHD_SHARED(float, ls, [kAttnTile]);
    PHD_SHARED(float, Ds, [kAttnTile]);
    PHD_SHARED(int, qn, [kAttnTile]);
    PHD_SHARED(int, qc, [kAttnTile]);
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
    if (valid) row_token(c, T, r, &m, &d);
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
            if (!__ballot_sync(0xffffffffu, qr < q1 && row_keys(c, T, qr).meets(k0, k1))) continue;
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
                row_token(c, T, qr, &qn[t], &qc[t]);
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

// Launchers. qkv, o, lse, dout, dqkv are device pointers, rows in the row order.
// Dynamic shared memory of each kernel at head size hd: the key (or query) tile, plus the
// padded own rows of the backward kernels.
struct AttentionSmem {
    size_t forward, dq, dkdv;
    explicit AttentionSmem(int hd)
        : forward(2 * kAttnTile * hd * sizeof(float)), dq((2 * hd + hd + 1) * kAttnTile * sizeof(float)),
          dkdv((2 * hd + 2 * (hd + 1)) * kAttnTile * sizeof(float)) {}
};
// tensor_cores: the TF32 kernels of attention_tc.cuh where they have an instance for the
// head size (16, 32, 64), else the fp32 ones.
inline void attention_forward(float* o, float* lse, const float* qkv, const Config& c, int B, int T, cudaStream_t stream,
                              int* visited = nullptr, bool tensor_cores = false) {
    const int TK = T * c.K;
    with_head_dim(c, [&](auto hd) {
        if constexpr (hd.value > 0) {
            if (tensor_cores) {
                launch_with_shared(attention_forward_tc_kernel<hd.value>, dim3((TK + kTcBlockRows - 1) / kTcBlockRows, c.H, B),
                                 dim3(32 * kTcWarps), tc_smem_bytes<hd.value>(true), stream, o, lse, qkv, c, T, visited);
                return;
            }
        }
        launch_with_shared(attention_forward_kernel<hd.value>, dim3((TK + kAttnTile - 1) / kAttnTile, c.H, B), dim3(kAttnTile),
                         AttentionSmem(c.hd()).forward, stream, o, lse, qkv, c, T, visited);
    });
    cudaCheck(cudaGetLastError());
}

inline void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* o, const float* lse,
                               const Config& c, int B, int T, cudaStream_t stream, bool tensor_cores = false) {
    const int TK = T * c.K;
    with_head_dim(c, [&](auto hd) {
        if constexpr (hd.value > 0) {
            if (tensor_cores) {
                const dim3 block(32 * kTcWarps);
                const int blocks = (TK + kTcBlockRows - 1) / kTcBlockRows;
                const size_t smem = tc_smem_bytes<hd.value>(false);
                launch_with_shared(attention_backward_dq_tc_kernel<hd.value>, dim3(blocks, c.H, B), block, smem, stream, dqkv, dout, qkv, o,
                                 lse, c, T);
                launch_with_shared(attention_backward_dkdv_tc_kernel<hd.value>, dim3(blocks, c.Hkv, B), block, smem, stream, dqkv, dout, qkv,
                                 o, lse, c, T);
                return;
            }
        }
        const int tiles = (TK + kAttnTile - 1) / kAttnTile;
        const AttentionSmem smem(c.hd());
        launch_with_shared(attention_backward_dq_kernel<hd.value>, dim3(tiles, c.H, B), dim3(kAttnTile), smem.dq, stream, dqkv, dout, qkv,
                         o, lse, c, T);
        launch_with_shared(attention_backward_dkdv_kernel<hd.value>, dim3(tiles, c.Hkv, B), dim3(kAttnTile), smem.dkdv, stream, dqkv, dout,
                         qkv, o, lse, c, T);
    });
    cudaCheck(cudaGetLastError());
}
