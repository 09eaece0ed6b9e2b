// kernels/attention_bf16.cuh: PHD attention, forward and backward, on bf16 tensor cores, in
// the structure of FlashAttention-2 (Dao 2023), with PHD's tile skipping and the one
// predicate's rows.
//
// A block has kTcWarps = 4 warps; a warp owns BfWarp<HD>::rows query rows: 32 (two of the
// mma's 16-row tiles) at head sizes up to 64, 16 at 128, where two tiles' registers would
// spill. Key and value tiles of kBfKeys = 64 rows are staged in shared memory by cp.async,
// two stages deep: the next visited tile loads while the warps compute on this one. Per
// tile and warp:
//   S = Q K^T      mma_bf16 over HD / 16 steps; Q's fragments stay in registers for the
//                  whole loop, K's come from shared memory by ldmatrix, each serving both of
//                  the warp's 16-row tiles (two mma per 8 keys and 16 columns);
//   mask           only in tiles that hold an invisible pair: a second instance of the
//                  tile's code, without a compare, runs the others; the mask is each row's
//                  visible rows (visible_rows: two intervals, the predicate's equal by test);
//   softmax        online, in the log2 domain: p = 2^(s scale - m scale), one FMA and an
//                  ex2 per score, the scale (log2 e / sqrt(HD)) folded into the FMA;
//   O += P V       P is S's accumulator re-packed to bf16 as the A fragment of the next
//                  mma, never leaving registers; V's fragments come by ldmatrix.trans.
// Which tiles a warp visits, and in which it may skip the mask, is not worked out in the
// kernel: the tile map (bf_tile_map) holds a byte per (block, tile), computed on the host
// once per shape from every row's visible rows; a tile no warp of the block needs is
// neither loaded nor visited, so work follows the visible pairs of model.h §7, and the scan
// over a block's tiles is a byte load each. Every sum is fp32 (the mma accumulates in fp32, l
// and the max in registers): bf16 only rounds Q, K, V, the probabilities P and the output.
// lse is fp32, for the backward.
//
// The backward, in three kernels that need no atomics (deterministic): D = dO . o per query
// row; dQ per block of query rows over the key tiles (S = Q K^T and dP = dO V^T, then dS = P
// (dP - D), dQ += dS K); and dK, dV per block of 64 key rows over the query heads of its
// group and the query tiles (S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q), each
// warp owning 16 key rows and summing them in registers. FlashAttention-2 computes dQ in the
// dK/dV kernel with fp32 atomics, 5 products instead of 7; made deterministic, its dQ
// partials would cross memory (8 bytes a visible pair at HD 64: ~15 GB a step of
// phd-cswa-3-16-32 at GPT-2 small, B = 8, T = 1024), where recomputing S and dP costs
// 4 HD FLOPs a pair (~0.5 TFLOP there): dev/README.md counts both. P is rebuilt from lse;
// the same tiled products and the same two-stage cp.async pipeline serve all the kernels.
//
// Tensors (TK = T*K rows per sequence, in model.h's row order):
//   qkv  (B, TK, qkv_dim) bf16, RoPE applied    o (B, TK, H*HD) bf16     lse (B, H, TK) fp32
//   dout (B, TK, H*HD) bf16    dqkv (B, TK, qkv_dim) bf16, written whole    D (B, H, TK) fp32 scratch
// Head sizes 16, 32, 64 and 128 (the mma's k is 16).
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include "attention_tc.cuh"

static constexpr int kBfKeys = 64;  // rows per tile of the other side (keys; queries in the dK/dV kernel)
static constexpr int kBfThreads = 32 * kTcWarps;
static constexpr float kLog2e = 1.44269504f, kLn2 = 0.693147182f;

// The query-side kernels' (forward, dQ) rows: MT 16-row mma tiles a warp.
template<int HD> struct BfWarp {
    static constexpr int MT = HD <= 64 ? 2 : 1, rows = 16 * MT, block = kTcWarps * rows;
};

