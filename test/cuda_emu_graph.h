// test/cuda_emu_graph.h: CUDA graphs made by stream capture, in the emulation (included by
// test/cuda_emu.h ahead of launch()). Between cudaStreamBeginCapture and cudaStreamEndCapture
// the work queued on the capturing stream does not run: launch(), cudaMemcpyAsync,
// cudaMemsetAsync and cublasLtMatmul (on the stream it is given) each pass it to deferred(),
// which records it with its arguments copied (cuBLASLt's host scalars by value, as cuBLASLt
// reads them at capture). cudaGraphLaunch queues the recorded work, to run in order,
// each time on the arguments it was captured with, so a graph that should follow changing
// state must read it from device memory, as on a GPU.
// As on a GPU: the legacy stream cannot capture (cudaErrorStreamCaptureUnsupported); work
// queued on the legacy stream while a capture is open invalidates that capture (the call
// fails with cudaErrorStreamCaptureImplicit and cudaStreamEndCapture with
// cudaErrorStreamCaptureInvalidated), so a forgotten stream (a GEMM's, say) fails here as it
// would there; a replayed launch fails as a direct one would, its first error returned by the
// next synchronization. What the driver refuses during a capture fails the same way and invalidates
// it: cudaMalloc, cudaFree, cudaMemcpy and cudaMemset (the legacy stream), and synchronizing
// the device or the capturing stream. Not emulated: capture across streams (events), graph
// nodes and updates.
#pragma once
#include <functional>

struct CUgraph_st;
struct CUgraphExec_st;
typedef CUgraph_st* cudaGraph_t;
typedef CUgraphExec_st* cudaGraphExec_t;
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal = 0, cudaStreamCaptureModeThreadLocal = 1, cudaStreamCaptureModeRelaxed = 2 };
enum : int { cudaErrorIllegalState = 401, cudaErrorStreamCaptureUnsupported = 900, cudaErrorStreamCaptureInvalidated = 901,
             cudaErrorStreamCaptureImplicit = 906 };

struct CUgraph_st { std::vector<std::function<cudaError_t()>> work; };  // in stream order
struct CUgraphExec_st { CUgraph_st graph; };

namespace cuda_emu {

struct Capture {
    cudaStream_t stream = nullptr;  // capturing, or null
    CUgraph_st* graph = nullptr;
    bool invalid = false;
};
inline thread_local Capture g_capture;  // one capture at a time per host thread

// Called with the work a call queues on stream s. True when the call is done with it: recorded
// into the open capture of s (status cudaSuccess), refused because it went to the legacy stream
// while a capture is open (status says so; the capture is invalid), or queued on s
// (cuda_emu_stream.h), or dropped in a dry run. False inside queued work that runs (a graph's
// replay, say): run it now.
template<typename F> bool deferred(cudaStream_t s, F work, cudaError_t& status, uint64_t* id = nullptr) {
    Capture& c = g_capture;
    Streams& q = streams();
    if (q.running) return false;
    status = cudaSuccess;
    if (dry_run()) return true;  // checked, never run
    if (c.stream && s == c.stream) {
        c.graph->work.push_back(work);
        return true;
    }
    if (c.stream && !s) {
        c.invalid = true;
        status = cudaErrorStreamCaptureImplicit;
        return true;
    }
    const uint64_t i = q.enqueue(s, work);
    if (id) *id = i;
    return true;
}
// A call the driver refuses while a capture is open: true (and the capture is invalid) then.
inline bool capture_refuses() {
    if (!g_capture.stream) return false;
    g_capture.invalid = true;
    return true;
}

}  // namespace cuda_emu

inline cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
    cuda_emu::Capture& c = cuda_emu::g_capture;
    if (!s) return cudaErrorStreamCaptureUnsupported;
    if (c.stream) return cudaErrorIllegalState;
    c.stream = s;
    c.graph = new CUgraph_st;
    c.invalid = false;
    return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
    cuda_emu::Capture& c = cuda_emu::g_capture;
    if (!c.stream || s != c.stream) return cudaErrorIllegalState;
    const cudaError_t status = c.invalid ? (cudaError_t)cudaErrorStreamCaptureInvalidated : cudaSuccess;
    *graph = c.invalid ? nullptr : c.graph;
    if (c.invalid) delete c.graph;
    c = cuda_emu::Capture{};
    return status;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long = 0) {
    if (!graph) return cudaErrorInvalidValue;
    *exec = new CUgraphExec_st{*graph};
    return cudaSuccess;
}
// Queues the graph's work on s as one item (or records it, when s captures).
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    if (!exec) return cudaErrorInvalidValue;
    auto run = [exec] {
        cudaError_t first = cudaSuccess;
        for (auto& w : exec->graph.work)
            if (cudaError_t e = w(); e && !first) first = e;
        return first;
    };
    cudaError_t status;
    return cuda_emu::deferred(s, run, status) ? status : run();
}
// Queued launches of it run first (CUDA lets them finish after the call).
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    cuda_emu::streams().run_all();
    delete exec;
    return cudaSuccess;
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t graph) { delete graph; return cudaSuccess; }
