// kernels/attention_tc.cuh: PHD attention on tensor cores (--tf32), forward and backward:
// the matrix products of each tile (S = Q K^T, O += P V; dP = dO V^T, dQ += dS K,
// dV += P^T dO, dK += dS^T Q) run as warp-wide mma_tf32 tiles (cuda_compat.h) on inputs
// rounded to TF32, so results match the fp32 kernels of attention.cuh to ~1e-3; the
// softmax, the mask and every sum stay fp32. Same layout, same tile skipping and the same
// predicate (attention_common.cuh).
//
// A block has kTcWarps warps of 16 rows each (the mma's M): query rows in the forward and
// dq kernels, key rows in dk/dv. Every tile of the other side it loads into shared memory
// (kAttnTile rows, rounded once) serves all four warps; a warp none of whose rows has a
// visible pair in the tile skips it, and one whose rows see every key of it
// (tile_all_visible: originals before all of them) skips the mask. Each warp sums its own
// rows' outputs in a fixed order:
// deterministic, no atomics. Head sizes 16, 32 and 64; others use the fp32 kernels.
//
// In a warp, lane = 4 g + t; a 16 x (8 n) tile in the mma's d layout gives the lane
// elements [n][i] at row g + 8 (i / 2), column 8 n + 2 t + i % 2 (tc_row, tc_col).
#pragma once
#include "attention_common.cuh"

static constexpr int kTcRows = 16, kTcWarps = 4;  // rows per warp (the mma's M); warps per block
static constexpr int kTcBlockRows = kTcRows * kTcWarps;

// Shared-memory row strides, padded against bank conflicts: tc_abt reads rows 8n + g at
// column t (conflict-free at 4 mod 32), tc_pv rows t at column g (conflict-free at 8 mod
// 32). The backward reads its tiles both ways and takes ABT (2-way conflicts in tc_pv).
template<int HD> struct TcSmem {
    static constexpr int ABT = HD + 4, PV = HD + 8, P = kAttnTile + 4;
};
// Dynamic shared memory of the three kernels: two tiles (the forward's second read as PV)
// plus the warps' P.
template<int HD> constexpr size_t tc_smem_bytes(bool forward) {
    return (kAttnTile * (TcSmem<HD>::ABT + (forward ? TcSmem<HD>::PV : TcSmem<HD>::ABT)) + kTcBlockRows * TcSmem<HD>::P) * sizeof(float);
}

static __device__ int tc_row(int lane, int i) { return lane / 4 + 8 * (i / 2); }
static __device__ int tc_col(int lane, int n, int i) { return 8 * n + 2 * (lane % 4) + i % 2; }

// a: the mma's a fragments of 16 rows [r0, r0 + 16) x HD columns of a global matrix m
// (row stride ld), rounded to TF32; rows at or past rend read as 0.
template<int HD> static __device__ void tc_load_a(float (&a)[HD / 8][4], const float* m, size_t ld, int r0, int rend) {
    const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
    PHD_UNROLL
    for (int k = 0; k < HD / 8; k++)
        for (int i = 0; i < 4; i++) {
            const int r = r0 + g + 8 * (i % 2);
            a[k][i] = r < rend ? to_tf32(m[(size_t)r * ld + 8 * k + t + 4 * (i / 2)]) : 0.0f;
        }
}

// s (16, kAttnTile) = a (16, HD) B^T, B (kAttnTile, HD) in shared memory, row stride ABT.
template<int HD> static __device__ void tc_abt(float (&s)[kAttnTile / 8][4], const float (&a)[HD / 8][4], const float* bm) {
    const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
    PHD_UNROLL
    for (int n = 0; n < kAttnTile / 8; n++) {
        s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        PHD_UNROLL
        for (int k = 0; k < HD / 8; k++) {
            const float* p = bm + (8 * n + g) * TcSmem<HD>::ABT + 8 * k + t;
            const float b[2] = {p[0], p[4]};
            mma_tf32(s[n], a[k], b);
        }
    }
}

// acc (16, HD) += P (16, kAttnTile) V, P in shared memory (row stride P, TF32 values), V
// (kAttnTile, HD) in shared memory with row stride ld.
template<int HD> static __device__ void tc_pv(float (&acc)[HD / 8][4], const float* pm, const float* vm, int ld) {
    constexpr int PS = TcSmem<HD>::P;
    const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
    PHD_UNROLL
    for (int k = 0; k < kAttnTile / 8; k++) {
        const float* p = pm + g * PS + 8 * k + t;
        const float a[4] = {p[0], p[8 * PS], p[4], p[8 * PS + 4]};
        PHD_UNROLL
        for (int n = 0; n < HD / 8; n++) {
            const float* v = vm + (8 * k + t) * ld + 8 * n + g;
            const float b[2] = {v[0], v[4 * ld]};
            mma_tf32(acc[n], a, b);
        }
    }
}

