// kernels/layers.cuh: the pointwise and per-row layers on the GPU, fp32, each forward next
// to its backward. Row layouts as in attention.cuh: (B, T*K, .) with the rows of each
// sequence regrouped as [originals | hidden]. Every launcher takes device pointers.
#pragma once
#include <algorithm>
#include <vector>
#include "attention.cuh"

static constexpr int kRowsPerBlock = 4;  // one warp per row

// ---- embedding: every copy of position n gets E[tokens[b, n]] ----

// grid (N), block min(D, 256): x (N, D) = E[row_tokens[i]]; the caller lays out the rows
// (a training batch regrouped, or a decoder's block), so one kernel serves both.
static __global__ void embedding_forward_kernel(float* x, const int* row_tokens, const float* E, int D) {
    const int row = blockIdx.x;
    for (int j = threadIdx.x; j < D; j += blockDim.x) x[(size_t)row * D + j] = E[(size_t)row_tokens[row] * D + j];
}
inline void embedding_forward(float* x, const int* row_tokens, const float* E, int N, int D, cudaStream_t s) {
    launch(embedding_forward_kernel, dim3(N), dim3(std::min(D, 256)), 0, s, x, row_tokens, E, D);
    cudaCheck(cudaGetLastError());
}

// grid (distinct tokens), block min(D, 256): dE[token] += the rows carrying it, summed in a
// fixed order (rows[starts[i] .. starts[i+1]) of token ids[i]): deterministic, no atomics.
static __global__ void embedding_backward_kernel(float* dE, const float* dx, const int* ids, const int* starts, const int* rows, int D) {
    const int t = blockIdx.x;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float s = 0.0f;
        for (int k = starts[t]; k < starts[t + 1]; k++) s += dx[(size_t)rows[k] * D + j];
        dE[(size_t)ids[t] * D + j] += s;
    }
}
// The rows of a batch grouped by token, for the backward: token ids[i] is carried by rows
// rows[starts[i] .. starts[i+1]), in increasing order. Grouped on the host when the tokens
// arrive (the forward), so that the backward is device work only.
struct TokenGroups {
    int *ids = nullptr, *starts = nullptr, *rows = nullptr;  // device: (N), (N + 1), (N) at most
    int count = 0, capacity = 0;                              // distinct tokens; rows allocated for
    TokenGroups() = default;
    TokenGroups(const TokenGroups&) = delete;
    TokenGroups& operator=(const TokenGroups&) = delete;
    ~TokenGroups() { release(); }
    void release() {
        for (void* p : {(void*)ids, (void*)starts, (void*)rows}) cudaFree(p);
        ids = starts = rows = nullptr;
    }
    // row_tokens (N): each row's token.
    void set(const std::vector<int>& row_tokens) {
        const int N = (int)row_tokens.size();
        if (N > capacity) {
            release();
            capacity = N;
            cudaCheck(cudaMalloc(&ids, N * sizeof(int)));
            cudaCheck(cudaMalloc(&starts, (N + 1) * sizeof(int)));
            cudaCheck(cudaMalloc(&rows, N * sizeof(int)));
        }
        std::vector<std::pair<int, int>> tr(N);  // (token, row)
        for (int r = 0; r < N; r++) tr[r] = {row_tokens[r], r};
        std::sort(tr.begin(), tr.end());
        std::vector<int> h_ids, h_starts, h_rows(N);
        for (int i = 0; i < N; i++) {
            if (i == 0 || tr[i].first != tr[i - 1].first) { h_ids.push_back(tr[i].first); h_starts.push_back(i); }
            h_rows[i] = tr[i].second;
        }
        h_starts.push_back(N);
        count = (int)h_ids.size();
        cudaCheck(cudaMemcpy(ids, h_ids.data(), count * sizeof(int), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(starts, h_starts.data(), (count + 1) * sizeof(int), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(rows, h_rows.data(), N * sizeof(int), cudaMemcpyHostToDevice));
    }
};
inline void embedding_backward(float* dE, const float* dx, const TokenGroups& g, int D, cudaStream_t s) {
    launch(embedding_backward_kernel, dim3((unsigned)g.count), dim3(std::min(D, 256)), 0, s, dE, dx, (const int*)g.ids,
           (const int*)g.starts, (const int*)g.rows, D);
    cudaCheck(cudaGetLastError());
}

// ---- rmsnorm: out = x / sqrt(mean(x^2) + 1e-5) * g ----


// grid (ceil(N / kRowsPerBlock)), block (32, kRowsPerBlock): one warp per row
static __global__ void rmsnorm_forward_kernel(float* out, float* rstd, const float* x, const float* g, int N, int D) {
    const int i = blockIdx.x * kRowsPerBlock + threadIdx.y;
    if (i >= N) return;  // whole warps leave together
    const float* xi = x + (size_t)i * D;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < D; j += 32) ss += xi[j] * xi[j];
    const float r = rsqrtf(warp_sum(ss) / D + 1e-5f);
    for (int j = threadIdx.x; j < D; j += 32) out[(size_t)i * D + j] = xi[j] * r * g[j];
    if (threadIdx.x == 0) rstd[i] = r;
}
inline void rmsnorm_forward(float* out, float* rstd, const float* x, const float* g, int N, int D, cudaStream_t s) {
    launch(rmsnorm_forward_kernel, dim3((N + kRowsPerBlock - 1) / kRowsPerBlock), dim3(32, kRowsPerBlock), 0, s, out, rstd, x, g, N, D);
    cudaCheck(cudaGetLastError());
}

// dg is a sum over all N rows (N = B*T*K, tens of thousands): one thread per column would
// leave the GPU nearly idle. So: partial sums over kDgChunks fixed row ranges, then the
// partials in chunk order. Deterministic: the order depends on N alone.
static constexpr int kDgChunks = 128;

// grid (ceil(D / 128), kDgChunks), block 128: partial (kDgChunks, D) = the chunk's sum
static __global__ void rmsnorm_backward_dg_partial_kernel(float* partial, const float* dout, const float* x, const float* rstd, int N, int D) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x, rows = (N + kDgChunks - 1) / kDgChunks;
    if (j >= D) return;
    const int i1 = min(N, (int)(blockIdx.y + 1) * rows);
    float s = 0.0f;
    for (int i = blockIdx.y * rows; i < i1; i++) s += dout[(size_t)i * D + j] * x[(size_t)i * D + j] * rstd[i];
    partial[(size_t)blockIdx.y * D + j] = s;
}
// grid (ceil(D / 128)), block 128: dg[j] += the partials, in chunk order
static __global__ void rmsnorm_backward_dg_kernel(float* dg, const float* partial, int D) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= D) return;
    float s = 0.0f;
    for (int c = 0; c < kDgChunks; c++) s += partial[(size_t)c * D + j];
    dg[j] += s;
}
// grid (ceil(N / kRowsPerBlock)), block (32, kRowsPerBlock): dx may alias dout
static __global__ void rmsnorm_backward_dx_kernel(float* dx, const float* dout, const float* x, const float* g, const float* rstd, int N, int D) {
    const int i = blockIdx.x * kRowsPerBlock + threadIdx.y;
    if (i >= N) return;
    const float *xi = x + (size_t)i * D, *dyi = dout + (size_t)i * D, r = rstd[i];
    float dot = 0.0f;
    for (int j = threadIdx.x; j < D; j += 32) dot += dyi[j] * g[j] * xi[j] * r;
    dot = warp_sum(dot) / D;
    for (int j = threadIdx.x; j < D; j += 32) dx[(size_t)i * D + j] = r * (dyi[j] * g[j] - xi[j] * r * dot);
}
// scratch: device memory for kDgChunks * D floats
inline void rmsnorm_backward(float* dx, float* dg, const float* dout, const float* x, const float* g, const float* rstd, int N, int D,
                             float* scratch, cudaStream_t s) {
    const unsigned cols = (D + 127) / 128;  // dg first: dx may overwrite dout
    launch(rmsnorm_backward_dg_partial_kernel, dim3(cols, kDgChunks), dim3(128), 0, s, scratch, dout, x, rstd, N, D);
    launch(rmsnorm_backward_dg_kernel, dim3(cols), dim3(128), 0, s, dg, scratch, D);
    launch(rmsnorm_backward_dx_kernel, dim3((N + kRowsPerBlock - 1) / kRowsPerBlock), dim3(32, kRowsPerBlock), 0, s, dx, dout, x, g, rstd, N, D);
    cudaCheck(cudaGetLastError());
}

