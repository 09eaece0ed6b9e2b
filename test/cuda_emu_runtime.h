// test/cuda_emu_runtime.h: the CUDA runtime API of test/cuda_emu.h (included by it after
// the launches, the device memory and the streams it calls into): errors, device queries,
// cudaMalloc/cudaFree, copies and memsets, streams and events.
#pragma once
#include <chrono>

// ---- runtime: device memory is host memory, streams are queues (cuda_emu_stream.h) ----
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
struct CUevent_st {
    std::chrono::steady_clock::time_point t;
    uint64_t id = 0;  // the queued item that records it (cuda_emu_stream.h)
};
typedef CUevent_st* cudaEvent_t;

inline const char* cudaGetErrorString(cudaError_t e) {
    return e == cudaSuccess ? "no error" : e == cudaErrorMemoryAllocation ? "out of memory"
         : e == cudaErrorIllegalAddress ? "an illegal memory access was encountered"
         : e == cudaErrorLaunchOutOfResources ? "too many resources requested for launch" : "invalid argument";
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
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
enum cudaDeviceAttr {
    cudaDevAttrClockRate, cudaDevAttrMultiProcessorCount, cudaDevAttrComputeCapabilityMajor, cudaDevAttrComputeCapabilityMinor,
    cudaDevAttrMaxSharedMemoryPerBlockOptin
};
// The shared-memory limit the launches are checked against; no other hardware to describe.
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
    if (a != cudaDevAttrMaxSharedMemoryPerBlockOptin) return cudaErrorInvalidValue;
    *v = (int)cuda_emu::kMaxDynamicShared;
    return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() {
    if (cuda_emu::capture_refuses()) return cudaErrorStreamCaptureUnsupported;
    return cuda_emu::streams().wait_all();
}
inline cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
    cuda_emu::DeviceMemory& d = cuda_emu::device_memory();
    std::lock_guard<std::recursive_mutex> lock(d.m);
    if (cuda_emu::dry_run() && !d.limit) {
        *total_bytes = 141000000000;
        *free_bytes = *total_bytes - d.used;
        return cudaSuccess;
    }
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
    using namespace cuda_emu;
    *p = nullptr;
    if (capture_refuses()) return cudaErrorStreamCaptureUnsupported;
    DeviceMemory& d = device_memory();
    std::lock_guard<std::recursive_mutex> lock(d.m);
    if (d.limit && n > d.limit - d.used) return cudaErrorMemoryAllocation;
    Allocation a{nullptr, 0, n};
    if (kProtect) {
        const size_t tail = (n + 255) / 256 * 256;  // the allocation ends here, 256-byte aligned
        a.map_bytes = (tail + d.page - 1) / d.page * d.page;
        void* m = mmap(nullptr, a.map_bytes + d.page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return cudaErrorMemoryAllocation;
        a.map = (char*)m;
        *p = a.map + a.map_bytes - tail;
    } else {  // 256-byte aligned, as cudaMalloc's, with ASan's redzone right after the n bytes
        void* m = nullptr;
        if (posix_memalign(&m, 256, n ? n : 1) != 0) return cudaErrorMemoryAllocation;
        a.map = (char*)m;
        *p = a.map;
    }
    if (!dry_run()) {  // a dry run leaves the reservation untouched
        d.set_access(a, true);
        memset(*p, kPoison, n);
        d.set_access(a, d.open > 0);
    }
    d.live[(uintptr_t)*p] = a;
    d.used += n;
    return cudaSuccess;
}
template<typename T> inline cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc((void**)p, n); }
namespace cuda_emu {
// What cudaFree and cudaFreeHost do first, as on a GPU: refuse during a capture, then wait
// for the device's work (which may still use the memory).
inline cudaError_t free_waits(const void* p) {
    if (capture_refuses()) return cudaErrorStreamCaptureUnsupported;
    if (p) streams().run_all();
    return cudaSuccess;
}
}  // namespace cuda_emu
// Pinned host memory, filled with the poison as device memory is.
inline cudaError_t cudaMallocHost(void** p, size_t n) {
    using namespace cuda_emu;
    *p = nullptr;
    if (capture_refuses()) return cudaErrorStreamCaptureUnsupported;
    if (!(*p = malloc(n ? n : 1))) return cudaErrorMemoryAllocation;
    memset(*p, kPoison, n);
    DeviceMemory& d = device_memory();
    std::lock_guard<std::recursive_mutex> lock(d.m);
    d.pinned[(uintptr_t)*p] = n;
    return cudaSuccess;
}
template<typename T> inline cudaError_t cudaMallocHost(T** p, size_t n) { return cudaMallocHost((void**)p, n); }
inline cudaError_t cudaFreeHost(void* p) {
    using namespace cuda_emu;
    if (cudaError_t e = free_waits(p)) return e;
    if (!p) return cudaSuccess;
    DeviceMemory& d = device_memory();
    std::lock_guard<std::recursive_mutex> lock(d.m);
    if (!d.pinned.erase((uintptr_t)p)) return cudaErrorInvalidValue;
    free(p);
    return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
    using namespace cuda_emu;
    if (cudaError_t e = free_waits(p)) return e;
    if (!p) return cudaSuccess;
    DeviceMemory& d = device_memory();
    std::lock_guard<std::recursive_mutex> lock(d.m);
    auto it = d.live.find((uintptr_t)p);
    if (it == d.live.end()) return cudaErrorInvalidValue;
    const Allocation a = it->second;
    d.live.erase(it);
    d.used -= a.bytes;
    if (kProtect) munmap(a.map, a.map_bytes + d.page);
    else free(a.map);
    return cudaSuccess;
}
namespace cuda_emu {
// A copy's direction must match where its pointers are (cudaMemcpyDefault: any), and a device
// range must lie inside one allocation; otherwise cudaErrorInvalidValue, where a GPU would
// copy wrongly or fault.
inline cudaError_t check_copy(void* dst, const void* src, size_t n, cudaMemcpyKind k) {
    DeviceMap map;
    DeviceMemory& d = map.d;
    const bool dst_dev = d.holding(dst, n), src_dev = d.holding(src, n);
    const bool dst_host = !d.is_device(dst), src_host = !d.is_device(src);
    const bool ok = k == cudaMemcpyHostToHost     ? dst_host && src_host
                  : k == cudaMemcpyHostToDevice   ? dst_dev && src_host
                  : k == cudaMemcpyDeviceToHost   ? dst_host && src_dev
                  : k == cudaMemcpyDeviceToDevice ? dst_dev && src_dev
                                                  : (dst_dev || dst_host) && (src_dev || src_host);
    return ok ? cudaSuccess : cudaErrorInvalidValue;
}
// Queues a copy on s. From pageable host memory, as CUDA promises for it, the source is read
// at the call, and a copy into it is done when the call returns; pinned memory (cudaMallocHost)
// is read and written when the copy runs, as late as the streams allow: a host that refills
// a pinned buffer before its copy ran sends the new values, as a GPU would.
inline cudaError_t copy_on(cudaStream_t s, void* dst, const void* src, size_t n, cudaMemcpyKind k) {
    if (n == 0) return cudaSuccess;
    if (cudaError_t e = check_copy(dst, src, n, k)) return e;
    DeviceMemory& d = device_memory();
    const bool from_host = !d.is_device(src) && !d.is_pinned(src, n), to_host = !d.is_device(dst) && !d.is_pinned(dst, n);
    std::shared_ptr<std::vector<char>> staged;
    if (from_host) staged = std::make_shared<std::vector<char>>((const char*)src, (const char*)src + n);
    auto copy = [=]() -> cudaError_t {
        DeviceAccess access;
        memcpy(dst, staged ? staged->data() : src, n);
        return cudaSuccess;
    };
    cudaError_t status;
    uint64_t id = 0;
    if (!deferred(s, copy, status, &id)) return copy();
    if (status || !to_host || !id) return status;
    return streams().wait({id});
}
inline cudaError_t set_on(cudaStream_t s, void* dst, int v, size_t n) {
    if (n == 0) return cudaSuccess;
    {
        DeviceMap map;
        if (!map.d.holding(dst, n)) return cudaErrorInvalidValue;
    }
    auto set = [=]() -> cudaError_t {
        DeviceAccess access;
        memset(dst, v, n);
        return cudaSuccess;
    };
    cudaError_t status;
    return deferred(s, set, status) ? status : set();
}
}  // namespace cuda_emu

