// dev/kernel_checks.h: every kernel of a training step checked against its CPU counterpart
// in model.h, as one table that both the kernel lab (dev/bench_gpu.cu: at the benchmark's
// shape, then timed) and the GPU tests (test/test_gpu_kernels.cu: at their shapes) run, so
// that the two cannot drift apart.
//
// A check draws random inputs for the model shape of a GpuModel (its config, B, T), runs the
// CPU reference and the kernel on them, and returns each output tensor's error, max |got -
// want| / max |want| (NaN when either holds one), with the tolerance stated for it here; a
// check that does not apply to the shape (no kernel instance for its head size) runs
// nothing and returns no error, and says so by ran(): the tests require every check to run
// at one of their shapes at least, since one that never runs can never fail.
// Outputs start as NaN, so an element the kernel fails to write fails the check. The
// tolerances hold at both the tests' shapes and GPT-2-small's (the H200 lab run of
// 2026-11-27 measured the errors noted). Then `timed` gets the kernel call: the lab times it,
// the tests pass one that does nothing.
#pragma once
#include <functional>
#include <type_traits>
#include <string>
#include <vector>
#include "tensor_util.h"
#include "../kernels/gpu_model.cuh"

struct TensorError {
    std::string tensor;
    double err, tol;
    bool ok() const { return err <= tol; }  // false for NaN
};
struct CheckResult {
    std::vector<TensorError> errors;  // empty: the check does not apply to this shape
    double work;                      // FLOPs or bytes of one kernel call, for the lab's rate
    bool ran() const { return !errors.empty(); }
};
using Timed = std::function<void(const std::function<void()>&)>;

// Device buffers of one check, freed when it returns.
struct CheckBuffers {
    std::vector<void*> all;
    template<typename T> T* up(const std::vector<T>& h) {
        T* d = to_device(h);
        all.push_back(d);
        return d;
    }
    float* nan(size_t n) { return up(std::vector<float>(n, NAN)); }
    ~CheckBuffers() { for (void* p : all) cudaFree(p); }
    CheckBuffers() = default;
    CheckBuffers(const CheckBuffers&) = delete;
    CheckBuffers& operator=(const CheckBuffers&) = delete;
};

// dq, dk and dv of a (rows, qkv_dim) gradient, each to its own scale.
static inline std::vector<TensorError> dqkv_errors(const std::vector<float>& got, const std::vector<float>& want, const Config& c, double tol) {
    const int hd = c.hd(), ld = c.qkv_dim(), edge[4] = {0, c.H * hd, (c.H + c.Hkv) * hd, ld};
    const char* names[3] = {"dq", "dk", "dv"};
    std::vector<TensorError> out;
    for (int blk = 0; blk < 3; blk++) {
        std::vector<float> a, b;
        for (size_t r = 0; r < got.size() / ld; r++) {
            a.insert(a.end(), got.begin() + r * ld + edge[blk], got.begin() + r * ld + edge[blk + 1]);
            b.insert(b.end(), want.begin() + r * ld + edge[blk], want.begin() + r * ld + edge[blk + 1]);
        }
        out.push_back({names[blk], max_rel(a, b), tol});
    }
    return out;
}

// Attention forward and backward, fp32 or (tensor_cores) TF32 mma; FlashAttention's FLOP
// convention: 4 hd per visible pair and head forward, 2.5x that backward.
static CheckResult check_attention(GpuModel& G, int B, int T, const Timed& timed, bool backward, bool tensor_cores) {
    const Config& c = G.cfg;
    if (tensor_cores && !compiled_head_dim(c)) return {{}, 0};
    const int TK = T * c.K, ld = c.qkv_dim(), od = c.H * c.hd();
    std::vector<float> qkv = random_vec<float>((size_t)B * TK * ld, 1, 1.5), dout = random_vec<float>((size_t)B * TK * od, 2);
    std::vector<float> o_ref((size_t)B * TK * od), lse_ref((size_t)B * c.H * TK), dqkv_ref(qkv.size());
    attention_forward(o_ref.data(), lse_ref.data(), qkv.data(), c, B, T);
    CheckBuffers buf;
    float *d_qkv = buf.up(qkv), *d_o = buf.nan(o_ref.size()), *d_lse = buf.nan(lse_ref.size());
    auto forward = [&] { attention_forward(d_o, d_lse, d_qkv, c, B, T, nullptr, nullptr, tensor_cores); };
    forward();
    const double flops = 4.0 * c.hd() * c.H * visible_pairs(c, T) * B;
    // o: 2.8e-7 fp32, 3.3e-4 TF32 (TF32 inputs, 2^-11 relative rounding, over hd-long sums)
    std::vector<TensorError> e = {{"o", max_rel(to_host(d_o, o_ref.size()), o_ref), tensor_cores ? 5e-3 : 1e-5},
                                  {"lse", max_rel(to_host(d_lse, lse_ref.size()), lse_ref), tensor_cores ? 1e-3 : 1e-6}};
    if (!backward) {
        timed(forward);
        return {e, flops};
    }
    // The backward from the kernel's own forward (o, lse), as in training.
    attention_backward(dqkv_ref.data(), dout.data(), qkv.data(), o_ref.data(), lse_ref.data(), c, B, T);
    float *d_dout = buf.up(dout), *d_dqkv = buf.nan(qkv.size());
    auto run = [&] { attention_backward(d_dqkv, d_dout, d_qkv, d_o, d_lse, c, B, T, nullptr, tensor_cores); };
    run();
    // dq, dk, dv: 1.7e-6 fp32 (longer sums, another order); 3.3e-4 TF32 (P and dS rounded too)
    e = dqkv_errors(to_host(d_dqkv, qkv.size()), dqkv_ref, c, tensor_cores ? 5e-3 : 1e-4);
    timed(run);
    return {e, 2.5 * flops};
}

