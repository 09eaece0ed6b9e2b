// model.h: the PHD-Transformer, one source of truth for its shapes, and its CPU reference.
//
// =================================================================================================
// The method
//
// This opening comment is the engine's specification; the rest of the repository cites it as
// "model.h §N". It restates the PHD-Transformer of "Efficient Pretraining Length Scaling" (Wu
// et al., 2025, arXiv 2504.14992) and settles every point the paper leaves open. Where the code
// and this text disagree, the code is wrong.
//
// §1 The idea. Lengthen pre-training without enlarging the KV cache. Each input token is fed K
// times in a row. Copy 0, the original token, acts exactly as a token of a vanilla transformer,
// and its keys and values are the only ones kept for later steps. Copies 1..K-1, the hidden
// decoding tokens, spend more compute on the same position: they attend to every earlier
// original and to the earlier copies of their own token, and are discarded once used. The next
// token is predicted by the last copy alone. A PHD model thus costs K x the compute per token
// with the parameters and the KV cache of the vanilla model. Two variants keep some hidden
// context: PHD-SWA lets hidden tokens see a sliding window of recent hidden tokens, and PHD-CSWA
// cuts that window into chunks so that pre-filling a prompt stays as cheap as vanilla.
//
// §2 Notation and row order. A sequence has T original positions n = 0..T-1, tokens x[n] and
// targets y[n] = x[n+1]. Position n has K >= 1 copies c = 0..K-1: c = 0 is the original, c >= 1
// the hidden ones. K = 1 is the vanilla transformer, exactly. In the logical (interleaved) order
// copy (n, c) is token i = n*K + c of a sequence of K*T tokens. The hidden stream is that order
// with the originals left out; hidden token (n, c), c >= 1, has hidden-stream index
// h(n, c) = n*(K-1) + (c-1). W >= 0 is a window counted in hidden tokens, C >= 1 a chunk length
// counted in original positions. Any physical order of the rows is allowed if it computes the
// function the logical order and the §4 mask define. This engine's order (token_row) is the
// paper's regrouping [originals | hidden]: row n < T holds (n, 0), row T + h(n, c) holds (n, c).
//
// §3 Inputs and positions. All K copies of position n take the same input embedding E[x[n]] and
// the same RoPE position n. There are no copy embeddings and no other new parameters: a PHD
// model has exactly the parameters of the vanilla model. (The paper does not fix the positions;
// sharing n makes the original stream identical to a vanilla model and K = 1 exact.)
//
// §4 Visibility. Query (n, c) sees key (m, d) as the first of these rules that applies decides:
//   1. d = 0 (the key is an original): visible iff m <= n (earlier originals and its own).
//   2. c = 0 (the query is an original, the key hidden): never. No original attends to a hidden
//      token, so the original stream computes exactly a vanilla causal transformer.
//   3. m = n (both hidden, same position): visible iff d <= c, causal within the group.
//   4. Both hidden, m != n. phd: never. phd-swa: visible iff 0 < h(n,c) - h(m,d) <= W, the W
//      hidden tokens just before the query in the hidden stream. phd-cswa: as phd-swa, and also
//      m / C == n / C (integer division: both in the same chunk of C positions), so the window
//      starts afresh at each chunk boundary.
//   5. Naive repetition, the paper's motivating baseline and no PHD variant, replaces rules 1-4
//      by causal attention over the logical order: visible iff m*K + d <= n*K + c. Positions are
//      as in §3. Its KV cache grows K-fold; it exists to be compared against.
// The rule is written once, phd_visible below; every optimised path (structured CPU loops, GPU
// kernels, the KV-cache decoders) must agree with it, and the tests show that they do. Variant
// names, as in the paper: vanilla, phd-K, phd-swa-K-W, phd-cswa-K-W-C, naive-K (for example
// phd-cswa-3-16-32). The paper's main models are phd-cswa-2-16-32 and phd-cswa-3-16-32; its
// ablations use phd-swa-{2,3,5}-16.
//
// §5 Loss. The cross-entropy of the last copy (n, K-1) against y[n], averaged over the B*T
// original positions. Copies 0..K-2 produce no logits at all: the final norm and the LM head
// run on B*T rows, not K*B*T.
//
// §6 Inference with the PHD KV cache. What each layer keeps for a context of t tokens:
//   variant          keys/values kept                                           entries
//   vanilla          every token                                                t
//   naive-K          every copy                                                 K*t
//   phd-K            the originals only                                         t
//   phd-swa-K-W      the originals + a ring buffer of the last W hidden tokens  t + W
//   phd-cswa-K-W-C   the originals + the current chunk's hidden tokens (<= W)   t + at most W
// Decode step: the K copies of the newest token go in together, as one block of K queries. The
// original's K/V are appended to the cache; the hidden copies attend to the cache, to their own
// group and (swa, cswa) to the hidden buffer, then push their K/V into that buffer (swa, cswa)
// or drop them (phd). The logits are the last copy's. Pre-fill of a prompt of P tokens:
//   phd       a vanilla pre-fill of the originals, then the hidden copies of the last prompt
//             token: about vanilla's cost, whatever K.
//   phd-swa   hidden tokens depend on earlier hidden tokens, so all P*(K-1) are computed (the
//             paper's "K x pre-fill"). An exact shortcut exists, since the dependence reaches
//             back only about L*W hidden tokens; it is optional.
//   phd-cswa  the originals of the whole prompt plus the hidden tokens of its last chunk only:
//             about vanilla + (K-1)*C tokens, whatever P.
// The central property of the method: after a pre-fill and any number of decode steps the
// logits equal, to float tolerance, those of the full training-style forward over the same
// tokens.
//
// §7 Cost model. Linear layers (QKV, output, FFN) cost K x vanilla; the LM head and the loss
// 1 x. Visible query-key pairs per head over T positions: originals ~T^2/2, hidden to originals
// ~(K-1)*T^2/2, within groups ~T*K^2/2, windows ~(K-1)*T*W; in all ~K*T^2/2, which is O(K), not
// the O(K^2) of naive repetition over K*T tokens. An attention kernel must skip fully masked
// tiles so that its time follows the visible pairs. Pre-fill: phd and phd-cswa ~vanilla,
// phd-swa ~K x vanilla. Decode: K queries a step against a cache of vanilla's size, so nearly
// flat in K while memory-bound.
//
// §8 What the paper reports, at its scale, for comparison. OLMo2-style models of 1.2B (16
// layers, d_model 2048, 32 query / 8 KV heads, head dim 64) and 550M (16 layers, d_model 1536,
// 16 / 4 heads), trained on 300-500B tokens:
//   model                           training loss           average of 7 benchmarks
//   vanilla 1.2B                    2.601                   54.7
//   phd-cswa-2-16-32                2.576                   56.2
//   phd-cswa-3-16-32                2.567                   56.7
//   vanilla 550M                    2.782                   49.3
//   phd-swa-2-16 / -3-16 / -5-16    2.753 / 2.739 / 2.725   50.1 / 50.2 / 51.1
// Ablations (550M, K = 2): widening the window from 1 to 4 brings most of the gain, 16 adds
// little; chunks of 16, of 32 or none differ negligibly. Latency (550M, one A100, batch 1): at
// K = 16 pre-fill takes ~73 x vanilla's time for phd-swa but ~1.08 x for phd-cswa; at K = 256
// decoding takes <= 1.2 x vanilla's.
//
// §9 The base transformer and the optimiser, fixed so that any two implementations agree. A
// small Llama/OLMo-style decoder: vocabulary V, stored as Vp rows (V rounded up to a multiple of
// 128) in E and Wout; L layers, width D, H query heads, Hkv key/value heads (GQA, H % Hkv == 0),
// head size hd = D / H, FFN width F. Matrices are row-major (out, in), applied as y = x W^T; no
// biases.
//   x = E[token]                                 token x[n] for every copy of n (§3); E (Vp, D)
//   each layer:
//     a = rmsnorm(x, g_attn)                     rmsnorm(x, g) = x / sqrt(mean(x^2) + 1e-5) * g
//     q = a Wq^T (H*hd),  k = a Wk^T (Hkv*hd),  v = a Wv^T (Hkv*hd)
//     q, k = rope(q, n), rope(k, n)              n: the position of the original (§3)
//     o[h] = sum_j softmax_j(q[h] . k[j, h/(H/Hkv)] / sqrt(hd)) v[j, h/(H/Hkv)]
//                                                j: the keys visible to the query (§4)
//     x = x + o Wo^T                             Wo (D, H*hd)
//     f = rmsnorm(x, g_ffn)
//     x = x + (silu(f W1^T) * (f W3^T)) W2^T     W1, W3 (F, D); W2 (D, F); silu(z) = z sigmoid(z)
//   logits = rmsnorm(x, g_final) Wout^T          last copy only (§5); Wout (Vp, D), not tied to E
//   loss = mean over positions of logsumexp(logits[:V]) - logits[y]   (padded columns excluded)
// RoPE, rotate-half: for i < hd/2, w_i = 10000^(-2i/hd) and angle a = pos * w_i; the pair
// (z[i], z[i+hd/2]) becomes (z[i] cos a - z[i+hd/2] sin a, z[i] sin a + z[i+hd/2] cos a), per
// head of q and of k. Initialisation: E and every matrix from N(0, 0.02), except Wo and W2 from
// N(0, 0.02 / sqrt(2L)); norm gains 1; the padded rows of E and Wout are zero and stay zero.
// Optimiser: AdamW, beta1 0.9, beta2 0.95, eps 1e-8, decoupled weight decay on the matrices and
// embeddings but not on the norm gains (§10's g_q and g_k included); gradients clipped to
// global norm 1.0; the learning rate rises linearly during warm-up, then decays along a cosine
// to a final fraction of its peak.
//
// §10 The paper's base block: OLMo 2's, as three options of §9's (each alone, or all three as
// the block "olmo2"; none of them is the default block "llama", which is §9 as written):
//   qk-norm     q = rmsnorm(a Wq^T, g_q), k = rmsnorm(a Wk^T, g_k), before RoPE: one norm over
//               the whole projection (H*hd, resp. Hkv*hd wide, not per head), with its own gains
//               g_q (H*hd) and g_k (Hkv*hd), initialised to 1, per layer.
//   reordered   the norms move after each sublayer, inside the residual branch:
//               x = x + rmsnorm(attention(x) Wo^T, g_attn);  x = x + rmsnorm(mlp(x), g_ffn)
//               where attention and the MLP read x itself; the final norm stays.
//   z-loss      coef * lse^2 added to each predicted row's loss, lse = logsumexp(logits[:V])
//               (OLMo 2: coef 1e-5), to keep the softmax's normaliser near 1. It is part of
//               the loss that is differentiated, but the loss reported (and every
//               log-likelihood used for evaluation) is the cross-entropy alone; the z term's
//               mean is reported beside it.
// OLMo 2 uses the same RMSNorm on every norm; its eps (1e-6 there) is 1e-5 here, as for the rest
// of §9. The paper's models are §8's sizes with this block (train_phd --model).
//
// =================================================================================================
// Choices the method leaves open, made here:
// - Every CPU layer is a template over the scalar type (float to train, double to check
//   gradients against finite differences); all accumulation happens in that type.
// - Attention visits the visible keys of a query in row order (originals, then hidden), the
//   order a dense masked loop over the rows visits them in (tests compare the two).
// - The RoPE angle pos * 10000^(-2i/hd) is computed in double, then rounded to Real.
// - Softmaxes and the sigmoid use exp_fast: in float a vectorisable polynomial within 2 ulp
//   of exp, in double std::exp.
// - AdamW as torch.optim.AdamW, after clipping as torch.nn.utils.clip_grad_norm_ (scale
//   min(1, clip / (norm + 1e-6))); the schedule is in learning_rate().
// - Parameter draws: one splitmix64 stream, Box-Muller, tensor by tensor in checkpoint
//   order, row by row; padded rows of E and Wout are not drawn (they are zero).
//
// Layout: the K*T rows of a sequence are grouped [originals | hidden] (token_row below), on
// the CPU and the GPU alike: row n < T is the original (n, 0), row T + h the hidden token
// of hidden-stream index h. A (B, T*K, .) tensor holds B such sequences one after another.
#pragma once
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>
#include "kernels/cpu_gemm.h"
#include "kernels/utils.h"

