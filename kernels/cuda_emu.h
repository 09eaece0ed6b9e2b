// kernels/cuda_emu.h: CUDA on the CPU, so that every kernel is tested on machines without
// a GPU. Included by cuda_compat.h when the compiler is not nvcc; kernel bodies stay as
// they are.
//
// What it does:
// - launch() runs the grid's blocks one after another; each block runs with one host
//   thread per CUDA thread, so threadIdx/blockIdx/blockDim/gridDim behave as on a GPU.
// - __syncthreads() is a real barrier among the block's threads; a thread that returned
//   leaves it, so early returns do not deadlock the others. __shared__ arrays are static
//   storage: shared by the block's threads, and safe because blocks never run together.
//   Dynamic shared memory comes from dynamic_shared<T>(), sized by launch().
// - A launch past the GPU's limits fails as it would there, with the error left for
//   cudaGetLastError: more than 1024 threads a block, grid y or z past 65535, or dynamic
//   shared memory past 48 KB without cudaFuncSetAttribute raising the kernel's limit (at
//   most to sm_80's 163 KB, the tighter of the two GPUs we build for).
// - Memory a GPU leaves uninitialised starts as 0xff bytes here (NaN as float, -1 as int):
//   cudaMalloc'd memory, and dynamic shared memory at every block. A kernel that reads what
//   nothing wrote then fails its test instead of reading zeros by luck.
// - Warps are 32 consecutive threads (x fastest); the shuffles, __ballot_sync and
//   __syncwarp exchange values between real lanes through a per-warp barrier.
// - atomicAdd/atomicMax on int and float, the math intrinsics the kernels use, bf16 and
//   half conversions (storage types only, no arithmetic operators), device memory (with
//   an optional size limit), streams and events (host memory, synchronous), and the
//   cuBLAS calls the engine makes (column-major, every transpose, leading dimensions,
//   alpha/beta), computed naively.
// - The one tensor-core instruction the kernels use, mma_tf32 (cuda_compat.h), on the
//   fragments its lanes hold, with TF32 rounding (to_tf32) as cvt.rna does it.
// What it cannot do: timing, memory coalescing, bank conflicts, other tensor-core instructions,
// warp-synchronous code that omits the *_sync primitives, or more than one launch at once
// (launches are serialised).
#pragma once
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unistd.h>
#include <vector>

// Kernels live in headers: inline keeps one definition per program.
#define __global__ inline
#define __device__ inline
#define __host__
#define __forceinline__
#define __launch_bounds__(...)
#define __shared__ static

typedef int cudaError_t;
enum : int { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorInvalidConfiguration = 9 };

struct CUstream_st {};
typedef CUstream_st* cudaStream_t;

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
static constexpr int warpSize = 32;
using std::max;  // CUDA's integer min/max builtins
using std::min;

namespace cuda_emu {

// A barrier for a changing number of participants: leave() removes one (a returned thread).
// on_release, if set, runs under the lock just before the waiters are let go.
struct Barrier {
    std::mutex m;
    std::condition_variable cv;
    int expected = 0, arrived = 0;
    uint64_t generation = 0;
    void (*on_release)(void*) = nullptr;
    void* ctx = nullptr;
    void release() {
        arrived = 0;
        generation++;
        if (on_release) on_release(ctx);
        cv.notify_all();
    }
    void wait() {
        std::unique_lock<std::mutex> lock(m);
        uint64_t g = generation;
        if (++arrived == expected) release();
        else cv.wait(lock, [&] { return generation != g; });
    }
    void leave() {
        std::lock_guard<std::mutex> lock(m);
        expected--;
        if (arrived > 0 && arrived == expected) release();
    }
};

struct Warp {
    Barrier bar;
    int lanes = 0;        // lanes that exist (the last warp of a block may be partial)
    uint64_t slot[32];    // one value per lane, for the exchanges
    float mma[32][6];     // each lane's a[4], b[2] fragments, for mma_tf32
};

struct Block {
    Barrier bar;                          // __syncthreads
    Barrier end;                          // every thread, after the kernel returns
    std::vector<Warp> warps;
    std::vector<unsigned char> dynamic;   // dynamic shared memory
    int nthreads = 0;
};

inline thread_local Block* t_block = nullptr;
inline thread_local int t_lane = 0, t_warp = 0;

inline std::mutex& launch_mutex() { static std::mutex m; return m; }

constexpr size_t kDefaultDynamicShared = 48 * 1024, kMaxDynamicShared = 166912;  // sm_80's opt-in maximum
inline thread_local cudaError_t last_error = cudaSuccess;  // per host thread, as in CUDA
// Each kernel's dynamic shared memory limit, as raised by cudaFuncSetAttribute.
inline std::unordered_map<const void*, size_t>& shared_limits() { static std::unordered_map<const void*, size_t> m; return m; }

inline cudaError_t check_launch(const void* kernel, dim3 grid, dim3 block, size_t shmem) {
    const unsigned long threads = (unsigned long)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
        return cudaErrorInvalidConfiguration;
    auto it = shared_limits().find(kernel);
    if (shmem > (it == shared_limits().end() ? kDefaultDynamicShared : it->second)) return cudaErrorInvalidValue;
    return cudaSuccess;
}
inline std::mutex& atomic_mutex() { static std::mutex m; return m; }

constexpr unsigned char kPoison = 0xff;

// Re-arms the block's barriers and re-poisons its dynamic shared memory for the next block;
// runs when the last thread ends a block.
inline void rearm(void* p) {
    Block* b = (Block*)p;
    std::fill(b->dynamic.begin(), b->dynamic.end(), kPoison);
    b->bar.expected = b->nthreads;
    for (Warp& w : b->warps) w.bar.expected = w.lanes;
}

template<typename T> inline T exchange(T v, int src, bool valid) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    Warp& w = t_block->warps[t_warp];
    memcpy(&w.slot[t_lane], &v, sizeof(T));
    w.bar.wait();
    T r = v;
    if (valid && src >= 0 && src < w.lanes) memcpy(&r, &w.slot[src], sizeof(T));
    w.bar.wait();
    return r;
}

}  // namespace cuda_emu

