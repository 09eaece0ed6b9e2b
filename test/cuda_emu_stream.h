// test/cuda_emu_stream.h: streams and events of test/cuda_emu.h (included by it ahead of the
// graphs): real queues, run late and in the worst order CUDA allows.
//
// Every call that CUDA puts on a stream (a launch, cudaMemcpyAsync, cudaMemsetAsync, cudaMemset
// and cudaMemcpy on the legacy stream, a cublasLtMatmul on its stream, an NCCL call, an
// event record or wait, a graph launch) becomes an item of work here, with the items it must
// follow: the stream's previous item; on the legacy stream (null), the last item of every
// blocking stream; on a blocking stream, the legacy stream's last item; for a wait, the item
// the event recorded. Streams made with cudaStreamNonBlocking have no tie to the legacy one.
// Nothing runs until the host needs it: a synchronous copy, a copy into host memory,
// cudaStreamSynchronize, cudaEventSynchronize, cudaDeviceSynchronize, cudaFree, or destroying a
// stream, an event or a graph that work still uses. Then
// what it needs runs, and only that, always picking among the items whose predecessors are
// done the one queued last. So whatever two streams do without an event between them happens
// in the order opposite to the host's, and a missing wait gives wrong numbers every time.
// The errors of work that ran late come back from the next synchronizing call, as a GPU's do.
//
// PHD_EMU_IGNORE_WAITS=legacy|nonblocking makes cudaStreamWaitEvent on the legacy stream, or on
// non-blocking streams, do nothing: the planted bug test/test_dist.sh shows this catches.
#pragma once
#include <functional>
#include <map>
#include <set>
#include <string>

struct CUstream_st { bool nonblocking = false; uint64_t tail = 0; };
typedef CUstream_st* cudaStream_t;

namespace cuda_emu {

inline void open_device_memory(bool open);  // cuda_emu.h

struct StreamWork {
    std::function<cudaError_t()> fn;
    std::vector<uint64_t> after;  // the items this one follows
};

struct Streams {
    std::recursive_mutex m;
    uint64_t next = 1;
    std::map<uint64_t, StreamWork> pending;  // by the order queued; done items leave it
    std::set<CUstream_st*> blocking;         // live blocking streams, not the legacy one
    CUstream_st legacy;
    cudaError_t error = cudaSuccess;         // the first error of work that ran late
    int running = 0;                         // > 0 inside an item: its calls run at once
    const std::string ignore_waits = getenv("PHD_EMU_IGNORE_WAITS") ? getenv("PHD_EMU_IGNORE_WAITS") : "";
    CUstream_st* of(cudaStream_t s) { return s ? s : &legacy; }
    bool is_pending(uint64_t i) const { return pending.count(i) != 0; }

    // Queues fn on s after the items in `after` (and those stream order adds): its number.
    uint64_t enqueue(cudaStream_t s, std::function<cudaError_t()> fn, std::vector<uint64_t> after = {}) {
        std::lock_guard<std::recursive_mutex> lock(m);
        CUstream_st* st = of(s);
        after.push_back(st->tail);
        if (st == &legacy)
            for (CUstream_st* b : blocking) after.push_back(b->tail);
        else if (!st->nonblocking)
            after.push_back(legacy.tail);
        std::vector<uint64_t> open;
        for (uint64_t a : after)
            if (is_pending(a)) open.push_back(a);
        const uint64_t id = next++;
        pending[id] = StreamWork{std::move(fn), std::move(open)};
        st->tail = id;
        return id;
    }

    // Runs what the items `targets` need, and nothing else: among the needed items whose
    // predecessors are done, always the one queued last.
    void run(std::vector<uint64_t> targets) {
        std::lock_guard<std::recursive_mutex> lock(m);
        std::set<uint64_t> need;
        while (!targets.empty()) {
            const uint64_t t = targets.back();
            targets.pop_back();
            if (!is_pending(t) || !need.insert(t).second) continue;
            for (uint64_t a : pending[t].after) targets.push_back(a);
        }
        if (need.empty()) return;
        open_device_memory(true);
        while (!need.empty()) {
            uint64_t pick = 0;
            for (auto it = need.rbegin(); it != need.rend() && !pick; ++it) {
                bool ready = true;
                for (uint64_t a : pending[*it].after) ready = ready && !is_pending(a);
                if (ready) pick = *it;
            }
            StreamWork w = std::move(pending[pick]);
            pending.erase(pick);
            need.erase(pick);
            running++;
            const cudaError_t e = w.fn();
            running--;
            if (e && !error) error = e;
        }
        open_device_memory(false);
    }
    void run_all() {
        std::lock_guard<std::recursive_mutex> lock(m);
        std::vector<uint64_t> all;
        for (auto& p : pending) all.push_back(p.first);
        run(all);
    }
    // What a synchronizing call does: runs what the targets need, then returns the first error
    // that work which ran late left (once), as a GPU's synchronizing calls return it.
    cudaError_t wait(const std::vector<uint64_t>& targets) {
        std::lock_guard<std::recursive_mutex> lock(m);
        run(targets);
        return std::exchange(error, cudaSuccess);
    }
    cudaError_t wait_all() {
        std::lock_guard<std::recursive_mutex> lock(m);
        run_all();
        return std::exchange(error, cudaSuccess);
    }
};
inline Streams& streams() { static Streams s; return s; }

}  // namespace cuda_emu