// ----------------------------------------------------------------------------
// Configuration and variants

enum Variant : int { VANILLA = 0, PHD = 1, PHD_SWA = 2, PHD_CSWA = 3, NAIVE = 4 };
enum NormPlace : int { NORM_PRE = 0, NORM_REORDERED = 1 };  // §9's pre-norm, §10's reordered norm

struct Config {
    int V = 0;       // vocabulary size
    int Vp = 0;      // V padded up to a multiple of 128: rows of E and Wout
    int L = 0;       // layers
    int D = 0;       // model width
    int H = 0;       // query heads
    int Hkv = 0;     // key/value heads (GQA: H % Hkv == 0)
    int F = 0;       // SwiGLU width
    int maxT = 0;    // most original positions a sequence may have (RoPE table length)
    int variant = VANILLA;
    int K = 1;       // copies per position
    int W = 0;       // window in hidden tokens (phd-swa, phd-cswa)
    int C = 0;       // chunk length in original positions (phd-cswa)
    int qk_norm = 0;           // §10: RMSNorm on q and k before RoPE, gains g_q, g_k
    int norm = NORM_PRE;       // §10: where the sublayers' norms sit
    float z_loss = 0;          // §10: the z-loss coefficient (0: none)
    PHD_HOST_DEVICE int hd() const { return D / H; }
    PHD_HOST_DEVICE int qkv_dim() const { return (H + 2 * Hkv) * hd(); }  // width of the fused q|k|v rows
    PHD_HOST_DEVICE int qk_dim() const { return (H + Hkv) * hd(); }       // their q|k part
};

static inline int pad_vocab(int V) { return (V + 127) / 128 * 128; }
// The head sizes the GPU's bf16 attention is compiled for (kernels/attention_bf16.cuh): a
// --dtype bf16 run needs one, and --dtype auto picks bf16 only where there is one.
static inline bool bf16_attention_head(int hd) { return hd == 16 || hd == 32 || hd == 64 || hd == 128; }

// §10: the block's options as a name: "llama" (§9), "olmo2" (all three, z-loss 1e-5), else
// the options spelled out.
static constexpr float kOlmo2ZLoss = 1e-5f;
static inline void set_block(Config* c, bool olmo2) {
    c->qk_norm = olmo2;
    c->norm = olmo2 ? NORM_REORDERED : NORM_PRE;
    c->z_loss = olmo2 ? kOlmo2ZLoss : 0.0f;
}
static inline std::string block_name(const Config& c) {
    if (!c.qk_norm && c.norm == NORM_PRE && c.z_loss == 0) return "llama";
    if (c.qk_norm && c.norm == NORM_REORDERED && c.z_loss == kOlmo2ZLoss) return "olmo2";
    char buf[96];
    snprintf(buf, sizeof buf, "qk-norm %d, norm %s, z-loss %g", c.qk_norm, c.norm == NORM_PRE ? "pre" : "reordered", c.z_loss);
    return buf;
}

// The named sizes of train_phd --model: §8's models with §10's block and OLMo 2's vocabulary
// (cl100k_base's 100,278 tokens), and a GPT-2-small-like one with §9's block.
struct NamedModel { const char* name; int V, L, D, H, Hkv, F; const char* block; };
static const NamedModel kModels[] = {
    {"gpt2-124m", 50257, 12, 768, 12, 12, 2048, "llama"},
    {"paper-550m", 100278, 16, 1536, 16, 4, 4096, "olmo2"},
    {"paper-1.2b", 100278, 16, 2048, 32, 8, 8192, "olmo2"},
};

// "vanilla", "phd-K", "phd-swa-K-W", "phd-cswa-K-W-C", "naive-K" (§4).
// Returns an empty string on success, else what is wrong. The numbers are plain digits
// (no sign), at most 7 of them, so that none can overflow.
static inline std::string parse_variant(const char* name, Config* cfg) {
    const std::string s = name, unknown = "unknown variant '" + s + "' (expected vanilla, phd-K, phd-swa-K-W, phd-cswa-K-W-C or naive-K)";
    std::vector<std::string> parts(1);
    for (char ch : s) {
        if (ch == '-') parts.emplace_back();
        else parts.back().push_back(ch);
    }
    int variant, words;  // the variant and how many leading parts name it
    if (s == "vanilla") { variant = VANILLA; words = 1; }
    else if (parts[0] == "phd" && parts.size() > 1 && parts[1] == "swa") { variant = PHD_SWA; words = 2; }
    else if (parts[0] == "phd" && parts.size() > 1 && parts[1] == "cswa") { variant = PHD_CSWA; words = 2; }
    else if (parts[0] == "phd") { variant = PHD; words = 1; }
    else if (parts[0] == "naive") { variant = NAIVE; words = 1; }
    else return unknown;
    const size_t want = variant == VANILLA ? 0 : variant == PHD_SWA ? 2 : variant == PHD_CSWA ? 3 : 1;  // K [W [C]]
    if (parts.size() != words + want) return unknown;
    int num[3] = {1, 0, 0};
    for (size_t i = 0; i < want; i++) {
        const std::string& p = parts[words + i];
        if (p.empty() || p.find_first_not_of("0123456789") != std::string::npos) return unknown;
        if (p.size() > 7) return "variant '" + s + "': " + p + " is too large";
        num[i] = std::stoi(p);
    }
    if (num[0] < 1) return "variant '" + s + "': K must be >= 1";
    if (variant == PHD_CSWA && num[2] < 1) return "variant '" + s + "': C must be >= 1";
    cfg->variant = variant; cfg->K = num[0]; cfg->W = num[1]; cfg->C = num[2];
    return "";
}