// kernel<<<grid, block, shmem, stream>>>(args...) in emulation.
template<typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t shmem, cudaStream_t, Args... args) {
    using namespace cuda_emu;
    std::lock_guard<std::mutex> serial(launch_mutex());
    if (cudaError_t e = check_launch(reinterpret_cast<const void*>(kernel), grid, block, shmem)) {
        last_error = e;
        return;
    }
    Block blk;
    blk.nthreads = (int)(block.x * block.y * block.z);
    blk.dynamic.resize(shmem);
    blk.warps = std::vector<Warp>((blk.nthreads + 31) / 32);
    for (int w = 0; w < (int)blk.warps.size(); w++) blk.warps[w].lanes = std::min(32, blk.nthreads - 32 * w);
    blk.end.expected = blk.nthreads;
    blk.end.on_release = rearm;
    blk.end.ctx = &blk;
    rearm(&blk);
    std::vector<std::thread> threads;
    for (int t = 0; t < blk.nthreads; t++)
        threads.emplace_back([&, t]() {
            t_block = &blk;
            t_lane = t % 32;
            t_warp = t / 32;
            blockDim = block;
            gridDim = grid;
            threadIdx = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
            for (unsigned bz = 0; bz < grid.z; bz++)
                for (unsigned by = 0; by < grid.y; by++)
                    for (unsigned bx = 0; bx < grid.x; bx++) {
                        blockIdx = dim3(bx, by, bz);
                        kernel(static_cast<KArgs>(args)...);
                        blk.bar.leave();
                        blk.warps[t_warp].bar.leave();
                        blk.end.wait();
                    }
        });
    for (std::thread& th : threads) th.join();
}

template<typename T> inline T* dynamic_shared() { return reinterpret_cast<T*>(cuda_emu::t_block->dynamic.data()); }

inline void __syncthreads() { cuda_emu::t_block->bar.wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { cuda_emu::t_block->warps[cuda_emu::t_warp].bar.wait(); }

template<typename T> inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    int lane = cuda_emu::t_lane;
    return cuda_emu::exchange(v, (lane & ~(width - 1)) + (src % width), true);
}
template<typename T> inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    int lane = cuda_emu::t_lane;
    return cuda_emu::exchange(v, lane + (int)delta, (lane % width) + (int)delta < width);
}
template<typename T> inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    int lane = cuda_emu::t_lane;
    return cuda_emu::exchange(v, lane - (int)delta, (lane % width) >= (int)delta);
}
template<typename T> inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    int lane = cuda_emu::t_lane, src = lane ^ mask;
    return cuda_emu::exchange(v, src, src / width <= lane / width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    using namespace cuda_emu;
    Warp& w = t_block->warps[t_warp];
    w.slot[t_lane] = pred != 0;
    w.bar.wait();
    unsigned bits = 0;
    for (int l = 0; l < w.lanes; l++) bits |= (unsigned)w.slot[l] << l;
    w.bar.wait();
    return bits & mask;
}

