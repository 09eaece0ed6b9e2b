// kernels/attention_bf16.cuh: PHD attention, forward and backward, on bf16 tensor cores, in
// the structure of FlashAttention-2 (Dao 2023), with PHD's tile skipping and the one
// predicate's rows.
//
// A block of kTcWarps = 4 warps owns 64 query rows, 16 per warp (the mma's M). Key and
// value tiles of kBfKeys = 64 rows are staged in shared memory by cp.async, two stages deep:
// the next visited tile loads while the warps compute on this one. Per tile and warp:
//   S = Q K^T      mma_bf16 over HD / 16 steps; Q's fragments stay in registers for the
//                  whole loop, K's come from shared memory by ldmatrix (two 8-key chunks
//                  at a time);
//   mask, scale    only in tiles that hold an invisible pair (tile_all_visible skips it),
//                  from each row's visible rows (visible_rows: two intervals, the
//                  predicate's equal by test): two compares per score;
//   softmax        online, in the log2 domain (the scale carries log2 e, fast_exp2);
//   O += P V       P is S's accumulator re-packed to bf16 as the A fragment of the next
//                  mma, never leaving registers; V's fragments come by ldmatrix.trans.
// A warp with no visible pair in a tile skips it; a tile no warp needs is neither loaded
// nor visited, so work follows the visible pairs of model.h §7. Every sum is fp32
// (the mma accumulates in fp32, l and the max in registers): bf16 only rounds Q, K, V, the
// probabilities P and the output. lse is fp32, for the backward.
//
// The backward, as FlashAttention-2's, in two kernels that need no atomics (deterministic):
// dQ per block of 64 query rows over the key tiles (S = Q K^T and dP = dO V^T, then dS = P
// (dP - D), dQ += dS K), and dK, dV per block of 64 key rows over the query heads of its
// group and the query tiles (S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q),
// each warp owning 16 rows and summing them in registers. D = dO . o per query row comes
// first, from its own small kernel. P is rebuilt from lse; the same two tiled products and
// the same two-stage cp.async pipeline serve all three kernels.
//
// Tensors (TK = T*K rows per sequence, in model.h's row order):
//   qkv  (B, TK, qkv_dim) bf16, RoPE applied    o (B, TK, H*HD) bf16     lse (B, H, TK) fp32
//   dout (B, TK, H*HD) bf16    dqkv (B, TK, qkv_dim) bf16, written whole    D (B, H, TK) fp32 scratch
// Head sizes 16, 32, 64 and 128 (the mma's k is 16).
#pragma once
#include <cstdint>
#include "attention_tc.cuh"

static constexpr int kBfKeys = 64;  // rows per tile of the other side (keys; queries in the dK/dV kernel)
static constexpr int kBfThreads = 32 * kTcWarps;
static constexpr float kLog2e = 1.44269504f, kLn2 = 0.693147182f;

// Shared memory: tiles of (kBfKeys, LD) bf16. LD pads a row by 16 bytes so that the 8 rows
// one ldmatrix reads start 4 banks apart: conflict-free. A pipeline stage holds two tiles
// (K and V; Q and dO) and, in the dK/dV kernel, the query tile's rows (BfRow, lse, D).
template<int HD> struct BfSmem {
    static constexpr int LD = HD + 8;
    static constexpr size_t tile = (size_t)kBfKeys * LD;                         // bf16 elements
    static constexpr size_t meta = kBfKeys * (3 * sizeof(int) + 2 * sizeof(float)) / sizeof(uint16_t);
    static constexpr size_t stage = 2 * tile + meta;
    static constexpr size_t bytes = 2 * stage * sizeof(uint16_t);
    static constexpr size_t dkdv_bytes = bytes + 2 * tile * sizeof(uint16_t);  // and the block's own K and V rows
};