// Rows [k0, k0 + kAttnTile) (those before k1; zeros after) of columns col.. col + HD of a
// global matrix m (row stride ld) into shared memory with row stride sld, rounded to TF32.
// The whole block loads; consecutive threads read consecutive columns.
template<int HD> static __device__ void tc_load_tile(float* dst, int sld, const float* m, size_t ld, int col, int k0, int k1) {
    for (int idx = threadIdx.x; idx < kAttnTile * HD; idx += blockDim.x) {
        const int j = idx / HD, e = idx % HD;
        dst[j * sld + e] = k0 + j < k1 ? to_tf32(m[(size_t)(k0 + j) * ld + col + e]) : 0.0f;
    }
}

// x . y over HD columns, summed by the 4 lanes of a group (lanes 4g .. 4g + 3, each taking
// every 4th column); every lane of the group gets it. valid false: the row counts as 0.
// All lanes of the warp must call it.
template<int HD> static __device__ float tc_row_dot(const float* x, const float* y, bool valid) {
    float part = 0.0f;
    if (valid)
        for (int e = threadIdx.x % 4; e < HD; e += 4) part += x[e] * y[e];
    part += __shfl_xor_sync(0xffffffffu, part, 1);
    return part + __shfl_xor_sync(0xffffffffu, part, 2);
}

// Bit w: warp w of the block whose first row is r0 has a visible pair in the tile of rows
// [k0, k1): its query rows see a key of the tile (query_side: the forward and dq kernels),
// or its key rows are seen by a query of the tile (dk/dv). Every warp computes all bits, so
// the block agrees on skipping a tile without a vote.
static __device__ unsigned tc_warps_meeting(const Config& c, int T, int r0, int k0, int k1, bool query_side) {
    static_assert(kTcWarps == 4 && kTcRows == 16, "two 32-row ballots cover the query side");
    const int TK = T * c.K, lane = threadIdx.x % 32;
    unsigned warps = 0;
    if (query_side) {
        for (int half = 0; half < 2; half++) {
            const int r = r0 + 32 * half + lane;
            const unsigned rows = __ballot_sync(0xffffffffu, r < TK && row_keys(c, T, r).meets(k0, k1));
            warps |= ((rows & 0xffffu) ? 1u : 0u) << (2 * half) | ((rows >> 16) ? 1u : 0u) << (2 * half + 1);
        }
    } else {
        for (int w = 0; w < kTcWarps; w++) {
            const int kr0 = r0 + w * kTcRows;
            for (int qs = k0; qs < k1; qs += 32) {  // the tile's queries, 32 per ballot
                const int q = qs + lane;
                warps |= (__ballot_sync(0xffffffffu, q < k1 && kr0 < TK && row_keys(c, T, q).meets(kr0, min(kr0 + kTcRows, TK))) ? 1u : 0u) << w;
            }
        }
    }
    return warps;
}

// The tokens of this lane's two rows of a warp's 16 rows from r0: r0 + tc_row(lane, 0)
// and r0 + tc_row(lane, 2) (8 further).
struct TcRows {
    int n[2] = {0, 0}, copy[2] = {0, 0};
    bool valid[2];
};
static __device__ TcRows tc_rows(const Config& c, int T, int r0) {
    TcRows R;
    for (int i = 0; i < 2; i++) {
        const int r = r0 + tc_row(threadIdx.x % 32, 2 * i);
        R.valid[i] = r < T * c.K;
        if (R.valid[i]) row_token(c, T, r, &R.n[i], &R.copy[i]);
    }
    return R;
}

// The key-tile loop of the query-side kernels (forward, dq), over the block of query rows
// from q0: for every tile of kAttnTile keys that some row of the block sees, loads the
// tile's keys and values of kv head kv into ks and vs (row strides kld, vld), then calls
// f(k0, k1) in each warp that has a visible pair in it.
template<int HD, typename F>
static __device__ void tc_key_tiles(const Config& c, int T, int q0, const float* base, int kv, float* ks, int kld, float* vs, int vld, F f) {
    const int TK = T * c.K, ld = c.qkv_dim();
    for (int k0 = 0; k0 < TK; k0 += kAttnTile) {
        const int k1 = min(k0 + kAttnTile, TK);
        const unsigned warps = tc_warps_meeting(c, T, q0, k0, k1, true);
        if (!warps) continue;
        tc_load_tile<HD>(ks, kld, base, ld, (c.H + kv) * HD, k0, k1);
        tc_load_tile<HD>(vs, vld, base, ld, (c.H + c.Hkv + kv) * HD, k0, k1);
        __syncthreads();
        if ((warps >> threadIdx.x / 32) & 1u) f(k0, k1);
        __syncthreads();  // ks and vs are rewritten by the next tile
    }
}