// Shared memory: tiles of (kBfKeys, LD) bf16. LD pads a row by 16 bytes so that the 8 rows
// one ldmatrix reads start 4 banks apart: conflict-free. A pipeline stage holds two tiles
// (K and V; Q and dO) and, in the dK/dV kernel, the query tile's rows (RowKeys, lse, D).
template<int HD> struct BfSmem {
    static constexpr int LD = HD + 8;
    static constexpr size_t tile = (size_t)kBfKeys * LD;                         // bf16 elements
    static constexpr size_t meta = kBfKeys * (3 * sizeof(int) + 2 * sizeof(float)) / sizeof(uint16_t);
    static constexpr size_t stage = 2 * tile + meta;
    static constexpr size_t bytes = 2 * stage * sizeof(uint16_t);
    static constexpr size_t dkdv_bytes = bytes + 2 * tile * sizeof(uint16_t);  // and the block's own K and V rows
};

// The tile map of a launch: byte [block][tile] for blocks of kTcWarps warps of warp_rows
// rows and tiles of kBfKeys rows of the other side. query_side (forward, dQ): warps own
// query rows, tiles are key rows; else (dK/dV) warps own key rows, tiles are query rows,
// repeated `repeat` times along a block's row (the query heads of a KV group). Bit w: warp
// w and the tile hold a visible pair (the warp visits it); bit 4 + w: every pair is
// visible, and both are whole (the warp skips the mask). From row_keys, on the host; the
// tests check every bit against the predicate.
inline std::vector<uint8_t> bf_tile_map(const Config& c, int T, int warp_rows, bool query_side, int repeat = 1) {
    const int TK = T * c.K, tiles = (TK + kBfKeys - 1) / kBfKeys, rows = kTcWarps * warp_rows, blocks = (TK + rows - 1) / rows;
    std::vector<RowKeys> R(TK);
    for (int r = 0; r < TK; r++) R[r] = row_keys(c, T, r);
    std::vector<uint8_t> map((size_t)blocks * tiles * repeat);
    for (int b = 0; b < blocks; b++)
        for (int i = 0; i < tiles; i++) {
            uint8_t m = 0;
            for (int w = 0; w < kTcWarps; w++) {
                const int w0 = b * rows + w * warp_rows, w1 = std::min(w0 + warp_rows, TK), t0 = i * kBfKeys, t1 = std::min(t0 + kBfKeys, TK);
                if (w0 >= TK) continue;
                const int q0 = query_side ? w0 : t0, q1 = query_side ? w1 : t1, k0 = query_side ? t0 : w0, k1 = query_side ? t1 : w1;
                bool any = false, all = w1 - w0 == warp_rows && t1 - t0 == kBfKeys;
                for (int q = q0; q < q1; q++) {
                    any = any || R[q].meets(k0, k1);
                    all = all && R[q].covers(k0, k1);
                }
                m |= (any ? 1u : 0u) << w | (any && all ? 1u : 0u) << (4 + w);
            }
            for (int h = 0; h < repeat; h++) map[((size_t)b * repeat + h) * tiles + i] = m;
        }
    return map;
}
// The map on the device, made at a shape's first launch and kept for the process (a few KB
// a shape; never destroyed, so never freed while a launch may still read it): no host work
// in later steps. One device per process, one host thread launching.
inline const uint8_t* bf_tile_map_device(const Config& c, int T, int warp_rows, bool query_side, int repeat = 1) {
    static auto* made = new std::map<std::array<int, 8>, uint8_t*>;
    uint8_t*& m = (*made)[{(int)c.variant, c.K, c.W, c.C, T, warp_rows, query_side, repeat}];
    if (!m) m = to_device(bf_tile_map(c, T, warp_rows, query_side, repeat));
    return m;
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

// s (16 MT, N) = a (16 MT, HD) B^T, B N rows of a tile: mma over HD / 16 steps, B's fragments
// by ldmatrix x4, two 8-row chunks of B at a time (matrices: rows 16 n2 + {0..7, 0..7, 8..15,
// 8..15} x columns 16 kc + {0..7, 8..15, 0..7, 8..15}), each serving the MT tiles of a.
template<int HD, int N, int MT>
static __device__ void bf_abt(float (&s)[MT][N / 8][4], const uint32_t (&a)[MT][HD / 16][4], const uint16_t* bm) {
    const int lane = threadIdx.x % 32;
    PHD_UNROLL
    for (int m = 0; m < MT; m++)
        PHD_UNROLL
        for (int n = 0; n < N / 8; n++) s[m][n][0] = s[m][n][1] = s[m][n][2] = s[m][n][3] = 0.0f;
    PHD_UNROLL
    for (int n2 = 0; n2 < N / 16; n2++)
        PHD_UNROLL
        for (int kc = 0; kc < HD / 16; kc++) {
            uint32_t bb[4];
            ldmatrix<4>(bb, bm + (16 * n2 + lane / 16 * 8 + lane % 8) * BfSmem<HD>::LD + 16 * kc + lane / 8 % 2 * 8);
            const uint32_t b0[2] = {bb[0], bb[1]}, b1[2] = {bb[2], bb[3]};
            PHD_UNROLL
            for (int m = 0; m < MT; m++) {
                mma_bf16(s[m][2 * n2], a[m][kc], b0);
                mma_bf16(s[m][2 * n2 + 1], a[m][kc], b1);
            }
        }
}

// acc (16 MT, HD) += p (16 MT, N) B, B N rows of a tile, 16 at a time: the accumulators of
// bf_abt's chunks 2 kc and 2 kc + 1, packed to bf16, are the a fragment (never leaving
// registers); B's fragments by ldmatrix x4.trans (matrices: rows 16 kc + {0..7, 8..15,
// 0..7, 8..15} x columns 16 n2 + {0..7, 0..7, 8..15, 8..15}), each serving the MT tiles.
template<int HD, int N, int MT>
static __device__ void bf_pb(float (&acc)[MT][HD / 8][4], const float (&p)[MT][N / 8][4], const uint16_t* bm) {
    const int lane = threadIdx.x % 32;
    PHD_UNROLL
    for (int kc = 0; kc < N / 16; kc++) {
        uint32_t pa[MT][4];
        PHD_UNROLL
        for (int m = 0; m < MT; m++) {
            pa[m][0] = pack_bf16(p[m][2 * kc][0], p[m][2 * kc][1]);
            pa[m][1] = pack_bf16(p[m][2 * kc][2], p[m][2 * kc][3]);
            pa[m][2] = pack_bf16(p[m][2 * kc + 1][0], p[m][2 * kc + 1][1]);
            pa[m][3] = pack_bf16(p[m][2 * kc + 1][2], p[m][2 * kc + 1][3]);
        }
        PHD_UNROLL
        for (int n2 = 0; n2 < HD / 16; n2++) {
            uint32_t bb[4];
            ldmatrix<4, true>(bb, bm + (16 * kc + lane / 8 % 2 * 8 + lane % 8) * BfSmem<HD>::LD + 16 * n2 + lane / 16 * 8);
            const uint32_t b0[2] = {bb[0], bb[1]}, b1[2] = {bb[2], bb[3]};
            PHD_UNROLL
            for (int m = 0; m < MT; m++) {
                mma_bf16(acc[m][2 * n2], pa[m], b0);
                mma_bf16(acc[m][2 * n2 + 1], pa[m], b1);
            }
        }
    }
}

// The two-stage pipeline over the tiles i < tiles of the block's row of the tile map: a
// tile no warp needs is skipped (a byte load). load(stage, i) issues tile i's copies into a
// stage buffer while compute(stage, i, full) works on the previous tile, in the warps that
// visit it; full: this warp skips the mask. The whole block calls it.
template<int HD, typename Load, typename Compute>
static __device__ void bf_pipeline(const uint8_t* map, int tiles, uint16_t* smem, Load load, Compute compute) {
    const int warp = threadIdx.x / 32;
    unsigned bits = 0, next_bits = 0;  // the map's bytes of tiles i and n
    auto next = [&](int i) {
        for (i++; i < tiles && !((next_bits = map[i]) & 0xfu); i++) {}
        return i;
    };
    int i = next(-1), stage = 0;
    bits = next_bits;
    if (i < tiles) load(smem, i);
    cp_async_commit();
    while (i < tiles) {
        const int n = next(i);
        if (n < tiles) load(smem + (stage ^ 1) * BfSmem<HD>::stage, n);
        cp_async_commit();
        cp_async_wait<1>();  // tile i's group has landed; tile n's may still fly
        __syncthreads();
        if (bits >> warp & 1u) compute(smem + stage * BfSmem<HD>::stage, i, (bits >> (4 + warp) & 1u) != 0);
        __syncthreads();  // the stage is refilled by the next iteration's load
        i = n;
        bits = next_bits;
        stage ^= 1;
    }
}

// The key-tile loop of the query-side kernels (forward, dQ), block blockIdx.x: every key tile
// some warp of the block needs goes through the pipeline (its K and V tiles, of kv head kv,
// in a stage), and f(stage, k0, k1, full) runs in each warp that visits rows [k0, k1).
template<int HD, typename F>
static __device__ void bf_key_tiles(const Config& c, int T, const uint8_t* map, const uint16_t* base, int kv, F f) {
    const int TK = T * c.K, ld = c.qkv_dim(), tiles = (TK + kBfKeys - 1) / kBfKeys;
    bf_pipeline<HD>(map + (size_t)blockIdx.x * tiles, tiles, dynamic_shared<uint16_t>(),
        [&](uint16_t* st, int i) {
            bf_load_tiles<HD>(st, base + (c.H + kv) * HD, ld, st + BfSmem<HD>::tile, base + (c.H + c.Hkv + kv) * HD, ld, i * kBfKeys, TK);
        },
        [&](const uint16_t* st, int i, bool full) { f(st, i * kBfKeys, min(i * kBfKeys + kBfKeys, TK), full); });
}

// Calls f(std::true_type()) where the tile needs its mask, f(std::false_type()) where it is
// all visible: two instances of the tile's code, the second without a compare.
template<typename F> static __device__ void bf_masked(bool full, F f) {
    if (full) f(std::false_type());
    else f(std::true_type());
}

// The forward. grid (query blocks of BfWarp<HD>::block rows, H, B), block kBfThreads; map:
// bf_tile_map(query side, BfWarp<HD>::rows). visited, when not null, counts the (warp,
// key tile) pairs computed.
template<int HD>
static __global__ void attention_forward_bf16_kernel(__nv_bfloat16* o_, float* lse, const __nv_bfloat16* qkv_, const uint8_t* map, Config c,
                                                     int T, int* visited) {
    constexpr int MT = BfWarp<HD>::MT, NT = kBfKeys / 8, HT = HD / 8;
    const uint16_t* qkv = reinterpret_cast<const uint16_t*>(qkv_);
    uint16_t* o = reinterpret_cast<uint16_t*>(o_);
    const int TK = T * c.K, ld = c.qkv_dim(), h = blockIdx.y, b = blockIdx.z, kv = h / (c.H / c.Hkv);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const int r0 = blockIdx.x * BfWarp<HD>::block + warp * BfWarp<HD>::rows;  // the warp's first row
    const uint16_t* base = qkv + (size_t)b * TK * ld;
    const float scale = kLog2e / sqrtf((float)HD);  // scores to log2 units: exp2 does the softmax
    RowKeys R[MT][2];  // this lane's rows: r0 + 16 m + g + 8 row
    uint32_t qa[MT][HD / 16][4];
    float acc[MT][HT][4] = {}, mx[MT][2], l[MT][2];  // mx: the unscaled running max; l: this lane's columns only
    PHD_UNROLL
    for (int m = 0; m < MT; m++) {
        bf_load_a<HD>(qa[m], base + h * HD, ld, r0 + 16 * m, TK);
        for (int row = 0; row < 2; row++) {
            R[m][row] = row_keys(c, T, r0 + 16 * m + g + 8 * row);
            mx[m][row] = -INFINITY;
            l[m][row] = 0.0f;
        }
    }
    bf_key_tiles<HD>(c, T, map, base, kv, [&](const uint16_t* st, int k0, int, bool full) {
        if (visited && lane == 0) atomicAdd(visited, 1);
        float s[MT][NT][4];
        bf_abt<HD, kBfKeys, MT>(s, qa, st);
        bf_masked(full, [&](auto masked) {
            PHD_UNROLL
            for (int m = 0; m < MT; m++) {
                float tmax[2] = {-INFINITY, -INFINITY};
                PHD_UNROLL
                for (int n = 0; n < NT; n++)
                    for (int i2 = 0; i2 < 4; i2++) {
                        // Keys past TK (zeroed rows) and rows past TK see nothing: R says so.
                        if constexpr (decltype(masked)::value)
                            if (!R[m][i2 / 2].sees(k0 + 8 * n + 2 * t + i2 % 2)) s[m][n][i2] = -INFINITY;
                        tmax[i2 / 2] = fmaxf(tmax[i2 / 2], s[m][n][i2]);
                    }
                float corr[2], msafe[2];
                online_softmax_step(tmax, mx[m], l[m], corr, msafe, [scale](float x) { return fast_exp2(x * scale); });
                PHD_UNROLL
                for (int n = 0; n < NT; n++)
                    for (int i2 = 0; i2 < 4; i2++) {
                        s[m][n][i2] = fast_exp2(fmaf(s[m][n][i2], scale, -msafe[i2 / 2] * scale));
                        l[m][i2 / 2] += s[m][n][i2];
                    }
                PHD_UNROLL
                for (int n = 0; n < HT; n++)
                    for (int i2 = 0; i2 < 4; i2++) acc[m][n][i2] *= corr[i2 / 2];
            }
        });
        bf_pb<HD, kBfKeys, MT>(acc, s, st + BfSmem<HD>::tile);
    });
    PHD_UNROLL
    for (int m = 0; m < MT; m++)
        for (int row = 0; row < 2; row++) {
            l[m][row] += __shfl_xor_sync(0xffffffffu, l[m][row], 1);
            l[m][row] += __shfl_xor_sync(0xffffffffu, l[m][row], 2);
            const int r = r0 + 16 * m + g + 8 * row;
            if (r >= TK) continue;
            uint32_t* out = reinterpret_cast<uint32_t*>(o + ((size_t)b * TK + r) * c.H * HD + h * HD + 2 * t);
            PHD_UNROLL
            for (int n = 0; n < HT; n++) out[4 * n] = pack_bf16(acc[m][n][2 * row] / l[m][row], acc[m][n][2 * row + 1] / l[m][row]);
            if (t == 0) lse[((size_t)b * c.H + h) * TK + r] = mx[m][row] * scale * kLn2 + __logf(l[m][row]);
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

// dQ. grid (query blocks of BfWarp<HD>::block rows, H, B), block kBfThreads; the forward's
// map. Per key tile, KS keys at a time (32 with two 16-row tiles a warp, so that S and dP
// fit in registers beside dQ): S = Q K^T and dP = dO V^T, then dS = P (dP - D) with P =
// 2^(S scale - lse log2 e), then dQ += dS K (scaled by 1/sqrt(HD) at the end). visited, when
// not null, counts the (warp, key tile) pairs computed.
template<int HD>
static __global__ void attention_backward_dq_bf16_kernel(__nv_bfloat16* dqkv_, const __nv_bfloat16* dout_, const __nv_bfloat16* qkv_,
                                                         const float* lse, const float* D, const uint8_t* map, Config c, int T, int* visited) {
    constexpr int MT = BfWarp<HD>::MT, KS = MT == 2 ? 32 : kBfKeys, NT = KS / 8, HT = HD / 8;
    const uint16_t* qkv = reinterpret_cast<const uint16_t*>(qkv_);
    const int TK = T * c.K, ld = c.qkv_dim(), od = c.H * HD, h = blockIdx.y, b = blockIdx.z, kv = h / (c.H / c.Hkv);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const int r0 = blockIdx.x * BfWarp<HD>::block + warp * BfWarp<HD>::rows;
    const uint16_t* base = qkv + (size_t)b * TK * ld;
    const float scale = kLog2e / sqrtf((float)HD);
    RowKeys R[MT][2];
    float L[MT][2], Di[MT][2];  // this lane's rows: lse in log2 units, and D
    uint32_t qa[MT][HD / 16][4], da[MT][HD / 16][4];
    PHD_UNROLL
    for (int m = 0; m < MT; m++) {
        bf_load_a<HD>(qa[m], base + h * HD, ld, r0 + 16 * m, TK);
        bf_load_a<HD>(da[m], reinterpret_cast<const uint16_t*>(dout_) + (size_t)b * TK * od + h * HD, od, r0 + 16 * m, TK);
        for (int row = 0; row < 2; row++) {
            const int r = r0 + 16 * m + g + 8 * row;
            R[m][row] = row_keys(c, T, r);
            L[m][row] = r < TK ? lse[((size_t)b * c.H + h) * TK + r] * kLog2e : 0.0f;
            Di[m][row] = r < TK ? D[((size_t)b * c.H + h) * TK + r] : 0.0f;
        }
    }
    float dq[MT][HT][4] = {};
    bf_key_tiles<HD>(c, T, map, base, kv, [&](const uint16_t* st, int k0, int, bool full) {
        if (visited && lane == 0) atomicAdd(visited, 1);
        PHD_UNROLL
        for (int ks = 0; ks < kBfKeys; ks += KS) {
            float s[MT][NT][4], dp[MT][NT][4];
            bf_abt<HD, KS, MT>(s, qa, st + ks * BfSmem<HD>::LD);
            bf_abt<HD, KS, MT>(dp, da, st + BfSmem<HD>::tile + ks * BfSmem<HD>::LD);
            bf_masked(full, [&](auto masked) {
                PHD_UNROLL
                for (int m = 0; m < MT; m++)
                    PHD_UNROLL
                    for (int n = 0; n < NT; n++)
                        for (int i2 = 0; i2 < 4; i2++) {
                            const int row = i2 / 2;
                            float p = fast_exp2(fmaf(s[m][n][i2], scale, -L[m][row]));
                            if constexpr (decltype(masked)::value)
                                if (!R[m][row].sees(k0 + ks + 8 * n + 2 * t + i2 % 2)) p = 0.0f;
                            s[m][n][i2] = p * (dp[m][n][i2] - Di[m][row]);  // dS
                        }
            });
            bf_pb<HD, KS, MT>(dq, s, st + ks * BfSmem<HD>::LD);
        }
    });
    const float inv = 1.0f / sqrtf((float)HD);
    uint16_t* dqkv = reinterpret_cast<uint16_t*>(dqkv_);
    PHD_UNROLL
    for (int m = 0; m < MT; m++)
        for (int row = 0; row < 2; row++) {
            const int r = r0 + 16 * m + g + 8 * row;
            if (r >= TK) continue;
            uint32_t* out = reinterpret_cast<uint32_t*>(dqkv + ((size_t)b * TK + r) * ld + h * HD + 2 * t);
            PHD_UNROLL
            for (int n = 0; n < HT; n++) out[4 * n] = pack_bf16(dq[m][n][2 * row] * inv, dq[m][n][2 * row + 1] * inv);
        }
}

// dK, dV. grid (key blocks of kTcBlockRows rows, Hkv, B), block kBfThreads; map:
// bf_tile_map(key side, kTcRows, repeated over the group). A warp owns 16 key rows and sums
// over the query heads of its group and every query tile that sees them: S^T = K Q^T and
// dP^T = V dO^T, then dV += P^T dO and dK += dS^T Q. The block's K and V rows wait in shared
// memory and their fragments are read per step, and at HD = 128 a step covers half of the
// query tile: held in registers next to dK and dV, they would spill. visited, when not null,
// counts the (warp, query tile, head) triples computed.
template<int HD>
static __global__ void attention_backward_dkdv_bf16_kernel(__nv_bfloat16* dqkv_, const __nv_bfloat16* dout_, const __nv_bfloat16* qkv_,
                                                           const float* lse, const float* D, const uint8_t* map, Config c, int T,
                                                           int* visited) {
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
    float dk[1][HT][4] = {}, dv[1][HT][4] = {};
    const int qtiles = (TK + kBfKeys - 1) / kBfKeys;
    // Tile i: query head kv * group + i / qtiles, query rows from (i % qtiles) * kBfKeys. A
    // stage: the Q and dO tiles, then its rows' RowKeys, lse (log2 units) and D.
    auto range = [&](int i, int* h, int* q0) {
        *h = kv * group + i / qtiles;
        *q0 = i % qtiles * kBfKeys;
    };
    auto meta = [](const uint16_t* st) { return reinterpret_cast<const RowKeys*>(st + 2 * S::tile); };
    bf_pipeline<HD>(map + (size_t)blockIdx.x * group * qtiles, group * qtiles, smem,
        [&](uint16_t* st, int i) {
            int h, q0;
            range(i, &h, &q0);
            bf_load_tiles<HD>(st, base + h * HD, ld, st + S::tile, dob + h * HD, od, q0, TK);
            RowKeys* rows = reinterpret_cast<RowKeys*>(st + 2 * S::tile);
            float* Ls = reinterpret_cast<float*>(rows + kBfKeys);
            for (int j = threadIdx.x; j < kBfKeys; j += blockDim.x) {
                const int r = q0 + j;
                rows[j] = row_keys(c, T, r);
                Ls[j] = r < TK ? lse[((size_t)b * c.H + h) * TK + r] * kLog2e : 0.0f;
                Ls[kBfKeys + j] = r < TK ? D[((size_t)b * c.H + h) * TK + r] : 0.0f;
            }
        },
        [&](const uint16_t* st, int, bool full) {
            if (visited && lane == 0) atomicAdd(visited, 1);
            const RowKeys* rows = meta(st);
            const float* Ls = reinterpret_cast<const float*>(rows + kBfKeys);
            PHD_NO_UNROLL  // unrolled, the two steps' registers would spill at HD = 128
            for (int qs = 0; qs < kBfKeys; qs += QS) {
                float st_[1][NT][4], dpt[1][NT][4];  // (16 keys, QS queries from qs)
                uint32_t a[1][HD / 16][4];
                bf_load_a_shared<HD>(a[0], ks + warp * kTcRows * S::LD);
                bf_abt<HD, QS, 1>(st_, a, st + qs * S::LD);
                bf_load_a_shared<HD>(a[0], vs + warp * kTcRows * S::LD);
                bf_abt<HD, QS, 1>(dpt, a, st + S::tile + qs * S::LD);
                bf_masked(full, [&](auto masked) {
                    PHD_UNROLL
                    for (int n = 0; n < NT; n++)
                        for (int i2 = 0; i2 < 4; i2++) {
                            const int j = qs + 8 * n + 2 * t + i2 % 2;  // query column j of the tile
                            float p = fast_exp2(fmaf(st_[0][n][i2], scale, -Ls[j]));
                            if constexpr (decltype(masked)::value)
                                if (!rows[j].sees(r0 + g + 8 * (i2 / 2))) p = 0.0f;  // rows past TK see nothing
                            st_[0][n][i2] = p * (dpt[0][n][i2] - Ls[kBfKeys + j]);  // dS^T
                            dpt[0][n][i2] = p;                                     // P^T
                        }
                });
                bf_pb<HD, QS, 1>(dv, dpt, st + S::tile + qs * S::LD);
                bf_pb<HD, QS, 1>(dk, st_, st + qs * S::LD);
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
            outk[4 * n] = pack_bf16(dk[0][n][2 * row] * inv, dk[0][n][2 * row + 1] * inv);
            outv[4 * n] = pack_bf16(dv[0][n][2 * row], dv[0][n][2 * row + 1]);
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

// o, lse, qkv: device pointers as above. visited, when not null, counts as the kernel says.
inline void attention_forward_bf16(__nv_bfloat16* o, float* lse, const __nv_bfloat16* qkv, const Config& c, int B, int T,
                                   cudaStream_t stream, int* visited = nullptr) {
    // Two products (S = Q K^T, O = P V) over the visible pairs; q, k, v read and o, lse written once.
    count_launch("attention_forward", (double)B * T * c.K * (2.0 * (c.qkv_dim() + c.H * c.hd()) + 4.0 * c.H),
                 4.0 * c.hd() * counted_pairs(c, B, T), stream);
    with_bf16_head_dim(c, [&](auto hd) {
        using W = BfWarp<hd.value>;
        const dim3 grid((T * c.K + W::block - 1) / W::block, c.H, B);
        launch_with_shared(attention_forward_bf16_kernel<hd.value>, grid, dim3(kBfThreads), BfSmem<hd.value>::bytes, stream, o, lse, qkv,
                           bf_tile_map_device(c, T, W::rows, true), c, T, visited);
    });
    cudaCheck(cudaGetLastError());
}

// dqkv written whole; D: device scratch of B*H*T*K floats. visited, when not null: two
// counters, of the dQ and the dK/dV kernels.
inline void attention_backward_bf16(__nv_bfloat16* dqkv, const __nv_bfloat16* dout, const __nv_bfloat16* qkv, const __nv_bfloat16* o,
                                    const float* lse, float* D, const Config& c, int B, int T, cudaStream_t stream, int* visited = nullptr) {
    const int TK = T * c.K;
    const long rows = (long)B * TK * c.H;
    // dQ: S, dP = dO V^T and dS K (3 products); dK/dV: S, dP, P^T dO and dS^T Q (4), over the
    // visible pairs; each reads q, k, v, dO, lse and D once and writes its part of dqkv.
    const double pairs = counted_pairs(c, B, T), in = (double)B * TK * (2.0 * (c.qkv_dim() + c.H * c.hd()) + 8.0 * c.H);
    count_launch("attention_backward D", (double)rows * (4.0 * c.hd() + 4), 0, stream);
    launch(attention_backward_d_bf16_kernel, dim3((unsigned)((rows + 7) / 8)), dim3(256), 0, stream, D, dout, o, c, TK, rows);
    with_bf16_head_dim(c, [&](auto hd) {
        using W = BfWarp<hd.value>;
        const size_t smem = BfSmem<hd.value>::bytes;
        count_launch("attention_backward dQ", in + 2.0 * B * TK * c.H * c.hd(), 6.0 * c.hd() * pairs, stream);
        launch_with_shared(attention_backward_dq_bf16_kernel<hd.value>, dim3((TK + W::block - 1) / W::block, c.H, B), dim3(kBfThreads), smem,
                           stream, dqkv, dout, qkv, lse, (const float*)D, bf_tile_map_device(c, T, W::rows, true), c, T, visited);
        count_launch("attention_backward dK dV", in + 4.0 * B * TK * c.Hkv * c.hd(), 8.0 * c.hd() * pairs, stream);
        launch_with_shared(attention_backward_dkdv_bf16_kernel<hd.value>, dim3((TK + kTcBlockRows - 1) / kTcBlockRows, c.Hkv, B),
                           dim3(kBfThreads), BfSmem<hd.value>::dkdv_bytes, stream, dqkv, dout, qkv, lse, (const float*)D,
                           bf_tile_map_device(c, T, kTcRows, false, c.H / c.Hkv), c, T, visited ? visited + 1 : nullptr);
    });
    cudaCheck(cudaGetLastError());
}