// A query row's visible key rows: [0, orig) and [hid0, hid1) (visible_rows in model.h).
// An invalid row (past TK) sees none.
struct BfRow {
    int orig = 0, hid0 = 0, hid1 = 0;
    PHD_HOST_DEVICE bool sees(int j) const { return j < orig || (j >= hid0 && j < hid1); }
};
static __device__ BfRow bf_row(const Config& c, int T, int r) {
    BfRow q;
    if (r >= T * c.K) return q;
    int n, copy;
    row_token(c, T, r, &n, &copy);
    const VisibleRows vr = visible_rows(c, T, n, copy);
    q.orig = vr.originals;
    q.hid0 = vr.hidden_row0;
    q.hid1 = vr.hidden_row0 + vr.count - vr.originals;
    return q;
}

// a fragments of 16 rows [r0, r0 + 16) x HD columns of a global bf16 matrix m (row stride
// ld); rows at or past rend read as 0. Adjacent columns are one 32-bit word.
template<int HD> static __device__ void bf_load_a(uint32_t (&a)[HD / 16][4], const uint16_t* m, size_t ld, int r0, int rend) {
    const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
    PHD_UNROLL
    for (int kc = 0; kc < HD / 16; kc++)
        for (int r = 0; r < 4; r++) {
            const int row = r0 + g + 8 * (r % 2), col = 16 * kc + 2 * t + 8 * (r / 2);
            a[kc][r] = row < rend ? *reinterpret_cast<const uint32_t*>(m + (size_t)row * ld + col) : 0u;
        }
}

// The same fragments from 16 rows of a tile in shared memory, by ldmatrix x4 (matrices: rows
// {0..7, 8..15, 0..7, 8..15} x columns 16 kc + {0..7, 0..7, 8..15, 8..15}).
template<int HD> static __device__ void bf_load_a_shared(uint32_t (&a)[HD / 16][4], const uint16_t* rows) {
    const int lane = threadIdx.x % 32;
    PHD_UNROLL
    for (int kc = 0; kc < HD / 16; kc++) ldmatrix<4>(a[kc], rows + (lane % 16) * BfSmem<HD>::LD + 16 * kc + lane / 16 * 8);
}

// Rows [k0, k0 + kBfKeys) of columns col.. col + HD of two global bf16 matrices (row
// strides ld1, ld2) into the tiles t1, t2, 16 bytes per cp.async; the whole block issues
// them. Rows at or past rend are zeroed: masked or multiplied by 0, they must not be NaN.
template<int HD> static __device__ void bf_load_tiles(uint16_t* t1, const uint16_t* m1, size_t ld1, uint16_t* t2, const uint16_t* m2,
                                                      size_t ld2, int k0, int rend) {
    constexpr int chunks = HD / 8;  // of 8 bf16 per row
    for (int idx = threadIdx.x; idx < kBfKeys * chunks; idx += blockDim.x) {
        const int j = idx / chunks, e = idx % chunks * 8;
        uint16_t *d1 = t1 + j * BfSmem<HD>::LD + e, *d2 = t2 + j * BfSmem<HD>::LD + e;
        if (k0 + j < rend) {
            cp_async16(d1, m1 + (size_t)(k0 + j) * ld1 + e);
            cp_async16(d2, m2 + (size_t)(k0 + j) * ld2 + e);
        } else {
            for (int z = 0; z < 8; z++) d1[z] = d2[z] = 0;
        }
    }
}