static inline std::string variant_name(const Config& c) {
    switch (c.variant) {
        case VANILLA: return "vanilla";
        case PHD: return "phd-" + std::to_string(c.K);
        case PHD_SWA: return "phd-swa-" + std::to_string(c.K) + "-" + std::to_string(c.W);
        case PHD_CSWA: return "phd-cswa-" + std::to_string(c.K) + "-" + std::to_string(c.W) + "-" + std::to_string(c.C);
        case NAIVE: return "naive-" + std::to_string(c.K);
    }
    return "invalid";
}

// Empty if the config describes a model this engine can build, else what is wrong.
static inline std::string config_error(const Config& c) {
    char buf[160];
    auto bad = [&](const char* what) { snprintf(buf, sizeof buf, "invalid model config: %s", what); return std::string(buf); };
    if (c.variant < VANILLA || c.variant > NAIVE) return bad("unknown variant id");
    if (c.K < 1) return bad("K must be >= 1");
    if (c.variant == VANILLA && c.K != 1) return bad("vanilla has K = 1");
    if (c.W < 0) return bad("W must be >= 0");
    if (c.variant == PHD_CSWA && c.C < 1) return bad("C must be >= 1");
    if (c.V < 2 || c.Vp != pad_vocab(c.V)) return bad("V must be >= 2 and Vp = V rounded up to a multiple of 128");
    if (c.L < 1 || c.D < 2 || c.H < 1 || c.Hkv < 1 || c.F < 1 || c.maxT < 1) return bad("L, D, H, Hkv, F and max T must be positive");
    if (c.D % c.H != 0 || c.hd() % 2 != 0) return bad("D must be a multiple of H with an even head size");
    if (c.H % c.Hkv != 0) return bad("H must be a multiple of Hkv");
    if (c.qk_norm != 0 && c.qk_norm != 1) return bad("qk-norm must be 0 or 1");
    if (c.norm != NORM_PRE && c.norm != NORM_REORDERED) return bad("unknown norm placement");
    if (!(c.z_loss >= 0 && c.z_loss <= 1)) return bad("the z-loss coefficient must be in [0, 1]");
    return "";
}

// ----------------------------------------------------------------------------
// Visibility (§4): the one predicate. Query (n, c), key (m, d).

// The hidden-stream index h(n, c) of hidden token (n, c), c >= 1: the hidden tokens of all
// positions in logical order, K-1 per position.
PHD_HOST_DEVICE inline int hidden_index(const Config& cfg, int n, int c) { return n * (cfg.K - 1) + c - 1; }

// The row order of a sequence's K*T rows: [originals | hidden]. Row n < T is the original
// (n, 0); row T + hidden_index(n, c) the hidden token (n, c). A query's visible keys are then
// two intervals of rows (visible_rows), which lets the attention kernels skip whole tiles.
PHD_HOST_DEVICE inline int token_row(const Config& cfg, int T, int n, int c) { return c == 0 ? n : T + hidden_index(cfg, n, c); }
// (n, c) of row r.
PHD_HOST_DEVICE inline void row_token(const Config& cfg, int T, int r, int* n, int* c) {
    if (r < T) { *n = r; *c = 0; return; }
    *n = (r - T) / (cfg.K - 1);
    *c = (r - T) % (cfg.K - 1) + 1;
}
PHD_HOST_DEVICE inline int row_position(const Config& cfg, int T, int r) { return r < T ? r : (r - T) / (cfg.K - 1); }

PHD_HOST_DEVICE inline bool phd_visible(const Config& cfg, int n, int c, int m, int d) {
    const int K = cfg.K;
    if (cfg.variant == NAIVE) return m * K + d <= n * K + c;   // causal over the logical order
    if (d == 0) return m <= n;                                  // rule 1: originals
    if (c == 0) return false;                                   // rule 2: originals never see hidden
    if (m == n) return d <= c;                                  // rule 3: causal inside the group
    if (cfg.variant != PHD_SWA && cfg.variant != PHD_CSWA) return false;
    long gap = (long)hidden_index(cfg, n, c) - hidden_index(cfg, m, d);
    if (gap <= 0 || gap > cfg.W) return false;
    return cfg.variant == PHD_SWA || m / cfg.C == n / cfg.C;
}

// The visible keys of query (n, c) as two intervals: the originals m in [0, n], and the
// hidden tokens with hidden-stream index h(m, d) in [*hid_lo, *hid_hi] (empty when lo > hi).
// Every key inside them is visible (tests prove the intervals equal the predicate), so a
// tile of keys holds a visible one exactly when it meets an interval of one of its queries.
// With phd_visible, the one place that knows W and C: key enumeration, the attention
// kernels' tile bounds and the KV caches' eviction (hidden_live_from) all derive from it.
PHD_HOST_DEVICE inline void visible_hidden_range(const Config& cfg, int n, int c, int* hid_lo, int* hid_hi) {
    const int K = cfg.K;
    *hid_lo = 0;
    *hid_hi = -1;
    if (K == 1) return;
    if (cfg.variant == NAIVE) {           // every earlier hidden token (and the own group)
        *hid_hi = hidden_index(cfg, n, c);  // c = 0: the last hidden token of position n-1
        return;
    }
    if (c == 0) return;                    // originals never see hidden tokens
    const int hq = hidden_index(cfg, n, c), group_lo = hidden_index(cfg, n, 1);
    *hid_hi = hq;
    *hid_lo = group_lo;                    // phd: the own group only
    if (cfg.variant == PHD_SWA || cfg.variant == PHD_CSWA) {
        int lo = hq - cfg.W > 0 ? hq - cfg.W : 0;
        if (cfg.variant == PHD_CSWA && lo < n / cfg.C * cfg.C * (K - 1)) lo = n / cfg.C * cfg.C * (K - 1);
        if (lo < group_lo) *hid_lo = lo;
    }
}

// The lowest hidden-stream index that a query at position n or later can still see. A
// query's hidden interval only moves forward along the logical order (tests prove it), so
// this is the interval of query (n, 1). The KV caches drop the hidden tokens below it once
// the context holds n positions, and size their windows from it.
PHD_HOST_DEVICE inline int hidden_live_from(const Config& cfg, int n) {
    int lo, hi;
    visible_hidden_range(cfg, n, cfg.K > 1 ? 1 : 0, &lo, &hi);
    return lo;
}

// The visible keys of query (n, c) in a sequence of T positions, as rows: the originals
// [0, n], then the hidden rows of visible_hidden_range. Key t is row(t).
struct VisibleRows {
    int originals, hidden_row0, count;
    PHD_HOST_DEVICE int row(int t) const { return t < originals ? t : hidden_row0 + t - originals; }
};
PHD_HOST_DEVICE inline VisibleRows visible_rows(const Config& cfg, int T, int n, int c) {
    int lo, hi;
    visible_hidden_range(cfg, n, c, &lo, &hi);
    return {n + 1, T + lo, n + 1 + (hi >= lo ? hi - lo + 1 : 0)};
}

// ----------------------------------------------------------------------------
// Parameters: one contiguous arena; the tensor list below fixes its order (it is also the
// checkpoint order), shapes, weight decay and initialisation.

struct ParamTensor {
    std::string name;
    int rows, cols;    // row-major (out, in); vectors have rows == 1
    size_t offset;     // in elements from the start of the arena
    bool decay;        // AdamW weight decay: matrices and embeddings, not norm gains
    double init_std;   // 0: a norm gain, initialised to 1
    size_t size() const { return (size_t)rows * cols; }
};