// ---- RoPE on the q and k heads of the fused qkv rows; every copy at its position n ----

// one thread per (row, head, pair i); row i is at position pos[i] (every copy at its n);
// sign +1 rotates (forward), -1 rotates back (backward)
static __global__ void rope_kernel(float* qkv, const int* pos, const float* cosT, const float* sinT, Config c, int N, float sign) {
    const int half = c.hd() / 2, heads = c.H + c.Hkv;
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)N * heads * half) return;
    const int i = idx % half, h = idx / half % heads, row = idx / ((long)half * heads), n = pos[row];
    float* z = qkv + (size_t)row * c.qkv_dim() + h * c.hd();
    const float cs = cosT[n * half + i], sn = sign * sinT[n * half + i], a = z[i], b = z[i + half];
    z[i] = a * cs - b * sn;
    z[i + half] = a * sn + b * cs;
}
// qkv (N, qkv_dim), pos (N): the same arguments as the CPU's rope_forward, on the device
inline void rope_forward(float* qkv, const int* pos, const Config& c, int N, const float* cosT, const float* sinT, cudaStream_t s) {
    const long total = (long)N * (c.H + c.Hkv) * (c.hd() / 2);
    launch(rope_kernel, dim3((unsigned)((total + 255) / 256)), dim3(256), 0, s, qkv, pos, cosT, sinT, c, N, 1.0f);
    cudaCheck(cudaGetLastError());
}
inline void rope_backward(float* dqkv, const int* pos, const Config& c, int N, const float* cosT, const float* sinT, cudaStream_t s) {
    const long total = (long)N * (c.H + c.Hkv) * (c.hd() / 2);
    launch(rope_kernel, dim3((unsigned)((total + 255) / 256)), dim3(256), 0, s, dqkv, pos, cosT, sinT, c, N, -1.0f);
    cudaCheck(cudaGetLastError());
}

