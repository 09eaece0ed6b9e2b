// The model's CUDA kernels against the CPU reference (model.h), at shapes that are not
// multiples of any tile: T = 37, K = 3, W = 5, C = 4, D = 96, H = 6, Hkv = 2 (hd = 16).
// Built into the same binaries as test_gpu.cu: emulated on the CPU and natively.
#include <vector>
#include <doctest/doctest.h>
#include "../kernels/attention.cuh"
#include "test_util.h"

// A device copy of a host vector (DeviceBuffer of test_gpu.cu, kept local to this file).
template<typename T> static T* to_device(const std::vector<T>& h) {
    T* d;
    cudaCheck(cudaMalloc(&d, h.size() * sizeof(T)));
    cudaCheck(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
template<typename T> static std::vector<T> to_host(const T* d, size_t n) {
    std::vector<T> h(n);
    cudaCheck(cudaDeviceSynchronize());
    cudaCheck(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

// Rows of a (B, T*K, width) tensor between the logical order and [originals | hidden].
static std::vector<float> regroup(const std::vector<float>& x, const Config& c, int B, int T, int width, bool to_regrouped) {
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

static double max_rel(const std::vector<float>& got, const std::vector<float>& want) {
    double d = 0, ref = 0;
    for (size_t i = 0; i < got.size(); i++) {
        d = std::max(d, (double)std::fabs(got[i] - want[i]));
        ref = std::max(ref, (double)std::fabs(want[i]));
    }
    return d / ref;
}

TEST_CASE("attention kernels: forward and backward equal the CPU reference; only tiles with visible pairs are visited") {
    const int B = 2, T = 37;
    for (const char* v : {"vanilla", "phd-3", "phd-swa-3-5", "phd-cswa-3-5-4", "naive-3"}) {
        Config c = tiny_config(v, 11, T);
        c.D = 96; c.H = 6; c.Hkv = 2;
        const int TK = T * c.K, ld = c.qkv_dim(), od = c.H * c.hd();
        std::vector<float> qkv = random_vec<float>((size_t)B * TK * ld, 1, 1.5), dout = random_vec<float>((size_t)B * TK * od, 2);
        std::vector<float> o_ref((size_t)B * TK * od), lse_ref((size_t)B * c.H * TK), dqkv_ref(qkv.size());
        attention_forward(o_ref.data(), lse_ref.data(), qkv.data(), c, B, T);
        attention_backward(dqkv_ref.data(), dout.data(), qkv.data(), o_ref.data(), lse_ref.data(), c, B, T);

        float *d_qkv = to_device(regroup(qkv, c, B, T, ld, true)), *d_dout = to_device(regroup(dout, c, B, T, od, true));
        float *d_o = to_device(std::vector<float>(o_ref.size())), *d_lse = to_device(std::vector<float>(lse_ref.size()));
        float* d_dqkv = to_device(std::vector<float>(qkv.size(), NAN));  // every element must be written
        int* d_visited = to_device(std::vector<int>{0});
        attention_forward(d_o, d_lse, d_qkv, c, B, T, nullptr, d_visited);
        attention_backward(d_dqkv, d_dout, d_qkv, d_o, d_lse, c, B, T, nullptr);
        std::vector<float> o = regroup(to_host(d_o, o_ref.size()), c, B, T, od, false);
        std::vector<float> dqkv = regroup(to_host(d_dqkv, qkv.size()), c, B, T, ld, false);
        std::vector<float> lse_g = to_host(d_lse, lse_ref.size()), lse(lse_g.size());
        for (int b = 0; b < B; b++)
            for (int h = 0; h < c.H; h++)
                for (int n = 0; n < T; n++)
                    for (int k = 0; k < c.K; k++)
                        lse[((size_t)b * c.H + h) * TK + n * c.K + k] = lse_g[((size_t)b * c.H + h) * TK + regrouped_row(c, T, n, k)];
        INFO(std::string(v));
        CHECK(max_rel(o, o_ref) < 1e-5);        // o: 1e-5 of its scale
        CHECK(max_rel(lse, lse_ref) < 1e-6);    // lse: 1e-6 of its scale
        CHECK(max_rel(dqkv, dqkv_ref) < 1e-4);  // dq, dk, dv: 1e-4 of their scale (longer sums, other order)

        // Visited tiles: exactly the (query tile, key tile) pairs holding a visible pair.
        long want = 0, all = 0;
        for (int q0 = 0; q0 < TK; q0 += kAttnTile)
            for (int k0 = 0; k0 < TK; k0 += kAttnTile) {
                bool any = false;
                for (int i = q0; i < std::min(q0 + kAttnTile, TK) && !any; i++)
                    for (int j = k0; j < std::min(k0 + kAttnTile, TK) && !any; j++) {
                        int n, qc, m, kc;
                        regrouped_token(c, T, i, &n, &qc);
                        regrouped_token(c, T, j, &m, &kc);
                        any = phd_visible(c, n, qc, m, kc);
                    }
                want += any;
                all++;
            }
        int visited = to_host(d_visited, 1)[0];
        MESSAGE(std::string(v) << ": visited " << visited << " of " << (long)B * c.H * all << " tiles");
        CHECK(visited == (long)B * c.H * want);

        // Deterministic: a second backward gives the same bits.
        attention_backward(d_dqkv, d_dout, d_qkv, d_o, d_lse, c, B, T, nullptr);
        CHECK(regroup(to_host(d_dqkv, qkv.size()), c, B, T, ld, false) == dqkv);
        for (void* p : {(void*)d_qkv, (void*)d_dout, (void*)d_o, (void*)d_lse, (void*)d_dqkv, (void*)d_visited}) cudaCheck(cudaFree(p));
    }
}
