// test/cuda_emu.h: CUDA on the CPU, so that every kernel is tested on machines without
// a GPU. Included by cuda_compat.h when the compiler is not nvcc; kernel bodies stay as
// they are.
//
// What it does, as strictly as a GPU would punish what it checks:
// - launch() runs the grid's blocks in an order shuffled anew for each launch (PHD_EMU_SEED,
//   default 1, makes it repeat), so that code relying on block order fails; under
//   ThreadSanitizer (or PHD_EMU_THREADS=2) on two OS threads at once, each taking every other
//   block, so that races between blocks and lost updates are reported. Each CUDA thread of a
//   block is a fiber, a stack of its own switched in user space, so threadIdx/blockIdx/
//   blockDim/gridDim behave as on a GPU and a barrier costs a few context switches, not
//   system calls. Under ThreadSanitizer each fiber is a thread of its own to it, ordered only
//   by __syncthreads and __syncwarp, as on a GPU: shuffles, votes, ldmatrix, mma and atomics
//   exchange values without ordering memory.
// - __syncthreads() is a real barrier among the block's threads; a thread that returned
//   leaves it, so early returns do not deadlock the others. Threads that all wait at
//   barriers that cannot complete (a GPU would hang) abort with a message. Static shared
//   memory (PHD_SHARED; a bare __shared__ does not compile) and dynamic shared memory
//   (dynamic_shared<T>(), sized by launch()) are the block's own, poisoned as each block starts.
// - A launch past the GPU's limits fails as it would there, with the error left for
//   cudaGetLastError: more than 1024 threads a block, grid y or z past 65535, or dynamic
//   shared memory past 48 KB without cudaFuncSetAttribute raising the kernel's limit (at
//   most to sm_80's 163 KB, the tighter of the two GPUs we build for); static shared memory
//   past 48 KB stops the emulation.
//   With ptxas's counts at hand, also a block that needs more registers than an SM has, or
//   more threads than the kernel's __launch_bounds__ (cuda_emu_limits.h).
// - A dry run (cuda_emu::dry_run()) checks every call but runs no device work: the counted
//   budget of a full-size step (dev/bench_gpu.cu --budget) in a second.
// - Memory a GPU leaves uninitialised starts as 0xff bytes here (NaN as float or bf16, -1 as
//   int): cudaMalloc'd memory, shared memory at every block, a cp.async destination from the
//   copy's issue to its wait. A kernel that reads what nothing wrote then fails its test.
// - Warps are 32 consecutive threads (x fastest); the shuffles, __ballot_sync and
//   __syncwarp exchange values between real lanes through a per-warp barrier, and abort
//   where CUDA leaves the result undefined: a caller outside its mask, a shuffle reading a
//   lane that has returned, does not exist or is not in the mask.
// - Device memory is kept from the host as a GPU keeps it: host code that dereferences a
//   device pointer crashes; a kernel given a host pointer does not run (cudaErrorIllegalAddress);
//   a copy whose direction does not match its pointers, or a device range that leaves its
//   allocation, fails (cudaErrorInvalidValue). An optional size limit drives out-of-memory paths.
// - Streams are queues that run late, in the worst order CUDA allows (cuda_emu_stream.h): a
//   missing event wait or stream synchronization gives wrong numbers. Stream capture records
//   into CUDA graphs and refuses what the driver refuses (cuda_emu_graph.h).
// - atomicAdd/atomicMax on int and float, the math intrinsics the kernels use (__expf and
//   __logf with the GPU's argument rounding), bf16 and half conversions (storage types only,
//   no arithmetic operators), and the cuBLASLt calls the engine makes (column-major, every
//   transpose, leading dimensions, alpha/beta, C apart from D, TF32 when allowed), summed in
//   fp32, with cuBLASLt's argument checks, device pointers required, and operands aligned as
//   their algorithm was chosen for (cuda_emu_cublas.h); NCCL over MPI (cuda_emu_nccl.h).
// - The tensor-core instructions the kernels use (cuda_emu_mma.h): mma_tf32 and mma_bf16
//   on the fragments their lanes hold, ldmatrix, cp.async with its groups, TF32 and bf16
//   rounding as cvt.rna and cvt.rn do it.
// What it cannot do: timing, memory coalescing, bank conflicts, other tensor-core
// instructions, warp-synchronous code that omits the *_sync primitives, or check pointers held
// inside a kernel's struct arguments. Registers are checked only where ptxas's counts are at
// hand (launch limits, below). Threads of a block run in a fixed order (each as far as its next
// barrier), so a missing barrier gives the same wrong result every time; ThreadSanitizer
// reports it as a race. Blocks on one OS thread are ordered for ThreadSanitizer: a race between
// two blocks shows when the shuffle puts them on different threads.
#pragma once
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <unistd.h>
#include <vector>
#ifdef __SANITIZE_THREAD__
#include <sanitizer/tsan_interface.h>
#endif
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#endif
#ifndef __x86_64__
#error "test/cuda_emu.h switches fibers with x86-64 code (fiber_switch): port it to this architecture"
#endif

