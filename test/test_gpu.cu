// GPU tests. Built twice from this one source: natively by nvcc (runs where a GPU exists,
// otherwise says it skipped) and by g++ as host code on test/cuda_emu.h (runs in every
// `make test`, also under ThreadSanitizer and AddressSanitizer).
//
// This part tests the emulation itself with small kernels written the way production
// kernels are: shuffles, shared memory, barriers, early returns, atomics, cuBLASLt.
#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>
#include <doctest/doctest.h>
#include "../kernels/cuda_compat.h"
#include "../kernels/gemm.cuh"
#include "test_util.h"

// A device copy of a host vector, freed on scope exit.
template<typename T> struct DeviceBuffer {
    T* ptr = nullptr;
    size_t n = 0;
    explicit DeviceBuffer(const std::vector<T>& host) : n(host.size()) {
        cudaCheck(cudaMalloc(&ptr, n * sizeof(T)));
        cudaCheck(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    }
    std::vector<T> get() const {
        std::vector<T> host(n);
        cudaCheck(cudaDeviceSynchronize());
        cudaCheck(cudaGetLastError());
        cudaCheck(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
        return host;
    }
    ~DeviceBuffer() { cudaFree(ptr); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

// ----------------------------------------------------------------------------

// One sum per block: warp reduction by xor shuffles, then warp 0 reduces the warp sums.
__global__ void block_sum_kernel(const float* x, float* out, int n) {
    PHD_SHARED(float, warp_sums, [32]);
    int i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float v = i < n ? x[i] : 0.0f;
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)blockDim.x / 32 ? warp_sums[lane] : 0.0f;
        for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) out[blockIdx.x] = v;
    }
}

TEST_CASE("emulation: block reduction with warp shuffles and shared memory") {
    const int n = 1000, threads = 128, blocks = (n + threads - 1) / threads;
    std::vector<float> x(n);
    for (int i = 0; i < n; i++) x[i] = (float)((i * 37) % 101) - 50.0f;
    DeviceBuffer<float> dx(x), dout(std::vector<float>(blocks, -1.0f));
    launch(block_sum_kernel, dim3(blocks), dim3(threads), 0, nullptr, dx.ptr, dout.ptr, n);
    std::vector<float> out = dout.get();
    for (int b = 0; b < blocks; b++) {
        float want = 0;
        for (int i = b * threads; i < std::min(n, (b + 1) * threads); i++) want += x[i];
        CHECK(out[b] == want);  // integer-valued floats: exact in any order
    }
}

// C (M, N) = A (M, K) B (K, N), row-major, 8x8 tiles through shared memory.
__global__ void tiled_matmul_kernel(const float* A, const float* B, float* C, int M, int N, int K) {
    PHD_SHARED(float, As, [8][8]);
    PHD_SHARED(float, Bs, [8][8]);
    int row = blockIdx.y * 8 + threadIdx.y, col = blockIdx.x * 8 + threadIdx.x;
    float acc = 0;
    for (int k0 = 0; k0 < K; k0 += 8) {
        As[threadIdx.y][threadIdx.x] = row < M && k0 + (int)threadIdx.x < K ? A[row * K + k0 + threadIdx.x] : 0.0f;
        Bs[threadIdx.y][threadIdx.x] = col < N && k0 + (int)threadIdx.y < K ? B[(k0 + threadIdx.y) * N + col] : 0.0f;
        __syncthreads();
        for (int k = 0; k < 8; k++) acc += As[threadIdx.y][k] * Bs[k][threadIdx.x];
        __syncthreads();
    }
    if (row < M && col < N) C[row * N + col] = acc;
}

TEST_CASE("emulation: shared-memory tiled matmul with __syncthreads, sizes off the tile") {
    const int M = 37, N = 29, K = 45;
    std::vector<float> A(M * K), B(K * N);
    for (int i = 0; i < M * K; i++) A[i] = (float)(i % 7) - 3;
    for (int i = 0; i < K * N; i++) B[i] = (float)(i % 5) - 2;
    DeviceBuffer<float> dA(A), dB(B), dC(std::vector<float>(M * N, 0.0f));
    launch(tiled_matmul_kernel, dim3((N + 7) / 8, (M + 7) / 8), dim3(8, 8), 0, nullptr, dA.ptr, dB.ptr, dC.ptr, M, N, K);
    std::vector<float> C = dC.get();
    int wrong = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float want = 0;
            for (int k = 0; k < K; k++) want += A[i * K + k] * B[k * N + j];
            wrong += C[i * N + j] != want;
        }
    CHECK(wrong == 0);
}

// Threads past n return before the barrier; the rest reverse the first n values.
__global__ void reverse_kernel(const int* in, int* out, int n) {
    PHD_SHARED(int, s, [64]);
    int t = threadIdx.x;
    if (t >= n) return;
    s[t] = in[t];
    __syncthreads();
    out[t] = s[n - 1 - t];
}

// The same with dynamic shared memory, over several blocks.
__global__ void reverse_dynamic_kernel(const int* in, int* out, int n) {
    int* s = dynamic_shared<int>();
    int t = threadIdx.x, base = blockIdx.x * n;
    s[t] = in[base + t];
    __syncthreads();
    out[base + t] = s[n - 1 - t];
}