// bf16 <-> float copies of host tensors.
static inline std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& x) {
    std::vector<__nv_bfloat16> y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = __float2bfloat16(x[i]);
    return y;
}
static inline std::vector<float> from_bf16(const std::vector<__nv_bfloat16>& x) {
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = __bfloat162float(x[i]);
    return y;
}

// Attention on bf16 tensor cores, forward and backward: q, k, v and dO rounded to bf16
// once, and the CPU reference run on those rounded values, so the error is the kernels'
// own: P and dS rounded to bf16 for their mma (2^-9 relative), o rounded to bf16 (2^-9 of
// each element, and so D = dO . o), every output rounded to bf16; sums in fp32. The
// backward runs on the kernel's own forward (o, lse), as in training.
static CheckResult check_attention_bf16(GpuModel& G, int B, int T, const Timed& timed, bool backward) {
    const Config& c = G.cfg;
    if (c.hd() % 16) return {{}, 0};  // the mma's k is 16
    const int TK = T * c.K, ld = c.qkv_dim(), od = c.H * c.hd();
    const std::vector<__nv_bfloat16> qkv16 = to_bf16(random_vec<float>((size_t)B * TK * ld, 1, 1.5));
    const std::vector<__nv_bfloat16> dout16 = to_bf16(random_vec<float>((size_t)B * TK * od, 2));
    const std::vector<float> qkv = from_bf16(qkv16), dout = from_bf16(dout16);
    std::vector<float> o_ref((size_t)B * TK * od), lse_ref((size_t)B * c.H * TK), dqkv_ref(qkv.size());
    attention_forward(o_ref.data(), lse_ref.data(), qkv.data(), c, B, T);
    CheckBuffers buf;
    __nv_bfloat16 *d_qkv = buf.up(qkv16), *d_o = buf.up(to_bf16(std::vector<float>(o_ref.size(), NAN)));
    float* d_lse = buf.nan(lse_ref.size());
    auto forward = [&] { attention_forward_bf16(d_o, d_lse, d_qkv, c, B, T, nullptr); };
    forward();
    const double flops = 4.0 * c.hd() * c.H * visible_pairs(c, T) * B;
    if (!backward) {
        std::vector<TensorError> e = {{"o", max_rel(from_bf16(to_host(d_o, o_ref.size())), o_ref), 1e-2},  // 2.2e-3 to 2.9e-3
                                      {"lse", max_rel(to_host(d_lse, lse_ref.size()), lse_ref), 1e-5}};
        timed(forward);
        return {e, flops};
    }
    attention_backward(dqkv_ref.data(), dout.data(), qkv.data(), o_ref.data(), lse_ref.data(), c, B, T);
    __nv_bfloat16 *d_dout = buf.up(dout16), *d_dqkv = buf.up(to_bf16(std::vector<float>(qkv.size(), NAN)));
    float* d_D = buf.nan(lse_ref.size());
    auto run = [&] { attention_backward_bf16(d_dqkv, d_dout, d_qkv, d_o, d_lse, d_D, c, B, T, nullptr); };
    run();
    const std::vector<TensorError> e = dqkv_errors(from_bf16(to_host(d_dqkv, qkv.size())), dqkv_ref, c, 2e-2);
    timed(run);
    return {e, 2.5 * flops};
}

template<typename T> static constexpr bool is_bf16 = std::is_same_v<T, __nv_bfloat16>;
// Tensors stored as T (fp32 or bf16): host floats as T holds them (rounded to bf16 and back
// where T is bf16, so that a reference computed on them sees the kernel's input), a device copy
// stored as T, one of n NaNs, and a host copy of a device tensor as floats.
template<typename T> static std::vector<float> as_stored(const std::vector<float>& x) {
    if constexpr (is_bf16<T>) return from_bf16(to_bf16(x));
    else return x;
}
template<typename T> static T* up_as(CheckBuffers& buf, const std::vector<float>& x) {
    if constexpr (is_bf16<T>) return buf.up(to_bf16(x));
    else return buf.up(x);
}
template<typename T> static T* nan_of(CheckBuffers& buf, size_t n) { return up_as<T>(buf, std::vector<float>(n, NAN)); }
template<typename T> static std::vector<float> host_floats(const T* d, size_t n) {
    if constexpr (is_bf16<T>) return from_bf16(to_host(d, n));
    else return to_host(d, n);
}
// The error a bf16 output may carry against the fp32 reference: its own rounding, 2^-9 of
// each element (so of the tensor's scale), with room for fp32's other orders of summation.
static constexpr double kBf16Out = 4e-3;