// On the legacy stream, and done when it returns, with the errors of earlier work.
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind k) {
    if (cuda_emu::capture_refuses()) return cudaErrorStreamCaptureImplicit;
    if (cudaError_t e = cuda_emu::copy_on(nullptr, dst, src, n, k)) return e;
    return cuda_emu::streams().wait({cuda_emu::streams().legacy.tail});
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t st = nullptr) {
    return cuda_emu::copy_on(st, d, s, n, k);
}
inline cudaError_t cudaMemset(void* dst, int v, size_t n) {
    if (cuda_emu::capture_refuses()) return cudaErrorStreamCaptureImplicit;
    return cuda_emu::set_on(nullptr, dst, v, n);
}
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t st = nullptr) { return cuda_emu::set_on(st, d, v, n); }

enum : unsigned { cudaStreamDefault = 0, cudaStreamNonBlocking = 1, cudaEventDefault = 0, cudaEventDisableTiming = 2 };
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
    if (flags > cudaStreamNonBlocking) return cudaErrorInvalidValue;
    cuda_emu::Streams& q = cuda_emu::streams();
    std::lock_guard<std::recursive_mutex> lock(q.m);
    *s = new CUstream_st;
    (*s)->nonblocking = flags == cudaStreamNonBlocking;
    if (!(*s)->nonblocking) q.blocking.insert(*s);
    return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (cuda_emu::g_capture.stream == s && cuda_emu::capture_refuses()) return cudaErrorStreamCaptureUnsupported;
    cuda_emu::Streams& q = cuda_emu::streams();
    return q.wait({q.of(s)->tail});
}
// Its work still runs, as on a GPU.
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s) return cudaErrorInvalidValue;
    cuda_emu::Streams& q = cuda_emu::streams();
    std::lock_guard<std::recursive_mutex> lock(q.m);
    q.run({s->tail});
    q.blocking.erase(s);
    delete s;
    return cudaSuccess;
}
inline cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = new CUevent_st; return cudaSuccess; }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags) {
    return flags & ~cudaEventDisableTiming ? cudaErrorInvalidValue : cudaEventCreate(e);
}
// Work that still records it runs first (CUDA lets it finish after the call).
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
    if (!e) return cudaErrorInvalidValue;
    cuda_emu::streams().run({e->id});
    delete e;
    return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr) {
    if (!e) return cudaErrorInvalidValue;
    auto stamp = [e]() -> cudaError_t {
        e->t = std::chrono::steady_clock::now();
        return cudaSuccess;
    };
    cudaError_t status;
    uint64_t id = 0;
    if (!cuda_emu::deferred(s, stamp, status, &id)) return stamp();
    e->id = id;
    return status;
}
inline cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0) {
    if (!e || flags) return cudaErrorInvalidValue;
    cuda_emu::Streams& q = cuda_emu::streams();
    if (q.ignore_waits == (s ? (q.of(s)->nonblocking ? "nonblocking" : "blocking") : "legacy")) return cudaSuccess;  // a planted bug
    cuda_emu::Capture& c = cuda_emu::g_capture;
    if (c.stream && !s && cuda_emu::capture_refuses()) return cudaErrorStreamCaptureImplicit;
    // Inside running work, or on the capturing stream (one stream's capture), order holds already.
    if (q.running || (c.stream && c.stream == s)) return cudaSuccess;
    q.enqueue(s, [] { return cudaSuccess; }, {e->id});
    return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (!e) return cudaErrorInvalidValue;
    return cuda_emu::streams().wait({e->id});
}
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
    if (!a || !b) return cudaErrorInvalidValue;
    cuda_emu::streams().run({a->id, b->id});
    *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
    return cudaSuccess;
}