static inline std::vector<ParamTensor> param_tensors(const Config& c) {
    std::vector<ParamTensor> t;
    size_t off = 0;
    auto add = [&](std::string name, int rows, int cols, bool decay, double std) {
        t.push_back({name, rows, cols, off, decay, std});
        off += (size_t)rows * cols;
    };
    const int hd = c.hd();
    const double std_out = 0.02 / sqrt(2.0 * c.L);
    add("E", c.Vp, c.D, true, 0.02);
    for (int l = 0; l < c.L; l++) {
        std::string p = "layer" + std::to_string(l) + ".";
        add(p + "g_attn", 1, c.D, false, 0);
        add(p + "wq", c.H * hd, c.D, true, 0.02);      // wq, wk, wv adjacent: one fused (qkv_dim, D) matrix
        add(p + "wk", c.Hkv * hd, c.D, true, 0.02);
        add(p + "wv", c.Hkv * hd, c.D, true, 0.02);
        add(p + "wo", c.D, c.H * hd, true, std_out);
        add(p + "g_ffn", 1, c.D, false, 0);
        add(p + "w1", c.F, c.D, true, 0.02);           // w1, w3 adjacent: one fused (2F, D) matrix
        add(p + "w3", c.F, c.D, true, 0.02);
        add(p + "w2", c.D, c.F, true, std_out);
        if (c.qk_norm) {
            add(p + "g_q", 1, c.H * hd, false, 0);      // g_q, g_k adjacent: one (qk_dim) vector
            add(p + "g_k", 1, c.Hkv * hd, false, 0);
        }
    }
    add("g_final", 1, c.D, false, 0);
    add("wout", c.Vp, c.D, true, 0.02);
    return t;
}

static inline size_t num_params(const Config& c) {
    ParamTensor last = param_tensors(c).back();
    return last.offset + last.size();
}

// Visible (query, key) pairs of one sequence of T positions, from the intervals the
// attention kernels skip tiles by: ~K*T^2/2 (§7), not naive's (K*T)^2/2.
static inline double visible_pairs(const Config& c, int T) {
    double pairs = 0;
    for (int n = 0; n < T; n++)
        for (int k = 0; k < c.K; k++) pairs += visible_rows(c, T, n, k).count;
    return pairs;
}

// Model FLOPs of a training step (forward + backward) per original token at sequence length
// T, the cost model of §7 counted as llm.c counts them: 6 per weight per row it
// multiplies (2 forward, 4 backward), every layer tensor on all K copies of a position, the
// LM head on the last copy only (the embedding is a lookup); attention 4*hd per visible pair
// and head forward (QK^T and PV), 3x that with its backward. The numerator of MFU, in
// train_phd's step line and dev/bench_gpu.cu alike.
static inline double model_flops_per_token(const Config& c, int T) {
    const size_t body = num_params(c) - 2 * (size_t)c.Vp * c.D - c.D;  // all but E, wout, g_final
    return 6.0 * ((double)body * c.K + (double)c.D * c.V) + 12.0 * c.L * c.H * c.hd() * visible_pairs(c, T) / T;
}

// Named views into a parameter (or gradient) arena.
template<typename Real> struct LayerView {
    Real* g_attn;  // (D)
    Real* wqkv;    // (qkv_dim, D) = wq (H*hd, D) | wk (Hkv*hd, D) | wv (Hkv*hd, D)
    Real* wo;      // (D, H*hd)
    Real* g_ffn;   // (D)
    Real* w13;     // (2F, D) = w1 (F, D) | w3 (F, D)
    Real* w2;      // (D, F)
    Real* g_qk;    // (qk_dim) = g_q (H*hd) | g_k (Hkv*hd); null without qk-norm
};
template<typename Real> struct ParamView {
    Real* E;                                 // (Vp, D)
    std::vector<LayerView<Real>> layer;      // L of them
    Real* g_final;                           // (D)
    Real* wout;                              // (Vp, D)
};
static inline int tensors_per_layer(const Config& c) { return 9 + 2 * c.qk_norm; }

template<typename Real> ParamView<Real> param_view(const Config& c, Real* base) {
    std::vector<ParamTensor> t = param_tensors(c);
    ParamView<Real> v;
    v.E = base + t[0].offset;
    for (int l = 0; l < c.L; l++) {
        const ParamTensor* lt = &t[1 + l * tensors_per_layer(c)];
        v.layer.push_back({base + lt[0].offset, base + lt[1].offset, base + lt[4].offset, base + lt[5].offset,
                           base + lt[6].offset, base + lt[8].offset, c.qk_norm ? base + lt[9].offset : nullptr});
    }
    v.g_final = base + t[t.size() - 2].offset;
    v.wout = base + t.back().offset;
    return v;
}

template<typename Real> void init_params(const Config& c, Real* params, uint64_t seed) {
    Rng rng{seed};
    for (const ParamTensor& t : param_tensors(c)) {
        Real* p = params + t.offset;
        bool padded = t.name == "E" || t.name == "wout";
        for (int r = 0; r < t.rows; r++)
            for (int j = 0; j < t.cols; j++) {
                Real& x = p[(size_t)r * t.cols + j];
                if (t.init_std == 0) x = 1;
                else if (padded && r >= c.V) x = 0;
                else x = (Real)(t.init_std * rng.normal());
            }
    }
}

// ----------------------------------------------------------------------------
// Layers: the CPU reference, each xxx_forward followed by its xxx_backward (N is a row
// count). Templates over the scalar type: float to train, double to check gradients.