// The QKV projection through cuBLASLt, as GpuModel runs every linear layer: fp32 (TF32 where
// the model allows it) or bf16 inputs, which the CPU reference then takes rounded the same;
// and the same product added to another tensor, as the residual adds run.
template<typename In> static CheckResult check_matmul(GpuModel& G, int B, int T, const Timed& timed) {
    const Config& c = G.cfg;
    const int N = B * T * c.K, D = c.D, ld = c.qkv_dim();
    const std::vector<float> a = as_stored<In>(random_vec<float>((size_t)N * D, 4)),
                             w = as_stored<In>(random_vec<float>((size_t)ld * D, 3, 0.02));
    std::vector<float> ref((size_t)N * ld);
    matmul_forward(ref.data(), a.data(), w.data(), N, D, ld);
    CheckBuffers buf;
    In *d_a = up_as<In>(buf, a), *d_w = up_as<In>(buf, w);
    float* d_out = buf.nan(ref.size());
    auto run = [&] { G.matmul("matmul", d_out, d_a, d_w, N, D, ld); };
    run();
    // A pre-norm layer's residual add, out of place: out2 = a w^T + add, add left as it was.
    const std::vector<float> add = random_vec<float>(ref.size(), 8);
    std::vector<float> ref2 = ref;
    for (size_t i = 0; i < ref2.size(); i++) ref2[i] += add[i];
    float *d_add = buf.up(add), *d_out2 = buf.nan(ref.size());
    G.matmul("matmul", d_out2, d_a, d_w, N, D, ld, (const float*)d_add);
    // fp32 1.5e-6; TF32 3.3e-4; bf16: exact products, fp32 sums in another order
    const double tol = G.tf32 && !is_bf16<In> ? 5e-3 : 1e-5;
    std::vector<TensorError> e = {{"out", max_rel(to_host(d_out, ref.size()), ref), tol},
                                  {"out + add", max_rel(to_host(d_out2, ref.size()), ref2), tol},
                                  {"add changed", (double)(to_host(d_add, add.size()) != add), 0}};
    timed(run);
    return {e, 2.0 * N * D * ld};
}

// out fp32, or bf16 (the matmul input of bf16 runs); the backward is fp32's. The forward at
// D + 1 too, whose rows take one float an access instead of 16 bytes: each tensor's error is
// the worse of the two.
template<typename Out> static CheckResult check_rmsnorm(GpuModel& G, int B, int T, const Timed& timed, bool backward) {
    const int N = B * T * G.cfg.K, D = G.cfg.D;
    if (!backward) {
        std::vector<TensorError> e = {{"out", 0, is_bf16<Out> ? kBf16Out : 2e-6},  // 4.5e-7
                                      {"rstd", 0, 2e-6}};
        auto worse = [](TensorError& t, double err) { t.err = std::isnan(err) || err > t.err ? err : t.err; };  // a NaN stays
        CheckBuffers buf;
        std::function<void()> forward;
        for (const int Dk : {D + 1, D}) {  // the model's last: the one timed
            const std::vector<float> x = random_vec<float>((size_t)N * Dk, 5), g = random_vec<float>(Dk, 6);
            std::vector<float> out_ref(x.size()), rstd_ref(N);
            rmsnorm_forward(out_ref.data(), rstd_ref.data(), x.data(), g.data(), N, Dk);
            float *d_x = buf.up(x), *d_g = buf.up(g), *d_rstd = buf.nan(N);
            Out* d_out = nan_of<Out>(buf, x.size());
            forward = [=] { rmsnorm_forward(d_out, d_rstd, (const float*)d_x, (const float*)d_g, N, Dk, nullptr); };
            forward();
            worse(e[0], max_rel(host_floats(d_out, x.size()), out_ref));
            worse(e[1], max_rel(to_host(d_rstd, N), rstd_ref));
        }
        timed(forward);
        return {e, (4.0 + sizeof(Out)) * N * D};  // x read, out written
    }
    if constexpr (is_bf16<Out>) return {{}, 0};  // no bf16 backward
    std::vector<float> x = random_vec<float>((size_t)N * D, 5), g = random_vec<float>(D, 6), dy = random_vec<float>((size_t)N * D, 7);
    std::vector<float> out_ref(x.size()), rstd_ref(N), dx_ref(x.size()), dg_ref(D, 0.5f);
    rmsnorm_forward(out_ref.data(), rstd_ref.data(), x.data(), g.data(), N, D);
    CheckBuffers buf;
    float *d_x = buf.up(x), *d_g = buf.up(g), *d_rstd = buf.nan(N);
    rmsnorm_forward(nan_of<float>(buf, x.size()), d_rstd, d_x, d_g, N, D, nullptr);
    rmsnorm_backward(dx_ref.data(), dg_ref.data(), dy.data(), x.data(), g.data(), rstd_ref.data(), N, D);
    float *d_dy = buf.up(dy), *d_dg = buf.up(std::vector<float>(D, 0.5f)), *d_scratch = buf.nan((size_t)kDgChunks * D);
    rmsnorm_backward(d_dy, d_dg, d_dy, d_x, d_g, d_rstd, N, D, d_scratch, nullptr);  // dx aliases dout, as in the model
    std::vector<TensorError> e = {{"dx", max_rel(to_host(d_dy, x.size()), dx_ref), 2e-5},  // 3.2e-6 (the larger of dx and dg)
                                  {"dg", max_rel(to_host(d_dg, D), dg_ref), 2e-5}};
    timed([&] { rmsnorm_backward(d_dy, d_dg, d_dy, d_x, d_g, d_rstd, N, D, d_scratch, nullptr); });
    return {e, 3.0 * N * D * 4};  // one pass: dout and x read, dx written
}

