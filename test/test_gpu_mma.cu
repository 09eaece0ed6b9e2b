// The bf16 tensor-core instructions of kernels/cuda_compat.h (mma_bf16, ldmatrix, cp.async,
// pack_bf16), on known matrices with fragments loaded as the PTX ISA documents them: on the
// emulation in every `make test`, and natively where a GPU exists, so that the emulation and
// the hardware are held to the same layouts. Built into the same binaries as test_gpu.cu.
#include <cmath>
#include <vector>
#include <doctest/doctest.h>
#include "../kernels/cuda_compat.h"
#include "test_util.h"

// bf16 bits of a float that bf16 holds exactly.
static uint16_t bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    REQUIRE((u & 0xffffu) == 0);
    return (uint16_t)(u >> 16);
}

// ---- pack_bf16 ----

__global__ void pack_kernel(const float* x, uint32_t* out, int n) {
    const int i = threadIdx.x;
    if (i < n) out[i] = pack_bf16(x[2 * i], x[2 * i + 1]);
}

TEST_CASE("pack_bf16 rounds two floats to bf16 to nearest even, the first in the low half") {
    // bf16 keeps 7 mantissa bits: 1 + 2^-8 is a tie (to even: 1), 1 + 3 * 2^-8 a tie up to
    // 1 + 2^-6; 1 + 2^-8 + 2^-20 rounds up; negative ties, and a value past bf16's range.
    const float u = std::ldexp(1.0f, -8);
    const float x[] = {1 + u, 1 + 3 * u, 1 + u + std::ldexp(1.0f, -20), -(1 + u), -(1 + 3 * u), 3.5f, 0.0f, 3.4e38f};
    const float want[] = {1, 1 + 4 * u, 1 + 2 * u, -1, -(1 + 4 * u), 3.5f, 0.0f, INFINITY};
    const int n = 4;
    float* d_x = to_device(std::vector<float>(x, x + 2 * n));
    uint32_t* d_out = to_device(std::vector<uint32_t>(n));
    launch(pack_kernel, dim3(1), dim3(32), 0, nullptr, (const float*)d_x, d_out, n);
    const std::vector<uint32_t> out = to_host(d_out, n);
    for (int i = 0; i < n; i++) {
        INFO("pair " << i);
        for (int half = 0; half < 2; half++) {
            const uint32_t bits = (out[i] >> (16 * half) & 0xffffu) << 16;
            float got;
            memcpy(&got, &bits, 4);
            CHECK(got == want[2 * i + half]);
        }
    }
    cudaCheck(cudaFree(d_x));
    cudaCheck(cudaFree(d_out));
}

// ---- mma_bf16 with fragments gathered by hand ----