TEST_CASE("emulation: early return before a barrier, static and dynamic shared memory") {
    const int n = 37;
    std::vector<int> in(64);
    for (int i = 0; i < 64; i++) in[i] = i * i;
    DeviceBuffer<int> din(in), dout(std::vector<int>(64, -1));
    launch(reverse_kernel, dim3(1), dim3(64), 0, nullptr, din.ptr, dout.ptr, n);
    std::vector<int> out = dout.get();
    for (int t = 0; t < 64; t++) CHECK(out[t] == (t < n ? in[n - 1 - t] : -1));

    const int blocks = 3, m = 40;
    std::vector<int> in2(blocks * m);
    for (int i = 0; i < blocks * m; i++) in2[i] = 7 * i + 1;
    DeviceBuffer<int> din2(in2), dout2(std::vector<int>(blocks * m, -1));
    launch(reverse_dynamic_kernel, dim3(blocks), dim3(m), m * sizeof(int), nullptr, din2.ptr, dout2.ptr, m);
    std::vector<int> out2 = dout2.get();
    for (int b = 0; b < blocks; b++)
        for (int t = 0; t < m; t++) CHECK(out2[b * m + t] == in2[b * m + m - 1 - t]);
}

// Writes n ints of dynamic shared memory and returns their sum: it needs n * 4 bytes.
__global__ void shared_sum_kernel(int* out, int n) {
    int* s = dynamic_shared<int>();
    for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = i;
    __syncthreads();
    if (threadIdx.x == 0) {
        int sum = 0;
        for (int i = 0; i < n; i++) sum += s[i];
        out[blockIdx.x] = sum;
    }
}

TEST_CASE("emulation: a launch past the GPU's limits fails as on the GPU; cudaFuncSetAttribute raises the shared memory limit") {
    DeviceBuffer<int> dout(std::vector<int>(1, 0));
    const int n = 16 * 1024;  // 64 KB: past the 48 KB default
    cudaCheck(cudaGetLastError());
    // cudaErrorInvalidValue, as the H200 returned with CUDA 13.0 (dev/measurements/h200-2026-11-27)
    launch(shared_sum_kernel, dim3(1), dim3(1025), 0, nullptr, dout.ptr, 1);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
    CHECK(cudaGetLastError() == cudaSuccess);  // read once, then cleared
    launch(shared_sum_kernel, dim3(1, 65536), dim3(32), 0, nullptr, dout.ptr, 1);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
    launch(shared_sum_kernel, dim3(1), dim3(128), n * sizeof(int), nullptr, dout.ptr, n);
    CHECK(cudaGetLastError() != cudaSuccess);
    CHECK(dout.get()[0] == 0);  // it did not run
    cudaCheck(cudaFuncSetAttribute(shared_sum_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n * (int)sizeof(int)));
    launch(shared_sum_kernel, dim3(1), dim3(128), n * sizeof(int), nullptr, dout.ptr, n);
    cudaCheck(cudaGetLastError());
    CHECK(dout.get()[0] == n * (n - 1) / 2);
#ifndef __CUDACC__
    // sm_80's opt-in maximum is the emulation's (an H100 allows 227 KB)
    CHECK(cudaFuncSetAttribute(shared_sum_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 170 * 1024) == cudaErrorInvalidValue);
#endif
}

#ifndef __CUDACC__
// What each block finds in its dynamic shared memory before writing it.
__global__ void shared_before_write_kernel(int* out) {
    int* s = dynamic_shared<int>();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
    s[threadIdx.x] = (int)blockIdx.x;
}