// The reordered norm's pass (model.h §10): out = residual + rmsnorm(u) g in fp32, the rows'
// factors, and the bf16 copy of out that bf16 runs' next matmul reads (one rounding of out).
static CheckResult check_rmsnorm_reordered(GpuModel& G, int B, int T, const Timed& timed) {
    const int N = B * T * G.cfg.K, D = G.cfg.D;
    const std::vector<float> u = random_vec<float>((size_t)N * D, 19), g = random_vec<float>(D, 20), resid = random_vec<float>(u.size(), 21);
    std::vector<float> out_ref(u.size()), rstd_ref(N);
    rmsnorm_forward(out_ref.data(), rstd_ref.data(), u.data(), g.data(), N, D);
    for (size_t i = 0; i < u.size(); i++) out_ref[i] += resid[i];
    CheckBuffers buf;
    float *d_u = buf.up(u), *d_g = buf.up(g), *d_resid = buf.up(resid), *d_out = buf.nan(u.size()), *d_rstd = buf.nan(N);
    __nv_bfloat16* d_copy = nan_of<__nv_bfloat16>(buf, u.size());
    NormIO<float> io{d_out, D, d_u, D, d_rstd};
    io.residual = d_resid;
    io.out16 = d_copy;
    auto run = [&] { rmsnorm_rows(io, d_g, N, D, nullptr); };
    run();
    const std::vector<float> got = to_host(d_out, u.size());
    std::vector<TensorError> e = {{"residual + norm", max_rel(got, out_ref), 2e-6},
                                  {"rstd", max_rel(to_host(d_rstd, N), rstd_ref), 2e-6},
                                  {"bf16 copy", max_rel(host_floats(d_copy, u.size()), from_bf16(to_bf16(got))), 0}};  // one rounding
    timed(run);
    return {e, 14.0 * N * D};  // u and the residual read, out and its copy written
}

// QK-norm (model.h §10): q and k of the fused qkv rows normed in place from their fp32
// pre-norm copy qk (strided rows, each with its own gains), v untouched; then the backward
// on the q and k parts of dqkv, and the gains' gradient. T: qkv's type (bf16 in bf16 runs).
template<typename T> static CheckResult check_qk_norm(GpuModel& G, int B, int T_, const Timed& timed, bool backward) {
    const Config& c = G.cfg;
    const int N = B * T_ * c.K, ld = c.qkv_dim(), w = c.qk_dim();
    const std::vector<float> qkv = as_stored<T>(random_vec<float>((size_t)N * ld, 22)), g = random_vec<float>(w, 23),
                             dqkv = as_stored<T>(random_vec<float>(qkv.size(), 24));
    std::vector<float> normed_ref = qkv, qk((size_t)N * w), rstd_ref(2 * (size_t)N), dqkv_ref = dqkv, dg_ref(w, 0.5f);
    qk_norm_forward(normed_ref.data(), qk.data(), rstd_ref.data(), g.data(), c, N);
    qk_norm_backward(dqkv_ref.data(), dg_ref.data(), qk.data(), rstd_ref.data(), g.data(), c, N);
    std::vector<float> v_only(qkv.size(), NAN);  // q | k NaN (the kernel must write them), v as given
    for (int i = 0; i < N; i++) std::copy(qkv.begin() + (size_t)i * ld + w, qkv.begin() + (size_t)(i + 1) * ld, v_only.begin() + (size_t)i * ld + w);
    CheckBuffers buf;
    float *d_qk = buf.up(qk), *d_g = buf.up(g), *d_rstd = buf.nan(rstd_ref.size());
    T* d_qkv = up_as<T>(buf, v_only);
    auto forward = [&] { qk_norm_forward(d_qkv, d_rstd, d_qk, d_g, c, N, nullptr); };
    forward();
    if (!backward) {
        std::vector<TensorError> e = {{"q | k normed, v kept", max_rel(host_floats(d_qkv, qkv.size()), as_stored<T>(normed_ref)),
                                       is_bf16<T> ? kBf16Out : 2e-6},
                                      {"rstd", max_rel(to_host(d_rstd, rstd_ref.size()), rstd_ref), 2e-6}};
        timed(forward);
        return {e, (double)N * w * (4 + sizeof(T))};
    }
    T* d_dqkv = up_as<T>(buf, dqkv);
    float *d_dg = buf.up(std::vector<float>(w, 0.5f)), *d_scratch = buf.nan((size_t)kDgChunks * w);
    auto run = [&] { qk_norm_backward(d_dqkv, d_dg, d_qk, d_rstd, d_g, c, N, d_scratch, nullptr, true); };
    run();
    std::vector<TensorError> e = {{"dq | dk, dv kept", max_rel(host_floats(d_dqkv, dqkv.size()), dqkv_ref), is_bf16<T> ? 2 * kBf16Out : 2e-5},
                                  {"dg_qk", max_rel(to_host(d_dg, w), dg_ref), is_bf16<T> ? 2 * kBf16Out : 2e-5}};
    timed(run);  // on its own output: the same work
    return {e, (double)N * w * (4 + 2 * sizeof(T))};
}