// One warp: D = C + A B through mma_bf16, A (16x16), B (16x8), C and D (16x8) row-major bf16
// (A, B) and fp32 in global memory, every fragment gathered element by element as
// cuda_compat.h lays it out.
__global__ void mma_bf16_kernel(const uint16_t* A, const uint16_t* B, const float* C, float* D) {
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    auto pair = [](uint16_t lo, uint16_t hi) { return (uint32_t)lo | (uint32_t)hi << 16; };
    uint32_t a[4], b[2];
    for (int r = 0; r < 4; r++) {
        const int row = g + 8 * (r % 2), k = 2 * t + 8 * (r / 2);
        a[r] = pair(A[row * 16 + k], A[row * 16 + k + 1]);
    }
    for (int r = 0; r < 2; r++) {
        const int k = 2 * t + 8 * r;
        b[r] = pair(B[k * 8 + g], B[(k + 1) * 8 + g]);
    }
    float d[4];
    for (int i = 0; i < 4; i++) d[i] = C[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2];
    mma_bf16(d, a, b);
    for (int i = 0; i < 4; i++) D[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = d[i];
}

// A (16x16), B (16x8) of small multiples of 1/8 and 1/4 (exact in bf16, their products and
// sums exact in fp32), C (16x8), and D = C + A B.
struct KnownProduct {
    std::vector<uint16_t> A, B;
    std::vector<float> C, D;
    KnownProduct() : A(256), B(128), C(128), D(128) {
        std::vector<float> a(256), b(128);
        for (int i = 0; i < 256; i++) A[i] = bf16_bits(a[i] = (float)((i * 7) % 11 - 5) / 8);
        for (int i = 0; i < 128; i++) B[i] = bf16_bits(b[i] = (float)((i * 5) % 13 - 6) / 4);
        for (int i = 0; i < 128; i++) C[i] = (float)(i % 5);
        for (int r = 0; r < 16; r++)
            for (int col = 0; col < 8; col++) {
                double s = C[r * 8 + col];
                for (int k = 0; k < 16; k++) s += (double)a[r * 16 + k] * b[k * 8 + col];
                D[r * 8 + col] = (float)s;
            }
    }
};

TEST_CASE("mma_bf16 multiplies bf16 fragments laid out as the PTX ISA documents m16n8k16") {
    KnownProduct p;
    uint16_t *d_A = to_device(p.A), *d_B = to_device(p.B);
    float *d_C = to_device(p.C), *d_D = to_device(std::vector<float>(128, NAN));
    launch(mma_bf16_kernel, dim3(1), dim3(32), 0, nullptr, (const uint16_t*)d_A, (const uint16_t*)d_B, (const float*)d_C, d_D);
    CHECK(to_host(d_D, 128) == p.D);
    for (void* q : {(void*)d_A, (void*)d_B, (void*)d_C, (void*)d_D}) cudaCheck(cudaFree(q));
}

// ---- ldmatrix ----

// Four 8x8 matrices of 16-bit elements in shared memory, element (m, r, c) = 256 m + 16 r + c
// (its coordinates, so each received element says where it came from). Lane 8i + j points
// at row j of matrix i; each lane writes what it receives for N matrices, plain and
// transposed: out (32 lanes, 2 forms, 4 registers).
template<int N> __global__ void ldmatrix_kernel(uint32_t* out) {
    PHD_SHARED(uint16_t, s, [4][8][8]);
    const int lane = threadIdx.x;
    for (int e = lane; e < 256; e += 32) s[e / 64][e / 8 % 8][e % 8] = (uint16_t)(256 * (e / 64) + 16 * (e / 8 % 8) + e % 8);
    __syncwarp();
    uint32_t r[N], rt[N];
    ldmatrix<N>(r, &s[lane / 8 % N][lane % 8][0]);
    ldmatrix<N, true>(rt, &s[lane / 8 % N][lane % 8][0]);
    for (int i = 0; i < N; i++) {
        out[lane * 8 + i] = r[i];
        out[lane * 8 + 4 + i] = rt[i];
    }
}

template<int N> static void check_ldmatrix() {
    uint32_t* d_out = to_device(std::vector<uint32_t>(32 * 8, 0));
    launch(ldmatrix_kernel<N>, dim3(1), dim3(32), 0, nullptr, d_out);
    const std::vector<uint32_t> out = to_host(d_out, 32 * 8);
    auto el = [](int m, int r, int c) { return (uint32_t)(256 * m + 16 * r + c); };
    int wrong = 0;
    for (int lane = 0; lane < 32; lane++) {
        const int g = lane / 4, t = lane % 4;
        for (int m = 0; m < N; m++) {
            wrong += out[lane * 8 + m] != (el(m, g, 2 * t) | el(m, g, 2 * t + 1) << 16);          // row g, columns 2t, 2t+1
            wrong += out[lane * 8 + 4 + m] != (el(m, 2 * t, g) | el(m, 2 * t + 1, g) << 16);      // column g, rows 2t, 2t+1
        }
    }
    INFO("ldmatrix x" << N);
    CHECK(wrong == 0);
    cudaCheck(cudaFree(d_out));
}

TEST_CASE("ldmatrix x1, x2 and x4, plain and transposed, deliver the fragments the PTX ISA documents") {
    check_ldmatrix<1>();
    check_ldmatrix<2>();
    check_ldmatrix<4>();
}

// The same product as mma_bf16_kernel, with the fragments read by ldmatrix from row-major
// tiles in shared memory, as the attention kernels read them: A (16x16) by x4 (lanes 0-15
// point at rows 0-15 at column 0, lanes 16-31 at column 8); B (16x8, rows k) by x2.trans (as
// V in P V); and B stored transposed, Bt (8x16, rows n), by plain x2 (as K in Q K^T).
__global__ void ldmatrix_mma_kernel(const uint16_t* A, const uint16_t* B, const float* C, float* D, float* Dt) {
    PHD_SHARED(uint16_t, sA, [16][16]);
    PHD_SHARED(uint16_t, sB, [16][8]);
    PHD_SHARED(uint16_t, sBt, [8][16]);
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    for (int e = lane; e < 256; e += 32) sA[e / 16][e % 16] = A[e];
    for (int e = lane; e < 128; e += 32) {
        sB[e / 8][e % 8] = B[e];
        sBt[e % 8][e / 8] = B[e];
    }
    __syncwarp();
    uint32_t a[4], b[2], bt[2];
    ldmatrix<4>(a, &sA[lane % 16][lane / 16 * 8]);
    ldmatrix<2, true>(b, &sB[lane % 16][0]);
    ldmatrix<2>(bt, &sBt[lane % 8][lane / 8 % 2 * 8]);
    float d[4], dt[4];
    for (int i = 0; i < 4; i++) d[i] = dt[i] = C[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2];
    mma_bf16(d, a, b);
    mma_bf16(dt, a, bt);
    for (int i = 0; i < 4; i++) {
        D[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = d[i];
        Dt[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = dt[i];
    }
}

TEST_CASE("ldmatrix then mma_bf16: the product of row-major tiles, B read transposed or as stored") {
    KnownProduct p;
    uint16_t *d_A = to_device(p.A), *d_B = to_device(p.B);
    float *d_C = to_device(p.C), *d_D = to_device(std::vector<float>(128, NAN)), *d_Dt = to_device(std::vector<float>(128, NAN));
    launch(ldmatrix_mma_kernel, dim3(1), dim3(32), 0, nullptr, (const uint16_t*)d_A, (const uint16_t*)d_B, (const float*)d_C, d_D, d_Dt);
    CHECK(to_host(d_D, 128) == p.D);
    CHECK(to_host(d_Dt, 128) == p.D);
    for (void* q : {(void*)d_A, (void*)d_B, (void*)d_C, (void*)d_D, (void*)d_Dt}) cudaCheck(cudaFree(q));
}

// ---- cp.async ----

// 64 threads copy 2 x 1 KB from src into dynamic shared memory, 16 bytes each per group, in
// two groups. After cp_async_wait<1> the first group has landed; early (4 ints) records
// thread 0's own chunk of the second group as it sees it then (the emulation has not landed
// it yet: still its 0xff poison; a GPU may have). After cp_async_wait<0> and a barrier,
// every thread writes back another thread's chunks.
__global__ void cp_async_kernel(const int* src, int* dst, int* early) {
    int* s = dynamic_shared<int>();
    const int i = threadIdx.x;
    cp_async16(s + 4 * i, src + 4 * i);
    cp_async_commit();
    cp_async16(s + 256 + 4 * i, src + 256 + 4 * i);
    cp_async_commit();
    cp_async_wait<1>();
    if (i == 0)
        for (int j = 0; j < 4; j++) early[j] = s[256 + j];
    cp_async_wait<0>();
    __syncthreads();
    const int other = 63 - i;
    for (int j = 0; j < 4; j++) {
        dst[4 * other + j] = s[4 * other + j];
        dst[256 + 4 * other + j] = s[256 + 4 * other + j];
    }
}

TEST_CASE("cp.async: 16-byte copies land by the wait that covers their group, then a barrier shares them") {
    std::vector<int> src(512);
    for (int i = 0; i < 512; i++) src[i] = 1000 + i;
    int *d_src = to_device(src), *d_dst = to_device(std::vector<int>(512, 0)), *d_early = to_device(std::vector<int>(4, 0));
    launch(cp_async_kernel, dim3(1), dim3(64), 512 * sizeof(int), nullptr, (const int*)d_src, d_dst, d_early);
    CHECK(to_host(d_dst, 512) == src);
#ifndef PHD_NATIVE_GPU
    CHECK(to_host(d_early, 4) == std::vector<int>(4, -1));  // not landed before its wait (0xff bytes)
#endif
    for (void* q : {(void*)d_src, (void*)d_dst, (void*)d_early}) cudaCheck(cudaFree(q));
}

#ifndef __CUDACC__
__global__ void bad_async_kernel(const int* src, int mode) {
    int* s = dynamic_shared<int>();
    if (mode == 0) cp_async16(s + 4 * threadIdx.x, src + 4 * threadIdx.x + 1);  // source off by 4 bytes
    if (mode == 1) cp_async16(s + 4 * threadIdx.x, src + 4 * threadIdx.x);      // fine
    if (mode == 2) cp_async16(s + 4 * threadIdx.x, s + 4 * threadIdx.x + 128);  // source not in global memory
    cp_async_commit();
    cp_async_wait<0>();
}
__global__ void bad_ldmatrix_kernel(int mode) {
    PHD_SHARED(uint16_t, s, [8][16]);
    uint32_t r[1];
    ldmatrix<1>(r, &s[threadIdx.x % 8][mode == 0 ? 4 : 8]);  // 8 bytes into a row: misaligned
    (void)r;
}

TEST_CASE("emulation: cp.async and ldmatrix abort on misaligned or wrong-space addresses, as the GPU faults") {
    int* d_src = to_device(std::vector<int>(512, 0));
    CHECK(in_child([&] { launch(bad_async_kernel, dim3(1), dim3(32), 512 * sizeof(int), nullptr, (const int*)d_src, 0); cudaDeviceSynchronize(); }) == 43);
    CHECK(in_child([&] { launch(bad_async_kernel, dim3(1), dim3(32), 512 * sizeof(int), nullptr, (const int*)d_src, 1); cudaDeviceSynchronize(); }) == 0);
    CHECK(in_child([&] { launch(bad_async_kernel, dim3(1), dim3(32), 512 * sizeof(int), nullptr, (const int*)d_src, 2); cudaDeviceSynchronize(); }) == 43);
    CHECK(in_child([&] { launch(bad_ldmatrix_kernel, dim3(1), dim3(32), 0, nullptr, 0); cudaDeviceSynchronize(); }) == 43);
    CHECK(in_child([&] { launch(bad_ldmatrix_kernel, dim3(1), dim3(32), 0, nullptr, 1); cudaDeviceSynchronize(); }) == 0);
    cudaCheck(cudaFree(d_src));
}
#endif
