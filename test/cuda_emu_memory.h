// test/cuda_emu_memory.h: the emulated device's memory (included by test/cuda_emu.h): where
// it lives, how it is kept from the host, and the dry run that reserves it untouched.
#pragma once

namespace cuda_emu {

// Device memory lives apart from the host heap: each allocation has pages of its own, ends
// 256-byte aligned against an inaccessible guard page, and outside launches, copies, memsets
// and cuBLASLt calls (DeviceAccess scopes) its pages are inaccessible too, so host code that
// dereferences a device pointer crashes as it would with a GPU. Under AddressSanitizer it is
// heap memory instead (256-byte aligned too), so that ASan's redzones find overflows to the byte.
// PHD_EMU_DEVICE_MEMORY=bytes gives the emulated device that much memory, so that tests can
// drive the out-of-memory paths: cudaMemGetInfo reports what is left and cudaMalloc fails past it.
#ifdef __SANITIZE_ADDRESS__
constexpr bool kProtect = false;
#else
constexpr bool kProtect = true;
#endif
struct Allocation {
    char* map;          // the mapping (kProtect) or the heap block
    size_t map_bytes;   // pages before the guard page (kProtect)
    size_t bytes;       // what cudaMalloc was asked for
    bool sealed = false;  // a library's workspace: closed to every launch and copy for good
};
struct DeviceMemory {
    std::recursive_mutex m;              // held by every DeviceAccess scope
    size_t limit = 0, used = 0;          // limit 0: the host's memory, unaccounted
    std::map<uintptr_t, Allocation> live;  // by the address cudaMalloc returned
    int open = 0;                        // DeviceAccess scopes entered
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    DeviceMemory() {
        if (const char* e = getenv("PHD_EMU_DEVICE_MEMORY")) limit = strtoull(e, nullptr, 10);
    }
    // The allocation holding the n bytes at p (n = 0: p may be its end), or null. By address
    // (an integer): only the pointer's value is read, never what it points to, which GCC's
    // uninitialised-read warning cannot tell for a pointer to host memory not yet written.
    const Allocation* holding(const void* p, size_t n) { return holding_address((uintptr_t)p, n); }
    const Allocation* holding_address(uintptr_t a, size_t n) {
        auto it = live.upper_bound(a);
        if (it == live.begin()) return nullptr;
        --it;
        return a + n <= it->first + it->second.bytes ? &it->second : nullptr;
    }
    bool is_device(const void* p) { return holding_address((uintptr_t)p, 0) != nullptr; }
    // Pinned host memory (cudaMallocHost): by address, its size. A copy reads or writes it
    // when it runs, not at the call, as a GPU's DMA does.
    std::map<uintptr_t, size_t> pinned;
    bool is_pinned(const void* p, size_t n) {
        auto it = pinned.upper_bound((uintptr_t)p);
        if (it == pinned.begin()) return false;
        --it;
        return (uintptr_t)p + n <= it->first + it->second;
    }
    void set_access(const Allocation& a, bool on) {
        if (kProtect && !a.sealed && mprotect(a.map, a.map_bytes, on ? PROT_READ | PROT_WRITE : PROT_NONE) != 0) {
            perror("cuda_emu: mprotect");
            abort();
        }
    }
    // The allocation that starts at p becomes a library's workspace (cuBLASLt's): only the
    // library's own kernels, which the emulation does not run, may touch it, so it stays
    // closed even while launches run (a kernel that strays into it crashes), and its pages
    // are given back (nothing reads them), so that opening device memory for each launch
    // need not walk them.
    void seal(const void* p) {
        auto it = live.find((uintptr_t)p);
        if (it == live.end() || it->second.sealed) return;
        Allocation& a = it->second;
        if (kProtect && (mprotect(a.map, a.map_bytes, PROT_NONE) != 0 || madvise(a.map, a.map_bytes, MADV_DONTNEED) != 0)) {
            perror("cuda_emu: sealing a workspace");
            abort();
        }
        a.sealed = true;
    }
};
inline DeviceMemory& device_memory() { static DeviceMemory d; return d; }

// While one exists, device memory is accessible (to the thread holding it and to the
// kernel's threads it launches); the outermost one closes it again.
// Opening and closing costs an mprotect of every page of every allocation, so a batch of
// stream work (Streams::run) opens it once for all its items: no host code runs between them.
inline void open_device_memory(bool open) {
    DeviceMemory& d = device_memory();
    if (open) {
        d.m.lock();
        if (d.open++ == 0)
            for (auto& a : d.live) d.set_access(a.second, true);
    } else {
        if (--d.open == 0)
            for (auto& a : d.live) d.set_access(a.second, false);
        d.m.unlock();
    }
}
struct DeviceAccess {
    DeviceMemory& d = device_memory();
    DeviceAccess() { open_device_memory(true); }
    ~DeviceAccess() { open_device_memory(false); }
    DeviceAccess(const DeviceAccess&) = delete;
    DeviceAccess& operator=(const DeviceAccess&) = delete;
};
// The allocation map alone, for the checks of a call's pointers (the pages stay closed).
struct DeviceMap {
    DeviceMemory& d = device_memory();
    std::lock_guard<std::recursive_mutex> lock{d.m};
};

// A kernel's pointer arguments must be device memory (or null), and so must the pointers a
// struct argument holds where it lists them (device_pointers(): NormIO, KVLayer, the
// engine's two that hold any); other arguments pass.
template<typename A, typename = void> struct lists_pointers : std::false_type {};
template<typename A> struct lists_pointers<A, std::void_t<decltype(std::declval<const A&>().device_pointers())>> : std::true_type {};
template<typename A> inline bool device_argument(const A& a) {
    if constexpr (std::is_pointer_v<A>) {
        return a == nullptr || device_memory().is_device((const void*)a);
    } else if constexpr (lists_pointers<A>::value) {
        for (const void* p : a.device_pointers())
            if (!device_argument(p)) return false;
        return true;
    } else {
        return true;
    }
}

// A dry run (dev/bench_gpu.cu --budget at GPT-2-small's shape): every call checks its
// arguments as usual, but no device work runs (launches, copies, memsets, cuBLASLt), device
// memory is reserved, never touched (no poison), and the device has an H200's 141 GB (or PHD_EMU_DEVICE_MEMORY).
inline bool& dry_run() {
    static bool d = false;
    return d;
}

}  // namespace cuda_emu