// s (16, N) = a (16, HD) B^T, B N rows of a tile: mma over HD / 16 steps, B's fragments by
// ldmatrix x4, two 8-row chunks of B at a time (matrices: rows 16 n2 + {0..7, 0..7, 8..15,
// 8..15} x columns 16 kc + {0..7, 8..15, 0..7, 8..15}).
template<int HD, int N = kBfKeys> static __device__ void bf_abt(float (&s)[N / 8][4], const uint32_t (&a)[HD / 16][4], const uint16_t* bm) {
    const int lane = threadIdx.x % 32;
    PHD_UNROLL
    for (int n = 0; n < N / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    PHD_UNROLL
    for (int n2 = 0; n2 < N / 16; n2++)
        PHD_UNROLL
        for (int kc = 0; kc < HD / 16; kc++) {
            uint32_t bb[4];
            ldmatrix<4>(bb, bm + (16 * n2 + lane / 16 * 8 + lane % 8) * BfSmem<HD>::LD + 16 * kc + lane / 8 % 2 * 8);
            const uint32_t b0[2] = {bb[0], bb[1]}, b1[2] = {bb[2], bb[3]};
            mma_bf16(s[2 * n2], a[kc], b0);
            mma_bf16(s[2 * n2 + 1], a[kc], b1);
        }
}

// acc (16, HD) += p (16, N) B, B N rows of a tile, 16 at a time: the accumulators of
// bf_abt's chunks 2 kc and 2 kc + 1, packed to bf16, are the a fragment (never leaving
// registers); B's fragments by ldmatrix x4.trans (matrices: rows 16 kc + {0..7, 8..15,
// 0..7, 8..15} x columns 16 n2 + {0..7, 0..7, 8..15, 8..15}).
template<int HD, int N = kBfKeys> static __device__ void bf_pb(float (&acc)[HD / 8][4], const float (&p)[N / 8][4], const uint16_t* bm) {
    const int lane = threadIdx.x % 32;
    PHD_UNROLL
    for (int kc = 0; kc < N / 16; kc++) {
        const uint32_t pa[4] = {pack_bf16(p[2 * kc][0], p[2 * kc][1]), pack_bf16(p[2 * kc][2], p[2 * kc][3]),
                                pack_bf16(p[2 * kc + 1][0], p[2 * kc + 1][1]), pack_bf16(p[2 * kc + 1][2], p[2 * kc + 1][3])};
        PHD_UNROLL
        for (int n2 = 0; n2 < HD / 16; n2++) {
            uint32_t bb[4];
            ldmatrix<4, true>(bb, bm + (16 * kc + lane / 8 % 2 * 8 + lane % 8) * BfSmem<HD>::LD + 16 * n2 + lane / 16 * 8);
            const uint32_t b0[2] = {bb[0], bb[1]}, b1[2] = {bb[2], bb[3]};
            mma_bf16(acc[2 * n2], pa, b0);
            mma_bf16(acc[2 * n2 + 1], pa, b1);
        }
    }
}

// The two-stage pipeline over tiles i < tiles: warps(i) says which warps of the block have
// a visible pair in tile i (the same in every thread; a tile no warp needs is skipped).
// load(stage, i) issues tile i's copies into a stage buffer while compute(stage, i) works on
// the previous tile, in the warps that need it. The whole block calls it.
template<int HD, typename Warps, typename Load, typename Compute>
static __device__ void bf_pipeline(int tiles, uint16_t* smem, Warps warps, Load load, Compute compute) {
    unsigned need = 0, next_need = 0;  // warps(i), warps(n)
    auto next = [&](int i) {
        for (i++; i < tiles && !(next_need = warps(i)); i++) {}
        return i;
    };
    int i = next(-1), stage = 0;
    need = next_need;
    if (i < tiles) load(smem, i);
    cp_async_commit();
    while (i < tiles) {
        const int n = next(i);
        if (n < tiles) load(smem + (stage ^ 1) * BfSmem<HD>::stage, n);
        cp_async_commit();
        cp_async_wait<1>();  // tile i's group has landed; tile n's may still fly
        __syncthreads();
        if (need >> threadIdx.x / 32 & 1u) compute(smem + stage * BfSmem<HD>::stage, i);
        __syncthreads();  // the stage is refilled by the next iteration's load
        i = n;
        need = next_need;
        stage ^= 1;
    }
}

// The key-tile loop of the query-side kernels (forward, dQ) over the block of query rows
// from q0: every key tile some warp of the block needs goes through the pipeline (its K and V
// tiles, of kv head kv, in a stage), and f(stage, k0, k1) runs in each warp that has a
// visible pair among its rows [k0, k1).
template<int HD, typename F>
static __device__ void bf_key_tiles(const Config& c, int T, int q0, const uint16_t* base, int kv, F f) {
    const int TK = T * c.K, ld = c.qkv_dim();
    bf_pipeline<HD>((TK + kBfKeys - 1) / kBfKeys, dynamic_shared<uint16_t>(),
        [&](int i) { return tc_warps_meeting(c, T, q0, i * kBfKeys, min(i * kBfKeys + kBfKeys, TK), true); },
        [&](uint16_t* st, int i) {
            bf_load_tiles<HD>(st, base + (c.H + kv) * HD, ld, st + BfSmem<HD>::tile, base + (c.H + c.Hkv + kv) * HD, ld, i * kBfKeys, TK);
        },
        [&](const uint16_t* st, int i) { f(st, i * kBfKeys, min(i * kBfKeys + kBfKeys, TK)); });
}

// The forward. grid (query blocks of kTcBlockRows rows, H, B), block kBfThreads.
// visited, when not null, counts the (16-row query tile, key tile) pairs computed.
template<int HD>
static __global__ void attention_forward_bf16_kernel(__nv_bfloat16* o_, float* lse, const __nv_bfloat16* qkv_, Config c, int T, int* visited) {
    constexpr int NT = kBfKeys / 8, HT = HD / 8;
    const uint16_t* qkv = reinterpret_cast<const uint16_t*>(qkv_);
    uint16_t* o = reinterpret_cast<uint16_t*>(o_);
    const int TK = T * c.K, ld = c.qkv_dim(), h = blockIdx.y, b = blockIdx.z, kv = h / (c.H / c.Hkv);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const int q0 = blockIdx.x * kTcBlockRows, r0 = q0 + warp * kTcRows;  // the block's and the warp's first row
    const uint16_t* base = qkv + (size_t)b * TK * ld;
    const float scale = kLog2e / sqrtf((float)HD);  // scores in log2 units: exp2 does the softmax
    const BfRow R[2] = {bf_row(c, T, r0 + g), bf_row(c, T, r0 + g + 8)};  // this lane's two rows
    uint32_t qa[HD / 16][4];
    bf_load_a<HD>(qa, base + h * HD, ld, r0, TK);
    float acc[HT][4] = {}, mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // l: this lane's columns only
    bf_key_tiles<HD>(c, T, q0, base, kv, [&](const uint16_t* st, int k0, int k1) {
            if (visited && lane == 0) atomicAdd(visited, 1);
            float s[NT][4];
            bf_abt<HD>(s, qa, st);
            // Mask where the tile needs it, scale; each row's max over the tile.
            const bool full = tile_all_visible(c, T, r0, min(r0 + kTcRows, TK), k0, k1);
            float tmax[2] = {-INFINITY, -INFINITY};
            PHD_UNROLL
            for (int n = 0; n < NT; n++)
                for (int i2 = 0; i2 < 4; i2++) {
                    const int j = k0 + 8 * n + 2 * t + i2 % 2, row = i2 / 2;
                    const bool vis = r0 + g + 8 * row < TK && j < k1 && (full || R[row].sees(j));
                    s[n][i2] = vis ? s[n][i2] * scale : -INFINITY;
                    tmax[row] = fmaxf(tmax[row], s[n][i2]);
                }
            float corr[2], msafe[2];
            online_softmax_step(tmax, mx, l, corr, msafe, [](float x) { return fast_exp2(x); });
            PHD_UNROLL
            for (int n = 0; n < NT; n++)
                for (int i2 = 0; i2 < 4; i2++) {
                    s[n][i2] = fast_exp2(s[n][i2] - msafe[i2 / 2]);
                    l[i2 / 2] += s[n][i2];
                }
            PHD_UNROLL
            for (int n = 0; n < HT; n++)
                for (int i2 = 0; i2 < 4; i2++) acc[n][i2] *= corr[i2 / 2];
            bf_pb<HD>(acc, s, st + BfSmem<HD>::tile);
    });
    for (int row = 0; row < 2; row++) {
        l[row] += __shfl_xor_sync(0xffffffffu, l[row], 1);
        l[row] += __shfl_xor_sync(0xffffffffu, l[row], 2);
        const int r = r0 + g + 8 * row;
        if (r >= TK) continue;
        uint32_t* out = reinterpret_cast<uint32_t*>(o + ((size_t)b * TK + r) * c.H * HD + h * HD + 2 * t);
        PHD_UNROLL
        for (int n = 0; n < HT; n++) out[4 * n] = pack_bf16(acc[n][2 * row] / l[row], acc[n][2 * row + 1] / l[row]);
        if (t == 0) lse[((size_t)b * c.H + h) * TK + r] = mx[row] * kLn2 + __logf(l[row]);
    }
}

// D (B, H, TK) = dO . o of every query row, fp32: one warp per (row, head), lanes over HD.
// rows = B * TK * H: 32 rows threads, indexed in 64 bits (32-bit, the index would wrap at
// B * TK * H = 2^27; GPT-2-small at B = 8, T = 1024, K = 3, H = 12 has 2^18.2).
static __global__ void attention_backward_d_bf16_kernel(float* D, const __nv_bfloat16* dout, const __nv_bfloat16* o, Config c, int TK, long rows) {
    const long w = ((long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32, hd = c.hd();
    if (w >= rows) return;  // whole warps leave together
    const int r = (int)(w / c.H), h = (int)(w % c.H);  // r = b * TK + row: B * TK rows of activations, far below 2^31
    const size_t at = (size_t)r * c.H * hd + h * hd;
    float s = 0.0f;
    for (int e = lane; e < hd; e += 32) s += __bfloat162float(dout[at + e]) * __bfloat162float(o[at + e]);
    s = warp_sum(s);
    if (lane == 0) D[((size_t)(r / TK) * c.H + h) * TK + r % TK] = s;
}

// dQ. grid (query blocks of kTcBlockRows rows, H, B), block kBfThreads. Per key tile: S =
// Q K^T and dP = dO V^T, then dS = P (dP - D) with P = 2^(S scale log2 e - lse log2 e),
// then dQ += dS K (scaled by 1/sqrt(HD) at the end).
template<int HD>
static __global__ void attention_backward_dq_bf16_kernel(__nv_bfloat16* dqkv_, const __nv_bfloat16* dout_, const __nv_bfloat16* qkv_,
                                                         const float* lse, const float* D, Config c, int T) {
    constexpr int NT = kBfKeys / 8, HT = HD / 8;
    const uint16_t* qkv = reinterpret_cast<const uint16_t*>(qkv_);
    const int TK = T * c.K, ld = c.qkv_dim(), od = c.H * HD, h = blockIdx.y, b = blockIdx.z, kv = h / (c.H / c.Hkv);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const int q0 = blockIdx.x * kTcBlockRows, r0 = q0 + warp * kTcRows;
    const uint16_t* base = qkv + (size_t)b * TK * ld;
    const float scale = kLog2e / sqrtf((float)HD);
    const BfRow R[2] = {bf_row(c, T, r0 + g), bf_row(c, T, r0 + g + 8)};
    float L[2], Di[2];  // this lane's rows: lse in log2 units, and D
    for (int row = 0; row < 2; row++) {
        const int r = r0 + g + 8 * row;
        L[row] = r < TK ? lse[((size_t)b * c.H + h) * TK + r] * kLog2e : 0.0f;
        Di[row] = r < TK ? D[((size_t)b * c.H + h) * TK + r] : 0.0f;
    }
    uint32_t qa[HD / 16][4], da[HD / 16][4];
    bf_load_a<HD>(qa, base + h * HD, ld, r0, TK);
    bf_load_a<HD>(da, reinterpret_cast<const uint16_t*>(dout_) + (size_t)b * TK * od + h * HD, od, r0, TK);
    float dq[HT][4] = {};
    bf_key_tiles<HD>(c, T, q0, base, kv, [&](const uint16_t* st, int k0, int k1) {
            const bool full = tile_all_visible(c, T, r0, min(r0 + kTcRows, TK), k0, k1);
            float s[NT][4], dp[NT][4];
            bf_abt<HD>(s, qa, st);
            bf_abt<HD>(dp, da, st + BfSmem<HD>::tile);
            PHD_UNROLL
            for (int n = 0; n < NT; n++)
                for (int i2 = 0; i2 < 4; i2++) {
                    const int j = k0 + 8 * n + 2 * t + i2 % 2, row = i2 / 2;
                    const bool vis = r0 + g + 8 * row < TK && j < k1 && (full || R[row].sees(j));
                    s[n][i2] = vis ? fast_exp2(s[n][i2] * scale - L[row]) * (dp[n][i2] - Di[row]) : 0.0f;  // dS
                }
            bf_pb<HD>(dq, s, st);
    });
    const float inv = 1.0f / sqrtf((float)HD);
    uint16_t* dqkv = reinterpret_cast<uint16_t*>(dqkv_);
    for (int row = 0; row < 2; row++) {
        const int r = r0 + g + 8 * row;
        if (r >= TK) continue;
        uint32_t* out = reinterpret_cast<uint32_t*>(dqkv + ((size_t)b * TK + r) * ld + h * HD + 2 * t);
        PHD_UNROLL
        for (int n = 0; n < HT; n++) out[4 * n] = pack_bf16(dq[n][2 * row] * inv, dq[n][2 * row + 1] * inv);
    }
}

// dK, dV. grid (key blocks of kTcBlockRows rows, Hkv, B), block kBfThreads. A warp owns 16
// key rows and sums over the query heads of its group and every query tile that sees them:
// S^T = K Q^T and dP^T = V dO^T, then dV += P^T dO and dK += dS^T Q. The block's K and V
// rows wait in shared memory and their fragments are read per step, and at HD = 128 a step
// covers half of the query tile: held in registers next to dK and dV, they would spill.
template<int HD>
static __global__ void attention_backward_dkdv_bf16_kernel(__nv_bfloat16* dqkv_, const __nv_bfloat16* dout_, const __nv_bfloat16* qkv_,
                                                           const float* lse, const float* D, Config c, int T) {
    constexpr int HT = HD / 8, QS = HD >= 128 ? kBfKeys / 2 : kBfKeys, NT = QS / 8;  // QS queries a step
    using S = BfSmem<HD>;
    const uint16_t* qkv = reinterpret_cast<const uint16_t*>(qkv_);
    const int TK = T * c.K, ld = c.qkv_dim(), od = c.H * HD, kv = blockIdx.y, b = blockIdx.z, group = c.H / c.Hkv;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const int kb0 = blockIdx.x * kTcBlockRows, r0 = kb0 + warp * kTcRows;  // the block's and the warp's first key row
    const uint16_t* base = qkv + (size_t)b * TK * ld;
    const uint16_t* dob = reinterpret_cast<const uint16_t*>(dout_) + (size_t)b * TK * od;
    const float scale = kLog2e / sqrtf((float)HD);
    uint16_t* smem = dynamic_shared<uint16_t>();
    uint16_t *ks = smem + 2 * S::stage, *vs = ks + S::tile;  // (kBfKeys, LD) each: the block's key rows
    bf_load_tiles<HD>(ks, base + (c.H + kv) * HD, ld, vs, base + (c.H + c.Hkv + kv) * HD, ld, kb0, TK);
    cp_async_commit();  // landed by the pipeline's first wait
    float dk[HT][4] = {}, dv[HT][4] = {};
    const int qtiles = (TK + kBfKeys - 1) / kBfKeys;
    // Tile i: query head kv * group + i / qtiles, query rows from (i % qtiles) * kBfKeys. A
    // stage: the Q and dO tiles, then its rows' BfRow, lse (log2 units) and D.
    auto range = [&](int i, int* h, int* q0, int* q1) {
        *h = kv * group + i / qtiles;
        *q0 = i % qtiles * kBfKeys;
        *q1 = min(*q0 + kBfKeys, TK);
    };
    auto meta = [](const uint16_t* st) { return reinterpret_cast<const BfRow*>(st + 2 * S::tile); };
    bf_pipeline<HD>(group * qtiles, smem,
        [&](int i) { int h, q0, q1; range(i, &h, &q0, &q1); return tc_warps_meeting(c, T, kb0, q0, q1, false); },
        [&](uint16_t* st, int i) {
            int h, q0, q1;
            range(i, &h, &q0, &q1);
            bf_load_tiles<HD>(st, base + h * HD, ld, st + S::tile, dob + h * HD, od, q0, TK);
            BfRow* rows = reinterpret_cast<BfRow*>(st + 2 * S::tile);
            float* Ls = reinterpret_cast<float*>(rows + kBfKeys);
            for (int j = threadIdx.x; j < kBfKeys; j += blockDim.x) {
                const int r = q0 + j;
                rows[j] = bf_row(c, T, r);
                Ls[j] = r < TK ? lse[((size_t)b * c.H + h) * TK + r] * kLog2e : 0.0f;
                Ls[kBfKeys + j] = r < TK ? D[((size_t)b * c.H + h) * TK + r] : 0.0f;
            }
        },
        [&](const uint16_t* st, int i) {
            int h, q0, q1;
            range(i, &h, &q0, &q1);
            const BfRow* rows = meta(st);
            const float* Ls = reinterpret_cast<const float*>(rows + kBfKeys);
            const bool full = tile_all_visible(c, T, q0, q1, r0, min(r0 + kTcRows, TK));
            PHD_NO_UNROLL  // unrolled, the two steps' registers would spill at HD = 128
            for (int qs = 0; qs < kBfKeys; qs += QS) {
                float st_[NT][4], dpt[NT][4];  // (16 keys, QS queries from qs)
                uint32_t a[HD / 16][4];
                bf_load_a_shared<HD>(a, ks + warp * kTcRows * S::LD);
                bf_abt<HD, QS>(st_, a, st + qs * S::LD);
                bf_load_a_shared<HD>(a, vs + warp * kTcRows * S::LD);
                bf_abt<HD, QS>(dpt, a, st + S::tile + qs * S::LD);
                PHD_UNROLL
                for (int n = 0; n < NT; n++)
                    for (int i2 = 0; i2 < 4; i2++) {
                        const int j = qs + 8 * n + 2 * t + i2 % 2, key = r0 + g + 8 * (i2 / 2);  // query column j of the tile
                        const bool vis = key < TK && q0 + j < q1 && (full || rows[j].sees(key));
                        const float p = vis ? fast_exp2(st_[n][i2] * scale - Ls[j]) : 0.0f;
                        st_[n][i2] = p * (dpt[n][i2] - Ls[kBfKeys + j]);  // dS^T
                        dpt[n][i2] = p;                                  // P^T
                    }
                bf_pb<HD, QS>(dv, dpt, st + S::tile + qs * S::LD);
                bf_pb<HD, QS>(dk, st_, st + qs * S::LD);
            }
        });
    const float inv = 1.0f / sqrtf((float)HD);
    uint16_t* dqkv = reinterpret_cast<uint16_t*>(dqkv_);
    for (int row = 0; row < 2; row++) {
        const int r = r0 + g + 8 * row;
        if (r >= TK) continue;
        uint32_t* outk = reinterpret_cast<uint32_t*>(dqkv + ((size_t)b * TK + r) * ld + (c.H + kv) * HD + 2 * t);
        uint32_t* outv = reinterpret_cast<uint32_t*>(dqkv + ((size_t)b * TK + r) * ld + (c.H + c.Hkv + kv) * HD + 2 * t);
        PHD_UNROLL
        for (int n = 0; n < HT; n++) {
            outk[4 * n] = pack_bf16(dk[n][2 * row] * inv, dk[n][2 * row + 1] * inv);
            outv[4 * n] = pack_bf16(dv[n][2 * row], dv[n][2 * row + 1]);
        }
    }
}

// Calls f(kernels of HD) for c's head size: 16, 32, 64 or 128; others are an error.
template<typename F> static void with_bf16_head_dim(const Config& c, F f) {
    switch (c.hd()) {
        case 16: f(std::integral_constant<int, 16>()); break;
        case 32: f(std::integral_constant<int, 32>()); break;
        case 64: f(std::integral_constant<int, 64>()); break;
        case 128: f(std::integral_constant<int, 128>()); break;
        default: die("bf16 attention: head size %d has no instance (16, 32, 64, 128)", c.hd());
    }
}

// o, lse, qkv: device pointers as above.
inline void attention_forward_bf16(__nv_bfloat16* o, float* lse, const __nv_bfloat16* qkv, const Config& c, int B, int T,
                                   cudaStream_t stream, int* visited = nullptr) {
    const dim3 grid((T * c.K + kTcBlockRows - 1) / kTcBlockRows, c.H, B);
    // Two products (S = Q K^T, O = P V) over the visible pairs; q, k, v read and o, lse written once.
    count_launch("attention_forward", (double)B * T * c.K * (2.0 * (c.qkv_dim() + c.H * c.hd()) + 4.0 * c.H),
                 4.0 * c.hd() * counted_pairs(c, B, T), stream);
    with_bf16_head_dim(c, [&](auto hd) {
        launch_with_shared(attention_forward_bf16_kernel<hd.value>, grid, dim3(kBfThreads), BfSmem<hd.value>::bytes, stream, o, lse, qkv, c, T,
                         visited);
    });
    cudaCheck(cudaGetLastError());
}

// dqkv written whole; D: device scratch of B*H*T*K floats.
inline void attention_backward_bf16(__nv_bfloat16* dqkv, const __nv_bfloat16* dout, const __nv_bfloat16* qkv, const __nv_bfloat16* o,
                                    const float* lse, float* D, const Config& c, int B, int T, cudaStream_t stream) {
    const int TK = T * c.K, blocks = (TK + kTcBlockRows - 1) / kTcBlockRows;
    const long rows = (long)B * TK * c.H;
    // dQ: S, dP = dO V^T and dS K (3 products); dK/dV: S, dP, P^T dO and dS^T Q (4), over the
    // visible pairs; each reads q, k, v, dO, lse and D once and writes its part of dqkv.
    const double pairs = counted_pairs(c, B, T), in = (double)B * TK * (2.0 * (c.qkv_dim() + c.H * c.hd()) + 8.0 * c.H);
    count_launch("attention_backward D", (double)rows * (4.0 * c.hd() + 4), 0, stream);
    launch(attention_backward_d_bf16_kernel, dim3((unsigned)((rows + 7) / 8)), dim3(256), 0, stream, D, dout, o, c, TK, rows);
    with_bf16_head_dim(c, [&](auto hd) {
        const size_t smem = BfSmem<hd.value>::bytes;
        count_launch("attention_backward dQ", in + 2.0 * B * TK * c.H * c.hd(), 6.0 * c.hd() * pairs, stream);
        launch_with_shared(attention_backward_dq_bf16_kernel<hd.value>, dim3(blocks, c.H, B), dim3(kBfThreads), smem, stream, dqkv, dout,
                         qkv, lse, (const float*)D, c, T);
        count_launch("attention_backward dK dV", in + 4.0 * B * TK * c.Hkv * c.hd(), 8.0 * c.hd() * pairs, stream);
        launch_with_shared(attention_backward_dkdv_bf16_kernel<hd.value>, dim3(blocks, c.Hkv, B), dim3(kBfThreads),
                         BfSmem<hd.value>::dkdv_bytes, stream, dqkv, dout, qkv, lse, (const float*)D, c, T);
    });
    cudaCheck(cudaGetLastError());
}
