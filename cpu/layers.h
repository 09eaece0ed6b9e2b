// cpu/layers.h: the CPU reference's layers, each xxx_forward followed by its xxx_backward
// (N is a row count): the matrix multiply, embedding, RMSNorm, RoPE, attention over the PHD
// mask, SwiGLU, cross-entropy. Templates over the scalar type (float to train, double to
// check gradients). Part of model.h, which includes it after the config and the visibility
// rules it uses: include model.h.
#pragma once
#include "../model.h"

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

// x (B, T*K, D): every copy of position n gets E[tokens[b, n]] (PHD.md section 3).
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

// out (N, D) = x / sqrt(mean(x^2) + 1e-5) * g;  rstd (N)
template<typename Real> void rmsnorm_forward(Real* out, Real* rstd, const Real* x, const Real* g, int N, int D) {
    #pragma omp parallel for
    for (int i = 0; i < N; i++) {
        const Real* xi = x + (size_t)i * D;
        Real ss = 0;
        for (int j = 0; j < D; j++) ss += xi[j] * xi[j];
        Real r = Real(1) / std::sqrt(ss / D + Real(1e-5));
        rstd[i] = r;
        for (int j = 0; j < D; j++) out[(size_t)i * D + j] = xi[j] * r * g[j];
    }
}
// dx (N, D) overwritten and may alias dout; dg (D) accumulated, column by column so that
// the row order of the sum is fixed whatever the thread count.
template<typename Real> void rmsnorm_backward(Real* dx, Real* dg, const Real* dout, const Real* x, const Real* g,
                                              const Real* rstd, int N, int D) {
    #pragma omp parallel for
    for (int j = 0; j < D; j++) {
        Real s = 0;
        for (int i = 0; i < N; i++) s += dout[(size_t)i * D + j] * x[(size_t)i * D + j] * rstd[i];
        dg[j] += s;
    }
    #pragma omp parallel for
    for (int i = 0; i < N; i++) {
        const Real *xi = x + (size_t)i * D, *dyi = dout + (size_t)i * D;
        Real dot = 0;  // mean over j of (dy g)_j * xhat_j
        for (int j = 0; j < D; j++) dot += dyi[j] * g[j] * xi[j] * rstd[i];
        dot /= D;
        for (int j = 0; j < D; j++) dx[(size_t)i * D + j] = rstd[i] * (dyi[j] * g[j] - xi[j] * rstd[i] * dot);
    }
}

// RoPE tables (maxT, hd/2): rotate-half pairing of PHD.md section 9.
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
// Padded columns never count.
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
// In place: logits (N, Vp) become dlogits = dloss_row * (softmax - onehot); padded columns 0.
template<typename Real> void crossentropy_backward(Real* logits, const Real* lse, const int* targets, Real dloss_row,
                                                   int N, int V, int Vp) {
    #pragma omp parallel for
    for (int i = 0; i < N; i++) {
        Real* z = logits + (size_t)i * Vp;
        const Real l = lse[i];
        #pragma omp simd
        for (int j = 0; j < V; j++) z[j] = dloss_row * exp_fast(z[j] - l);
        z[targets[i]] -= dloss_row;
        std::fill(z + V, z + Vp, Real(0));
    }
}

