// kernels/cuda_compat.h: the few primitives every kernel header uses, the same under nvcc
// (real CUDA) and under g++ (kernels/cuda_emu.h runs them on the CPU).
//   launch(kernel, grid, block, shmem, stream, args...)   instead of kernel<<<...>>>(...)
//   dynamic_shared<T>()                                    instead of extern __shared__
//   cudaCheck(call), cublasCheck(call)                     one-line error, exit 1
#pragma once
#include "../utils.h"

#ifdef __CUDACC__
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

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
#else
#include "cuda_emu.h"
#endif

#define cudaCheck(call) cuda_check((call), #call, __FILE__, __LINE__)
static inline void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
    if (e != cudaSuccess) die("%s:%d: %s failed: %s", file, line, what, cudaGetErrorString(e));
}
#define cublasCheck(call) cublas_check((call), #call, __FILE__, __LINE__)
static inline void cublas_check(cublasStatus_t s, const char* what, const char* file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS) die("%s:%d: %s failed: cuBLAS status %d", file, line, what, (int)s);
}
