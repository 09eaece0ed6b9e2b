// test/cuda_emu_graph.h: CUDA graphs made by stream capture, in the emulation (included by
// test/cuda_emu.h ahead of launch()). Between cudaStreamBeginCapture and cudaStreamEndCapture
// the work queued on the capturing stream does not run: launch(), cudaMemcpyAsync,
// cudaMemsetAsync and cuBLAS (on the handle's stream, cublasSetStream) each pass it to
// captured(), which records it with its arguments copied (cuBLAS's host scalars by value, as
// cuBLAS reads them at capture). cudaGraphLaunch runs the recorded work in order, each time
// on the arguments it was captured with, so a graph that should follow changing state must
// read it from device memory, as on a GPU.
// As on a GPU: the legacy stream cannot capture (cudaErrorStreamCaptureUnsupported); work
// queued on the legacy stream while a capture is open invalidates that capture (the call
// fails with cudaErrorStreamCaptureImplicit and cudaStreamEndCapture with
// cudaErrorStreamCaptureInvalidated), so a forgotten stream (cuBLAS's, say) fails here as it
// would there; a replayed launch fails as a direct one would, and cudaGraphLaunch returns the
// first error. Not emulated: capture across streams (events), graph nodes and updates,
// synchronous calls during a capture.
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
    int replaying = 0;              // cudaGraphLaunch in progress: its work runs
};
inline thread_local Capture g_capture;  // one capture at a time per host thread

// Called with the work a call queues on stream s. True when the call is done with it: recorded
// into the open capture of s (status cudaSuccess), or refused because it went to the legacy
// stream while a capture is open (status says so; the capture is invalid). False: run it now.
template<typename F> bool captured(cudaStream_t s, F work, cudaError_t& status) {
    Capture& c = g_capture;
    if (!c.stream || c.replaying) return false;
    if (s == c.stream) {
        c.graph->work.push_back(work);
        status = cudaSuccess;
        return true;
    }
    if (s) return false;
    c.invalid = true;
    status = cudaErrorStreamCaptureImplicit;
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
// Runs the graph's work now (launches are synchronous here); captured itself when s captures.
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    if (!exec) return cudaErrorInvalidValue;
    auto run = [exec] {
        cuda_emu::Capture& c = cuda_emu::g_capture;
        c.replaying++;
        cudaError_t first = cudaSuccess;
        for (auto& w : exec->graph.work)
            if (cudaError_t e = w(); e && !first) first = e;
        c.replaying--;
        return first;
    };
    cudaError_t status;
    return cuda_emu::captured(s, run, status) ? status : run();
}
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) { delete exec; return cudaSuccess; }
inline cudaError_t cudaGraphDestroy(cudaGraph_t graph) { delete graph; return cudaSuccess; }