TEST_CASE("emulation: memory a GPU leaves uninitialised reads as 0xff bytes, in every block") {
    const int blocks = 3, n = 8;
    float* fresh;
    cudaCheck(cudaMalloc(&fresh, 4 * sizeof(float)));
    std::vector<float> f(4, 0.0f);
    cudaCheck(cudaMemcpy(f.data(), fresh, 4 * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaFree(fresh));
    for (float v : f) CHECK(std::isnan(v));
    DeviceBuffer<int> dout(std::vector<int>(blocks * n, 0));
    launch(shared_before_write_kernel, dim3(blocks), dim3(n), n * sizeof(int), nullptr, dout.ptr);
    for (int v : dout.get()) CHECK(v == -1);
}

// Static shared memory of 40 KB (within CUDA's 48 KB) and of two 32 KB arrays (past it:
// nvcc refuses to compile such a kernel, so these exist only in the emulated builds).
__global__ void static_shared_40k_kernel(int* out) {
    PHD_SHARED(int, a, [10 * 1024]);
    a[threadIdx.x] = (int)threadIdx.x;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = a[blockDim.x - 1 - threadIdx.x];
}
__global__ void static_shared_64k_kernel(int* out) {
    PHD_SHARED(int, a, [8 * 1024]);
    PHD_SHARED(int, b, [8 * 1024]);
    a[threadIdx.x] = b[threadIdx.x] = (int)threadIdx.x;
    out[threadIdx.x] = a[threadIdx.x] + b[threadIdx.x];
}

TEST_CASE("emulation: static shared memory past CUDA's 48 KB stops the launch") {
    DeviceBuffer<int> d(std::vector<int>(64, 0));
    launch(static_shared_40k_kernel, dim3(2), dim3(32), 0, nullptr, d.ptr);
    const std::vector<int> got = d.get();
    for (int t = 0; t < 64; t++) CHECK(got[t] == 31 - t % 32);
    CHECK(in_child([&] { launch(static_shared_64k_kernel, dim3(1), dim3(32), 0, nullptr, d.ptr); cudaDeviceSynchronize(); }) == 43);
}

__global__ void fill_kernel(int* out, int v) { out[threadIdx.x] = v; }

TEST_CASE("emulation: device memory is kept from the host as on a GPU") {
    DeviceBuffer<int> d(std::vector<int>(8, 1));
    std::vector<int> host(8, 5);
    SUBCASE("a kernel given a host pointer does not run") {
        cudaCheck(cudaGetLastError());
        launch(fill_kernel, dim3(1), dim3(8), 0, nullptr, host.data(), 7);
        CHECK(cudaGetLastError() == cudaErrorIllegalAddress);
        CHECK(host == std::vector<int>(8, 5));
        launch(fill_kernel, dim3(1), dim3(8), 0, nullptr, d.ptr, 7);
        cudaCheck(cudaGetLastError());
        CHECK(d.get() == std::vector<int>(8, 7));
    }
    SUBCASE("a copy must go the way its kind says, within its allocation") {
        const size_t bytes = 8 * sizeof(int);
        CHECK(cudaMemcpy(d.ptr, host.data(), bytes, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
        CHECK(cudaMemcpy(host.data(), d.ptr, bytes, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
        CHECK(cudaMemcpy(host.data(), d.ptr, bytes, cudaMemcpyDeviceToDevice) == cudaErrorInvalidValue);
        CHECK(cudaMemcpy(d.ptr + 1, host.data(), bytes, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);  // one int past the end
        CHECK(cudaMemset(d.ptr + 1, 0, bytes) == cudaErrorInvalidValue);
        CHECK(d.get() == std::vector<int>(8, 1));
        cudaCheck(cudaMemcpy(d.ptr, host.data(), bytes, cudaMemcpyDefault));
        CHECK(d.get() == host);
    }
    SUBCASE("cuBLASLt given a host matrix fails") {
        std::vector<float> A(4, 1.0f);
        DeviceBuffer<float> dB(A), dC(A);
        Gemm gemm(false);
        CHECK(in_child([&] {
            gemm(nullptr, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, 1.0f, A.data(), 2, dB.ptr, 2, 1.0f, dC.ptr, dC.ptr, 2);
            cudaDeviceSynchronize();
        }) == 1);
        CHECK(dC.get() == A);
    }
#ifndef __SANITIZE_ADDRESS__  // there device memory is heap memory, for ASan's redzones
    SUBCASE("host code that reads device memory crashes") {
        CHECK(in_child([&] { volatile int v = d.ptr[0]; (void)v; }) == 42);
        CHECK(in_child([&] { volatile int v = host[0]; (void)v; }) == 0);
    }
    SUBCASE("a kernel that writes into cuBLASLt's workspace crashes") {
        DeviceBuffer<float> one(std::vector<float>(1, 1.0f));
        Gemm gemm(false);
        gemm(nullptr, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, 1.0f, one.ptr, 1, one.ptr, 1, 0.0f, one.ptr, one.ptr, 1);  // hands it over
        CHECK(in_child([&] { launch(fill_kernel, dim3(1), dim3(8), 0, nullptr, (int*)Gemm::workspace(), 7); cudaDeviceSynchronize(); }) == 42);
        CHECK(in_child([&] { launch(fill_kernel, dim3(1), dim3(8), 0, nullptr, d.ptr, 7); cudaDeviceSynchronize(); }) == 0);
    }
#endif
}

// Lanes 16..31 return; the others shuffle with the full mask (allowed: lanes that have
// returned may be named) from a lane offset apart, and vote.
__global__ void half_warp_kernel(int* out, int offset) {
    const int lane = threadIdx.x;
    if (lane >= 16) return;
    out[lane] = __shfl_xor_sync(0xffffffffu, lane, offset);
    out[16 + lane] = (int)__ballot_sync(0xffffffffu, 1);
}

// Warp 0 and lane 63 wait at __syncthreads, lanes 32..62 at a __syncwarp that needs lane 63:
// neither barrier can complete (a GPU would hang); with `hang` false both are the same barrier.
__global__ void stuck_kernel(int* out, bool hang) {
    if (hang && threadIdx.x >= 32 && threadIdx.x < 63) __syncwarp();
    else __syncthreads();
    out[threadIdx.x] = 1;
}

TEST_CASE("emulation: threads that all wait at barriers that cannot complete abort instead of hanging") {
    DeviceBuffer<int> d(std::vector<int>(64, 0));
    launch(stuck_kernel, dim3(1), dim3(64), 0, nullptr, d.ptr, false);
    CHECK(d.get() == std::vector<int>(64, 1));
    CHECK(in_child([&] { launch(stuck_kernel, dim3(1), dim3(64), 0, nullptr, d.ptr, true); cudaDeviceSynchronize(); }) == 43);
}

TEST_CASE("emulation: a warp primitive reading a lane that has returned aborts, as CUDA leaves it undefined") {
    DeviceBuffer<int> d(std::vector<int>(32, -1));
    launch(half_warp_kernel, dim3(1), dim3(32), 0, nullptr, d.ptr, 8);
    std::vector<int> out = d.get();
    for (int l = 0; l < 16; l++) {
        CHECK(out[l] == (l ^ 8));
        CHECK(out[16 + l] == 0xffff);  // the returned lanes do not vote
    }
    CHECK(in_child([&] { launch(half_warp_kernel, dim3(1), dim3(32), 0, nullptr, d.ptr, 16); cudaDeviceSynchronize(); }) == 43);
    CHECK(in_child([&] { launch(half_warp_kernel, dim3(1), dim3(24), 0, nullptr, d.ptr, 8); cudaDeviceSynchronize(); }) == 0);
    CHECK(in_child([&] { launch(half_warp_kernel, dim3(1), dim3(8), 0, nullptr, d.ptr, 8); cudaDeviceSynchronize(); }) == 43);  // lane 8 does not exist
}

TEST_CASE("emulation: cuBLASLt with TF32 allowed rounds its inputs to TF32") {
    // 1 + 2^-12 has no TF32 form (10 mantissa bits): it rounds to 1.
    const float x = 1.0f + 1.0f / 4096;
    DeviceBuffer<float> dA(std::vector<float>(1, x)), dB(std::vector<float>(1, x)), dC(std::vector<float>(1, 0.0f));
    for (const bool tf32 : {false, true}) {
        Gemm gemm(tf32);
        gemm(nullptr, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, 1.0f, dA.ptr, 1, dB.ptr, 1, 0.0f, dC.ptr, dC.ptr, 1);
        CHECK(dC.get()[0] == (tf32 ? 1.0f : x * x));
    }
}
#endif

// Every lane records what each primitive returns to it.
__global__ void shuffle_kernel(int* out) {
    int lane = threadIdx.x % 32, v = 10 * (int)threadIdx.x;
    int* o = out + threadIdx.x * 6;
    o[0] = __shfl_sync(0xffffffffu, v, 5);
    o[1] = __shfl_down_sync(0xffffffffu, v, 3);
    o[2] = __shfl_up_sync(0xffffffffu, v, 2);
    o[3] = __shfl_xor_sync(0xffffffffu, v, 1);
    o[4] = __shfl_xor_sync(0xffffffffu, v, 4, 8);
    o[5] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
}

TEST_CASE("emulation: shuffles and ballot have CUDA's lane semantics") {
    const int threads = 64;
    DeviceBuffer<int> dout(std::vector<int>(threads * 6, -1));
    launch(shuffle_kernel, dim3(1), dim3(threads), 0, nullptr, dout.ptr);
    std::vector<int> out = dout.get();
    unsigned ballot = 0;
    for (int l = 0; l < 32; l++) ballot |= (l % 3 == 0 ? 1u : 0u) << l;
    for (int t = 0; t < threads; t++) {
        int lane = t % 32, w = t / 32 * 32;
        INFO("thread " << t);
        CHECK(out[t * 6 + 0] == 10 * (w + 5));
        CHECK(out[t * 6 + 1] == 10 * (lane + 3 < 32 ? t + 3 : t));
        CHECK(out[t * 6 + 2] == 10 * (lane >= 2 ? t - 2 : t));
        CHECK(out[t * 6 + 3] == 10 * (t ^ 1));
        CHECK(out[t * 6 + 4] == 10 * (t ^ 4));
        CHECK((unsigned)out[t * 6 + 5] == ballot);
    }
}

// Lane l shuffles value 100 + l with masks[l] from source lane srcs[l], in groups of width
// lanes: divergent groups of lanes may each name only themselves in their mask.
__global__ void shuffle_groups_kernel(int* out, const unsigned* masks, const int* srcs, int width) {
    const int l = threadIdx.x;
    out[l] = __shfl_sync(masks[l], 100 + l, srcs[l], width);
}

// out[l] of shuffle_groups_kernel over one warp.
static std::vector<int> shuffle_groups(const std::vector<unsigned>& masks, const std::vector<int>& srcs, int width) {
    DeviceBuffer<unsigned> dm(masks);
    DeviceBuffer<int> ds(srcs), dout(std::vector<int>(32, -1));
    launch(shuffle_groups_kernel, dim3(1), dim3(32), 0, nullptr, dout.ptr, dm.ptr, ds.ptr, width);
    return dout.get();
}

TEST_CASE("emulation: __shfl_sync's source lane is taken modulo width, a negative one too, as in CUDA") {
    const std::vector<unsigned> full(32, 0xffffffffu);
    for (int width : {32, 8}) {
        std::vector<int> srcs(32), want(32);
        for (int l = 0; l < 32; l++) {
            srcs[l] = -1 - l % width - (l % 3) * width;  // -1 .. -width, some a further 1 or 2 widths down
            want[l] = 100 + l / width * width + width - 1 - l % width;  // its group's lanes reversed
        }
        INFO("width " << width);
        CHECK(shuffle_groups(full, srcs, width) == want);
    }
}

#ifndef __CUDACC__
TEST_CASE("emulation: a shuffle whose caller is outside its mask, or that reads a lane outside it, aborts") {
    // Two half-warps, each with its own mask, shuffle within themselves (from lane l ^ 1).
    std::vector<unsigned> masks(32);
    std::vector<int> srcs(32), want(32);
    for (int l = 0; l < 32; l++) {
        masks[l] = l < 16 ? 0x0000ffffu : 0xffff0000u;
        srcs[l] = l ^ 1;
        want[l] = 100 + (l ^ 1);
    }
    CHECK(shuffle_groups(masks, srcs, 32) == want);
    std::vector<unsigned> outside = masks;
    outside[3] = 0x0000fff7u;  // lane 3's mask leaves lane 3 out (lane 2 still reads it)
    CHECK(in_child([&] { shuffle_groups(outside, srcs, 32); }) == 43);
    std::vector<int> across = srcs;
    across[3] = 20;  // lane 3 reads lane 20: running, but not in lane 3's mask
    CHECK(in_child([&] { shuffle_groups(masks, across, 32); }) == 43);
}
#endif

// One warp: d = c + a b through mma_tf32, with a (16x8), b (8x8), c (16x8) row-major in
// global memory and the fragments taken as cuda_compat.h lays them out; and to_tf32 of x.
__global__ void mma_kernel(const float* A, const float* B, const float* C, float* D, const float* x, float* x_tf32) {
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    const float a[4] = {A[g * 8 + t], A[(g + 8) * 8 + t], A[g * 8 + t + 4], A[(g + 8) * 8 + t + 4]};
    const float b[2] = {B[t * 8 + g], B[(t + 4) * 8 + g]};
    float d[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    mma_tf32(d, a, b);
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];
    x_tf32[lane] = to_tf32(x[lane]);
}

TEST_CASE("emulation: mma_tf32 multiplies the fragments of the PTX layout; to_tf32 rounds as cvt.rna") {
    // Inputs with few mantissa bits are exact in TF32, so the product is known exactly.
    std::vector<float> A(16 * 8), B(8 * 8), C(16 * 8), want(16 * 8);
    for (int i = 0; i < 16 * 8; i++) A[i] = (float)((i * 7) % 11 - 5) / 8;
    for (int i = 0; i < 8 * 8; i++) B[i] = (float)((i * 5) % 13 - 6) / 4;
    for (int i = 0; i < 16 * 8; i++) C[i] = (float)(i % 5);
    for (int r = 0; r < 16; r++)
        for (int col = 0; col < 8; col++) {
            double s = C[r * 8 + col];
            for (int k = 0; k < 8; k++) s += (double)A[r * 8 + k] * B[k * 8 + col];
            want[r * 8 + col] = (float)s;
        }
    // TF32 keeps 10 mantissa bits: 1 + 2^-11 is a tie (away from zero: 1 + 2^-10).
    const float u = std::ldexp(1.0f, -11);
    std::vector<float> x(32, 3.0f), x_want(32, 3.0f);
    const float cases[][2] = {{1 + u, 1 + 2 * u}, {1 + u / 2, 1}, {-(1 + u), -(1 + 2 * u)}, {1 + 3 * u, 1 + 4 * u}, {1 + 2 * u, 1 + 2 * u}};
    for (int i = 0; i < 5; i++) { x[i] = cases[i][0]; x_want[i] = cases[i][1]; }
    DeviceBuffer<float> dA(A), dB(B), dC(C), dD(std::vector<float>(16 * 8, NAN)), dx(x), dxt(std::vector<float>(32, NAN));
    launch(mma_kernel, dim3(1), dim3(32), 0, nullptr, dA.ptr, dB.ptr, dC.ptr, dD.ptr, dx.ptr, dxt.ptr);
    CHECK(dD.get() == want);
    CHECK(dxt.get() == x_want);
}

__global__ void atomics_kernel(const int* x, int n, int* hist, float* fsum, int* imax, float* fmax) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(&hist[x[i] % 8], 1);
    atomicAdd(fsum, 0.5f);
    atomicMax(imax, x[i]);
    atomicMax(fmax, (float)x[i] * 0.25f);
}

TEST_CASE("emulation: atomicAdd and atomicMax on int and float") {
    const int n = 300;
    std::vector<int> x(n);
    for (int i = 0; i < n; i++) x[i] = (i * 7919) % 1009;
    DeviceBuffer<int> dx(x), hist(std::vector<int>(8, 0)), imax(std::vector<int>{-1});
    DeviceBuffer<float> fsum(std::vector<float>{0.0f}), fmax(std::vector<float>{-1.0f});
    launch(atomics_kernel, dim3(5), dim3(64), 0, nullptr, dx.ptr, n, hist.ptr, fsum.ptr, imax.ptr, fmax.ptr);
    std::vector<int> h = hist.get(), want(8, 0);
    for (int v : x) want[v % 8]++;
    CHECK(h == want);
    CHECK(fsum.get()[0] == 150.0f);
    int mx = *std::max_element(x.begin(), x.end());
    CHECK(imax.get()[0] == mx);
    CHECK(fmax.get()[0] == mx * 0.25f);
}

// The engine's products (kernels/gemm.cuh) against a naive GEMM: every transpose, padded
// leading dimensions, C added in place and out of place (C left as it was); integers, so
// that every sum is exact. Natively too: there it is cuBLASLt's.
TEST_CASE("emulation: cuBLASLt GEMMs against a naive GEMM, every transpose, C in place and out of place") {
    Gemm gemm(false);
    const int m = 13, n = 9, k = 21;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            // column-major op(A) (m, k), op(B) (k, n); leading dimensions padded by 2
            const int lda = (ta ? k : m) + 2, ldb = (tb ? n : k) + 2, ldc = m + 2;
            std::vector<float> A((size_t)lda * (ta ? m : k)), B((size_t)ldb * (tb ? k : n)), C0((size_t)ldc * n);
            for (size_t i = 0; i < A.size(); i++) A[i] = (float)((i * 31) % 17) - 8;
            for (size_t i = 0; i < B.size(); i++) B[i] = (float)((i * 13) % 11) - 5;
            for (size_t i = 0; i < C0.size(); i++) C0[i] = (float)(i % 5);
            const float alpha = 0.5f, beta = 2.0f;
            auto want = [&](int i, int j) {
                double s = 0;
                for (int p = 0; p < k; p++) s += (double)(ta ? A[p + i * lda] : A[i + p * lda]) * (tb ? B[j + p * ldb] : B[p + j * ldb]);
                return (float)(alpha * s + beta * C0[i + j * ldc]);
            };
            const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
            DeviceBuffer<float> dA(A), dB(B), dC(C0), dD(std::vector<float>(C0.size(), -1.0f)), dC1(C0);
            gemm(nullptr, opa, opb, m, n, k, alpha, dA.ptr, lda, dB.ptr, ldb, beta, dC.ptr, dD.ptr, ldc);
            gemm(nullptr, opa, opb, m, n, k, alpha, dA.ptr, lda, dB.ptr, ldb, beta, dC1.ptr, dC1.ptr, ldc);
            const std::vector<float> D = dD.get(), C1 = dC1.get();
            int wrong = 0;
            for (int j = 0; j < n; j++)
                for (int i = 0; i < m; i++) wrong += (D[i + j * ldc] != want(i, j)) + (C1[i + j * ldc] != want(i, j));
            for (int j = 0; j < n; j++)  // the padding rows below m are never written
                wrong += (D[m + j * ldc] != -1.0f) + (C1[m + j * ldc] != C0[m + j * ldc]);
            INFO("transA " << ta << " transB " << tb);
            CHECK(wrong == 0);
            CHECK(dC.get() == C0);
        }
}

// The bf16 GEMMs of --dtype bf16: bf16 A and B, fp32 accumulation, an fp32 C or a bf16 C
// rounded once to nearest even. Natively too: every value below is exact in either format.
TEST_CASE("emulation: cuBLASLt bf16 GEMMs, fp32 and bf16 C, against a naive GEMM; one rounding of a bf16 C") {
    Gemm gemm(false);
    auto bf = [](const std::vector<float>& x) {
        std::vector<__nv_bfloat16> y;
        for (float v : x) y.push_back(__float2bfloat16(v));
        return y;
    };
    auto fl = [](const std::vector<__nv_bfloat16>& x) {
        std::vector<float> y;
        for (__nv_bfloat16 v : x) y.push_back(__bfloat162float(v));
        return y;
    };
    // A^T B with A (k, m) and B (k, n) column-major, as the engine's forward calls it; integers
    // (bf16-exact) small enough that every product and sum is exact in fp32, most sums past
    // bf16's 2^8, where it starts to round.
    const int m = 7, n = 5, k = 40;
    std::vector<float> A(k * m), B(k * n), C0(m * n);
    for (size_t i = 0; i < A.size(); i++) A[i] = 3.0f * ((float)((i * 7) % 13) - 6);
    for (size_t i = 0; i < B.size(); i++) B[i] = 5.0f * ((float)((i * 5) % 9) - 2);
    for (size_t i = 0; i < C0.size(); i++) C0[i] = (float)(i % 3);
    DeviceBuffer<__nv_bfloat16> dA(bf(A)), dB(bf(B)), dC16(bf(C0));
    DeviceBuffer<float> dC(C0);
    gemm(nullptr, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, 1.0f, dA.ptr, k, dB.ptr, k, 1.0f, dC.ptr, dC.ptr, m);
    gemm(nullptr, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, 1.0f, dA.ptr, k, dB.ptr, k, 1.0f, dC16.ptr, dC16.ptr, m);
    const std::vector<float> C = dC.get(), C16 = fl(dC16.get());
    int wrong = 0, rounded = 0;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float s = C0[i + j * m];
            for (int p = 0; p < k; p++) s += A[p + i * k] * B[p + j * k];
            wrong += C[i + j * m] != s;
            wrong += C16[i + j * m] != __bfloat162float(__float2bfloat16(s));
            rounded += __bfloat162float(__float2bfloat16(s)) != s;
        }
    CHECK(wrong == 0);
    CHECK(rounded > 0);  // the bf16 C did need rounding somewhere
    // Ties go to even: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 (odd), 1 + 3 2^-8 between
    // 1 + 2^-7 (odd) and 1 + 2^-6 (even).
    for (float x : {1.0f / 256, 3.0f / 256}) {
        DeviceBuffer<__nv_bfloat16> a(bf({1.0f, x})), b(bf({1.0f, 1.0f})), c(bf({0.0f}));
        gemm(nullptr, CUBLAS_OP_T, CUBLAS_OP_N, 1, 1, 2, 1.0f, a.ptr, 2, b.ptr, 2, 0.0f, c.ptr, c.ptr, 1);
        CHECK(fl(c.get())[0] == (x < 0.005f ? 1.0f : 1.0f + 1.0f / 64));
    }
}

#ifndef __CUDACC__
// What the emulated cuBLASLt refuses, straight through its API: what cuBLASLt checks (types
// it has no kernel for, a leading dimension shorter than the rows) and what a GPU would run
// wrong or fault on (an operand aligned less than its algorithm was chosen for, a workspace
// smaller than it takes, C and D apart for an algorithm that writes in place, C and D
// overlapping without being one matrix). Nothing refused runs.
TEST_CASE("emulation: cuBLASLt refuses types without a kernel, short leading dimensions, misaligned operands, a short workspace, C apart or overlapping D") {
    const int m = 4, n = 3, k = 5;
    DeviceBuffer<float> f(std::vector<float>(256, 1.0f)), ws(std::vector<float>(16, 0.0f));
    cublasLtHandle_t lt;
    cublasCheck(cublasLtCreate(&lt));
    cublasLtMatmulDesc_t op;
    cublasCheck(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    // The heuristic's status for A (m, k), B (k, n), C = D (m, n) of these types and leading
    // dimensions, every operand promised `align` bytes; on success its two algorithms, the
    // first of which writes D in place only.
    cublasLtMatmulHeuristicResult_t found[2];
    uint64_t workspace = 0;
    auto heuristic = [&](cudaDataType in, cudaDataType out, int lda, int ldb, int ldc, uint32_t align = 256) {
        cublasLtMatrixLayout_t a, b, c;
        cublasCheck(cublasLtMatrixLayoutCreate(&a, in, m, k, lda));
        cublasCheck(cublasLtMatrixLayoutCreate(&b, in, k, n, ldb));
        cublasCheck(cublasLtMatrixLayoutCreate(&c, out, m, n, ldc));
        cublasLtMatmulPreference_t pref;
        cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)));
        for (auto at : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
            cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, at, &align, sizeof(align)));
        int count = 0;
        const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, op, a, b, c, c, pref, 2, found, &count);
        if (st == CUBLAS_STATUS_SUCCESS) CHECK(count == 2);
        for (cublasLtMatrixLayout_t l : {a, b, c}) cublasLtMatrixLayoutDestroy(l);
        cublasLtMatmulPreferenceDestroy(pref);
        return st;
    };
    CHECK(heuristic(CUDA_R_32F, CUDA_R_16BF, m, k, m) == CUBLAS_STATUS_NOT_SUPPORTED);  // fp32 in, bf16 out
    CHECK(heuristic(CUDA_R_32F, CUDA_R_32F, m - 1, k, m) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(heuristic(CUDA_R_32F, CUDA_R_32F, m, k - 1, m) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(heuristic(CUDA_R_32F, CUDA_R_32F, m, k, m - 1) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(heuristic(CUDA_R_16BF, CUDA_R_32F, m, k, m) == CUBLAS_STATUS_SUCCESS);
    workspace = 64;
    cublasLtMatrixLayout_t a, b, c;
    cublasCheck(cublasLtMatrixLayoutCreate(&a, CUDA_R_32F, m, k, m));
    cublasCheck(cublasLtMatrixLayoutCreate(&b, CUDA_R_32F, k, n, k));
    cublasCheck(cublasLtMatrixLayoutCreate(&c, CUDA_R_32F, m, n, m));
    const float one = 1.0f;
    // A = B = 1 (at 0 and 64 floats: 256 bytes apart), C (m, n) at 128 floats, D elsewhere
    auto run = [&](const cublasLtMatmulAlgo_t& algo, float* D, size_t ws_bytes) {
        return cublasLtMatmul(lt, op, &one, f.ptr, a, f.ptr + 64, b, &one, f.ptr + 128, c, D, c, &algo, ws.ptr, ws_bytes, nullptr);
    };
    DeviceBuffer<float> d(std::vector<float>(64, 0.0f));
    REQUIRE(heuristic(CUDA_R_32F, CUDA_R_32F, m, k, m, 16) == CUBLAS_STATUS_SUCCESS);  // chosen for 16-byte operands
    CHECK(run(found[1].algo, f.ptr + 132, 64) == CUBLAS_STATUS_INVALID_VALUE);        // D overlaps C
    REQUIRE(heuristic(CUDA_R_32F, CUDA_R_32F, m, k, m) == CUBLAS_STATUS_SUCCESS);      // for 256-byte operands
    CHECK(run(found[1].algo, f.ptr + 196, 64) == CUBLAS_STATUS_INVALID_VALUE);         // D 16 bytes past 256
    CHECK(run(found[1].algo, f.ptr + 192, 32) == CUBLAS_STATUS_INVALID_VALUE);         // the workspace short
    CHECK(run(found[0].algo, d.ptr, 64) == CUBLAS_STATUS_NOT_SUPPORTED);               // in place only
    CHECK(f.get() == std::vector<float>(256, 1.0f));
    CHECK(d.get() == std::vector<float>(64, 0.0f));
    CHECK(run(found[1].algo, d.ptr, 64) == CUBLAS_STATUS_SUCCESS);  // out of place: D = A B + C
    CHECK(d.get()[m * n - 1] == (float)k + 1.0f);
    CHECK(f.get() == std::vector<float>(256, 1.0f));
    for (cublasLtMatrixLayout_t l : {a, b, c}) cublasLtMatrixLayoutDestroy(l);
    cublasLtMatmulDescDestroy(op);
    cublasLtDestroy(lt);
}
#endif

// The fast intrinsics within CUDA's documented bounds, and __expf's error growing with |x|
// as the GPU's does (its argument x log2 e is rounded to float).
__global__ void fast_math_kernel(const float* x, float* e, float* l, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    e[i] = __expf(x[i]);
    l[i] = __logf(x[i]);
}

TEST_CASE("emulation: __expf and __logf within CUDA's error bounds, __expf's growing with |x|") {
    std::vector<float> x;
    for (float v = -87.0f; v < 0.0f; v += 0.0137f) x.push_back(v);  // exp from 1.6e-38 to 1
    for (float v = 0.5f; v < 2.0f; v += 0.00071f) x.push_back(v);   // __logf's absolute bound
    for (float v = 2.0f; v < 1e30f; v *= 1.37f) x.push_back(v);     // __logf's ulp bound
    const int n = (int)x.size();
    const std::vector<float> zeros(n, 0.0f);
    DeviceBuffer<float> dx(x), de(zeros), dl(zeros);
    launch(fast_math_kernel, dim3((n + 127) / 128), dim3(128), 0, nullptr, dx.ptr, de.ptr, dl.ptr, n);
    std::vector<float> e = de.get(), l = dl.get();
    const double ulp1 = std::ldexp(1.0, -23);  // an ulp of [1, 2)
    auto ulps = [&](float got, double want) { return std::fabs(got - want) / (std::ldexp(ulp1, std::ilogb(want))); };
    double worst_far = 0;  // __expf's error in ulps at x < -60
    int bad = 0;
    for (int i = 0; i < n; i++) {
        if (x[i] < 0) {
            const double u = ulps(e[i], std::exp((double)x[i]));
            bad += u > 2 + std::floor(1.173 * std::fabs(x[i]));
            if (x[i] < -60) worst_far = std::max(worst_far, u);
        }
        if (x[i] >= 0.5f && x[i] < 2.0f) bad += std::fabs(l[i] - std::log((double)x[i])) > std::pow(2.0, -21.41);
        if (x[i] >= 2.0f) bad += ulps(l[i], std::log((double)x[i])) > 3;
    }
    CHECK(bad == 0);
    MESSAGE("__expf: worst error at x < -60 " << worst_far << " ulp");
    CHECK(worst_far > 4);  // exact expf would stay within 1 ulp
}

__global__ void low_precision_kernel(const float* x, float* bf, float* half, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    bf[i] = __bfloat162float(__float2bfloat16(x[i]));
    half[i] = __half2float(__float2half(x[i]));
}

TEST_CASE("emulation: bf16 and half conversions round to nearest even, as on the GPU") {
    // bf16 keeps 8 significant bits: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 (goes to 1, even),
    // 1 + 3 * 2^-8 a tie between 1 + 2^-7 and 1 + 2^-6 (goes to the even 1 + 2^-6).
    // half keeps 11: 65520 is the tie between 65504 and infinity (goes to infinity),
    // 1e-7 is the subnormal 2 * 2^-24, 0.1 is 1638 * 2^-14.
    std::vector<float> x = {1.0f, 1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -2.5f, 3.14159265f, 65504.0f, 65520.0f, 1e-7f, 0.1f};
    std::vector<float> bf = {1.0f, 1.0f, 1.0f + 4.0f / 256, -2.5f, 3.140625f, 65536.0f, 65536.0f, 1.00117176e-7f, 0.10009765625f};
    std::vector<float> half = {1.0f, 1.00390625f, 1.01171875f, -2.5f, 3.140625f, 65504.0f, INFINITY, 1.1920929e-7f, 0.0999755859375f};
    DeviceBuffer<float> dx(x), dbf(std::vector<float>(x.size())), dhalf(std::vector<float>(x.size()));
    launch(low_precision_kernel, dim3(1), dim3(32), 0, nullptr, dx.ptr, dbf.ptr, dhalf.ptr, (int)x.size());
    CHECK(dbf.get() == bf);
    CHECK(dhalf.get() == half);
}

// ----------------------------------------------------------------------------
// Deliberately broken kernels: never run by default. test/run_tests.sh runs them under
// the sanitizers and requires a report, so the sanitizer builds are proven to catch these.

// reverse_kernel without its barrier: a read of s[] races with another thread's write.
__global__ void racy_reverse_kernel(const int* in, int* out, int n) {
    PHD_SHARED(int, s, [64]);
    int t = threadIdx.x;
    s[t] = in[t];
    out[t] = s[n - 1 - t];
}

TEST_CASE("sanitizer-race: a missing __syncthreads is reported by ThreadSanitizer" * doctest::skip(true)) {
    std::vector<int> in(64, 1);
    DeviceBuffer<int> din(in), dout(in);
    launch(racy_reverse_kernel, dim3(1), dim3(64), 0, nullptr, din.ptr, dout.ptr, 64);
    dout.get();
}

// One thread too many writes: out has n elements.
__global__ void overflow_kernel(int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = i;
}

TEST_CASE("sanitizer-bounds: an out-of-bounds write is reported by AddressSanitizer" * doctest::skip(true)) {
    DeviceBuffer<int> dout(std::vector<int>(50, 0));
    launch(overflow_kernel, dim3(1), dim3(64), 0, nullptr, dout.ptr, 50);
    dout.get();
}

// An 8-byte load (a group of 4 bf16, as the bf16 copies store) from an address 4 bytes past
// alignment: a GPU stops the kernel ("misaligned address"); x86 loads it without a fault
// (16-byte ones fault there only where g++ picks an aligned SSE move), so the ASan build
// checks the alignment of every typed access.
__global__ void misaligned_kernel(float* out, const float* in) {
    const Vec<float, 2> v = *reinterpret_cast<const Vec<float, 2>*>(in + 1);
    out[threadIdx.x] = v.v[threadIdx.x];
}

TEST_CASE("sanitizer-misaligned: a vector load from a misaligned address is reported by the ASan build" * doctest::skip(true)) {
    DeviceBuffer<float> din(std::vector<float>(8, 1.0f)), dout(std::vector<float>(4, 0.0f));
    launch(misaligned_kernel, dim3(1), dim3(2), 0, nullptr, dout.ptr, din.ptr);
    dout.get();
}