// RoPE on the q and k heads at each row's position, in place; the backward must restore
// the input. fp32, or bf16 as bf16 runs keep qkv (each way one rounding).
template<typename T> static CheckResult check_rope(GpuModel& G, int B, int T_, const Timed& timed) {
    const Config& c = G.cfg;
    const int N = B * T_ * c.K, ld = c.qkv_dim();
    const std::vector<float> qkv = as_stored<T>(random_vec<float>((size_t)N * ld, 10));
    std::vector<float> rot_ref = qkv;
    std::vector<int> pos(N);
    for (int r = 0; r < N; r++) pos[r] = row_position(c, T_, r % (T_ * c.K));
    std::vector<float> cs((size_t)c.maxT * c.hd() / 2), sn(cs.size());
    rope_tables(cs.data(), sn.data(), c.maxT, c.hd());
    rope_forward(rot_ref.data(), pos.data(), c, N, cs.data(), sn.data());
    CheckBuffers buf;
    T* d_qkv = up_as<T>(buf, qkv);
    int* d_pos = buf.up(pos);
    rope_forward(d_qkv, d_pos, c, N, G.rope_cos, G.rope_sin, nullptr);
    std::vector<TensorError> e = {{"rotated", max_rel(host_floats(d_qkv, qkv.size()), rot_ref), is_bf16<T> ? kBf16Out : 1e-6}};  // 0
    rope_backward(d_qkv, d_pos, c, N, G.rope_cos, G.rope_sin, nullptr);
    e.push_back({"rotated back", max_rel(host_floats(d_qkv, qkv.size()), qkv), is_bf16<T> ? 2 * kBf16Out : 1e-6});
    timed([&] { rope_forward(d_qkv, d_pos, c, N, G.rope_cos, G.rope_sin, nullptr); });
    return {e, 2.0 * N * (c.H + c.Hkv) * c.hd() * sizeof(T)};
}

// h13, g, dg and dh13 fp32, or bf16 as bf16 runs keep them (the inputs rounded to bf16 first,
// so the error is the kernels' own).
// At the model's F (16-byte accesses where F allows) and at F + 1 (one element a thread);
// each tensor's error is the worse of the two.
template<typename T> static CheckResult check_swiglu(GpuModel& G, int B, int T_, const Timed& timed, bool backward) {
    const int N = B * T_ * G.cfg.K;
    double err = 0;
    CheckBuffers buf;
    std::function<void()> run;
    for (const int F : {G.cfg.F + 1, G.cfg.F}) {  // the model's last: the one timed
        const std::vector<float> h13 = as_stored<T>(random_vec<float>((size_t)N * 2 * F, 11, 3.0)),
                                 dg = as_stored<T>(random_vec<float>((size_t)N * F, 12));
        std::vector<float> g_ref((size_t)N * F), dh_ref(h13.size());
        swiglu_forward(g_ref.data(), h13.data(), N, F);
        swiglu_backward(dh_ref.data(), dg.data(), h13.data(), N, F);
        T *d_h13 = up_as<T>(buf, h13), *d_dg = up_as<T>(buf, dg);
        T *d_g = nan_of<T>(buf, g_ref.size()), *d_dh = nan_of<T>(buf, h13.size());
        run = [=] { swiglu_forward(d_g, (const T*)d_h13, N, F, nullptr); };
        if (backward) run = [=] { swiglu_backward(d_dh, (const T*)d_dg, (const T*)d_h13, N, F, nullptr); };
        run();
        const double e = backward ? max_rel(host_floats(d_dh, h13.size()), dh_ref) : max_rel(host_floats(d_g, g_ref.size()), g_ref);
        err = std::isnan(e) || e > err ? e : err;  // a NaN stays: it fails
    }
    std::vector<TensorError> e;  // (not `c ? TensorError{..} : TensorError{..}`: nvcc 13.0's cicc crashes on it)
    if (backward) e.push_back({"dh13", err, is_bf16<T> ? kBf16Out : 2e-6});  // 3.1e-7
    else e.push_back({"g", err, is_bf16<T> ? kBf16Out : 1e-6});               // 6.8e-8
    timed(run);
    return {e, (backward ? 5.0 : 3.0) * N * G.cfg.F * sizeof(T)};
}

