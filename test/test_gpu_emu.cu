// The emulation as strict as a GPU (test/cuda_emu_stream.h, test/cuda_emu.h): each test plants
// the bug a GPU would punish and shows that the emulation punishes it too, so that the kernel
// tests run on it mean what they would mean on a GPU. Emulation only: on a GPU these bugs give
// whatever the timing gives.
#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>
#include <doctest/doctest.h>
#include "../kernels/adamw.cuh"
#include "../kernels/cuda_compat.h"
#include "../kernels/kv_cache.cuh"
#include "../kernels/sampling.cuh"
#include "test_util.h"

#ifndef __CUDACC__
__global__ void set_kernel(int* x, int n, int v) {
    if ((int)threadIdx.x < n) x[threadIdx.x] = v;
}
__global__ void copy_kernel(int* dst, const int* src, int n) {
    if ((int)threadIdx.x < n) dst[threadIdx.x] = src[threadIdx.x];
}

// b = a on stream `reader` after a = 5 on stream `writer`, with or without an event between;
// a starts at 1. Returns b after synchronizing the reader only.
static int copy_after_set(cudaStream_t writer, cudaStream_t reader, bool wait) {
    int* a = to_device(std::vector<int>(1, 1));
    int* b = to_device(std::vector<int>(1, 0));
    cudaEvent_t e;
    cudaCheck(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    launch(set_kernel, dim3(1), dim3(32), 0, writer, a, 1, 5);
    cudaCheck(cudaEventRecord(e, writer));
    if (wait) cudaCheck(cudaStreamWaitEvent(reader, e, 0));
    launch(copy_kernel, dim3(1), dim3(32), 0, reader, b, (const int*)a, 1);
    int got = -1;
    cudaCheck(cudaMemcpyAsync(&got, b, sizeof got, cudaMemcpyDeviceToHost, reader));  // pageable: done on return
    cudaCheck(cudaDeviceSynchronize());
    cudaCheck(cudaEventDestroy(e));
    cudaCheck(cudaFree(a));
    cudaCheck(cudaFree(b));
    return got;
}

TEST_CASE("emulation: streams are queues; without an event wait, another stream's earlier work has not happened") {
    cudaStream_t s1, s2, blocking;
    cudaCheck(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
    cudaCheck(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    cudaCheck(cudaStreamCreate(&blocking));
    CHECK(copy_after_set(s1, s2, true) == 5);
    CHECK(copy_after_set(s1, s2, false) == 1);  // the planted bug: a GPU may run the copy first
    // The legacy stream and a blocking stream wait for each other; a non-blocking one does not.
    CHECK(copy_after_set(nullptr, blocking, false) == 5);
    CHECK(copy_after_set(blocking, nullptr, false) == 5);
    CHECK(copy_after_set(nullptr, s2, false) == 1);
    CHECK(copy_after_set(s1, nullptr, false) == 1);
    // Work queued and never waited for has not run; cudaStreamSynchronize runs it.
    int* a = to_device(std::vector<int>(1, 1));
    launch(set_kernel, dim3(1), dim3(32), 0, s1, a, 1, 7);
    int got = 0;
    cudaCheck(cudaMemcpy(&got, a, sizeof got, cudaMemcpyDeviceToHost));  // the legacy stream: not after s1
    CHECK(got == 1);
    cudaCheck(cudaStreamSynchronize(s1));
    cudaCheck(cudaMemcpy(&got, a, sizeof got, cudaMemcpyDeviceToHost));
    CHECK(got == 7);
    cudaCheck(cudaFree(a));
    for (cudaStream_t s : {s1, s2, blocking}) cudaCheck(cudaStreamDestroy(s));
}

// Each block takes the next ticket: order[block] = its turn.
__global__ void ticket_kernel(int* counter, int* order, float* sum, const float* x) {
    if (threadIdx.x != 0) return;
    order[blockIdx.x] = atomicAdd(counter, 1);
    atomicAdd(sum, x[blockIdx.x]);
}

// A GPU faults on a host pointer whether it comes as an argument or inside a struct
// argument (RMSNorm's NormIO, the KV cache's KVLayer): the emulation refuses the launch
// either way, where it would otherwise read host memory.
TEST_CASE("emulation: a host pointer held in a kernel's struct argument stops its launch, as a pointer argument does") {
    const int N = 2, D = 8;
    std::vector<float> host(N * D, 2.0f);
    DeviceBuffer<float> x(host), g(std::vector<float>(D, 1.0f)), out(std::vector<float>(N * D, 0.0f)), rstd(std::vector<float>(N, 0.0f));
    NormIO<float> io{out.ptr, D, x.ptr, D, rstd.ptr};
    cudaCheck(cudaGetLastError());
    launch(rmsnorm_forward_kernel<float, 1>, dim3(1), dim3(32, kRowsPerBlock), 0, nullptr, io, g.ptr, N, D);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(out.get()[0] != 0.0f);
    io.residual = host.data();
    launch(rmsnorm_forward_kernel<float, 1>, dim3(1), dim3(32, kRowsPerBlock), 0, nullptr, io, g.ptr, N, D);
    CHECK(cudaGetLastError() == cudaErrorIllegalAddress);
    KVLayer<float> L;
    CHECK(cuda_emu::device_argument(L));  // null pointers pass
    L.win_nc = (int2*)host.data();
    CHECK(!cuda_emu::device_argument(L));
}

TEST_CASE("emulation: a launch's blocks run in a shuffled order, another each launch, so block-order bugs show") {
    const int n = 64, runs = 4;
    // A float sum that tells where block 0 ran: 2^24 (spacing 2 there) after k ones is 2^24 + k
    // rounded to even, and each later one is a tie, rounded to even again.
    std::vector<float> x(n, 1.0f);
    x[0] = 16777216.0f;
    float* dx = to_device(x);
    std::vector<std::vector<int>> orders;
    std::vector<float> sums;
    for (int run = 0; run < runs; run++) {
        int* counter = to_device(std::vector<int>(1, 0));
        int* order = to_device(std::vector<int>(n, -1));
        float* sum = to_device(std::vector<float>(1, 0.0f));
        launch(ticket_kernel, dim3(n), dim3(32), 0, nullptr, counter, order, sum, (const float*)dx);
        orders.push_back(to_host(order, n));
        sums.push_back(to_host(sum, 1)[0]);
        for (void* p : {(void*)counter, (void*)order, (void*)sum}) cudaCheck(cudaFree(p));
    }
    std::vector<int> identity(n);
    for (int b = 0; b < n; b++) identity[b] = b;
    for (const std::vector<int>& o : orders) {
        std::vector<int> sorted = o;
        std::sort(sorted.begin(), sorted.end());
        CHECK(sorted == identity);  // every block ran once
        CHECK(o != identity);
    }
    CHECK(orders[0] != orders[1]);
    // So a "two runs give the same bits" test of a kernel that sums with atomics can fail.
    CHECK(std::count(sums.begin(), sums.end(), sums[0]) < runs);
    cudaCheck(cudaFree(dx));
}

// What each block finds in its static shared memory before writing it.
__global__ void static_before_write_kernel(int* out) {
    PHD_SHARED(int, s, [32]);
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
    s[threadIdx.x] = (int)blockIdx.x;
}

TEST_CASE("emulation: static shared memory starts as 0xff bytes in every block, not as the last block left it") {
    const int blocks = 3, n = 32;
    int* out = to_device(std::vector<int>(blocks * n, 0));
    launch(static_before_write_kernel, dim3(blocks), dim3(n), 0, nullptr, out);
    for (int v : to_host(out, blocks * n)) CHECK(v == -1);
    cudaCheck(cudaFree(out));
}

// Stage s of a two-stage cp.async pipeline, refilled while the other warp may still read it.
__global__ void refill_kernel(const int* src, int* out, bool barrier) {
    int* s = dynamic_shared<int>();
    const int t = threadIdx.x;  // 64 threads: warp 0 copies, warp 1 reads
    if (t < 32) cp_async16(s + 4 * t, src + 4 * t);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    if (t >= 32) out[t - 32] = s[4 * (t - 32)];   // warp 1 reads the stage...
    if (barrier) __syncthreads();                 // ...which a barrier must protect...
    if (t < 32) cp_async16(s + 4 * t, src + 128 + 4 * t);  // ...from warp 0's refill
    cp_async_commit();
    __syncthreads();  // as a pipeline does: the next tile's barrier before the refill's wait
    cp_async_wait<0>();
}

TEST_CASE("emulation: a cp.async destination holds poison from issue to wait, so a refill under a reader shows") {
    std::vector<int> src(256);
    for (int i = 0; i < 256; i++) src[i] = i;
    int* d_src = to_device(src);
    int* out = to_device(std::vector<int>(32, 0));
    launch(refill_kernel, dim3(1), dim3(64), 128 * sizeof(int), nullptr, (const int*)d_src, out, true);
    std::vector<int> want(32);
    for (int i = 0; i < 32; i++) want[i] = 4 * i;
    CHECK(to_host(out, 32) == want);
    // Without the barrier warp 0 runs ahead to its refill (the emulation runs each thread to its
    // next barrier in turn, the last to arrive on past it) and warp 1 reads poison: the
    // planted bug. ThreadSanitizer reports it as a race (suite tsan-catches-refill).
    if (!kUnderTsan) {
        launch(refill_kernel, dim3(1), dim3(64), 128 * sizeof(int), nullptr, (const int*)d_src, out, false);
        const std::vector<int> got = to_host(out, 32);
        CHECK(std::count(got.begin(), got.end(), -1) >= 16);
    }
    cudaCheck(cudaFree(d_src));
    cudaCheck(cudaFree(out));
}

TEST_CASE("emulation: a stream capture refuses what the driver refuses, and is then invalid") {
    cudaStream_t s;
    cudaCheck(cudaStreamCreate(&s));
    int* a = to_device(std::vector<int>(1, 1));
    int host = 0;
    void* p = nullptr;
    const std::vector<std::pair<const char*, std::function<cudaError_t()>>> refused = {
        {"cudaMalloc", [&] { return cudaMalloc(&p, 16); }},
        {"cudaFree", [&] { return cudaFree(a); }},
        {"cudaMemcpy", [&] { return cudaMemcpy(&host, a, sizeof host, cudaMemcpyDeviceToHost); }},
        {"cudaMemset", [&] { return cudaMemset(a, 0, sizeof(int)); }},
        {"cudaStreamSynchronize", [&] { return cudaStreamSynchronize(s); }},
        {"cudaDeviceSynchronize", [&] { return cudaDeviceSynchronize(); }},
    };
    for (const auto& r : refused) {
        const char* what = r.first;
        const auto& call = r.second;
        INFO(what);
        cudaCheck(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        launch(set_kernel, dim3(1), dim3(32), 0, s, a, 1, 2);
        CHECK(call() != cudaSuccess);
        cudaGraph_t g = nullptr;
        CHECK(cudaStreamEndCapture(s, &g) == cudaErrorStreamCaptureInvalidated);
        CHECK(g == nullptr);
    }
    // A capture of launches alone is fine, and its replay runs when the stream is synchronized.
    cudaCheck(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    launch(set_kernel, dim3(1), dim3(32), 0, s, a, 1, 3);
    cudaGraph_t g = nullptr;
    cudaGraphExec_t exec = nullptr;
    cudaCheck(cudaStreamEndCapture(s, &g));
    cudaCheck(cudaGraphInstantiate(&exec, g, 0));
    cudaCheck(cudaGraphLaunch(exec, s));
    cudaCheck(cudaStreamSynchronize(s));
    CHECK(to_host(a, 1)[0] == 3);
    cudaCheck(cudaGraphExecDestroy(exec));
    cudaCheck(cudaGraphDestroy(g));
    cudaCheck(cudaFree(a));
    cudaCheck(cudaStreamDestroy(s));
}

// Lane 1 reads what lane 0 wrote, ordered only by a shuffle: a race on a GPU (a shuffle orders
// no memory; __syncwarp would).
__global__ void shuffle_ordered_kernel(int* out) {
    PHD_SHARED(int, s, [1]);
    if (threadIdx.x == 0) s[0] = 42;
    const int v = __shfl_sync(0xffffffffu, (int)threadIdx.x, 0);
    if (threadIdx.x == 1) out[0] = s[0] + v;
}

TEST_CASE("sanitizer-refill-race: a cp.async refill of a stage another warp still reads is reported by ThreadSanitizer" *
          doctest::skip(true)) {
    int* src = to_device(std::vector<int>(256, 1));
    int* out = to_device(std::vector<int>(32, 0));
    launch(refill_kernel, dim3(1), dim3(64), 128 * sizeof(int), nullptr, (const int*)src, out, false);
    to_host(out, 32);
    cudaCheck(cudaFree(src));
    cudaCheck(cudaFree(out));
}

TEST_CASE("emulation: launches are checked against ptxas's registers and __launch_bounds__ (PHD_EMU_KERNELS)") {
    auto* table = cuda_emu::kernel_table();
    if (!table) {
        MESSAGE("SKIPPED: no kernel table (PHD_EMU_KERNELS unset: make test sets it where nvcc builds train_phd)");
        return;
    }
    // The production kernels are found under the names ptxas gives them.
    const cuda_emu::KernelLimits* sample = cuda_emu::kernel_limits((const void*)&sample_kernel);
    const cuda_emu::KernelLimits* adamw = cuda_emu::kernel_limits((const void*)&adamw_kernel<4>);
    REQUIRE(sample);
    REQUIRE(adamw);
    CHECK(sample->max_threads == kSampleThreads);
    CHECK((sample->registers > 0 && adamw->registers > 0));
    CHECK(adamw->max_threads == 0);
    MESSAGE(table->size() << " kernels of the table are in this binary");
    // Planted: what ptxas might give a kernel (set_kernel's entry, for the test only).
    const uintptr_t key = (uintptr_t)&set_kernel;
    int* x = to_device(std::vector<int>(1024, 0));
    auto launch_with = [&](int registers, int bounds, size_t static_shared, int threads, size_t dynamic) {
        (*table)[key] = cuda_emu::KernelLimits{"set_kernel", registers, static_shared, bounds};
        launch(set_kernel, dim3(1), dim3(threads), dynamic, nullptr, x, 1, 7);
        const cudaError_t e = cudaGetLastError();
        cudaCheck(cudaDeviceSynchronize());
        return e;
    };
    CHECK(launch_with(64, 1024, 0, 1024, 0) == cudaSuccess);  // 32 warps of 2048: the whole register file
    CHECK(launch_with(72, 1024, 0, 1024, 0) == cudaErrorLaunchOutOfResources);  // 72 x 32 = 2304 a warp: 73,728
    CHECK(launch_with(72, 1024, 0, 896, 0) == cudaSuccess);                     // 28 warps: 64,512
    CHECK(launch_with(32, 256, 0, 512, 0) == cudaErrorLaunchOutOfResources);    // past its bounds
    CHECK(launch_with(32, 0, 0, 256, 0) == cudaSuccess);
    CHECK(launch_with(32, 0, 0, 512, 0) == cudaErrorLaunchOutOfResources);      // no bounds above 256 threads
    CHECK(launch_with(32, 0, 40 << 10, 256, 8 << 10) == cudaSuccess);           // 48 KB in all
    CHECK(launch_with(32, 0, 40 << 10, 256, 9 << 10) == cudaErrorLaunchOutOfResources);
    table->erase(key);
    launch(set_kernel, dim3(1), dim3(1024), 0, nullptr, x, 1, 7);  // the tests' own kernels: unchecked
    CHECK(cudaGetLastError() == cudaSuccess);
    cudaCheck(cudaDeviceSynchronize());
    cudaCheck(cudaFree(x));
}

// A lost update: thread 0 of every block adds to one counter without an atomic. A GPU loses
// updates; the emulation runs blocks on two OS threads under ThreadSanitizer, which reports it.
__global__ void unguarded_count_kernel(int* count) {
    if (threadIdx.x == 0) *count += 1;
}

TEST_CASE("sanitizer-block-race: two blocks updating one word without an atomic are reported by ThreadSanitizer" *
          doctest::skip(true)) {
    int* count = to_device(std::vector<int>(1, 0));
    launch(unguarded_count_kernel, dim3(16), dim3(32), 0, nullptr, count);
    to_host(count, 1);
    cudaCheck(cudaFree(count));
}

// Each block raises its flag, then waits (wait_ms at most) to see the other block's: only
// blocks that run at the same time both see it.
__global__ void meet_kernel(int* flags, int* met, int wait_ms) {
    if (threadIdx.x != 0) return;
    __atomic_store_n(&flags[blockIdx.x], 1, __ATOMIC_RELAXED);
    const auto start = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(wait_ms))
        if (__atomic_load_n(&flags[1 - blockIdx.x], __ATOMIC_RELAXED)) {
            met[blockIdx.x] = 1;
            return;
        }
}

TEST_CASE("emulation: with PHD_EMU_THREADS=2 (ThreadSanitizer's default) two blocks of a launch run at the same time") {
    const int setting = cuda_emu::block_threads_setting();
    for (int threads : {1, 2}) {
        cuda_emu::block_threads_setting() = threads;
        int* flags = to_device(std::vector<int>(2, 0));
        int* met = to_device(std::vector<int>(2, 0));
        launch(meet_kernel, dim3(2), dim3(32), 0, nullptr, flags, met, threads == 1 ? 100 : 5000);
        const std::vector<int> m = to_host(met, 2);
        // One thread: the block that runs first waits in vain; the second sees the first's flag.
        CHECK(m[0] + m[1] == threads);
        cudaCheck(cudaFree(flags));
        cudaCheck(cudaFree(met));
    }
    cuda_emu::block_threads_setting() = setting;
}

TEST_CASE("sanitizer-warp-race: memory ordered only by a shuffle is reported by ThreadSanitizer" * doctest::skip(true)) {
    int* out = to_device(std::vector<int>(1, 0));
    launch(shuffle_ordered_kernel, dim3(1), dim3(32), 0, nullptr, out);
    to_host(out, 1);
    cudaCheck(cudaFree(out));
}
#endif
