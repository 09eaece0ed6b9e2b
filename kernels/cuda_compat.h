// kernels/cuda_compat.h: the few primitives every kernel header uses, the same under nvcc
// (real CUDA) and under g++ (test/cuda_emu.h runs them on the CPU).
//   launch(kernel, grid, block, shmem, stream, args...)   instead of kernel<<<...>>>(...)
//   dynamic_shared<T>()                                    instead of extern __shared__
//   PHD_SHARED(T, name, dims)                              instead of __shared__ T name dims;
//                                                          (the emulation poisons it per block)
//   warp_sum(v), block_reduce(v, is_max)                   reductions, result in every thread
//   block_sum_fixed<N>(v)                                  a deterministic double sum, in thread 0
//   PHD_UNROLL, PHD_NO_UNROLL                              #pragma unroll, unroll 1 (nvcc only)
//   to_f32(x), store(p, v)                                 fp32 or bf16 tensors, arithmetic in fp32
//   Vec<T, V>, vectorizable, load_group, store_group       16-byte accesses where aligned
//   flat_grid(n, V)                                        blocks of 256 threads over n elements
//   to_tf32(x), mma_tf32(d, a, b)                          tensor cores, sm_80+: below
//   pack_bf16(lo, hi), mma_bf16(d, a, b)                   bf16 tensor cores, sm_80+: below
//   fast_exp2(x)                                           2^x as ex2.approx.ftz (the softmaxes' exp)
//   ldmatrix<N, trans>(r, row)                             8x8 b16 matrices, shared memory -> fragments
//   cp_async16(dst, src), cp_async_commit(), cp_async_wait<N>()   global -> shared without registers
//   cudaCheck(call), cublasCheck(call)                     one-line error, exit 1
//   launch_with_shared(...), shared_optin()               past 48 KB of dynamic shared memory
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
//
// mma_bf16(d, a, b): d += a b for one 16x8 tile with k = 16, mma.sync.m16n8k16 on bf16
// inputs with fp32 accumulation (the products are exact in fp32). Each 32-bit register
// holds two bf16 (pack_bf16 rounds to nearest even, as cvt.rn.bf16x2.f32), the lower
// column or row in its low half:
//   a (16 x 16):    a[0] (g, 2t|2t+1)  a[1] (g + 8, 2t|2t+1)  a[2] (g, 2t+8|2t+9)  a[3] (g + 8, 2t+8|2t+9)
//   b (16 x 8):     b[0] (2t|2t+1, g)  b[1] (2t+8|2t+9, g)
//   d (16 x 8):     as for mma_tf32
// ldmatrix<N, trans>(r, row): N in {1, 2, 4} 8x8 matrices of 16-bit elements from shared
// memory; lane 8i + j gives the address of row j of matrix i (16 bytes, 16-byte aligned).
// Lane 4g + t receives in r[i] row g, columns 2t|2t+1 of matrix i, or with trans column g,
// rows 2t|2t+1: exactly the a and b fragments above, read from row-major tiles.
// cp_async16(dst, src): 16 bytes from global to shared memory (both 16-byte aligned), in
// flight until a cp_async_wait<N>() has left at most N of the groups that cp_async_commit()
// closed outstanding; then a barrier makes them visible to the block.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>
#include <unordered_map>
#include <vector>
#include "utils.h"

#ifdef __CUDACC__
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define PHD_UNROLL _Pragma("unroll")
#define PHD_NO_UNROLL _Pragma("unroll 1")

template<typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t shmem, cudaStream_t stream, Args... args) {
    kernel<<<grid, block, shmem, stream>>>(static_cast<KArgs>(args)...);
}

#define PHD_SHARED(T, name, dims) __shared__ __align__(16) T name dims

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
static __device__ inline uint32_t pack_bf16(float lo, float hi) {
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
static __device__ inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template<int N, bool Trans = false> static __device__ inline void ldmatrix(uint32_t (&r)[N], const void* row) {
    static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
    const unsigned p = (unsigned)__cvta_generic_to_shared(row);
    if constexpr (N == 1 && !Trans) asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];" : "=r"(r[0]) : "r"(p));
    if constexpr (N == 1 && Trans) asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];" : "=r"(r[0]) : "r"(p));
    if constexpr (N == 2 && !Trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(p));
    if constexpr (N == 2 && Trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(p));
    if constexpr (N == 4 && !Trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(p));
    if constexpr (N == 4 && Trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(p));
}
static __device__ inline float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
static __device__ inline void cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src) : "memory");
}
static __device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template<int N> static __device__ inline void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
#else
#include "../test/cuda_emu.h"
#define PHD_UNROLL
#define PHD_NO_UNROLL
#endif

// Element access for kernels templated on a tensor's storage type, fp32 or bf16 (--dtype
// bf16's matmul inputs): arithmetic stays fp32, a bf16 store rounds to nearest even.
static __device__ float to_f32(float x) { return x; }
static __device__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
static __device__ void store(float* p, float v) { *p = v; }
static __device__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