// Is the pair (this lane's row i / 2 of R, key row j) visible? full: the warp's rows see
// every key row before k1 (tile_all_visible), so only the bounds are checked.
static __device__ bool tc_visible(const Config& c, int T, const TcRows& R, int i, int j, int k1, bool full) {
    if (!R.valid[i / 2] || j >= k1) return false;
    if (full) return true;
    int m, d;
    row_token(c, T, j, &m, &d);
    return phd_visible(c, R.n[i / 2], R.copy[i / 2], m, d);
}

// The forward. grid (query blocks of kTcBlockRows rows, H, B), block 32 * kTcWarps.
// visited, when not null, counts the (16-row query tile, key tile) pairs computed.
template<int HD> static __global__ void attention_forward_tc_kernel(float* o, float* lse, const float* qkv, Config c, int T, int* visited) {
    using S = TcSmem<HD>;
    constexpr int NT = kAttnTile / 8, HT = HD / 8;
    const int TK = T * c.K, ld = c.qkv_dim(), h = blockIdx.y, b = blockIdx.z, kv = h / (c.H / c.Hkv);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int q0 = blockIdx.x * kTcBlockRows, r0 = q0 + warp * kTcRows;  // the block's and the warp's first row
    const float* base = qkv + (size_t)b * TK * ld;
    const float scale = 1.0f / sqrtf((float)HD);
    float* ks = dynamic_shared<float>();               // (kAttnTile, ABT) keys
    float* vs = ks + kAttnTile * S::ABT;               // (kAttnTile, PV) values
    float* ps = vs + kAttnTile * S::PV + warp * kTcRows * S::P;  // (16, P) this warp's P
    const TcRows R = tc_rows(c, T, r0);
    float qa[HT][4], acc[HT][4] = {};
    tc_load_a<HD>(qa, base + h * HD, ld, r0, TK);
    float mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // per row; l sums this lane's columns only
    tc_key_tiles<HD>(c, T, q0, base, kv, ks, S::ABT, vs, S::PV, [&](int k0, int k1) {
        if (visited && lane == 0) atomicAdd(visited, 1);
        const bool full = tile_all_visible(c, T, r0, min(r0 + kTcRows, TK), k0, k1);
        float s[NT][4];
        tc_abt<HD>(s, qa, ks);
        // Mask with the predicate, scale; each row's max over the tile (its 4 lanes hold its keys).
        float tmax[2] = {-INFINITY, -INFINITY};
        PHD_UNROLL
        for (int n = 0; n < NT; n++)
            for (int i = 0; i < 4; i++) {
                s[n][i] = tc_visible(c, T, R, i, k0 + tc_col(lane, n, i), k1, full) ? s[n][i] * scale : -INFINITY;
                tmax[i / 2] = fmaxf(tmax[i / 2], s[n][i]);
            }
        float corr[2], msafe[2];
        online_softmax_step(tmax, mx, l, corr, msafe, [](float x) { return __expf(x); });
        // P = exp(S - max), rounded as the mma reads it; l sums what it reads.
        PHD_UNROLL
        for (int n = 0; n < NT; n++)
            for (int i = 0; i < 4; i++) {
                const float p = to_tf32(__expf(s[n][i] - msafe[i / 2]));
                l[i / 2] += p;
                ps[tc_row(lane, i) * S::P + tc_col(lane, n, i)] = p;
            }
        PHD_UNROLL
        for (int n = 0; n < HT; n++)
            for (int i = 0; i < 4; i++) acc[n][i] *= corr[i / 2];
        __syncwarp();
        tc_pv<HD>(acc, ps, vs, S::PV);
        __syncwarp();  // ps is rewritten by the next tile
    });
    for (int row = 0; row < 2; row++) {
        l[row] += __shfl_xor_sync(0xffffffffu, l[row], 1);
        l[row] += __shfl_xor_sync(0xffffffffu, l[row], 2);
    }
    PHD_UNROLL
    for (int n = 0; n < HT; n++)
        for (int i = 0; i < 4; i++)
            if (R.valid[i / 2]) o[((size_t)b * TK + r0 + tc_row(lane, i)) * c.H * HD + h * HD + tc_col(lane, n, i)] = acc[n][i] / l[i / 2];
    for (int row = 0; row < 2; row++)
        if (lane % 4 == 0 && R.valid[row]) lse[((size_t)b * c.H + h) * TK + r0 + tc_row(lane, 2 * row)] = mx[row] + __logf(l[row]);
}

