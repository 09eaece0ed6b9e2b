// kernels/cuda_compat.h: the few primitives every kernel header uses, the same under nvcc
// (real CUDA) and under g++ (test/cuda_emu.h runs them on the CPU).
//   launch(kernel, grid, block, shmem, stream, args...)   instead of kernel<<<...>>>(...)
//   dynamic_shared<T>()                                    instead of extern __shared__
//   warp_sum(v), block_reduce(v, is_max)                   reductions, result in every thread
//   PHD_UNROLL                                             #pragma unroll (nvcc only)
//   to_tf32(x), mma_tf32(d, a, b)                          tensor cores, sm_80+: below
//   cudaCheck(call), cublasCheck(call)                     one-line error, exit 1
//   to_device(vector), to_host(ptr, n)                     host copies, for the tests and the lab
// Kernels live in headers and are declared `static __global__`: nvcc gives __global__
// functions external linkage, so two translation units including one header would clash.
//
// mma_tf32(d, a, b): d += a b for one 16x8 tile with k = 8, a warp-wide mma.sync.m16n8k8
// on TF32 inputs (rounded by to_tf32) with fp32 accumulation. Lane = 4 g + t holds
// (row, column) of each matrix, as the PTX ISA lays the fragments out:
//   a (16 x 8):     a[0] (g, t)   a[1] (g + 8, t)   a[2] (g, t + 4)   a[3] (g + 8, t + 4)
//   b (8 x 8):      b[0] (t, g)   b[1] (t + 4, g)
//   d (16 x 8):     d[0] (g, 2t)  d[1] (g, 2t + 1)  d[2] (g + 8, 2t)  d[3] (g + 8, 2t + 1)
#pragma once
#include <vector>
#include "../common/utils.h"

#ifdef __CUDACC__
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define PHD_UNROLL _Pragma("unroll")

template<typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t shmem, cudaStream_t stream, Args... args) {
    kernel<<<grid, block, shmem, stream>>>(static_cast<KArgs>(args)...);
}

template<typename T> __device__ inline T* dynamic_shared() {
    extern __shared__ __align__(16) unsigned char phd_dynamic_shared[];
    return reinterpret_cast<T*>(phd_dynamic_shared);
}

// CUDA has no float atomicMax; this one orders floats through their int bits with CAS.
__device__ inline float atomicMax(float* addr, float v) {
    int* p = reinterpret_cast<int*>(addr);
    int old = *p, assumed;
    do {
        assumed = old;
        if (__int_as_float(assumed) >= v) break;
        old = atomicCAS(p, assumed, __float_as_int(v));
    } while (old != assumed);
    return __int_as_float(old);
}

static __device__ inline float to_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return __uint_as_float(r);
}
static __device__ inline void mma_tf32(float (&d)[4], const float (&a)[4], const float (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(__float_as_uint(a[0])), "r"(__float_as_uint(a[1])), "r"(__float_as_uint(a[2])), "r"(__float_as_uint(a[3])),
                   "r"(__float_as_uint(b[0])), "r"(__float_as_uint(b[1])));
}
#else
#include "../test/cuda_emu.h"
#define PHD_UNROLL
#endif

// Sum over a warp's lanes; every lane gets it.
static __device__ float warp_sum(float v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
// Sum (or max when is_max) over a block of whole warps (up to 1024 threads); every thread
// gets it. Holds two barriers: all threads of the block must call it.
static __device__ float block_reduce(float v, bool is_max) {
    __shared__ float part[32];
    for (int o = 16; o > 0; o /= 2) {
        const float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, w) : v + w;
    }
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
    __syncthreads();
    v = part[0];
    for (int w = 1; w < (int)blockDim.x / 32; w++) v = is_max ? fmaxf(v, part[w]) : v + part[w];
    __syncthreads();  // part is reused by the next call
    return v;
}

#define cudaCheck(call) cuda_check((call), #call, __FILE__, __LINE__)
static inline void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
    if (e != cudaSuccess) die("%s:%d: %s failed: %s", file, line, what, cudaGetErrorString(e));
}
#define cublasCheck(call) cublas_check((call), #call, __FILE__, __LINE__)
static inline void cublas_check(cublasStatus_t s, const char* what, const char* file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS) die("%s:%d: %s failed: cuBLAS status %d", file, line, what, (int)s);
}

// Host helpers for the tests and the kernel lab: a device copy of a host vector (the caller
// frees it), and a host copy of device memory after the work queued before it.
template<typename T> T* to_device(const std::vector<T>& h) {
    T* d;
    cudaCheck(cudaMalloc(&d, h.size() * sizeof(T)));
    cudaCheck(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
template<typename T> std::vector<T> to_host(const T* d, size_t n) {
    std::vector<T> h(n);
    cudaCheck(cudaDeviceSynchronize());
    cudaCheck(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}
