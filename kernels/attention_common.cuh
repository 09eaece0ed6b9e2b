// kernels/attention_common.cuh: what the fp32 (attention.cuh) and the tensor-core
// (attention_tc.cuh) attention kernels share: the row layout, tile skipping, head sizes.
//
// Layout: the row order of model.h, [originals | hidden] per sequence (token_row). Every
// query's visible keys are two intervals of rows (visible_rows), so whole tiles of keys can
// be skipped: a query tile visits a key tile only if some query in it has
// a visible key in it. Work then tracks the visible pairs of model.h §7 (O(K*T^2)),
// not the (K*T)^2 of a dense mask. Inside a visited tile every pair is masked
// with the one predicate, phd_visible.
//
// Tensors (TK = T*K rows per sequence):
//   qkv  (B, TK, qkv_dim)  q | k | v, RoPE applied     o    (B, TK, H*hd)
//   lse  (B, H, TK)        log-sum-exp of each query's scores, for the backward
//   dqkv (B, TK, qkv_dim)  written whole by the backward (dq, dk, dv)
#pragma once
#include <type_traits>
#include <vector>
#include "../model.h"
#include "cuda_compat.h"

static constexpr int kAttnTile = 32;   // query rows and key rows per tile: one warp
static constexpr int kAttnMaxHd = 128;

// A query row's visible key rows: [0, orig) and [hid0, hid1) (visible_rows in model.h), and
// whether a tile of key rows holds one or only visible ones. An invalid row (past TK) sees none.
struct RowKeys {
    int orig = 0, hid0 = 0, hid1 = 0;
    PHD_HOST_DEVICE bool sees(int j) const { return j < orig || (j >= hid0 && j < hid1); }
    // Some key row of [k0, k1) is visible / all of them are (k0 < k1).
    PHD_HOST_DEVICE bool meets(int k0, int k1) const { return k0 < orig || (hid0 < hid1 && hid0 < k1 && k0 < hid1); }
    PHD_HOST_DEVICE bool covers(int k0, int k1) const { return k1 <= orig || (hid0 < hid1 && k1 <= hid1 && (k0 >= hid0 || hid0 <= orig)); }
};
PHD_HOST_DEVICE inline RowKeys row_keys(const Config& c, int T, int r) {
    RowKeys q;
    if (r >= T * c.K) return q;
    int n, copy;
    row_token(c, T, r, &n, &copy);
    const VisibleRows vr = visible_rows(c, T, n, copy);
    q.orig = vr.originals;
    q.hid0 = vr.hidden_row0;
    q.hid1 = vr.hidden_row0 + vr.count - vr.originals;
    return q;
}

// Are all pairs of query rows [q0, q1) and key rows [k0, k1) visible? Every query (n, c)
// sees the originals 0..n (rule 1, and causal order for naive-K), so a tile of originals no
// later than the queries' earliest position is: there the kernels skip the mask. Positions
// rise along the originals and along the hidden rows, which start again at position 0.
PHD_HOST_DEVICE inline bool tile_all_visible(const Config& c, int T, int q0, int q1, int k0, int k1) {
    if (k1 > T || k1 <= k0 || q1 <= q0) return false;
    const int nmin = q0 < T && q1 > T ? 0 : row_position(c, T, q0);
    return k1 - 1 <= nmin;
}

// The online softmax's step over a new key tile for a tensor-core lane's two rows (each row's
// keys spread over its group of 4 lanes): tmax, this lane's max of the tile's scores, becomes
// the group's; the running max mx moves to it; corr is e^(old - new max) (exp is the
// kernel's exponential for its score units, e^x or 2^x), by which l (and the caller's
// accumulators) are rescaled; msafe is what the tile's scores subtract: 0 while a row has
// seen nothing visible, so that its p = exp(-inf) = 0, never NaN.
template<typename Exp>
static __device__ void online_softmax_step(float (&tmax)[2], float (&mx)[2], float (&l)[2], float (&corr)[2], float (&msafe)[2], Exp exp) {
    for (int row = 0; row < 2; row++) {
        tmax[row] = fmaxf(tmax[row], __shfl_xor_sync(0xffffffffu, tmax[row], 1));
        tmax[row] = fmaxf(tmax[row], __shfl_xor_sync(0xffffffffu, tmax[row], 2));
        const float mnew = fmaxf(mx[row], tmax[row]);
        msafe[row] = mnew == -INFINITY ? 0.0f : mnew;
        corr[row] = exp(mx[row] - msafe[row]);
        mx[row] = mnew;
        l[row] *= corr[row];
    }
}

// The kernels keep their per-row vectors in registers, which needs the head size at compile
// time: they are instantiated for HD in {16, 32, 64}, where the loops over it unroll, and
// the fp32 ones also for HD = 0, any other head size up to kAttnMaxHd read at run time
// (the arrays then live in local memory: slower, same results). with_head_dim picks the
// instance.
template<int HD> struct Hd {
    static constexpr int max = HD ? HD : kAttnMaxHd;  // array extent
    static PHD_HOST_DEVICE int get(const Config& c) { return HD ? HD : c.hd(); }
};

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
// Has c's head size a compiled instance (HD > 0), which the tensor-core kernels need?
inline bool compiled_head_dim(const Config& c) {
    bool compiled = false;
    with_head_dim(c, [&](auto hd) { compiled = hd.value > 0; });
    return compiled;
}

// Visible pairs of B sequences over every head, for the counted budget (cuda_compat.h's
// ledger): 0 when no ledger is open, since counting them walks every row.
inline double counted_pairs(const Config& c, int B, int T) { return open_ledger() ? (double)B * c.H * visible_pairs(c, T) : 0; }