// dq. grid (query blocks, H, B), block 32 * kTcWarps. Per key tile: S = Q K^T and
// dP = dO V^T, then dS = P (dP - D) scale with P = exp(S scale - lse) and D = dO . o,
// then dQ += dS K.
template<int HD>
static __global__ void attention_backward_dq_tc_kernel(float* dqkv, const float* dout, const float* qkv, const float* o, const float* lse,
                                                       Config c, int T) {
    using S = TcSmem<HD>;
    constexpr int NT = kAttnTile / 8, HT = HD / 8;
    const int TK = T * c.K, ld = c.qkv_dim(), od = c.H * HD, h = blockIdx.y, b = blockIdx.z, kv = h / (c.H / c.Hkv);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int q0 = blockIdx.x * kTcBlockRows, r0 = q0 + warp * kTcRows;
    const float* base = qkv + (size_t)b * TK * ld;
    const float* dob = dout + (size_t)b * TK * od + h * HD;  // (TK, od): this head's dO rows
    const float scale = 1.0f / sqrtf((float)HD);
    float* ks = dynamic_shared<float>();               // (kAttnTile, ABT) keys: read both ways
    float* vs = ks + kAttnTile * S::ABT;               // (kAttnTile, ABT) values
    float* ps = vs + kAttnTile * S::ABT + warp * kTcRows * S::P;  // (16, P) this warp's dS
    const TcRows R = tc_rows(c, T, r0);
    float L[2], Di[2];  // this lane's rows: lse, and D = dO . o
    for (int i = 0; i < 2; i++) {
        const int r = r0 + tc_row(lane, 2 * i);
        L[i] = R.valid[i] ? lse[((size_t)b * c.H + h) * TK + r] : 0.0f;
        Di[i] = tc_row_dot<HD>(dob + (size_t)r * od, o + ((size_t)b * TK + r) * od + h * HD, R.valid[i]);
    }
    float qa[HT][4], da[HT][4], dq[HT][4] = {};
    tc_load_a<HD>(qa, base + h * HD, ld, r0, TK);
    tc_load_a<HD>(da, dob, od, r0, TK);
    tc_key_tiles<HD>(c, T, q0, base, kv, ks, S::ABT, vs, S::ABT, [&](int k0, int k1) {
        const bool full = tile_all_visible(c, T, r0, min(r0 + kTcRows, TK), k0, k1);
        float s[NT][4], dp[NT][4];
        tc_abt<HD>(s, qa, ks);
        tc_abt<HD>(dp, da, vs);
        PHD_UNROLL
        for (int n = 0; n < NT; n++)
            for (int i = 0; i < 4; i++) {
                const float p = tc_visible(c, T, R, i, k0 + tc_col(lane, n, i), k1, full) ? __expf(s[n][i] * scale - L[i / 2]) : 0.0f;
                ps[tc_row(lane, i) * S::P + tc_col(lane, n, i)] = to_tf32(p * (dp[n][i] - Di[i / 2]) * scale);
            }
        __syncwarp();
        tc_pv<HD>(dq, ps, ks, S::ABT);
        __syncwarp();
    });
    PHD_UNROLL
    for (int n = 0; n < HT; n++)
        for (int i = 0; i < 4; i++)
            if (R.valid[i / 2]) dqkv[((size_t)b * TK + r0 + tc_row(lane, i)) * ld + h * HD + tc_col(lane, n, i)] = dq[n][i];
}