// ---- SwiGLU: g (N, F) = silu(h1) * h3, from h13 (N, 2F) = h1 | h3 ----

static __global__ void swiglu_forward_kernel(float* g, const float* h13, int N, int F) {
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)N * F) return;
    const long i = idx / F, j = idx % F;
    const float a = h13[i * 2 * F + j], b = h13[i * 2 * F + F + j];
    g[idx] = a / (1.0f + __expf(-a)) * b;
}
inline void swiglu_forward(float* g, const float* h13, int N, int F, cudaStream_t s) {
    launch(swiglu_forward_kernel, dim3((unsigned)(((long)N * F + 255) / 256)), dim3(256), 0, s, g, h13, N, F);
    cudaCheck(cudaGetLastError());
}
static __global__ void swiglu_backward_kernel(float* dh13, const float* dg, const float* h13, int N, int F) {
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)N * F) return;
    const long i = idx / F, j = idx % F;
    const float a = h13[i * 2 * F + j], b = h13[i * 2 * F + F + j], sg = 1.0f / (1.0f + __expf(-a)), d = dg[idx];
    dh13[i * 2 * F + j] = d * b * sg * (1.0f + a * (1.0f - sg));
    dh13[i * 2 * F + F + j] = d * a * sg;
}
inline void swiglu_backward(float* dh13, const float* dg, const float* h13, int N, int F, cudaStream_t s) {
    launch(swiglu_backward_kernel, dim3((unsigned)(((long)N * F + 255) / 256)), dim3(256), 0, s, dh13, dg, h13, N, F);
    cudaCheck(cudaGetLastError());
}

// ---- residual stream: y += x; the last copies in and out of the B*T rows the head sees ----

static __global__ void add_inplace_kernel(float* y, const float* x, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += x[i];
}
inline void add_inplace(float* y, const float* x, size_t n, cudaStream_t s) {
    launch(add_inplace_kernel, dim3((unsigned)((n + 255) / 256)), dim3(256), 0, s, y, x, n);
    cudaCheck(cudaGetLastError());
}

// grid (B*T), block min(D, 256): xlast (B, T, D) = the rows (n, K-1) of x (B, TK, D)
static __global__ void last_copy_forward_kernel(float* xlast, const float* x, Config c, int T) {
    const int i = blockIdx.x, b = i / T, r = b * T * c.K + regrouped_row(c, T, i % T, c.K - 1);
    for (int j = threadIdx.x; j < c.D; j += blockDim.x) xlast[(size_t)i * c.D + j] = x[(size_t)r * c.D + j];
}
inline void last_copy_forward(float* xlast, const float* x, const Config& c, int B, int T, cudaStream_t s) {
    launch(last_copy_forward_kernel, dim3(B * T), dim3(std::min(c.D, 256)), 0, s, xlast, x, c, T);
    cudaCheck(cudaGetLastError());
}
// dx (B, TK, D) = 0 except the last-copy rows, which get dxlast (B, T, D)
static __global__ void last_copy_backward_kernel(float* dx, const float* dxlast, Config c, int T) {
    const int i = blockIdx.x, b = i / T, r = b * T * c.K + regrouped_row(c, T, i % T, c.K - 1);
    for (int j = threadIdx.x; j < c.D; j += blockDim.x) dx[(size_t)r * c.D + j] = dxlast[(size_t)i * c.D + j];
}
inline void last_copy_backward(float* dx, const float* dxlast, const Config& c, int B, int T, cudaStream_t s) {
    cudaCheck(cudaMemsetAsync(dx, 0, (size_t)B * T * c.K * c.D * sizeof(float), s));
    launch(last_copy_backward_kernel, dim3(B * T), dim3(std::min(c.D, 256)), 0, s, dx, dxlast, c, T);
    cudaCheck(cudaGetLastError());
}