// e^x for the softmaxes and the sigmoid. In float, a polynomial the compiler can vectorize
// (libm's expf is a scalar call): e^x = 2^k e^r, k = round(x / ln2), |r| <= ln2/2, e^r by
// its degree-7 Taylor polynomial: within 2 ulp. Inputs are clamped to [-87, 88], so e^-inf
// is ~1.6e-38, not 0. Rounding adds and subtracts 1.5*2^23 rather than calling floor(),
// which GCC will not vectorize under the default -ftrapping-math.
// In double (gradient checks) it is std::exp.
static inline double exp_fast(double x) { return std::exp(x); }
static inline float exp_fast(float x) {
    x = std::min(std::max(x, -87.0f), 88.0f);
    float k = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
    float r = x - k * 0.693145751953125f - k * 1.428606765330187e-06f;  // ln2 split in two for exactness
    float p = 1 + r * (1 + r * (1.0f / 2 + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    return p * __builtin_bit_cast(float, ((int32_t)k + 127) << 23);  // times 2^k
}

// out (N, O) = in (N, I) W^T, W (O, I)
template<typename Real> void matmul_forward(Real* out, const Real* in, const Real* W, int N, int I, int O) {
    gemm(out, O, in, I, 1, W, 1, I, N, O, I, false);
}
// din (N, I) = dout W (overwritten); dW (O, I) += dout^T in
template<typename Real> void matmul_backward(Real* din, Real* dW, const Real* dout, const Real* in, const Real* W,
                                             int N, int I, int O) {
    gemm(din, I, dout, O, 1, W, I, 1, N, I, O, false);
    gemm(dW, I, dout, 1, O, in, I, 1, O, I, N, true);
}

// x (B, T*K, D): every copy of position n gets E[tokens[b, n]] (§3).
template<typename Real> void embedding_forward(Real* x, const int* tokens, const Real* E, const Config& cfg, int B, int T) {
    const int D = cfg.D;
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int n = 0; n < T; n++)
            for (int c = 0; c < cfg.K; c++)
                std::copy(E + (size_t)tokens[b * T + n] * D, E + (size_t)tokens[b * T + n] * D + D,
                          x + ((size_t)b * T * cfg.K + token_row(cfg, T, n, c)) * D);
}
// dE (Vp, D) += sum over copies of dx. Serial: repeated tokens would race, and this is cheap.
template<typename Real> void embedding_backward(Real* dE, const Real* dx, const int* tokens, const Config& cfg, int B, int T) {
    const int D = cfg.D;
    for (int i = 0; i < B * T; i++)
        for (int c = 0; c < cfg.K; c++) {
            const Real* src = dx + ((size_t)i / T * T * cfg.K + token_row(cfg, T, i % T, c)) * D;
            Real* dst = dE + (size_t)tokens[i] * D;
            for (int j = 0; j < D; j++) dst[j] += src[j];
        }
}

// out (N, D) = x / sqrt(mean(x^2) + 1e-5) * g;  rstd (N). Rows of out and x lie ldo and ldx
// apart (0: D), so that the q and k parts of the fused qkv rows can be normed in place (§10).
template<typename Real> void rmsnorm_forward(Real* out, Real* rstd, const Real* x, const Real* g, int N, int D, long ldo = 0, long ldx = 0) {
    ldo = ldo ? ldo : D;
    ldx = ldx ? ldx : D;
    #pragma omp parallel for
    for (int i = 0; i < N; i++) {
        const Real* xi = x + i * ldx;
        Real ss = 0;
        for (int j = 0; j < D; j++) ss += xi[j] * xi[j];
        Real r = Real(1) / std::sqrt(ss / D + Real(1e-5));
        rstd[i] = r;
        for (int j = 0; j < D; j++) out[i * ldo + j] = xi[j] * r * g[j];
    }
}
// dx (N, D) overwritten and may alias dout (both ldd apart, x ldx: 0 is D); dg (D)
// accumulated, column by column so that the row order of the sum is fixed whatever the
// thread count.
template<typename Real> void rmsnorm_backward(Real* dx, Real* dg, const Real* dout, const Real* x, const Real* g,
                                              const Real* rstd, int N, int D, long ldd = 0, long ldx = 0) {
    ldd = ldd ? ldd : D;
    ldx = ldx ? ldx : D;
    #pragma omp parallel for
    for (int j = 0; j < D; j++) {
        Real s = 0;
        for (int i = 0; i < N; i++) s += dout[i * ldd + j] * x[i * ldx + j] * rstd[i];
        dg[j] += s;
    }
    #pragma omp parallel for
    for (int i = 0; i < N; i++) {
        const Real *xi = x + i * ldx, *dyi = dout + i * ldd;
        Real dot = 0;  // mean over j of (dy g)_j * xhat_j
        for (int j = 0; j < D; j++) dot += dyi[j] * g[j] * xi[j] * rstd[i];
        dot /= D;
        for (int j = 0; j < D; j++) dx[i * ldd + j] = rstd[i] * (dyi[j] * g[j] - xi[j] * rstd[i] * dot);
    }
}

// §10's qk-norm on the fused rows qkv (N, qkv_dim), in place: qk (N, qk_dim) receives q | k
// before their norms, rstd_qk (2, N) the rows' factors, q's then k's.
template<typename Real> void qk_norm_forward(Real* qkv, Real* qk, Real* rstd_qk, const Real* g_qk, const Config& c, int N) {
    const int hq = c.H * c.hd(), ld = c.qkv_dim(), w = c.qk_dim();
    #pragma omp parallel for
    for (int i = 0; i < N; i++) std::copy(qkv + (size_t)i * ld, qkv + (size_t)i * ld + w, qk + (size_t)i * w);
    rmsnorm_forward(qkv, rstd_qk, qk, g_qk, N, hq, ld, w);
    rmsnorm_forward(qkv + hq, rstd_qk + N, qk + hq, g_qk + hq, N, w - hq, ld, w);
}
// dqkv (N, qkv_dim): its q and k parts, in place, from the gradients after the norms to those
// before; dg_qk (qk_dim) accumulated.
template<typename Real> void qk_norm_backward(Real* dqkv, Real* dg_qk, const Real* qk, const Real* rstd_qk, const Real* g_qk,
                                              const Config& c, int N) {
    const int hq = c.H * c.hd(), ld = c.qkv_dim(), w = c.qk_dim();
    rmsnorm_backward(dqkv, dg_qk, dqkv, qk, g_qk, rstd_qk, N, hq, ld, w);
    rmsnorm_backward(dqkv + hq, dg_qk + hq, dqkv + hq, qk + hq, g_qk + hq, rstd_qk + N, N, w - hq, ld, w);
}

// RoPE tables (maxT, hd/2): rotate-half pairing of §9.
template<typename Real> void rope_tables(Real* cosT, Real* sinT, int maxT, int hd) {
    for (int p = 0; p < maxT; p++)
        for (int i = 0; i < hd / 2; i++) {
            double angle = p * pow(10000.0, -2.0 * i / hd);
            cosT[p * (hd / 2) + i] = (Real)cos(angle);
            sinT[p * (hd / 2) + i] = (Real)sin(angle);
        }
}
// In place on the first nheads heads of each row of x (N rows, row stride ld); pos (N).
// sign = +1 rotates by the angle (forward); -1 by its inverse, which is the backward.
template<typename Real> void rope_rotate(Real* x, long ld, const int* pos, int N, int nheads, int hd,
                                         const Real* cosT, const Real* sinT, int sign) {
    const int half = hd / 2;
    #pragma omp parallel for
    for (int r = 0; r < N; r++)
        for (int h = 0; h < nheads; h++) {
            Real* z = x + (long)r * ld + h * hd;
            const Real *cs = cosT + (size_t)pos[r] * half, *sn = sinT + (size_t)pos[r] * half;
            for (int i = 0; i < half; i++) {
                Real a = z[i], b = z[i + half], s = sign * sn[i];
                z[i] = a * cs[i] - b * s;
                z[i + half] = a * s + b * cs[i];
            }
        }
}
// q and k heads of the fused qkv rows (N, qkv_dim) are rotated; v is untouched.
template<typename Real> void rope_forward(Real* qkv, const int* pos, const Config& c, int N, const Real* cosT, const Real* sinT) {
    rope_rotate(qkv, c.qkv_dim(), pos, N, c.H + c.Hkv, c.hd(), cosT, sinT, +1);
}
template<typename Real> void rope_backward(Real* dqkv, const int* pos, const Config& c, int N, const Real* cosT, const Real* sinT) {
    rope_rotate(dqkv, c.qkv_dim(), pos, N, c.H + c.Hkv, c.hd(), cosT, sinT, -1);
}

// Softmax attention of one query head over its visible keys, in the order given: o (hd) =
// sum_t softmax_t(q . k_t / sqrt(hd)) v_t, with k_t = key(t), v_t = value(t) rows of hd.
// p (nk) is scratch. Returns the log-sum-exp of the scaled scores, all the backward needs to
// rebuild the probabilities. The training attention and the KV-cache decoder both use it.
template<typename Real, typename Key, typename Value>
Real attend_query(Real* o, Real* p, const Real* q, int nk, int hd, Key key, Value value) {
    const Real scale = Real(1) / std::sqrt((Real)hd);
    Real mx = -INFINITY;
    for (int t = 0; t < nk; t++) {
        const Real* kt = key(t);
        Real s = 0;
        #pragma omp simd reduction(+ : s)
        for (int e = 0; e < hd; e++) s += q[e] * kt[e];
        p[t] = s * scale;
        mx = std::max(mx, p[t]);
    }
    Real sum = 0;
    for (int t = 0; t < nk; t++) { p[t] = exp_fast(p[t] - mx); sum += p[t]; }
    std::fill(o, o + hd, Real(0));
    for (int t = 0; t < nk; t++) {
        const Real *vt = value(t), w = p[t] / sum;
        #pragma omp simd
        for (int e = 0; e < hd; e++) o[e] += w * vt[e];
    }
    return mx + std::log(sum);
}

// Attention over the PHD mask. qkv (B, T*K, qkv_dim) with RoPE applied; o (B, T*K, H*hd);
// lse (B, H, T*K). Only visible keys are ever touched.
template<typename Real> void attention_forward(Real* o, Real* lse, const Real* qkv, const Config& c, int B, int T) {
    const int TK = T * c.K, hd = c.hd(), ld = c.qkv_dim(), group = c.H / c.Hkv;
    #pragma omp parallel
    {
        std::vector<Real> p(TK);  // (TK) probabilities of a query's visible keys
        #pragma omp for collapse(3) schedule(dynamic, 16)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < c.H; h++)
                for (int i = 0; i < TK; i++) {
                    const Real* base = qkv + (size_t)b * TK * ld;
                    const Real* kbase = base + (c.H + h / group) * hd;
                    const Real* vbase = base + (c.H + c.Hkv + h / group) * hd;
                    int n, copy;
                    row_token(c, T, i, &n, &copy);
                    const VisibleRows keys = visible_rows(c, T, n, copy);
                    lse[((size_t)b * c.H + h) * TK + i] =
                        attend_query(o + ((size_t)b * TK + i) * c.H * hd + h * hd, p.data(), base + (size_t)i * ld + h * hd, keys.count, hd,
                                     [&](int t) { return kbase + (size_t)keys.row(t) * ld; },
                                     [&](int t) { return vbase + (size_t)keys.row(t) * ld; });
                }
    }
}
// dqkv (B, T*K, qkv_dim) overwritten. One task per (b, kv head) owns that head's dk, dv and
// the dq of its query heads, so the sums are race-free and in a fixed order.
template<typename Real> void attention_backward(Real* dqkv, const Real* dout, const Real* qkv, const Real* o,
                                                const Real* lse, const Config& c, int B, int T) {
    const int TK = T * c.K, hd = c.hd(), ld = c.qkv_dim(), group = c.H / c.Hkv;
    const Real scale = Real(1) / std::sqrt((Real)hd);
    std::fill(dqkv, dqkv + (size_t)B * TK * ld, Real(0));
    #pragma omp parallel
    {
        #pragma omp for collapse(2) schedule(dynamic, 1)
        for (int b = 0; b < B; b++)
            for (int kh = 0; kh < c.Hkv; kh++) {
                const Real* base = qkv + (size_t)b * TK * ld;
                Real* dbase = dqkv + (size_t)b * TK * ld;
                const int koff = (c.H + kh) * hd, voff = (c.H + c.Hkv + kh) * hd;
                for (int h = kh * group; h < (kh + 1) * group; h++)
                    for (int i = 0; i < TK; i++) {
                        const Real* q = base + (size_t)i * ld + h * hd;
                        Real* dq = dbase + (size_t)i * ld + h * hd;
                        const size_t orow = ((size_t)b * TK + i) * c.H * hd + h * hd;
                        const Real *doi = dout + orow, *oi = o + orow;
                        const Real l = lse[((size_t)b * c.H + h) * TK + i];
                        Real Di = 0;  // sum_j p_j dp_j = dout . o
                        #pragma omp simd reduction(+ : Di)
                        for (int e = 0; e < hd; e++) Di += doi[e] * oi[e];
                        int n, copy;
                        row_token(c, T, i, &n, &copy);
                        const VisibleRows keys = visible_rows(c, T, n, copy);
                        for (int t = 0; t < keys.count; t++) {
                            const size_t j = keys.row(t);
                            const Real* kj = base + j * ld + koff;
                            const Real* vj = base + j * ld + voff;
                            Real s = 0, dp = 0;
                            #pragma omp simd reduction(+ : s, dp)
                            for (int e = 0; e < hd; e++) { s += q[e] * kj[e]; dp += doi[e] * vj[e]; }
                            Real p = exp_fast(s * scale - l);
                            Real ds = p * (dp - Di) * scale;
                            Real* dk = dbase + j * ld + koff;
                            Real* dv = dbase + j * ld + voff;
                            #pragma omp simd  // dq, dk, dv are disjoint columns of dqkv
                            for (int e = 0; e < hd; e++) {
                                dq[e] += ds * kj[e];
                                dk[e] += ds * q[e];
                                dv[e] += p * doi[e];
                            }
                        }
                    }
            }
    }
}

// g (N, F) = silu(h1) * h3, from h13 (N, 2F) = h1 | h3
template<typename Real> void swiglu_forward(Real* g, const Real* h13, int N, int F) {
    #pragma omp parallel for
    for (int i = 0; i < N; i++)
        for (int j = 0; j < F; j++) {
            Real a = h13[(size_t)i * 2 * F + j], b = h13[(size_t)i * 2 * F + F + j];
            g[(size_t)i * F + j] = a / (Real(1) + exp_fast(-a)) * b;
        }
}
// dh13 (N, 2F) overwritten
template<typename Real> void swiglu_backward(Real* dh13, const Real* dg, const Real* h13, int N, int F) {
    #pragma omp parallel for
    for (int i = 0; i < N; i++)
        for (int j = 0; j < F; j++) {
            Real a = h13[(size_t)i * 2 * F + j], b = h13[(size_t)i * 2 * F + F + j];
            Real s = Real(1) / (Real(1) + exp_fast(-a)), d = dg[(size_t)i * F + j];
            dh13[(size_t)i * 2 * F + j] = d * b * s * (Real(1) + a * (Real(1) - s));
            dh13[(size_t)i * 2 * F + F + j] = d * a * s;
        }
}

// losses (N) = lse - logits[target], lse (N) = logsumexp(logits[:V]); logits (N, Vp).
// Padded columns never count. The z-loss (§10) is z * lse^2, from lse.
template<typename Real> void crossentropy_forward(Real* losses, Real* lse, const Real* logits, const int* targets,
                                                  int N, int V, int Vp) {
    #pragma omp parallel for
    for (int i = 0; i < N; i++) {
        const Real* z = logits + (size_t)i * Vp;
        Real mx = -INFINITY, sum = 0;
        #pragma omp simd reduction(max : mx)
        for (int j = 0; j < V; j++) mx = std::max(mx, z[j]);
        #pragma omp simd reduction(+ : sum)
        for (int j = 0; j < V; j++) sum += exp_fast(z[j] - mx);
        lse[i] = mx + std::log(sum);
        losses[i] = lse[i] - z[targets[i]];
    }
}
// In place: logits (N, Vp) become dlogits, the gradient of dloss_row * (loss + zcoef * lse^2)
// per row: dloss_row * (softmax * (1 + 2 zcoef lse) - onehot); padded columns 0.
template<typename Real> void crossentropy_backward(Real* logits, const Real* lse, const int* targets, Real dloss_row,
                                                   int N, int V, int Vp, Real zcoef = 0) {
    #pragma omp parallel for
    for (int i = 0; i < N; i++) {
        Real* z = logits + (size_t)i * Vp;
        const Real l = lse[i], scale = dloss_row * (1 + 2 * zcoef * l);
        #pragma omp simd
        for (int j = 0; j < V; j++) z[j] = scale * exp_fast(z[j] - l);
        z[targets[i]] -= dloss_row;
        std::fill(z + V, z + Vp, Real(0));
    }
}

// ----------------------------------------------------------------------------
// The model: parameters, gradients, activations, forward and backward.

template<typename Real> struct LayerActs {
    Real* x;       // (B, TK, D) residual stream entering the layer
    Real* a;       // (B, TK, D) rmsnorm(x, g_attn); reordered norm: null (the qkv matmul reads x)
    Real* rstd_a;  // (B, TK) of the attention's norm
    Real* qkv;     // (B, TK, qkv_dim) q | k | v, q and k normed (qk-norm) and RoPE applied
    Real* lse;     // (B, H, TK)
    Real* o;       // (B, TK, H*hd) attention output
    Real* xm;      // (B, TK, D) residual stream after attention
    Real* f;       // (B, TK, D) rmsnorm(xm, g_ffn); reordered norm: null (the w13 matmul reads xm)
    Real* rstd_f;  // (B, TK) of the MLP's norm
    Real* h13;     // (B, TK, 2F) f w1^T | f w3^T
    Real* g;       // (B, TK, F) silu(h1) * h3
    Real* qk;      // (B, TK, qk_dim) qk-norm: q | k before their norms; else null
    Real* rstd_qk; // (2, B, TK) qk-norm: their factors, q's then k's; else null
    Real* u;       // (B, TK, D) reordered norm: o wo^T before its norm; else null
    Real* y;       // (B, TK, D) reordered norm: g w2^T before its norm; else null
};

// Activation and gradient buffers for a batch (B, T), carved from one arena: the CPU model
// keeps it in host memory, the GPU model (kernels/gpu_model.cuh) in device memory.
template<typename Real> struct Activations {
    std::vector<LayerActs<Real>> layer;
    Real* xL;          // (B, TK, D) final residual stream
    Real* xlast;       // (B, T, D) its last copies: the only rows that reach the LM head
    Real* rstd_final;  // (B, T)
    Real* xn;          // (B, T, D) rmsnorm(xlast, g_final)
    Real* logits;      // (B, T, Vp); dlogits after backward
    Real* losses;      // (B, T)
    Real* lse;         // (B, T) log-sum-exp of each row of logits
    Real* dx;          // (B, TK, D) gradient of the residual stream
    Real* dtmp;        // (B, TK, max(D, F)) scratch gradient
    Real* dqkv;        // (B, TK, qkv_dim)
    Real* dh13;        // (B, TK, 2F)
    Real* dxlast;      // (B, T, D)
    Real* dy;          // (B, TK, D) reordered norm: the gradient of u or y; else null

    // Points every tensor into mem, which holds floats(c, B, T, matmul_inputs, recompute)
    // elements, and returns that count (mem null: only counts). matmul_inputs false leaves out
    // a, qkv, o, f, h13, g, dqkv, dh13, dy and logits (null): bf16 GPU runs keep those only as
    // the bf16 tensors the matmuls, the attention, the SwiGLU and the loss read (kernels/gpu_model.cuh).
    // Every tensor starts on 256 bytes (the GPU's row kernels take 16 bytes an access where
    // their rows allow it, so a tensor's alignment must not depend on what else is kept).
    // recompute (as llm.c's -r): what every layer's backward recomputes instead of keeping
    // (layer_recompute), all layers sharing one copy: 1 the norms' outputs a and f and the
    // SwiGLU's g; 2 everything but the layer's input x.
    size_t point(const Config& c, int B, int T, Real* mem, bool matmul_inputs = true, int recompute = 0) {
        const size_t N = (size_t)B * T * c.K, BT = (size_t)B * T;
        const bool pre = c.norm == NORM_PRE;
        size_t used = 0;
        auto take = [&](size_t n, bool want = true) -> Real* {  // each tensor on a 256-byte boundary of the arena
            if (!want) return nullptr;
            Real* r = mem ? mem + used : nullptr;
            used += (n * sizeof(Real) + 255) / 256 * 256 / sizeof(Real);
            return r;
        };
        layer.resize(c.L);
        for (size_t l = 0; l < layer.size(); l++) {
            // Tensor t of layer l: its own, or layer 0's where recompute reaches `level`.
            auto per = [&](Real* LayerActs<Real>::*t, int level, size_t n, bool want = true) {
                layer[l].*t = l > 0 && recompute >= level ? layer[0].*t : take(n, want);
            };
            per(&LayerActs<Real>::x, 3, N * c.D); per(&LayerActs<Real>::a, 1, N * c.D, matmul_inputs && pre);
            per(&LayerActs<Real>::rstd_a, 2, N); per(&LayerActs<Real>::qkv, 2, N * c.qkv_dim(), matmul_inputs);
            per(&LayerActs<Real>::lse, 2, N * c.H); per(&LayerActs<Real>::o, 2, N * c.H * c.hd(), matmul_inputs);
            per(&LayerActs<Real>::xm, 2, N * c.D); per(&LayerActs<Real>::f, 1, N * c.D, matmul_inputs && pre);
            per(&LayerActs<Real>::rstd_f, 2, N); per(&LayerActs<Real>::h13, 2, N * 2 * c.F, matmul_inputs);
            per(&LayerActs<Real>::g, 1, N * c.F, matmul_inputs);
            per(&LayerActs<Real>::qk, 2, N * c.qk_dim(), c.qk_norm); per(&LayerActs<Real>::rstd_qk, 2, 2 * N, c.qk_norm);
            per(&LayerActs<Real>::u, 2, N * c.D, !pre); per(&LayerActs<Real>::y, 2, N * c.D, !pre);
        }
        xL = take(N * c.D); xlast = take(BT * c.D); rstd_final = take(BT);
        xn = take(BT * c.D); logits = take(BT * c.Vp, matmul_inputs); losses = take(BT); lse = take(BT);
        dx = take(N * c.D); dtmp = take(N * std::max(c.D, c.F)); dqkv = take(N * c.qkv_dim(), matmul_inputs);
        dh13 = take(N * 2 * c.F, matmul_inputs); dxlast = take(BT * c.D); dy = take(N * c.D, matmul_inputs && !pre);
        return used;
    }
    static size_t floats(const Config& c, int B, int T, bool matmul_inputs = true, int recompute = 0) {
        return Activations().point(c, B, T, nullptr, matmul_inputs, recompute);
    }
};

template<typename Real> struct Model : Activations<Real> {
    Config cfg;
    std::vector<Real> params, grads;   // (P) arenas, order of param_tensors()
    ParamView<Real> p, g;              // named views into them
    std::vector<Real> rope_cos, rope_sin;  // (maxT, hd/2)

    int B = 0, T = 0;                  // shape the activations are sized for
    int recompute = 0;                 // 0, 1, 2: what the backward recomputes (Activations::point); set before the first forward
    std::vector<Real> act_mem;         // the activations' arena
    std::vector<int> tokens, targets;  // (B, T) of the last forward
    std::vector<int> pos;              // (B*TK) RoPE position of every row
    Real z_term = 0;                   // §10: z * mean(lse^2) of the last forward with targets (0 without z-loss);
                                       // the backward differentiates loss + z_term

    explicit Model(const Config& c) : cfg(c) {
        size_t P = num_params(c);
        params.assign(P, 0);
        grads.assign(P, 0);
        p = param_view(c, params.data());
        g = param_view(c, grads.data());
        rope_cos.resize((size_t)c.maxT * c.hd() / 2);
        rope_sin.resize(rope_cos.size());
        rope_tables(rope_cos.data(), rope_sin.data(), c.maxT, c.hd());
    }

    // Activation and gradient buffers, reallocated only when (B, T) changes.
    void size_for(int B_, int T_) {
        if (B_ == B && T_ == T) return;
        B = B_; T = T_;
        act_mem.assign(Activations<Real>::floats(cfg, B, T, true, recompute), 0);
        this->point(cfg, B, T, act_mem.data(), true, recompute);
        const size_t N = (size_t)B * T * cfg.K;
        pos.resize(N);
        for (size_t r = 0; r < N; r++) pos[r] = row_position(cfg, T, (int)(r % ((size_t)T * cfg.K)));  // every copy: position n
    }
};

// One layer's forward over N rows: x_next (N, D) = layer(a.x), which may be a.x itself (the
// decoder works in place). pos (N): the rows' positions, for RoPE. attend() fills a.o from
// a.qkv: the training attention in model_forward, the KV-cache attention in kernels/cpu_decode.h.
// kernels/gpu_model.cuh's GpuModel::layer_forward is the same body on the GPU.
template<typename Real, typename Attend>
void layer_forward(const Model<Real>& M, const LayerActs<Real>& a, const LayerView<Real>& w, Real* x_next, int N, const int* pos,
                   Attend attend) {
    const Config& c = M.cfg;
    const int D = c.D;
    const size_t ND = (size_t)N * D;
    const bool pre = c.norm == NORM_PRE;
    // attention: xm = x + o wo^T (pre-norm: on a = rmsnorm(x)), or x + rmsnorm(o wo^T) (reordered)
    if (pre) rmsnorm_forward(a.a, a.rstd_a, a.x, w.g_attn, N, D);
    matmul_forward(a.qkv, pre ? a.a : a.x, w.wqkv, N, D, c.qkv_dim());
    if (c.qk_norm) qk_norm_forward(a.qkv, a.qk, a.rstd_qk, w.g_qk, c, N);
    rope_forward(a.qkv, pos, c, N, M.rope_cos.data(), M.rope_sin.data());
    attend();
    matmul_forward(pre ? a.xm : a.u, a.o, w.wo, N, c.H * c.hd(), D);
    if (!pre) rmsnorm_forward(a.xm, a.rstd_a, a.u, w.g_attn, N, D);
    for (size_t i = 0; i < ND; i++) a.xm[i] += a.x[i];
    // MLP: x_next = xm + swiglu(..) w2^T, on f = rmsnorm(xm) (pre-norm) or xm with its output normed
    if (pre) rmsnorm_forward(a.f, a.rstd_f, a.xm, w.g_ffn, N, D);
    matmul_forward(a.h13, pre ? a.f : a.xm, w.w13, N, D, 2 * c.F);
    swiglu_forward(a.g, a.h13, N, c.F);
    matmul_forward(pre ? x_next : a.y, a.g, w.w2, N, c.F, D);
    if (!pre) rmsnorm_forward(x_next, a.rstd_f, a.y, w.g_ffn, N, D);
    for (size_t i = 0; i < ND; i++) x_next[i] += a.xm[i];
}
// Its backward over the B*T*K rows of the last forward: M.dx (N, D), the gradient of x_next
// on entry, becomes that of a.x; gradients are added into gw. GpuModel::layer_backward on the GPU.
template<typename Real>
void layer_backward(Model<Real>& M, const LayerActs<Real>& a, const LayerView<Real>& w, const LayerView<Real>& gw) {
    const Config& c = M.cfg;
    const int N = M.B * M.T * c.K, D = c.D;
    const size_t ND = (size_t)N * D;
    const bool pre = c.norm == NORM_PRE;
    // The gradient each sublayer's last matmul sees: dx itself (pre-norm), or through its norm (reordered).
    Real* dsub = pre ? M.dx : M.dy;
    // MLP
    if (!pre) rmsnorm_backward(M.dy, gw.g_ffn, M.dx, a.y, w.g_ffn, a.rstd_f, N, D);
    matmul_backward(M.dtmp, gw.w2, dsub, a.g, w.w2, N, c.F, D);
    swiglu_backward(M.dh13, M.dtmp, a.h13, N, c.F);
    matmul_backward(M.dtmp, gw.w13, M.dh13, pre ? a.f : a.xm, w.w13, N, D, 2 * c.F);
    if (pre) rmsnorm_backward(M.dtmp, gw.g_ffn, M.dtmp, a.xm, w.g_ffn, a.rstd_f, N, D);
    for (size_t i = 0; i < ND; i++) M.dx[i] += M.dtmp[i];
    // attention
    if (!pre) rmsnorm_backward(M.dy, gw.g_attn, M.dx, a.u, w.g_attn, a.rstd_a, N, D);
    matmul_backward(M.dtmp, gw.wo, dsub, a.o, w.wo, N, c.H * c.hd(), D);
    attention_backward(M.dqkv, M.dtmp, a.qkv, a.o, a.lse, c, M.B, M.T);
    rope_backward(M.dqkv, M.pos.data(), c, N, M.rope_cos.data(), M.rope_sin.data());
    if (c.qk_norm) qk_norm_backward(M.dqkv, gw.g_qk, a.qk, a.rstd_qk, w.g_qk, c, N);
    matmul_backward(M.dtmp, gw.wqkv, M.dqkv, pre ? a.a : a.x, w.wqkv, N, D, c.qkv_dim());
    if (pre) rmsnorm_backward(M.dtmp, gw.g_attn, M.dtmp, a.x, w.g_attn, a.rstd_a, N, D);
    for (size_t i = 0; i < ND; i++) M.dx[i] += M.dtmp[i];
}

// What layer l's backward reads and M.recompute left to share with the other layers, made
// again from the layer's input by the forward's own steps, so the gradients keep their bits:
// level 1 the norms' outputs and the SwiGLU's (elementwise work), level 2 the whole layer
// (its forward once more, x_next rewritten with the same values).
template<typename Real> void layer_recompute(Model<Real>& M, int l) {
    const Config& c = M.cfg;
    const LayerActs<Real>& a = M.layer[l];
    const LayerView<Real>& w = M.p.layer[l];
    const int N = M.B * M.T * c.K;
    if (M.recompute == 2) {
        layer_forward(M, a, w, l + 1 < c.L ? M.layer[l + 1].x : M.xL, N, M.pos.data(),
                      [&] { attention_forward(a.o, a.lse, a.qkv, c, M.B, M.T); });
        return;
    }
    if (c.norm == NORM_PRE) {
        rmsnorm_forward(a.a, a.rstd_a, a.x, w.g_attn, N, c.D);
        rmsnorm_forward(a.f, a.rstd_f, a.xm, w.g_ffn, N, c.D);
    }
    swiglu_forward(a.g, a.h13, N, c.F);
}

// Forward over tokens (B, T). Returns the mean last-copy loss (the cross-entropy; the z-loss
// goes to M.z_term) if targets is given (else 0, and only the logits are computed).
template<typename Real> Real model_forward(Model<Real>& M, const int* tokens, const int* targets, int B, int T) {
    const Config& c = M.cfg;
    M.size_for(B, T);
    const int N = B * T * c.K, BT = B * T, D = c.D, K = c.K;
    M.tokens.assign(tokens, tokens + BT);
    if (targets) M.targets.assign(targets, targets + BT);

    embedding_forward(M.layer[0].x, tokens, M.p.E, c, B, T);
    for (int l = 0; l < c.L; l++) {
        const LayerActs<Real>& a = M.layer[l];
        layer_forward(M, a, M.p.layer[l], l + 1 < c.L ? M.layer[l + 1].x : M.xL, N, M.pos.data(),
                      [&] { attention_forward(a.o, a.lse, a.qkv, c, B, T); });
    }
    // Only the last copy of each position reaches the final norm and the LM head.
    for (int i = 0; i < BT; i++) {
        const Real* last = M.xL + ((size_t)i / T * T * K + token_row(c, T, i % T, K - 1)) * D;
        std::copy(last, last + D, M.xlast + (size_t)i * D);
    }
    rmsnorm_forward(M.xn, M.rstd_final, M.xlast, M.p.g_final, BT, D);
    matmul_forward(M.logits, M.xn, M.p.wout, BT, D, c.Vp);
    if (!targets) return 0;
    crossentropy_forward(M.losses, M.lse, M.logits, targets, BT, c.V, c.Vp);
    Real sum = 0, zsum = 0;
    for (int i = 0; i < BT; i++) {
        sum += M.losses[i];
        zsum += M.lse[i] * M.lse[i];
    }
    M.z_term = (Real)c.z_loss * zsum / BT;
    return sum / BT;
}

// Backward of dloss * (mean loss + z_term) of the last forward; gradients are added into M.grads
// (zero them first unless accumulating micro-batches).
template<typename Real> void model_backward(Model<Real>& M, Real dloss) {
    const Config& c = M.cfg;
    const int B = M.B, T = M.T, N = B * T * c.K, BT = B * T, D = c.D, K = c.K;
    crossentropy_backward(M.logits, M.lse, M.targets.data(), dloss / BT, BT, c.V, c.Vp, (Real)c.z_loss);
    matmul_backward(M.dxlast, M.g.wout, M.logits, M.xn, M.p.wout, BT, D, c.Vp);
    rmsnorm_backward(M.dxlast, M.g.g_final, M.dxlast, M.xlast, M.p.g_final, M.rstd_final, BT, D);
    std::fill(M.dx, M.dx + (size_t)N * D, Real(0));
    for (int i = 0; i < BT; i++)
        std::copy(M.dxlast + (size_t)i * D, M.dxlast + (size_t)(i + 1) * D, M.dx + ((size_t)i / T * T * K + token_row(c, T, i % T, K - 1)) * D);

    for (int l = c.L - 1; l >= 0; l--) {
        if (M.recompute && l < c.L - 1) layer_recompute(M, l);  // the last layer's shared tensors still hold its forward's
        layer_backward(M, M.layer[l], M.p.layer[l], M.g.layer[l]);
    }
    embedding_backward(M.g.E, M.dx, M.tokens.data(), c, B, T);
}

// ----------------------------------------------------------------------------
// Optimiser (§9)

struct AdamW {
    float lr_max = 3e-4f, final_frac = 0.1f;
    int warmup = 0, total_steps = 1;
    float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f, clip = 1.0f;
};

// Linear warm-up over `warmup` steps, then cosine from lr_max down to lr_max * final_frac
// at the last step. step counts from 0.
static inline float learning_rate(const AdamW& o, int step) {
    if (step < o.warmup) return o.lr_max * (step + 1) / o.warmup;
    double progress = o.total_steps > o.warmup + 1 ? (double)(step - o.warmup) / (o.total_steps - o.warmup - 1) : 1.0;
    progress = std::min(1.0, progress);
    double lo = (double)o.lr_max * o.final_frac;
    return (float)(lo + 0.5 * (1.0 + cos(M_PI * progress)) * (o.lr_max - lo));
}

// Sum of squares, in double over fixed 64k-element chunks so that the result does not
// depend on the number of threads. The gradient norm is its square root (summed over the
// ranks' shards first in a data-parallel run, kernels/dist.h).
template<typename Real> double grad_sumsq(const Real* g, size_t n) {
    const size_t chunk = 1 << 16, nchunks = (n + chunk - 1) / chunk;
    std::vector<double> part(nchunks, 0.0);
    #pragma omp parallel for
    for (size_t k = 0; k < nchunks; k++) {
        double s = 0;
        for (size_t i = k * chunk; i < std::min(n, (k + 1) * chunk); i++) s += (double)g[i] * g[i];
        part[k] = s;
    }
    double s = 0;
    for (double x : part) s += x;
    return s;
}
template<typename Real> double grad_norm(const Real* g, size_t n) { return sqrt(grad_sumsq(g, n)); }

// The factor that clips the gradients to global norm o.clip: min(1, clip / (norm + 1e-6)), as
// torch.nn.utils.clip_grad_norm_. A NaN or inf norm has none: std::min would pass a NaN as 1
// (no clipping) and an inf would scale by 0 (inf * 0 = NaN), NaN weights either way; so it
// stops the process, as clip_grad_norm_(error_if_nonfinite=True) raises. train_phd stops its
// run before this, naming the step, on every rank; this guards every other caller.
// The formula alone, which the GPU also evaluates on the device (kernels/adamw.cuh).
PHD_HOST_DEVICE inline double clip_scale_of(double clip, double norm) {
    const double s = clip / (norm + 1e-6);
    return s < 1.0 ? s : 1.0;
}
static inline double clip_scale(const AdamW& o, double norm) {
    if (!std::isfinite(norm)) die("AdamW: the gradient norm is %s: no update can be made from it", std::isnan(norm) ? "NaN" : "infinite");
    return clip_scale_of(o.clip, norm);
}

// One AdamW update at 0-based `step` with learning rate lr; gradients are first scaled by
// clip_scale(o, norm). params: (P).
// Only the parameters [lo, hi) are updated (a rank's shard under ZeRO-1, kernels/dist.h; by
// default all), and grads, m, v hold just those: (hi - lo), element i of the arena at i - lo.
// Each tensor keeps its own weight decay: the shard is cut along the tensors it crosses.
template<typename Real> void adamw_update(const Config& c, const AdamW& o, Real* params, const Real* grads,
                                          Real* m, Real* v, int step, float lr, double norm, size_t lo = 0, size_t hi = SIZE_MAX) {
    const Real scale = (Real)clip_scale(o, norm);
    const Real b1 = o.beta1, b2 = o.beta2, eps = o.eps, lr_ = lr;
    const Real bc1 = (Real)(1.0 - pow(o.beta1, step + 1)), bc2 = (Real)(1.0 - pow(o.beta2, step + 1));
    for (const ParamTensor& t : param_tensors(c)) {
        const Real wd = t.decay ? (Real)o.weight_decay : Real(0);
        const size_t from = std::max(lo, t.offset), to = std::min(hi, t.offset + t.size());  // the tensor's part of the shard
        #pragma omp parallel for simd
        for (size_t i = from; i < to; i++) {
            Real gi = grads[i - lo] * scale;
            m[i - lo] = b1 * m[i - lo] + (1 - b1) * gi;
            v[i - lo] = b2 * v[i - lo] + (1 - b2) * gi * gi;
            params[i] -= lr_ * ((m[i - lo] / bc1) / (std::sqrt(v[i - lo] / bc2) + eps) + wd * params[i]);
        }
    }
}