// The fused classifier loss over the B*T last-copy rows (kernels/loss.cuh): each row's loss
// and log-sum-exp, the logits overwritten with the gradient of the loss and a z-loss
// (model.h §10; coefficient 0.01, far above OLMo 2's 1e-5, so that a wrong term shows: fp32,
// or bf16 in bf16 runs), the padded columns zero, and the losses' and z terms' means added to
// the step's sums on the device; against the CPU's forward and backward (dloss 1 a row) on
// the same logits, rounded as stored.
template<typename T> static CheckResult check_crossentropy(GpuModel& G, int B, int T_, const Timed& timed) {
    const Config& c = G.cfg;
    const int BT = B * T_;
    const std::vector<float> z = as_stored<T>(random_vec<float>((size_t)BT * c.Vp, 13, 4.0));
    std::vector<float> loss_ref(BT), lse_ref(BT), dz_ref = z;
    std::vector<int> y(BT);
    Rng rng{14};
    for (int& t : y) t = (int)(rng.next_u64() % c.V);
    crossentropy_forward(loss_ref.data(), lse_ref.data(), z.data(), y.data(), BT, c.V, c.Vp);
    const float zc = 0.01f;
    crossentropy_backward(dz_ref.data(), lse_ref.data(), y.data(), 1.0f, BT, c.V, c.Vp, zc);
    double mean_ref = 0, z_ref = 0;
    for (int i = 0; i < BT; i++) {
        mean_ref += loss_ref[i] / BT;
        z_ref += (double)zc * lse_ref[i] * lse_ref[i] / BT;
    }
    CheckBuffers buf;
    T* d_z = up_as<T>(buf, z);
    float *d_loss = buf.nan(BT), *d_lse = buf.nan(BT), *d_sum = buf.up(std::vector<float>{0.5f, 0.25f});  // the sums so far
    int* d_y = buf.up(y);
    crossentropy(d_loss, d_lse, d_z, d_y, BT, c.V, c.Vp, zc, nullptr);
    loss_sum(d_sum, d_loss, BT, nullptr);
    loss_sum(d_sum + 1, d_lse, BT, nullptr, zc);
    const std::vector<float> sums = to_host(d_sum, 2);
    const std::vector<float> dz = host_floats(d_z, z.size());
    double pad_nonzero = 0;
    for (int i = 0; i < BT; i++)
        for (int j = c.V; j < c.Vp; j++) pad_nonzero += dz[(size_t)i * c.Vp + j] != 0.0f;
    // __expf, __logf, the online rescaling and another summation order: loss 1.1e-7, the
    // gradient 1.6e-6 (__expf at the largest logits), the mean 1e-7
    std::vector<TensorError> e = {{"loss", max_rel(to_host(d_loss, BT), loss_ref), 2e-6},
                                  {"lse", max_rel(to_host(d_lse, BT), lse_ref), 2e-6},
                                  {"dlogits", max_rel(dz, dz_ref), is_bf16<T> ? kBf16Out : 1e-5},
                                  {"padded columns not zero", pad_nonzero, 0},
                                  {"step loss", std::fabs(sums[0] - (0.5 + mean_ref)) / (0.5 + mean_ref), 1e-6},
                                  {"step z-loss", std::fabs(sums[1] - (0.25 + z_ref)) / (0.25 + z_ref), 1e-6}};
    timed([&] { crossentropy(d_loss, d_lse, d_z, d_y, BT, c.V, c.Vp, zc, nullptr); });  // on its own output: the same work
    return {e, crossentropy_bytes<T>(BT, c.Vp)};
}

// Every copy of a position gets its token's row; the backward sums them back by token.
static CheckResult check_embedding(GpuModel& G, int B, int T, const Timed& timed, bool backward) {
    const Config& c = G.cfg;
    const int TK = T * c.K, N = B * TK, D = c.D;
    std::vector<int> tok(B * T), index(N);
    Rng rng{15};
    for (int& t : tok) t = (int)(rng.next_u64() % c.V);
    for (int i = 0; i < N; i++) index[i] = i / TK * T + row_position(c, T, i % TK);
    std::vector<float> E = random_vec<float>((size_t)c.Vp * D, 4), dx = random_vec<float>((size_t)N * D, 5);
    std::vector<float> x_ref((size_t)N * D), dE0 = random_vec<float>(E.size(), 6), dE_ref = dE0;
    embedding_forward(x_ref.data(), tok.data(), E.data(), c, B, T);
    embedding_backward(dE_ref.data(), dx.data(), tok.data(), c, B, T);
    CheckBuffers buf;
    int *d_tok = buf.up(tok), *d_index = buf.up(index);
    float *d_E = buf.up(E), *d_x = buf.nan(x_ref.size()), *d_dx = buf.up(dx), *d_dE = buf.up(dE0);
    uint64_t* d_keys = buf.up(std::vector<uint64_t>(token_sort_slots(B * T)));
    std::function<void()> run = [&] { embedding_forward(d_x, d_tok, d_index, d_E, N, D, nullptr); };
    if (backward) run = [&] { embedding_backward(d_dE, d_dx, d_tok, d_keys, c, B, T, nullptr); };
    run();
    std::vector<TensorError> e;
    if (backward) e.push_back({"dE", max_rel(to_host(d_dE, E.size()), dE_ref), 1e-6});  // 9.3e-8
    else e.push_back({"x", max_rel(to_host(d_x, x_ref.size()), x_ref), 0});             // copies: exact
    timed(run);
    return {e, 2.0 * N * D * 4};
}