// TF32 (10-bit mantissa) rounding to nearest, ties away from zero, as cvt.rna.tf32.f32.
inline float to_tf32(float x) {
    if (!std::isfinite(x)) return x;
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&x, &u, 4);
    return x;
}
// d += a b over a full warp's fragments (layout in cuda_compat.h): each lane publishes its
// fragments, then computes its four outputs from everyone's. TF32 products are exact in fp32.
inline void mma_tf32(float (&d)[4], const float (&a)[4], const float (&b)[2]) {
    using namespace cuda_emu;
    Warp& w = t_block->warps[t_warp];
    if (w.lanes != 32) { fprintf(stderr, "mma_tf32: needs a full warp\n"); abort(); }
    memcpy(w.mma[t_lane], a, sizeof a);
    memcpy(w.mma[t_lane] + 4, b, sizeof b);
    w.bar.wait();
    const int g = t_lane / 4, t = t_lane % 4;
    for (int i = 0; i < 4; i++) {
        const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
        float s = 0.0f;
        for (int k = 0; k < 8; k++) s += w.mma[(row % 8) * 4 + k % 4][row / 8 + 2 * (k / 4)] * w.mma[col * 4 + k % 4][4 + k / 4];
        d[i] += s;
    }
    w.bar.wait();
}

template<typename T> inline T atomicAdd(T* p, T v) {
    std::lock_guard<std::mutex> lock(cuda_emu::atomic_mutex());
    T old = *p;
    *p = old + v;
    return old;
}
template<typename T> inline T atomicMax(T* p, T v) {
    std::lock_guard<std::mutex> lock(cuda_emu::atomic_mutex());
    T old = *p;
    *p = old > v ? old : v;
    return old;
}