// V consecutive elements as one access: 16 bytes (V = 16 / sizeof(T)) where the tensors
// allow it (vectorizable: V divides the row length, every pointer 16-byte aligned; a GPU
// stops a misaligned one, and so does the emulation's ASan build), else one element (V = 1).
template<typename T, int V> struct alignas(sizeof(T) * V) Vec { T v[V]; };
static inline bool aligned16(std::initializer_list<const void*> ptrs) {
    for (const void* p : ptrs)
        if ((uintptr_t)p % 16) return false;
    return true;
}
// Rows of `row` elements of T: 16-byte groups never cross a row.
template<typename T> static bool vectorizable(size_t row, std::initializer_list<const void*> ptrs) {
    return row % (16 / sizeof(T)) == 0 && aligned16(ptrs);
}
// The grid of a flat launch over n elements, blocks of 256 threads, V elements a thread.
inline dim3 flat_grid(size_t n, int V) { return dim3((unsigned)((n + 256 * (size_t)V - 1) / (256 * (size_t)V))); }
// w <= V consecutive elements at p (one access when w == V: a flat tensor's last group may
// be short), converted to fp32 into r; the same back. (Constant trip counts: r stays in
// registers.)
template<int V, typename T> static __device__ void load_group(float (&r)[V], const T* p, int w) {
    if (w == V) {
        const Vec<T, V> x = *reinterpret_cast<const Vec<T, V>*>(p);
        PHD_UNROLL
        for (int e = 0; e < V; e++) r[e] = to_f32(x.v[e]);
    } else {
        PHD_UNROLL
        for (int e = 0; e < V; e++) r[e] = e < w ? to_f32(p[e]) : 0.0f;
    }
}
template<int V, typename T> static __device__ void store_group(T* p, const float (&r)[V], int w) {
    if (w == V) {
        Vec<T, V> x;
        PHD_UNROLL
        for (int e = 0; e < V; e++) store(&x.v[e], r[e]);
        *reinterpret_cast<Vec<T, V>*>(p) = x;
    } else {
        PHD_UNROLL
        for (int e = 0; e < V; e++)
            if (e < w) store(p + e, r[e]);
    }
}

// Sum over a warp's lanes; every lane gets it.
static __device__ float warp_sum(float v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
// The sum of v over a block of N threads (N a power of two) in double, in a fixed tree order:
// the same bits on every run. Thread 0 gets it; all threads of the block must call it.
template<int N> static __device__ double block_sum_fixed(double v) {
    PHD_SHARED(double, s, [N]);
    s[threadIdx.x] = v;
    __syncthreads();
    for (int w = N / 2; w > 0; w /= 2) {
        if ((int)threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
        __syncthreads();
    }
    return s[0];
}
// Sum (or max when is_max) over a block of whole warps (up to 1024 threads); every thread
// gets it. Holds two barriers: all threads of the block must call it.
static __device__ float block_reduce(float v, bool is_max) {
    PHD_SHARED(float, part, [32]);
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

// Launches a kernel (attention, the RMSNorm backward, the loss) with `smem` bytes of dynamic shared
// memory, which may pass the 48 KB default: the kernel's limit is raised at its first launch
// that needs more, not at every launch (a host call per launch, kept out of the step). One
// device per process, one host thread launching, as everywhere in the engine.
template<typename Kernel, typename... Args>
void launch_with_shared(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args... args) {
    static std::unordered_map<const void*, size_t> raised;  // each kernel's limit, as set so far
    size_t& limit = raised[(const void*)kernel];
    if (smem > limit) {
        cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        limit = smem;
    }
    launch(kernel, grid, block, smem, stream, args...);
}
// The most shared memory a block may opt into on this device (sm_90: 227 KB, sm_80: 163 KB,
// sm_86 and sm_89: 99 KB), static and dynamic together; queried once.
inline size_t shared_optin() {
    static const size_t bytes = [] {
        int dev, v;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        return (size_t)v;
    }();
    return bytes;
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

// The counted budget of a step (dev/bench_gpu.cu --budget): while a ledger is open, every
// launcher counts what its launch must move and compute: the bytes it reads and writes in
// the passes it makes (each element of each tensor once a pass; rows read again from a cache
// count again only where the kernel reads them again from memory), the FLOPs of its matrix
// products (2 per multiply-add). A timed ledger (on a GPU) records an event before each
// launch on its stream, so that each launch's time is the gap to the next event (a launch
// the host then waits for, such as the gradient norm's, includes the wait). Without a ledger
// a count costs a pointer test: the name (what, and part when given) is built only for one.
struct CountedLaunch {
    std::string what;
    double bytes, flops;
    cudaEvent_t start = nullptr;  // timed ledgers only
};
struct Ledger {
    bool timed = false;
    std::vector<CountedLaunch> launches;
};
inline Ledger*& open_ledger() {
    static Ledger* l = nullptr;
    return l;
}
inline void count_launch(const char* what, double bytes, double flops, cudaStream_t s, const char* part = nullptr) {
    Ledger* l = open_ledger();
    if (!l) return;
    CountedLaunch c{part ? std::string(what) + " " + part : std::string(what), bytes, flops};
    if (l->timed) {
        cudaCheck(cudaEventCreate(&c.start));
        cudaCheck(cudaEventRecord(c.start, s));
    }
    l->launches.push_back(c);
}