// RMSNorm's backward added into the residual stream's gradient in the same pass, as the
// model's layers do it, and in bf16 runs its bf16 copy for the next matmuls: against the
// CPU's backward plus the residual.
static CheckResult check_rmsnorm_residual(GpuModel& G, int B, int T, const Timed& timed) {
    const int N = B * T * G.cfg.K, D = G.cfg.D;
    const std::vector<float> x = random_vec<float>((size_t)N * D, 5), g = random_vec<float>(D, 6), dy = random_vec<float>((size_t)N * D, 7),
                             resid = random_vec<float>((size_t)N * D, 18);
    std::vector<float> out(x.size()), rstd(N), dx(x.size()), dg(D, 0.0f), sum(x.size());
    rmsnorm_forward(out.data(), rstd.data(), x.data(), g.data(), N, D);
    rmsnorm_backward(dx.data(), dg.data(), dy.data(), x.data(), g.data(), rstd.data(), N, D);
    for (size_t i = 0; i < sum.size(); i++) sum[i] = resid[i] + dx[i];
    CheckBuffers buf;
    float *d_x = buf.up(x), *d_g = buf.up(g), *d_dy = buf.up(dy), *d_rstd = buf.up(rstd), *d_resid = buf.up(resid),
          *d_dg = buf.up(std::vector<float>(D, 0.0f)), *d_scratch = buf.nan((size_t)kDgChunks * D);
    __nv_bfloat16* d_copy = nan_of<__nv_bfloat16>(buf, x.size());
    auto run = [&] { rmsnorm_backward(d_resid, d_dg, d_dy, d_x, d_g, d_rstd, N, D, d_scratch, nullptr, true, d_copy); };
    run();
    const std::vector<float> got = to_host(d_resid, x.size());
    std::vector<TensorError> e = {{"residual + dx", max_rel(got, sum), 2e-5},  // as dx alone
                                  {"bf16 copy", max_rel(host_floats(d_copy, x.size()), from_bf16(to_bf16(got))), 0}};  // one rounding
    timed(run);  // adds again: the same work
    return {e, 18.0 * N * D};  // one pass: dout, x and the residual read, the residual and its copy written
}

// One AdamW step over every parameter, after the gradient norm, against the CPU's; with
// bf16 runs' copy of the parameters, which must be the updated ones rounded, bit for bit.
static CheckResult check_adamw(GpuModel& G, int, int, const Timed& timed) {
    const Config& c = G.cfg;
    const size_t P = num_params(c);
    std::vector<float> p = random_vec<float>(P, 15), g = random_vec<float>(P, 16, 0.01), m = random_vec<float>(P, 17, 0.001), v(P);
    for (size_t i = 0; i < P; i++) v[i] = 1e-4f * (1 + (float)(i % 7));
    AdamW o;
    const double norm_ref = grad_norm(g.data(), P);
    o.clip = (float)norm_ref / 2;  // the scale clips: 0.5
    std::vector<float> p_ref = p, m_ref = m, v_ref = v;
    adamw_update(c, o, p_ref.data(), g.data(), m_ref.data(), v_ref.data(), 4, 1e-3f, norm_ref);
    CheckBuffers buf;
    float *d_p = buf.up(p), *d_g = buf.up(g), *d_m = buf.up(m), *d_v = buf.up(v);
    GradNorm gn;
    gn.run(d_g, P, o.clip, nullptr);
    const double norm = std::sqrt(gn.sumsq());
    __nv_bfloat16* d_p16 = nan_of<__nv_bfloat16>(buf, P);
    AdamWStep now;
    now.set(o, 4, 1e-3f);
    now.upload(nullptr);
    adamw_update(*G.tensors, o, d_p, d_g, d_m, d_v, now.dev, gn.scale, nullptr, d_p16);
    const std::vector<float> p_got = to_host(d_p, P), p16 = host_floats(d_p16, P), p_rounded = from_bf16(to_bf16(p_got));
    double copy_wrong = 0;
    for (size_t i = 0; i < P; i++) copy_wrong += !(p16[i] == p_rounded[i]);
    // A rank's shard from parameter lo on (ZeRO-1, kernels/dist.h: g, m and v hold just the
    // shard): from 1, p + 1 is 4 bytes past 16-byte alignment and the kernel takes one element
    // a thread; from 4, four, its tensor search starting at lo.
    auto shard_error = [&](size_t lo) {  // the shard's own parameters updated, those before it left as they were
        const auto from = [lo](const std::vector<float>& x) { return std::vector<float>(x.begin() + lo, x.end()); };
        float *d_ps = buf.up(p), *d_gs = buf.up(from(g)), *d_ms = buf.up(from(m)), *d_vs = buf.up(from(v));
        adamw_update(*G.tensors, o, d_ps, d_gs, d_ms, d_vs, now.dev, gn.scale, nullptr, nullptr, lo);
        std::vector<float> want = p_ref;
        std::copy(p.begin(), p.begin() + lo, want.begin());
        return std::max({max_rel(to_host(d_ps, P), want), max_rel(to_host(d_ms, P - lo), from(m_ref)), max_rel(to_host(d_vs, P - lo), from(v_ref))});
    };
    std::vector<TensorError> e = {{"grad norm", std::fabs(norm - norm_ref) / norm_ref, 1e-12},  // double sums, another order
                                  {"params", max_rel(p_got, p_ref), 1e-6},                      // 0
                                  {"m", max_rel(to_host(d_m, P), m_ref), 1e-6},
                                  {"v", max_rel(to_host(d_v, P), v_ref), 1e-6},
                                  {"bf16 copy != rounded params", copy_wrong, 0},
                                  {"shard from 1: params, m, v", shard_error(1), 1e-6},
                                  {"shard from 4: params, m, v", shard_error(4), 1e-6}};
    timed([&] { adamw_update(*G.tensors, o, d_p, d_g, d_m, d_v, now.dev, gn.scale, nullptr, d_p16); });
    return {e, (7.0 * 4 + 2) * P};
}