// bf16 and half storage types with CUDA's conversion functions (round to nearest even,
// overflow to infinity, subnormals kept); no arithmetic operators.
struct int2 { int x, y; };
inline int2 make_int2(int x, int y) { return {x, y}; }
struct __nv_bfloat16 { uint16_t x; };
struct __half { uint16_t x; };
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if (std::isnan(f)) return {(uint16_t)((u >> 16) | 0x40)};  // stays a (quiet) NaN
    return {(uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t u = (uint32_t)b.x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline __half __float2half(float f) {
    uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    double a = std::fabs((double)f);
    if (std::isnan(f)) return {0x7e00};
    if (a >= 65520.0) return {(uint16_t)(sign | 0x7c00)};  // past the midpoint above 65504: infinity
    if (a < std::ldexp(1.0, -14)) return {(uint16_t)(sign | (uint16_t)std::nearbyint(std::ldexp(a, 24)))};  // subnormal
    int e;
    std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
    double q = std::nearbyint(std::ldexp(a, 11 - e));  // 11 significant bits, in [1024, 2048]
    if (q == 2048) { q = 1024; e++; }
    return {(uint16_t)(sign | (uint16_t)((e + 14) << 10) | (uint16_t)(q - 1024))};
}
inline float __half2float(__half h) {
    int e = (h.x >> 10) & 0x1f, m = h.x & 0x3ff;
    double v = e == 0 ? std::ldexp((double)m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(1024.0 + m, e - 25);
    return (float)((h.x & 0x8000) ? -v : v);
}

inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __fdividef(float a, float b) { return a / b; }

// ---- runtime: device memory is host memory, streams and events are synchronous ----
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
struct CUevent_st { std::chrono::steady_clock::time_point t; };
typedef CUevent_st* cudaEvent_t;

inline const char* cudaGetErrorString(cudaError_t e) {
    return e == cudaSuccess ? "no error" : e == cudaErrorMemoryAllocation ? "out of memory"
         : e == cudaErrorInvalidConfiguration ? "invalid configuration argument" : "invalid argument";
}
inline cudaError_t cudaGetLastError() {
    cudaError_t e = cuda_emu::last_error;
    cuda_emu::last_error = cudaSuccess;
    return e;
}
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
template<typename F> inline cudaError_t cudaFuncSetAttribute(F kernel, cudaFuncAttribute, int bytes) {
    if (bytes < 0 || (size_t)bytes > cuda_emu::kMaxDynamicShared) return cudaErrorInvalidValue;
    std::lock_guard<std::mutex> serial(cuda_emu::launch_mutex());
    cuda_emu::shared_limits()[reinterpret_cast<const void*>(kernel)] = (size_t)bytes;
    return cudaSuccess;
}
enum cudaDeviceAttr { cudaDevAttrClockRate, cudaDevAttrMultiProcessorCount, cudaDevAttrComputeCapabilityMajor, cudaDevAttrComputeCapabilityMinor };
inline cudaError_t cudaDeviceGetAttribute(int*, cudaDeviceAttr, int) { return cudaErrorInvalidValue; }  // no hardware to describe
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
// Device memory is host memory. PHD_EMU_DEVICE_MEMORY=bytes gives the emulated device that
// much instead, so that tests can drive the out-of-memory paths: cudaMemGetInfo reports what
// is left of it and cudaMalloc fails past it.
namespace cuda_emu {
struct DeviceMemory {
    std::mutex m;
    size_t limit = 0, used = 0;          // limit 0: the host's memory, unaccounted
    std::unordered_map<void*, size_t> sizes;
    DeviceMemory() {
        if (const char* e = getenv("PHD_EMU_DEVICE_MEMORY")) limit = strtoull(e, nullptr, 10);
    }
};
inline DeviceMemory& device_memory() { static DeviceMemory d; return d; }
}  // namespace cuda_emu
inline cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
    cuda_emu::DeviceMemory& d = cuda_emu::device_memory();
    std::lock_guard<std::mutex> lock(d.m);
    if (d.limit) {
        *total_bytes = d.limit;
        *free_bytes = d.limit - d.used;
        return cudaSuccess;
    }
    *total_bytes = (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
    *free_bytes = (size_t)sysconf(_SC_AVPHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
    return cudaSuccess;
}
inline cudaError_t cudaMalloc(void** p, size_t n) {
    cuda_emu::DeviceMemory& d = cuda_emu::device_memory();
    std::lock_guard<std::mutex> lock(d.m);
    *p = nullptr;
    if (d.limit && n > d.limit - d.used) return cudaErrorMemoryAllocation;
    *p = malloc(n ? n : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    memset(*p, cuda_emu::kPoison, n);
    if (d.limit) { d.used += n; d.sizes[*p] = n; }
    return cudaSuccess;
}
template<typename T> inline cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc((void**)p, n); }
inline cudaError_t cudaFree(void* p) {
    cuda_emu::DeviceMemory& d = cuda_emu::device_memory();
    std::lock_guard<std::mutex> lock(d.m);
    auto it = d.sizes.find(p);
    if (it != d.sizes.end()) { d.used -= it->second; d.sizes.erase(it); }
    free(p);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) { if (n) memcpy(d, s, n); return cudaSuccess; }
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t = nullptr) { return cudaMemcpy(d, s, n, k); }
inline cudaError_t cudaMemset(void* d, int v, size_t n) { memset(d, v, n); return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t = nullptr) { return cudaMemset(d, v, n); }
inline cudaError_t cudaStreamCreate(cudaStream_t* s) { *s = new CUstream_st; return cudaSuccess; }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) { delete s; return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = new CUevent_st; return cudaSuccess; }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t = nullptr) { e->t = std::chrono::steady_clock::now(); return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
    return cudaSuccess;
}

// ---- cuBLAS: the subset the engine uses, fp32 only, computed naively in double ----
enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_NOT_SUPPORTED = 15 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cudaDataType { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
enum cublasMath_t { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 };
struct cublasContext {};
typedef cublasContext* cublasHandle_t;

inline cublasStatus_t cublasCreate(cublasHandle_t* h) { *h = new cublasContext; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasDestroy(cublasHandle_t h) { delete h; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
inline const char* cublasGetStatusString(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? "success" : "cuBLAS error"; }

// Column-major: C(i,j) = alpha * sum_p op(A)(i,p) op(B)(p,j) + beta * C(i,j), C[i + j*ldc].
inline cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                                 const void* alpha, const void* A, cudaDataType at, int lda, long long sa,
                                                 const void* B, cudaDataType bt, int ldb, long long sb, const void* beta,
                                                 void* C, cudaDataType ct, int ldc, long long sc, int batch,
                                                 cublasComputeType_t, cublasGemmAlgo_t) {
    if (at != CUDA_R_32F || bt != CUDA_R_32F || ct != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m < 0 || n < 0 || k < 0 || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *(const float*)alpha, be = *(const float*)beta;
    for (int b = 0; b < batch; b++) {
        const float* a = (const float*)A + b * sa;
        const float* bb = (const float*)B + b * sb;
        float* c = (float*)C + b * sc;
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                double s = 0;
                for (int p = 0; p < k; p++)
                    s += (double)(ta == CUBLAS_OP_N ? a[i + (long)p * lda] : a[p + (long)i * lda]) *
                         (tb == CUBLAS_OP_N ? bb[p + (long)j * ldb] : bb[j + (long)p * ldb]);
                float& cij = c[i + (long)j * ldc];
                cij = (float)(al * s + (be == 0.0f ? 0.0 : (double)be * cij));  // beta = 0 ignores C, as cuBLAS does
            }
    }
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                   const void* alpha, const void* A, cudaDataType at, int lda, const void* B, cudaDataType bt,
                                   int ldb, const void* beta, void* C, cudaDataType ct, int ldc, cublasComputeType_t comp,
                                   cublasGemmAlgo_t algo) {
    return cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc, 0, 1, comp, algo);
}
inline cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                  const float* alpha, const float* A, int lda, const float* B, int ldb, const float* beta,
                                  float* C, int ldc) {
    return cublasGemmEx(h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, beta, C, CUDA_R_32F, ldc,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}