// Kernels live in headers: inline keeps one definition per program.
#define __global__ inline
#define __device__ inline
#define __host__
#define __forceinline__
#define __launch_bounds__(...)
// Kernels declare static shared memory with PHD_SHARED (kernels/cuda_compat.h): a reference
// into the running block's arena, which starts poisoned. A bare __shared__ does not compile.
#define __shared__ __shared__is_not_emulated_use_PHD_SHARED
#define PHD_SHARED(T, name, dims)                                                          \
    static const char name##_site = 0;                                                     \
    auto& name = *reinterpret_cast<T(*) dims>(cuda_emu::static_shared(&name##_site, sizeof(T dims)))
#define __align__(n) __attribute__((aligned(n)))

typedef int cudaError_t;
enum : int { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2,
             cudaErrorIllegalAddress = 700, cudaErrorLaunchOutOfResources = 701 };

#include "cuda_emu_stream.h"

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

static constexpr int warpSize = 32;
using std::max;  // CUDA's integer min/max builtins
using std::min;

namespace cuda_emu {

// ---- Fibers: each CUDA thread of a block runs on a stack of its own, switched in user space.

// Saves the callee-saved registers on the current stack, stores the stack pointer in *save,
// and resumes the stack `to` (left in the same layout by an earlier fiber_switch, or by
// new_fiber()). The FP control words (MXCSR, x87's), callee-saved too, are not carried: no
// kernel changes them, so every fiber has the host thread's, and saving and loading them made
// up most of a switch's time.
__attribute__((naked, noinline, unused)) static void fiber_switch(void** /*save*/, void* /*to*/) {
    asm("pushq %rbp\n\tpushq %rbx\n\tpushq %r12\n\tpushq %r13\n\tpushq %r14\n\tpushq %r15\n\t"
        "movq %rsp, (%rdi)\n\tmovq %rsi, %rsp\n\t"
        "popq %r15\n\tpopq %r14\n\tpopq %r13\n\tpopq %r12\n\tpopq %rbx\n\tpopq %rbp\n\tret");
}
// A fiber's first switch returns here, with its Fiber* in r12 and its entry function in r13.
__attribute__((naked, noinline, unused)) static void fiber_start() { asm("movq %r12, %rdi\n\tcallq *%r13\n\tud2"); }

// Bookkeeping the fibers share (barrier counts, lanes running, the running fiber): relaxed
// atomics, so that ThreadSanitizer, which sees each fiber as a thread, neither reports them
// nor derives any ordering from them. The kernel's own memory is ordered by the barriers'
// release/acquire annotations below, as __syncthreads orders it on a GPU.
template<typename T> struct Relaxed {
    std::atomic<T> v;
    Relaxed(T x = T()) : v(x) {}
    operator T() const { return v.load(std::memory_order_relaxed); }
    Relaxed& operator=(T x) { v.store(x, std::memory_order_relaxed); return *this; }
};
inline void hb_release(const void* a) {
#ifdef __SANITIZE_THREAD__
    __tsan_release(const_cast<void*>(a));
#else
    (void)a;
#endif
}
inline void hb_acquire(const void* a) {
#ifdef __SANITIZE_THREAD__
    __tsan_acquire(const_cast<void*>(a));
#else
    (void)a;
#endif
}

// A stack one can switch to: a fiber's, or the launching thread's.
struct Context {
    void* sp = nullptr;          // the stack pointer while switched out
    char* stack = nullptr;       // the stack's lowest byte (the launching thread's: as ASan last saw it)
    size_t stack_bytes = 0;
    Relaxed<void*> tsan;         // ThreadSanitizer's context
    void* fake_stack = nullptr;  // AddressSanitizer's, while switched out
};

struct Fiber {
    Context ctx;                 // its stack lies above a guard page, kept from launch to launch
    dim3 tid;                    // threadIdx
    int lane = 0, warp = 0;
    Relaxed<bool> done;
    // cp.async copies issued and not yet waited for (cuda_emu_mma.h), each with its group:
    // the number of commits before it.
    struct AsyncCopy { void* dst; unsigned char bytes[16]; int group; };
    std::vector<AsyncCopy> async;
    int commits = 0;
};

constexpr size_t kStaticShared = 48 * 1024;  // CUDA's limit on a kernel's static shared memory

// A barrier for a changing number of participants: leave() removes one (a returned thread).
// Each generation's arrivals release, and its departures acquire, a sync address of their
// own (two alternate: nobody can arrive twice ahead of a fiber still to depart).
struct Barrier {
    Relaxed<int> expected, arrived;
    Relaxed<uint64_t> generation;
    char sync[2];
    void release() {
        arrived = 0;
        generation = generation + 1;
    }
    void wait(bool order = true);
    void leave();
};

struct Warp {
    Barrier bar;
    int lanes = 0;             // lanes that exist (the last warp of a block may be partial)
    Relaxed<uint32_t> running; // lanes that have not returned (bit l: lane l)
    // One value per lane for the exchanges, and each lane's a[4], b[2] fragments (their bits)
    // for the mma instructions: relaxed, so that ThreadSanitizer derives no order from them.
    Relaxed<uint64_t> slot[32];
    Relaxed<uint32_t> mma[32][6];
    void leave(int lane) {     // the lane returned from the kernel
        running = running & ~(1u << lane);
        bar.leave();
    }
};

struct Block {
    Barrier bar;                          // __syncthreads
    std::vector<Warp> warps;
    std::vector<unsigned char> dynamic;   // dynamic shared memory
    // Static shared memory (PHD_SHARED), poisoned: each declaration's place in it is given at
    // the first thread that reaches it, as the launch's kernel lays them out. Relaxed atomics:
    // the fibers share this table, and ThreadSanitizer must derive no order from it.
    std::vector<unsigned char> statics = std::vector<unsigned char>(kStaticShared, 0xff);
    static constexpr int kSites = 64;
    Relaxed<const void*> site[kSites];
    Relaxed<size_t> site_at[kSites];
    Relaxed<int> sites;
    Relaxed<size_t> static_used;
};

// One launch's grid, as every OS thread that runs its blocks sees it.
struct Grid {
    dim3 grid, block;
    size_t shmem;
    void (*body)(void*);          // the kernel call
    void* ctx;
    std::vector<uint64_t> order;  // the blocks, shuffled
};

// What each OS thread that runs blocks keeps (the launching thread and, under PHD_EMU_THREADS=2,
// a helper): its fibers, which run there only, and the block they run now. Launches are
// serialised; the thread resumes each of its block's fibers in turn until it yields (at a
// barrier) or returns.
struct Launch {
    std::vector<Fiber*> fibers;  // a pool, grown to the largest block launched
    pid_t pool_pid = 0;          // a forked child starts a pool of its own
    Relaxed<Fiber*> current;
    Relaxed<uint64_t> progress;  // arrivals, departures, returns: a pass without any is a deadlock
    Block* block = nullptr;
    const Grid* grid = nullptr;     // the launch it runs blocks of
    dim3 block_idx;
    Context main;                   // this OS thread's own, while a fiber runs
    char start_sync, end_sync;      // this thread -> a block's fibers -> this thread
    void free_fibers();
    ~Launch() { free_fibers(); }
};
// This OS thread's (a plain pointer: the fibers read it at every threadIdx).
inline thread_local Launch* t_launch = nullptr;
inline Launch& this_thread_launch() {
    static thread_local Launch mine;  // not on the heap: a fiber's last read of it races with no free
    if (!t_launch) t_launch = &mine;  // once: every fiber reads it
    return mine;
}
inline Fiber& running_fiber() { return *t_launch->current; }

// From the running context to `to`, until something switches back. An OS thread and its own
// fibers switch only to each other, so the stack that switched back is that thread's when
// `from` is a fiber: ASan learns it there.
inline void switch_context(Context& from, Context& to) {
    void* sp = to.sp;  // read before ThreadSanitizer takes us to be `to`
#ifdef __SANITIZE_THREAD__
    __tsan_switch_to_fiber(to.tsan, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_start_switch_fiber(&from.fake_stack, to.stack, to.stack_bytes);
#endif
    fiber_switch(&from.sp, sp);
#ifdef __SANITIZE_ADDRESS__
    const void* back;
    size_t back_bytes;
    __sanitizer_finish_switch_fiber(from.fake_stack, &back, &back_bytes);
    if (&from != &t_launch->main) {
        t_launch->main.stack = (char*)back;
        t_launch->main.stack_bytes = back_bytes;
    }
#endif
}
inline void resume(Fiber& f) {
    t_launch->current = &f;
    switch_context(t_launch->main, f.ctx);
}
// Back to this OS thread's own context.
inline void yield() { switch_context(running_fiber().ctx, t_launch->main); }

// order: the barrier orders memory (__syncthreads, __syncwarp) for ThreadSanitizer, as on a
// GPU; the warp collectives' own barriers do not, since shuffles, votes, ldmatrix and mma
// promise no order for other memory.
inline void Barrier::wait(bool order) {
    const uint64_t g = generation;
    if (order) hb_release(&sync[g & 1]);
    t_launch->progress = t_launch->progress + 1;
    arrived = arrived + 1;
    if (arrived == expected) release();
    else
        while (generation == g) yield();
    if (order) hb_acquire(&sync[g & 1]);
}
inline void Barrier::leave() {
    hb_release(&sync[generation & 1]);
    t_launch->progress = t_launch->progress + 1;
    expected = expected - 1;
    if (arrived > 0 && arrived == expected) release();
}

// Every fiber's entry. A fiber runs one CUDA thread of a block at each turn of the loop and
// waits to be resumed for the next: its frames stay balanced, which ThreadSanitizer's
// per-fiber call stack needs.
inline void fiber_main(Fiber* f) {
    Launch& L = *t_launch;
#ifdef __SANITIZE_ADDRESS__
    const void* back;
    __sanitizer_finish_switch_fiber(nullptr, &back, &L.main.stack_bytes);
    L.main.stack = (char*)back;
#endif
    for (;;) {
        hb_acquire(&L.start_sync);
        L.grid->body(L.grid->ctx);
        L.block->bar.leave();
        L.block->warps[f->warp].leave(f->lane);
        f->done = true;
        L.progress = L.progress + 1;
        hb_release(&L.end_sync);
        yield();
    }
}

constexpr size_t kFiberStack = 256 * 1024;

// A fiber with a stack of its own above a guard page, whose first switch enters fiber_main:
// the frame fiber_switch pops (r15 r14 r13 r12 rbx rbp, and
// fiber_start as the return address, which then finds the stack 16-byte aligned for its call).
inline Fiber* new_fiber() {
    Fiber* f = new Fiber;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void* m = mmap(nullptr, kFiberStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (m == MAP_FAILED || mprotect(m, page, PROT_NONE) != 0) {
        perror("cuda_emu: a fiber's stack");
        abort();
    }
    Context& x = f->ctx;
    x.stack = (char*)m + page;
    x.stack_bytes = kFiberStack;
#ifdef __SANITIZE_ADDRESS__
    __asan_unpoison_memory_region(x.stack, x.stack_bytes);  // the shadow of an earlier mapping here
#endif
#ifdef __SANITIZE_THREAD__
    x.tsan = __tsan_create_fiber(0);
#endif
    uint64_t* sp = (uint64_t*)(x.stack + x.stack_bytes) - 9;
    const uint64_t frame[9] = {0, 0, (uint64_t)&fiber_main, (uint64_t)f, 0, 0, (uint64_t)&fiber_start, 0, 0};
    memcpy(sp, frame, sizeof frame);
    x.sp = sp;
    return f;
}

inline void Launch::free_fibers() {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (Fiber* f : fibers) {
#ifdef __SANITIZE_THREAD__
        if (pool_pid == getpid()) __tsan_destroy_fiber(f->ctx.tsan);
#endif
        munmap(f->ctx.stack - page, f->ctx.stack_bytes + page);
        delete f;
    }
    fibers.clear();
}

inline std::mutex& launch_mutex() { static std::mutex m; return m; }

// The order blocks run in comes from PHD_EMU_SEED (default 1), so that a failure repeats.
inline uint64_t block_seed() {
    static const uint64_t seed = getenv("PHD_EMU_SEED") ? strtoull(getenv("PHD_EMU_SEED"), nullptr, 10) : 1;
    return seed;
}

constexpr size_t kDefaultDynamicShared = 48 * 1024, kMaxDynamicShared = 166912;  // sm_80's opt-in maximum
inline thread_local cudaError_t last_error = cudaSuccess;  // per host thread, as in CUDA
// Each kernel's dynamic shared memory limit, as raised by cudaFuncSetAttribute.
inline std::unordered_map<const void*, size_t>& shared_limits() { static std::unordered_map<const void*, size_t> m; return m; }
}  // namespace cuda_emu
#include "cuda_emu_limits.h"
namespace cuda_emu {

// A launch past the GPU's limits: the H200 with CUDA 13.0 returns cudaErrorInvalidValue for
// too many threads or too large a grid (measured), as for too much dynamic shared memory.
inline cudaError_t check_launch(const void* kernel, dim3 grid, dim3 block, size_t shmem) {
    const unsigned long threads = (unsigned long)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
        return cudaErrorInvalidValue;
    auto it = shared_limits().find(kernel);
    const size_t limit = it == shared_limits().end() ? kDefaultDynamicShared : it->second;
    if (shmem > limit) return cudaErrorInvalidValue;
    return check_kernel_limits(kernel, threads, shmem, limit);
}

constexpr unsigned char kPoison = 0xff;

// Runs the kernel call as every thread of the blocks order[first], order[first + stride], ...
// of the grid, on this OS thread: a block's fibers are resumed in turn until all have
// returned; a pass in which none arrived at a barrier, left one or returned means they all
// wait for each other, where a GPU would hang.
inline void run_blocks(const Grid& g, size_t first, size_t stride) {
    Launch& L = this_thread_launch();
    const dim3 block = g.block;
    const int n = (int)(block.x * block.y * block.z);
    if (L.pool_pid != getpid()) {  // fibers of the parent process
        L.free_fibers();
        L.pool_pid = getpid();
    }
    while ((int)L.fibers.size() < n) L.fibers.push_back(new_fiber());
#ifdef __SANITIZE_THREAD__
    L.main.tsan = __tsan_get_current_fiber();
#endif
    Block blk;
    blk.dynamic.resize(g.shmem);
    blk.warps = std::vector<Warp>((n + 31) / 32);
    L.block = &blk;
    L.grid = &g;
    for (size_t i = first; i < g.order.size(); i += stride) {
        const uint64_t linear = g.order[i];
        const unsigned bx = (unsigned)(linear % g.grid.x), by = (unsigned)(linear / g.grid.x % g.grid.y),
                       bz = (unsigned)(linear / g.grid.x / g.grid.y);
        L.block_idx = dim3(bx, by, bz);
        std::fill(blk.dynamic.begin(), blk.dynamic.end(), kPoison);
        std::fill(blk.statics.begin(), blk.statics.begin() + (size_t)blk.static_used, kPoison);
        blk.bar.expected = n;
        blk.bar.arrived = 0;
        for (int w = 0; w < (int)blk.warps.size(); w++) {
            Warp& wp = blk.warps[w];
            wp.lanes = std::min(32, n - 32 * w);
            wp.bar.expected = wp.lanes;
            wp.bar.arrived = 0;
            wp.running = wp.lanes == 32 ? ~0u : (1u << wp.lanes) - 1;
        }
        for (int t = 0; t < n; t++) {
            Fiber& f = *L.fibers[t];
            f.tid = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
            f.lane = t % 32;
            f.warp = t / 32;
            f.done = false;
            f.async.clear();  // copies a thread left in flight never land
            f.commits = 0;
        }
        hb_release(&L.start_sync);
        for (int live = n; live > 0;) {
            const uint64_t before = L.progress;
            for (int t = 0; t < n; t++) {
                Fiber& f = *L.fibers[t];
                if (f.done) continue;
                resume(f);
                live -= f.done;
            }
            if (live > 0 && L.progress == before) {
                fprintf(stderr, "cuda_emu: deadlock in block (%u, %u, %u): %d threads wait at barriers that cannot complete\n",
                        bx, by, bz, live);
                abort();
            }
        }
        hb_acquire(&L.end_sync);
    }
    L.block = nullptr;
    L.grid = nullptr;
}

// PHD_EMU_THREADS=2 (the default under ThreadSanitizer, else 1): a second OS thread runs every
// other block of each launch, at the same time as the launching thread runs the rest. Blocks
// then overlap as on a GPU, and ThreadSanitizer, which sees the two threads' blocks as
// unordered, reports a race between blocks and a lost update. The two threads meet only at
// the launch's start and end (futexes, with release/acquire atomics: the start orders the host's
// writes before every block, the end every block before what the host does next). A forked
// child runs its blocks on one thread (ThreadSanitizer refuses threads started after a fork).
inline const pid_t g_first_pid = getpid();
// How many OS threads run a launch's blocks (a test may change it).
inline int& block_threads_setting() {
    static int n = [] {
        const char* e = getenv("PHD_EMU_THREADS");
#ifdef __SANITIZE_THREAD__
        const int n = e ? atoi(e) : 2;
#else
        const int n = e ? atoi(e) : 1;
#endif
        if (n != 1 && n != 2) {
            fprintf(stderr, "cuda_emu: PHD_EMU_THREADS must be 1 or 2, not %s\n", e);
            exit(1);
        }
        return n;
    }();
    return n;
}
inline int block_threads() { return getpid() == g_first_pid ? block_threads_setting() : 1; }
inline void futex_wait(std::atomic<uint32_t>& a, uint32_t seen) {
    while (a.load(std::memory_order_acquire) == seen) syscall(SYS_futex, &a, FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0);
}
inline void futex_wake(std::atomic<uint32_t>& a) { syscall(SYS_futex, &a, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0); }
struct Helper {
    std::atomic<uint32_t> posted{0}, finished{0};  // launches given to it, and run by it
    const Grid* grid = nullptr;
    static void* main(void* self) {
        Helper& h = *static_cast<Helper*>(self);
        for (uint32_t seen = 0;; seen++) {
            futex_wait(h.posted, seen);
            run_blocks(*h.grid, 1, 2);
            h.finished.store(seen + 1, std::memory_order_release);
            futex_wake(h.finished);
        }
        return nullptr;
    }
};
inline Helper& helper() {
    static Helper* h = [] {
        Helper* h = new Helper;  // lives as long as its thread, which waits for launches until exit
        pthread_t t;
        pthread_attr_t attr;
        if (pthread_attr_init(&attr) || pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) ||
            pthread_create(&t, &attr, &Helper::main, h)) {
            fprintf(stderr, "cuda_emu: cannot start the thread that runs blocks\n");
            abort();
        }
        pthread_attr_destroy(&attr);
        return h;
    }();
    return *h;
}

inline uint64_t g_launches = 0;  // so far (under launch_mutex): each shuffles its blocks differently

// Runs body(ctx), the kernel call, as every thread of every block of the grid.
inline void run_grid(dim3 grid, dim3 block, size_t shmem, void (*body)(void*), void* ctx) {
    Grid g{grid, block, shmem, body, ctx, std::vector<uint64_t>((uint64_t)grid.x * grid.y * grid.z)};
    // The blocks in a shuffled order, another for each launch (a GPU promises none).
    for (uint64_t i = 0; i < g.order.size(); i++) g.order[i] = i;
    Rng rng{block_seed() ^ (0x9e3779b97f4a7c15ull * ++g_launches)};
    for (uint64_t i = g.order.size(); i > 1; i--) std::swap(g.order[i - 1], g.order[rng.next_u64() % i]);
    if (block_threads() == 1 || g.order.size() == 1) {
        run_blocks(g, 0, 1);
        return;
    }
    Helper& h = helper();
    const uint32_t n = h.finished.load(std::memory_order_relaxed) + 1;
    h.grid = &g;
    h.posted.store(n, std::memory_order_release);
    futex_wake(h.posted);
    run_blocks(g, 0, 2);
    futex_wait(h.finished, n - 1);
}

// The barrier every *_sync primitive starts with. Then what CUDA leaves undefined (a GPU
// may hang or return garbage) aborts: a caller outside its own mask, or (need, for a
// shuffle's source lane and the mma's full warp) a lane that does not exist, has returned
// or is not in the mask. No lane can return before the primitive's second barrier, so the
// check is exact.
inline void warp_sync(Warp& w, unsigned mask, uint32_t need, const char* what, bool order = false) {
    w.bar.wait(order);
    const int lane = running_fiber().lane;
    if (!(mask >> lane & 1) || (need & ~(w.running & mask))) {
        fprintf(stderr, "cuda_emu: %s in lane %d, mask %08x, needs lanes %08x, lanes running %08x\n", what, lane, mask, need,
                (uint32_t)w.running);
        abort();
    }
}
inline Warp& running_warp() { return t_launch->block->warps[running_fiber().warp]; }

template<typename T> inline T exchange(unsigned mask, T v, int src, bool valid) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    Warp& w = running_warp();
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    w.slot[running_fiber().lane] = bits;
    warp_sync(w, mask, valid ? 1u << src : 0u, "a shuffle");  // src < 32 whenever valid
    T r = v;
    if (valid) {
        bits = w.slot[src];
        memcpy(&r, &bits, sizeof(T));
    }
    w.bar.wait(false);
    return r;
}

}  // namespace cuda_emu

#include "cuda_emu_memory.h"
#include "cuda_emu_graph.h"

// The built-in variables of the thread running now.
#define threadIdx (cuda_emu::running_fiber().tid)
#define blockIdx (cuda_emu::t_launch->block_idx)
#define blockDim (cuda_emu::t_launch->grid->block)
#define gridDim (cuda_emu::t_launch->grid->grid)

// kernel<<<grid, block, shmem, stream>>>(args...) in emulation.
template<typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t shmem, cudaStream_t stream, Args... args) {
    using namespace cuda_emu;
    cudaError_t e = check_launch(reinterpret_cast<const void*>(kernel), grid, block, shmem);
    if (!e) {
        // A GPU would fault on the first access through a host pointer; here it does not run.
        DeviceMap map;
        const bool on_device[] = {true, device_argument<KArgs>(static_cast<KArgs>(args))...};
        for (size_t i = 1; i < sizeof on_device && !e; i++)
            if (!on_device[i]) {
                fprintf(stderr, "cuda_emu: kernel argument %zu is (or holds) a pointer to host memory\n", i - 1);
                e = cudaErrorIllegalAddress;
            }
    }
    if (e) {
        last_error = e;
        return;
    }
    auto run = [=]() -> cudaError_t {
        std::lock_guard<std::mutex> serial(launch_mutex());
        DeviceAccess access;
        auto call = [&]() { kernel(static_cast<KArgs>(args)...); };
        run_grid(grid, block, shmem, [](void* c) { (*static_cast<decltype(call)*>(c))(); }, &call);
        return cudaSuccess;
    };
    // Queued on its stream, or recorded while the stream captures (cuda_emu_graph.h).
    if (deferred(stream, run, e)) {
        if (e) last_error = e;
        return;
    }
    run();
}

template<typename T> inline T* dynamic_shared() { return reinterpret_cast<T*>(cuda_emu::t_launch->block->dynamic.data()); }
namespace cuda_emu {
// The running block's copy of the static shared declaration `site` (bytes long), 16-byte
// aligned; past CUDA's 48 KB of static shared memory the emulation stops, as nvcc would.
inline void* static_shared(const void* site, size_t bytes) {
    Block& b = *t_launch->block;
    int i = 0;
    while (i < b.sites && b.site[i] != site) i++;
    if (i == b.sites) {
        const size_t at = (b.static_used + 15) / 16 * 16;
        if (at + bytes > kStaticShared || i == Block::kSites) {
            fprintf(stderr, "cuda_emu: static shared memory past %zu bytes or %d declarations\n", kStaticShared, Block::kSites);
            abort();
        }
        b.site[i] = site;
        b.site_at[i] = at;
        b.sites = i + 1;
        b.static_used = at + bytes;
    }
    return b.statics.data() + b.site_at[i];
}
}  // namespace cuda_emu

inline void __syncthreads() { cuda_emu::t_launch->block->bar.wait(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { cuda_emu::warp_sync(cuda_emu::running_warp(), mask, 0, "__syncwarp", true); }

template<typename T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    int lane = cuda_emu::running_fiber().lane;
    return cuda_emu::exchange(mask, v, (lane & ~(width - 1)) + (src % width + width) % width, true);
}
template<typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    int lane = cuda_emu::running_fiber().lane;
    return cuda_emu::exchange(mask, v, lane + (int)delta, (lane % width) + (int)delta < width);
}
template<typename T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    int lane = cuda_emu::running_fiber().lane;
    return cuda_emu::exchange(mask, v, lane - (int)delta, (lane % width) >= (int)delta);
}
template<typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    int lane = cuda_emu::running_fiber().lane, src = lane ^ lane_mask;
    return cuda_emu::exchange(mask, v, src, src >= 0 && src < 32 && src / width <= lane / width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    using namespace cuda_emu;
    Warp& w = running_warp();
    w.slot[running_fiber().lane] = pred != 0;
    warp_sync(w, mask, 0, "__ballot_sync");
    unsigned bits = 0;
    for (int l = 0; l < w.lanes; l++) bits |= (unsigned)(uint64_t)w.slot[l] << l;
    bits &= mask & w.running;  // a lane that has returned votes no
    w.bar.wait(false);
    return bits;
}

// Atomics as a GPU's: indivisible, relaxed (they order no other memory, for ThreadSanitizer
// too), on the value's bits by compare-and-swap.
namespace cuda_emu {
template<typename T, typename F> inline T atomic_update(T* p, F next) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomics on 4- or 8-byte values");
    using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    U* q = reinterpret_cast<U*>(p);
    U old_bits = __atomic_load_n(q, __ATOMIC_RELAXED), new_bits;
    T old;
    do {
        memcpy(&old, &old_bits, sizeof old);
        const T v = next(old);
        memcpy(&new_bits, &v, sizeof v);
    } while (!__atomic_compare_exchange_n(q, &old_bits, new_bits, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
}  // namespace cuda_emu
template<typename T> inline T atomicAdd(T* p, T v) { return cuda_emu::atomic_update(p, [v](T old) { return old + v; }); }
template<typename T> inline T atomicMax(T* p, T v) { return cuda_emu::atomic_update(p, [v](T old) { return old > v ? old : v; }); }

#include "cuda_emu_math.h"
#include "cuda_emu_runtime.h"
#include "cuda_emu_mma.h"
#include "cuda_emu_cublas.h"
#include "cuda_emu_nccl.h"