struct KernelCheck {
    const char* name;
    const char* unit;  // of the lab's rate: GFLOP/s (work in FLOPs) or GB/s (bytes)
    std::function<CheckResult(GpuModel&, int B, int T, const Timed&)> run;
    bool whole_vector = false;  // its work is every parameter at once: a shape matters only through the tensors' sizes
};

// The table, in the order of a training step.
static inline std::vector<KernelCheck> kernel_checks() {
    using bf16 = __nv_bfloat16;
    // A check with its flags fixed (forward or backward, fp32 or tensor cores).
    auto with = [](auto check, auto... flags) {
        return [=](GpuModel& G, int B, int T, const Timed& timed) { return check(G, B, T, timed, flags...); };
    };
    return {
        {"embedding_forward", "GB/s", with(check_embedding, false)},
        {"rmsnorm_forward", "GB/s", with(check_rmsnorm<float>, false)},
        {"rmsnorm_forward bf16 out", "GB/s", with(check_rmsnorm<bf16>, false)},
        {"matmul qkv (cuBLASLt)", "GFLOP/s", check_matmul<float>},
        {"matmul qkv (cuBLASLt bf16)", "GFLOP/s", check_matmul<bf16>},
        {"qk_norm_forward", "GB/s", with(check_qk_norm<float>, false)},
        {"qk_norm_forward bf16", "GB/s", with(check_qk_norm<bf16>, false)},
        {"rope_forward/backward", "GB/s", check_rope<float>},
        {"rope_forward/backward bf16", "GB/s", check_rope<bf16>},
        {"attention_forward", "GFLOP/s", with(check_attention, false, false)},
        {"attention_forward TF32 mma", "GFLOP/s", with(check_attention, false, true)},
        {"attention_forward bf16 mma", "GFLOP/s", with(check_attention_bf16, false)},
        {"rmsnorm reordered: residual + norm (+ bf16 copy)", "GB/s", check_rmsnorm_reordered},
        {"swiglu_forward", "GB/s", with(check_swiglu<float>, false)},
        {"swiglu_forward bf16", "GB/s", with(check_swiglu<bf16>, false)},
        {"crossentropy (loss and dlogits)", "GB/s", check_crossentropy<float>},
        {"crossentropy bf16 (loss and dlogits)", "GB/s", check_crossentropy<bf16>},
        {"swiglu_backward", "GB/s", with(check_swiglu<float>, true)},
        {"swiglu_backward bf16", "GB/s", with(check_swiglu<bf16>, true)},
        {"attention_backward", "GFLOP/s", with(check_attention, true, false)},
        {"attention_backward TF32 mma", "GFLOP/s", with(check_attention, true, true)},
        {"attention_backward bf16 mma", "GFLOP/s", with(check_attention_bf16, true)},
        {"qk_norm_backward", "GB/s", with(check_qk_norm<float>, true)},
        {"qk_norm_backward bf16", "GB/s", with(check_qk_norm<bf16>, true)},
        {"rmsnorm_backward", "GB/s", with(check_rmsnorm<float>, true)},
        {"rmsnorm_backward + residual (+ bf16 copy)", "GB/s", check_rmsnorm_residual},
        {"embedding_backward", "GB/s", with(check_embedding, true)},
        {"grad norm + adamw_update (+ bf16 copy)", "GB/s", check_adamw, true},
    };
}