// dk, dv. grid (key blocks of kTcBlockRows rows, Hkv, B), block 32 * kTcWarps. A warp owns
// 16 key rows and sums over the query heads of its group and every query tile that sees
// them: S^T = K Q^T and dP^T = V dO^T, then dV += P^T dO and dK += dS^T Q.
template<int HD>
static __global__ void attention_backward_dkdv_tc_kernel(float* dqkv, const float* dout, const float* qkv, const float* o, const float* lse,
                                                         Config c, int T) {
    using S = TcSmem<HD>;
    constexpr int NT = kAttnTile / 8, HT = HD / 8;
    PHD_SHARED(float, Ls, [kAttnTile]);
    PHD_SHARED(float, Ds, [kAttnTile]);  // the query tile's lse and D = dO . o
    PHD_SHARED(int, qn, [kAttnTile]);
    PHD_SHARED(int, qc, [kAttnTile]);    // and tokens
    const int TK = T * c.K, ld = c.qkv_dim(), od = c.H * HD, kv = blockIdx.y, b = blockIdx.z;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int kb0 = blockIdx.x * kTcBlockRows, r0 = kb0 + warp * kTcRows;  // the block's and the warp's first key row
    const float* base = qkv + (size_t)b * TK * ld;
    const float scale = 1.0f / sqrtf((float)HD);
    float* qs = dynamic_shared<float>();               // (kAttnTile, ABT) the query tile's q: read both ways
    float* dos = qs + kAttnTile * S::ABT;              // (kAttnTile, ABT) and dO
    float* ps = dos + kAttnTile * S::ABT + warp * kTcRows * S::P;  // (16, P) this warp's P^T, then dS^T
    const TcRows R = tc_rows(c, T, r0);                 // this lane's key rows
    float ka[HT][4], va[HT][4], dk[HT][4] = {}, dv[HT][4] = {};
    tc_load_a<HD>(ka, base + (c.H + kv) * HD, ld, r0, TK);
    tc_load_a<HD>(va, base + (c.H + c.Hkv + kv) * HD, ld, r0, TK);
    const int group = c.H / c.Hkv;
    for (int h = kv * group; h < (kv + 1) * group; h++)
        for (int q0 = 0; q0 < TK; q0 += kAttnTile) {
            const int q1 = min(q0 + kAttnTile, TK);
            const unsigned warps = tc_warps_meeting(c, T, kb0, q0, q1, false);
            if (!warps) continue;
            const float* dob = dout + (size_t)b * TK * od + h * HD;
            tc_load_tile<HD>(qs, S::ABT, base, ld, h * HD, q0, q1);
            tc_load_tile<HD>(dos, S::ABT, dob, od, 0, q0, q1);
            {  // 4 lanes per query row: its D, lse and token
                static_assert(4 * kAttnTile == 32 * kTcWarps, "a block holds 4 lanes per query row");
                const int j = threadIdx.x / 4, r = q0 + j;
                const float Dj = tc_row_dot<HD>(dob + (size_t)r * od, o + ((size_t)b * TK + r) * od + h * HD, r < q1);
                if (threadIdx.x % 4 == 0) {
                    Ds[j] = Dj;
                    Ls[j] = r < q1 ? lse[((size_t)b * c.H + h) * TK + r] : 0.0f;
                    qn[j] = qc[j] = 0;
                    if (r < q1) row_token(c, T, r, &qn[j], &qc[j]);
                }
            }
            __syncthreads();
            if ((warps >> warp) & 1u) {
                const bool full = tile_all_visible(c, T, q0, q1, r0, min(r0 + kTcRows, TK));
                float st[NT][4], dpt[NT][4];  // (16 keys, kAttnTile queries)
                tc_abt<HD>(st, ka, qs);
                tc_abt<HD>(dpt, va, dos);
                PHD_UNROLL
                for (int n = 0; n < NT; n++)
                    for (int i = 0; i < 4; i++) {
                        const int j = tc_col(lane, n, i), row = i / 2;
                        const bool vis = R.valid[row] && q0 + j < q1 && (full || phd_visible(c, qn[j], qc[j], R.n[row], R.copy[row]));
                        const float p = vis ? __expf(st[n][i] * scale - Ls[j]) : 0.0f;
                        st[n][i] = p * (dpt[n][i] - Ds[j]) * scale;  // dS^T
                        ps[tc_row(lane, i) * S::P + j] = to_tf32(p);
                    }
                __syncwarp();
                tc_pv<HD>(dv, ps, dos, S::ABT);
                __syncwarp();
                PHD_UNROLL
                for (int n = 0; n < NT; n++)
                    for (int i = 0; i < 4; i++) ps[tc_row(lane, i) * S::P + tc_col(lane, n, i)] = to_tf32(st[n][i]);
                __syncwarp();
                tc_pv<HD>(dk, ps, qs, S::ABT);
                __syncwarp();
            }
            __syncthreads();
        }
    PHD_UNROLL
    for (int n = 0; n < HT; n++)
        for (int i = 0; i < 4; i++) {
            if (!R.valid[i / 2]) continue;
            const size_t row = ((size_t)b * TK + r0 + tc_row(lane, i)) * ld;
            dqkv[row + (c.H + kv) * HD + tc_col(lane, n, i)] = dk[n][i];
            dqkv[row + (c.H + c.Hkv + kv) * HD + tc_col(lane, n, i)] = dv[n][i];
        }
}
