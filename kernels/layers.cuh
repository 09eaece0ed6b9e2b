// kernels/layers.cuh: the pointwise and per-row layers on the GPU, fp32, each forward next
// to its backward. Rows (B, T*K, .) in model.h's row order. Every launcher takes device
// pointers.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include "attention.cuh"

static constexpr int kRowsPerBlock = 4;  // one warp per row

// ---- embedding: every copy of position n gets E[tokens[b, n]] ----

// The row copies (embedding, last copies): a block copies a row of D floats, V a thread an
// access (4 where the rows are 16-byte groups, else 1), with blocks of min(D / V, 256).
template<int V> static __device__ void copy_row(float* dst, const float* src, int D) {
    for (int j = threadIdx.x * V; j < D; j += blockDim.x * V) {
        float r[V];
        load_group<V>(r, src + j, V);
        store_group<V>(dst + j, r, V);
    }
}
template<typename... KArgs, typename... Args>
static void launch_rows(void (*k4)(KArgs...), void (*k1)(KArgs...), bool vec, int rows, int D, cudaStream_t s, Args... args) {
    launch(vec ? k4 : k1, dim3(rows), dim3(std::max(1, std::min(vec ? D / 4 : D, 256))), 0, s, args...);
    cudaCheck(cudaGetLastError());
}

// grid (N): x (N, D), row i = E[tokens[index[i]]]. index (N) says which token each row
// carries: b*T + n in a training batch (GpuModel sets it once per shape), the position n in
// a decoder's block over the context's tokens. One kernel serves both.
template<int V> static __global__ void embedding_forward_kernel(float* x, const int* tokens, const int* index, const float* E, int D) {
    copy_row<V>(x + (size_t)blockIdx.x * D, E + (size_t)tokens[index[blockIdx.x]] * D, D);
}
inline void embedding_forward(float* x, const int* tokens, const int* index, const float* E, int N, int D, cudaStream_t s) {
    count_launch("embedding_forward", (double)N * (8.0 * D + 8), 0, s);  // E's rows read, x written; index, tokens
    launch_rows(embedding_forward_kernel<4>, embedding_forward_kernel<1>, vectorizable<float>(D, {x, E}), N, D, s, x, tokens, index, E, D);
}

// The backward sums, for each token, the rows of every copy of every position that carries
// it, in a fixed order and without atomics: the batch's positions are sorted by token on the
// device (keys token << 32 | b*T + n, by a bitonic sorting network), then one block per run
// of equal tokens sums its rows. Nothing goes through the host.
static constexpr int kSortBlock = 1024;  // keys sorted in shared memory by one block (2 per thread)

// Keys for n2 slots (a power of two >= kSortBlock): the positions' tokens and indices; the
// padding sorts last.
inline size_t token_sort_slots(int BT) {
    size_t n2 = kSortBlock;
    while (n2 < (size_t)BT) n2 *= 2;
    return n2;
}
static __global__ void token_keys_kernel(uint64_t* keys, const int* tokens, int BT) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    keys[i] = i < BT ? (uint64_t)tokens[i] << 32 | (uint32_t)i : ~(uint64_t)0;
}
// One compare-exchange of the network: keys i and i ^ j, ascending where (i & k) == 0.
static __device__ void bitonic_exchange(uint64_t* keys, int i, int j, int k, size_t global_i) {
    const int partner = i ^ j;
    if (partner <= i) return;
    const uint64_t a = keys[i], b = keys[partner];
    if ((a > b) == ((global_i & k) == 0)) { keys[i] = b; keys[partner] = a; }
}
// grid (n2 / 2 / 256), block 256: one step (k, j) with j >= kSortBlock over the whole array.
static __global__ void bitonic_step_kernel(uint64_t* keys, int k, int j) {
    const size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t i = t / j * 2 * j + t % j;  // the lower index of pair t
    bitonic_exchange(keys, (int)i, j, k, i);
}
// grid (n2 / kSortBlock), block kSortBlock / 2: the steps with j < kSortBlock inside each
// block's kSortBlock keys, in shared memory: every step up to k = kSortBlock when k == 0
// (sorting each block's keys into alternating runs), else the tail j = kSortBlock/2 .. 1 of
// stage k.
static __global__ void __launch_bounds__(kSortBlock / 2) bitonic_block_kernel(uint64_t* keys, int k) {
    PHD_SHARED(uint64_t, s, [kSortBlock]);
    const size_t base = (size_t)blockIdx.x * kSortBlock;
    for (int i = threadIdx.x; i < kSortBlock; i += blockDim.x) s[i] = keys[base + i];
    __syncthreads();
    for (int kk = k ? k : 2; kk <= (k ? k : kSortBlock); kk *= 2)
        for (int j = min(kk, kSortBlock) / 2; j > 0; j /= 2) {
            const int i = threadIdx.x / j * 2 * j + threadIdx.x % j;
            bitonic_exchange(s, i, j, kk, base + i);
            __syncthreads();
        }
    for (int i = threadIdx.x; i < kSortBlock; i += blockDim.x) keys[base + i] = s[i];
}
// Sorts keys (n2) ascending, n2 a power of two >= kSortBlock.
inline void token_sort(uint64_t* keys, size_t n2, cudaStream_t s) {
    count_launch("token_sort block", 16.0 * n2, 0, s);  // each launch reads and writes every key
    launch(bitonic_block_kernel, dim3((unsigned)(n2 / kSortBlock)), dim3(kSortBlock / 2), 0, s, keys, 0);
    for (size_t k = 2 * kSortBlock; k <= n2; k *= 2) {
        for (size_t j = k / 2; j >= (size_t)kSortBlock; j /= 2) {
            count_launch("token_sort step", 16.0 * n2, 0, s);
            launch(bitonic_step_kernel, dim3((unsigned)(n2 / 2 / 256)), dim3(256), 0, s, keys, (int)k, (int)j);
        }
        count_launch("token_sort block", 16.0 * n2, 0, s);
        launch(bitonic_block_kernel, dim3((unsigned)(n2 / kSortBlock)), dim3(kSortBlock / 2), 0, s, keys, (int)k);
    }
    cudaCheck(cudaGetLastError());
}
// grid (B*T), V columns a thread an access (launch_rows): the block at the start of a run of
// equal tokens in the sorted keys adds the run's rows (every copy of each position, in key
// order) into dE.
template<int V> static __global__ void embedding_backward_kernel(float* dE, const float* dx, const uint64_t* keys, Config c, int BT, int T) {
    const int i = blockIdx.x;
    const uint32_t token = keys[i] >> 32;
    if (i > 0 && keys[i - 1] >> 32 == token) return;
    int end = i + 1;
    while (end < BT && keys[end] >> 32 == token) end++;
    for (int j = threadIdx.x * V; j < c.D; j += blockDim.x * V) {
        float sum[V] = {}, r[V];
        for (int e = i; e < end; e++) {
            const int p = (uint32_t)keys[e], b = p / T, n = p % T;
            for (int copy = 0; copy < c.K; copy++) {
                load_group<V>(r, dx + ((size_t)b * T * c.K + token_row(c, T, n, copy)) * c.D + j, V);
                PHD_UNROLL
                for (int k = 0; k < V; k++) sum[k] += r[k];
            }
        }
        float* de = dE + (size_t)token * c.D + j;
        load_group<V>(r, de, V);
        PHD_UNROLL
        for (int k = 0; k < V; k++) r[k] += sum[k];
        store_group<V>(de, r, V);
    }
}
// dE (Vp, D) += the rows of dx (B, TK, D) by the token (B, T) they carry; keys: device
// scratch of token_sort_slots(B*T).
// dE (Vp, D) is added into, or with add false zeroed first (a step's first backward).
inline void embedding_backward(float* dE, const float* dx, const int* tokens, uint64_t* keys, const Config& c, int B, int T,
                               cudaStream_t s, bool add = true) {
    if (!add) {
        count_launch("embedding_backward zero", 4.0 * c.Vp * c.D, 0, s);
        cudaCheck(cudaMemsetAsync(dE, 0, (size_t)c.Vp * c.D * sizeof(float), s));
    }
    const size_t n2 = token_sort_slots(B * T);
    count_launch("token_keys", 8.0 * n2 + 4.0 * B * T, 0, s);
    launch(token_keys_kernel, dim3((unsigned)(n2 / 256)), dim3(256), 0, s, keys, tokens, B * T);
    token_sort(keys, n2, s);
    // dx's rows, the keys; dE's rows read and written once per distinct token (at most min(B*T, V))
    count_launch("embedding_backward", 4.0 * B * T * c.K * c.D + 8.0 * B * T + 8.0 * std::min(B * T, c.V) * c.D, 0, s);
    launch_rows(embedding_backward_kernel<4>, embedding_backward_kernel<1>, vectorizable<float>(c.D, {dE, dx}), B * T, c.D, s, dE, dx,
                (const uint64_t*)keys, c, B * T, T);
}

// ---- bf16 copies: the bf16 attention's inputs and outputs (round to nearest even) ----

// grid (ceil(n / (256 V))), block 256: y (n) = x (n) converted, V elements a thread (4: a
// 16-byte float and an 8-byte bf16 access, where both tensors start 16-byte aligned).
template<int V, typename To, typename From> static __global__ void convert_kernel(To* y, const From* x, size_t n) {
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i >= n) return;
    const int w = n - i < V ? (int)(n - i) : V;
    float r[V];
    load_group<V>(r, x + i, w);
    store_group<V>(y + i, r, w);
}
template<typename To, typename From> inline void convert(const char* what, To* y, const From* x, size_t n, cudaStream_t s) {
    count_launch(what, 6.0 * n, 0, s);
    const bool vec = aligned16({y, x});
    launch(vec ? convert_kernel<4, To, From> : convert_kernel<1, To, From>, flat_grid(n, vec ? 4 : 1), dim3(256), 0, s, y, x, n);
    cudaCheck(cudaGetLastError());
}
inline void copy_to_bf16(__nv_bfloat16* y, const float* x, size_t n, cudaStream_t s) { convert("copy_to_bf16", y, x, n, s); }
inline void copy_from_bf16(float* y, const __nv_bfloat16* x, size_t n, cudaStream_t s) { convert("copy_from_bf16", y, x, n, s); }

// ---- rmsnorm: out = x / sqrt(mean(x^2) + 1e-5) * g ----

// Where a norm pass reads and writes (model.h §9, §10): rows of out and x lie ldo and ldx
// elements apart, so that the q and k parts of the fused qkv rows are normed where they are
// (qk-norm). The rest, when given: residual is added to out (the reordered norm's x +
// norm(sublayer)); out16 receives out again in bf16 (there: the next matmul's input). Both
// are D wide.
template<typename Out> struct NormIO {
    Out* out;
    long ldo;
    const float* x;
    long ldx;
    float* rstd;
    const float* residual = nullptr;
    __nv_bfloat16* out16 = nullptr;
    // Every pointer it holds: the CUDA emulation checks them at launch, as a kernel's own.
    std::array<const void*, 5> device_pointers() const { return {out, x, rstd, residual, out16}; }
};

// grid (ceil(N / kRowsPerBlock)), block (32, kRowsPerBlock): one warp per row, V consecutive
// floats a lane an access (4: 16-byte loads of x, g and the residual; 1 where the rows or the
// pointers do not allow it); out fp32, or bf16 where it only feeds a bf16 matmul.
template<typename Out, int V> static __global__ void rmsnorm_forward_kernel(NormIO<Out> io, const float* g, int N, int D) {
    using F = Vec<float, V>;
    const int i = blockIdx.x * kRowsPerBlock + threadIdx.y;
    if (i >= N) return;  // whole warps leave together
    const float* xi = io.x + i * io.ldx;
    float ss = 0.0f;
    for (int j = threadIdx.x * V; j < D; j += 32 * V) {
        const F a = *reinterpret_cast<const F*>(xi + j);
        PHD_UNROLL
        for (int e = 0; e < V; e++) ss += a.v[e] * a.v[e];
    }
    const float r = rsqrtf(warp_sum(ss) / D + 1e-5f);
    for (int j = threadIdx.x * V; j < D; j += 32 * V) {
        const size_t at = (size_t)i * D + j;
        const F a = *reinterpret_cast<const F*>(xi + j), w = *reinterpret_cast<const F*>(g + j);
        F res = {};
        if (io.residual) res = *reinterpret_cast<const F*>(io.residual + at);
        Vec<Out, V> o;
        Vec<__nv_bfloat16, V> o16;
        PHD_UNROLL
        for (int e = 0; e < V; e++) {
            const float v = a.v[e] * r * w.v[e] + res.v[e];
            store(&o.v[e], v);
            store(&o16.v[e], v);
        }
        *reinterpret_cast<Vec<Out, V>*>(io.out + i * io.ldo + j) = o;
        if (io.out16) *reinterpret_cast<Vec<__nv_bfloat16, V>*>(io.out16 + at) = o16;
    }
    if (threadIdx.x == 0) io.rstd[i] = r;
}
template<typename Out> inline void rmsnorm_rows(const NormIO<Out>& io, const float* g, int N, int D, cudaStream_t s) {
    count_launch("rmsnorm_forward",
                 (double)N * D * (4 + sizeof(Out) + (io.residual ? 4 : 0) + (io.out16 ? 2 : 0)) + 4.0 * N + 4.0 * D, 0, s);
    const dim3 grid((N + kRowsPerBlock - 1) / kRowsPerBlock), block(32, kRowsPerBlock);
    // 4 floats an access where every row starts on 16 bytes: D, ldo and ldx multiples of 4
    const bool vec = vectorizable<float>(D, {io.out, io.x, io.residual, io.out16, g}) && io.ldo % 4 == 0 && io.ldx % 4 == 0;
    launch(vec ? rmsnorm_forward_kernel<Out, 4> : rmsnorm_forward_kernel<Out, 1>, grid, block, 0, s, io, g, N, D);
    cudaCheck(cudaGetLastError());
}
// Contiguous rows (N, D), as the CPU's rmsnorm_forward.
template<typename Out> inline void rmsnorm_forward(Out* out, float* rstd, const float* x, const float* g, int N, int D, cudaStream_t s) {
    rmsnorm_rows(NormIO<Out>{out, D, x, D, rstd}, g, N, D, s);
}

// The backward in one pass over the rows: dx a warp per row, as the forward, and dg, a sum
// over all N rows (N = B*T*K, tens of thousands), from the same reads of dout and x: each
// block sums its chunk of rows by column, each warp its own rows into a row of shared memory,
// then the warps in order into the chunk's partial sums; a second kernel adds the chunks in
// order. Deterministic: the order depends on N alone.
static constexpr int kDgChunks = 1024;  // at most: at least one row per warp
static inline int dg_chunks(int N) { return std::min(kDgChunks, (N + kRowsPerBlock - 1) / kRowsPerBlock); }

// grid (dg_chunks(N)), block (32, kRowsPerBlock), dynamic shared memory kRowsPerBlock * D
// floats. Chunk b of the rows: dx = the rows' gradient (dx may alias dout), or with accumulate
// dx += it (dx is then the residual stream's gradient, not dout); copy, when it is not dx
// itself, receives dx too (its bf16 copy for the matmuls); partial (chunks, D) row b = the
// chunk's dout * x * rstd summed by column. dx, dout and copy rows lie ldd apart, x's ldx
// (qk-norm's parts of the qkv rows, whose gradient G is bf16 in bf16 runs). dx null: only
// copy receives the gradient (the reordered norm's bf16 runs, whose matmul reads just that).
// V consecutive elements a lane an access, as the forward's.
template<typename G, typename Copy, int V>
static __global__ void rmsnorm_backward_kernel(G* dx, Copy* copy, float* partial, const G* dout, const float* x, const float* g,
                                               const float* rstd, int N, int D, bool accumulate, long ldd, long ldx) {
    using F = Vec<float, V>;
    using VG = Vec<G, V>;
    float* sums = dynamic_shared<float>();  // (kRowsPerBlock, D): each warp's column sums
    float* mine = sums + (size_t)threadIdx.y * D;
    // each lane zeroes the columns it sums below: no other lane touches them, no barrier needed
    for (int j = threadIdx.x * V; j < D; j += 32 * V)
        for (int e = 0; e < V; e++) mine[j + e] = 0.0f;
    const int rows = (N + gridDim.x - 1) / gridDim.x, i1 = min(N, (int)(blockIdx.x + 1) * rows);
    for (int i = blockIdx.x * rows + threadIdx.y; i < i1; i += kRowsPerBlock) {  // whole warps: the same rows
        const float *xi = x + i * ldx, r = rstd[i];
        const G* dyi = dout + i * ldd;
        float dot = 0.0f;
        for (int j = threadIdx.x * V; j < D; j += 32 * V) {
            const VG dy = *reinterpret_cast<const VG*>(dyi + j);
            const F xv = *reinterpret_cast<const F*>(xi + j), w = *reinterpret_cast<const F*>(g + j);
            PHD_UNROLL
            for (int e = 0; e < V; e++) dot += to_f32(dy.v[e]) * w.v[e] * xv.v[e] * r;
        }
        dot = warp_sum(dot) / D;
        for (int j = threadIdx.x * V; j < D; j += 32 * V) {
            const size_t at = i * ldd + j;
            // all read before dx, which may alias dout, is written
            const VG dy = *reinterpret_cast<const VG*>(dyi + j);
            const F xv = *reinterpret_cast<const F*>(xi + j), w = *reinterpret_cast<const F*>(g + j);
            VG before = {};
            if (accumulate) before = *reinterpret_cast<const VG*>(dx + at);
            VG out;
            Vec<Copy, V> out_copy;
            PHD_UNROLL
            for (int e = 0; e < V; e++) {
                const float d = to_f32(dy.v[e]);
                mine[j + e] += d * xv.v[e] * r;
                const float v = r * (d * w.v[e] - xv.v[e] * r * dot) + to_f32(before.v[e]);
                store(&out.v[e], v);
                store(&out_copy.v[e], v);
            }
            if (dx) *reinterpret_cast<VG*>(dx + at) = out;
            if ((void*)copy != (void*)dx) *reinterpret_cast<Vec<Copy, V>*>(copy + at) = out_copy;
        }
    }
    __syncthreads();
    for (int j = threadIdx.y * 32 + threadIdx.x; j < D; j += 32 * kRowsPerBlock) {
        float s = 0.0f;
        for (int w = 0; w < kRowsPerBlock; w++) s += sums[(size_t)w * D + j];
        partial[(size_t)blockIdx.x * D + j] = s;
    }
}
// grid (ceil(D / 128)), block 128: dg[j] += the chunks' partial sums, in chunk order
static __global__ void rmsnorm_backward_dg_kernel(float* dg, const float* partial, int chunks, int D, bool add) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= D) return;
    float s = 0.0f;
    for (int c = 0; c < chunks; c++) s += partial[(size_t)c * D + j];
    dg[j] = add ? dg[j] + s : s;
}
// scratch: device memory for kDgChunks * D floats. dx (N, D) receives the input's gradient
// (it may alias dout); with accumulate it is added into dx instead, in the same pass, as the
// residual stream's gradient takes it, and copy (when given) receives the sum as well. dg
// (D) is added into, or with dg_add false overwritten (a step's first backward). ldd and ldx
// as the kernel's (0: D); dx null likewise.
template<typename G, typename Copy = G>
inline void rmsnorm_backward(G* dx, float* dg, const G* dout, const float* x, const float* g, const float* rstd, int N, int D,
                             float* scratch, cudaStream_t s, bool accumulate = false, Copy* copy = nullptr, bool dg_add = true,
                             long ldd = 0, long ldx = 0) {
    const int chunks = dg_chunks(N);
    const bool copies = copy && (void*)copy != (void*)dx;
    count_launch("rmsnorm_backward",
                 (double)N * D * (4 + sizeof(G) + (dx ? sizeof(G) : 0) + (accumulate ? sizeof(G) : 0) + (copies ? sizeof(Copy) : 0)) +
                     4.0 * N + 4.0 * D +
                     4.0 * chunks * D,
                 0, s);
    ldd = ldd ? ldd : D;
    ldx = ldx ? ldx : D;
    const dim3 grid(chunks), block(32, kRowsPerBlock);
    const size_t smem = (size_t)kRowsPerBlock * D * sizeof(float);
    Copy* to = copies ? copy : (Copy*)dx;
    // 4 elements an access where every row starts on 16 bytes (as the forward's)
    const bool vec = vectorizable<float>(D, {dx, to, dout, x, g}) && ldd % 4 == 0 && ldx % 4 == 0;
    launch_with_shared(vec ? rmsnorm_backward_kernel<G, Copy, 4> : rmsnorm_backward_kernel<G, Copy, 1>, grid, block, smem, s, dx, to, scratch,
                       dout, x, g, rstd, N, D, accumulate, ldd, ldx);
    count_launch("rmsnorm_backward dg", 4.0 * chunks * D + (dg_add ? 8.0 : 4.0) * D, 0, s);
    launch(rmsnorm_backward_dg_kernel, dim3((D + 127) / 128), dim3(128), 0, s, dg, (const float*)scratch, chunks, D, dg_add);
    cudaCheck(cudaGetLastError());
}

// §10's qk-norm on the GPU: q and k of the fused rows qkv (N, qkv_dim), fp32 or bf16, normed
// from qk (N, qk_dim), their values before the norms, which the qkv matmul wrote; rstd_qk (2, N).
template<typename T> inline void qk_norm_forward(T* qkv, float* rstd_qk, const float* qk, const float* g_qk, const Config& c, int N,
                                                 cudaStream_t s) {
    const int hq = c.H * c.hd();
    for (int part = 0; part < 2; part++) {
        const int off = part ? hq : 0;
        NormIO<T> io{qkv + off, c.qkv_dim(), qk + off, c.qk_dim(), rstd_qk + (size_t)part * N};
        rmsnorm_rows(io, g_qk + off, N, part ? c.qk_dim() - hq : hq, s);
    }
}
// Its backward, in place on the q and k parts of dqkv; dg_qk (qk_dim) added into (or written:
// dg_add false).
template<typename T> inline void qk_norm_backward(T* dqkv, float* dg_qk, const float* qk, const float* rstd_qk, const float* g_qk,
                                                  const Config& c, int N, float* scratch, cudaStream_t s, bool dg_add) {
    const int hq = c.H * c.hd();
    for (int part = 0; part < 2; part++) {
        const int off = part ? hq : 0;
        rmsnorm_backward(dqkv + off, dg_qk + off, (const T*)dqkv + off, qk + off, g_qk + off, rstd_qk + (size_t)part * N, N,
                         part ? c.qk_dim() - hq : hq, scratch, s, false, (T*)nullptr, dg_add, c.qkv_dim(), c.qk_dim());
    }
}

// ---- RoPE on the q and k heads of the fused qkv rows; every copy at its position n ----

// grid (N, ceil((H + Hkv) * hd/2 / V / 256)), block 256: row blockIdx.x, V pairs (i, i + hd/2)
// of one q or k head a thread (16 bytes of each half where the head allows it; 2-D indices,
// 32-bit), in place. The row is at position pos[row] (every copy at its n); sign +1 rotates
// (forward), -1 rotates back (backward). qkv is fp32, or bf16 in bf16 runs (written so by
// the qkv matmul, whose rounding q and k then meet again at RoPE's store).
template<typename T, int V>
static __global__ void rope_kernel(T* qkv, const int* pos, const float* cosT, const float* sinT, Config c, float sign) {
    using VT = Vec<T, V>;
    using F = Vec<float, V>;
    const int half = c.hd() / 2, per_head = half / V, t = blockIdx.y * blockDim.x + threadIdx.x;
    if (t >= (c.H + c.Hkv) * per_head) return;
    const int row = blockIdx.x, h = t / per_head, i = t % per_head * V, n = pos[row];
    T* head = qkv + (size_t)row * c.qkv_dim() + h * c.hd();
    const VT a = *reinterpret_cast<const VT*>(head + i), b = *reinterpret_cast<const VT*>(head + i + half);
    const F cs = *reinterpret_cast<const F*>(cosT + n * half + i), sn = *reinterpret_cast<const F*>(sinT + n * half + i);
    VT ra, rb;
    PHD_UNROLL
    for (int e = 0; e < V; e++) {
        const float x = to_f32(a.v[e]), y = to_f32(b.v[e]), sg = sign * sn.v[e];
        store(&ra.v[e], x * cs.v[e] - y * sg);
        store(&rb.v[e], x * sg + y * cs.v[e]);
    }
    *reinterpret_cast<VT*>(head + i) = ra;
    *reinterpret_cast<VT*>(head + i + half) = rb;
}
template<typename T>
inline void rope(T* qkv, const int* pos, const Config& c, int N, const float* cosT, const float* sinT, float sign, cudaStream_t s) {
    const int half = c.hd() / 2, heads = c.H + c.Hkv;
    count_launch(sign > 0 ? "rope_forward" : "rope_backward", 4.0 * N * heads * half * sizeof(T) + 4.0 * N, 0, s);  // the pairs read and written
    constexpr int W = 16 / sizeof(T);
    // (the tables' V floats: 4V bytes, 32 for bf16)
    const bool vec = half % W == 0 && vectorizable<T>(c.qkv_dim(), {qkv}) && (uintptr_t)cosT % (4 * W) == 0 && (uintptr_t)sinT % (4 * W) == 0;
    const int per_thread = vec ? W : 1;
    launch(vec ? rope_kernel<T, W> : rope_kernel<T, 1>, dim3(N, (heads * half / per_thread + 255) / 256), dim3(256), 0, s, qkv, pos, cosT, sinT,
           c, sign);
    cudaCheck(cudaGetLastError());
}
// qkv (N, qkv_dim), fp32 or bf16, in place; pos (N): the same arguments as the CPU's
// rope_forward, on the device
template<typename T>
inline void rope_forward(T* qkv, const int* pos, const Config& c, int N, const float* cosT, const float* sinT, cudaStream_t s) {
    rope(qkv, pos, c, N, cosT, sinT, 1.0f, s);
}
// dqkv (N, qkv_dim), fp32 or bf16, in place
template<typename T>
inline void rope_backward(T* dqkv, const int* pos, const Config& c, int N, const float* cosT, const float* sinT, cudaStream_t s) {
    rope(dqkv, pos, c, N, cosT, sinT, -1.0f, s);
}

// ---- SwiGLU: g (N, F) = silu(h1) * h3, from h13 (N, 2F) = h1 | h3 ----

// grid (N, ceil(F / (256 V))), block 256: row blockIdx.x, V columns a thread from j (no
// division: 2-D indices). g and h13 fp32, or bf16 in bf16 runs (the w13 matmul's output and
// the w2 matmul's input).
template<typename T, int V> static __global__ void swiglu_forward_kernel(T* g, const T* h13, int F) {
    const int j = (blockIdx.y * blockDim.x + threadIdx.x) * V;
    if (j >= F) return;
    const T* h = h13 + (size_t)blockIdx.x * 2 * F;
    const Vec<T, V> a = *reinterpret_cast<const Vec<T, V>*>(h + j), b = *reinterpret_cast<const Vec<T, V>*>(h + F + j);
    Vec<T, V> out;
    PHD_UNROLL
    for (int e = 0; e < V; e++) {
        const float x = to_f32(a.v[e]);
        store(&out.v[e], x / (1.0f + __expf(-x)) * to_f32(b.v[e]));
    }
    *reinterpret_cast<Vec<T, V>*>(g + (size_t)blockIdx.x * F + j) = out;
}
template<typename T> inline void swiglu_forward(T* g, const T* h13, int N, int F, cudaStream_t s) {
    count_launch("swiglu_forward", 3.0 * N * F * sizeof(T), 0, s);
    constexpr int W = 16 / sizeof(T);
    const int per_thread = vectorizable<T>(F, {g, h13}) ? W : 1;
    launch(per_thread == W ? swiglu_forward_kernel<T, W> : swiglu_forward_kernel<T, 1>, dim3(N, (F + 256 * per_thread - 1) / (256 * per_thread)),
           dim3(256), 0, s, g, h13, F);
    cudaCheck(cudaGetLastError());
}
// The same grid: dh13 (N, 2F) from dg (N, F) and h13; fp32, or bf16 in bf16 runs.
template<typename T, int V> static __global__ void swiglu_backward_kernel(T* dh13, const T* dg, const T* h13, int F) {
    const int j = (blockIdx.y * blockDim.x + threadIdx.x) * V;
    if (j >= F) return;
    const size_t row = (size_t)blockIdx.x * 2 * F;
    const Vec<T, V> a = *reinterpret_cast<const Vec<T, V>*>(h13 + row + j), b = *reinterpret_cast<const Vec<T, V>*>(h13 + row + F + j);
    const Vec<T, V> d = *reinterpret_cast<const Vec<T, V>*>(dg + (size_t)blockIdx.x * F + j);
    Vec<T, V> d1, d3;
    PHD_UNROLL
    for (int e = 0; e < V; e++) {
        const float x = to_f32(a.v[e]), y = to_f32(b.v[e]), sg = 1.0f / (1.0f + __expf(-x)), dd = to_f32(d.v[e]);
        store(&d1.v[e], dd * y * sg * (1.0f + x * (1.0f - sg)));
        store(&d3.v[e], dd * x * sg);
    }
    *reinterpret_cast<Vec<T, V>*>(dh13 + row + j) = d1;
    *reinterpret_cast<Vec<T, V>*>(dh13 + row + F + j) = d3;
}
template<typename T> inline void swiglu_backward(T* dh13, const T* dg, const T* h13, int N, int F, cudaStream_t s) {
    count_launch("swiglu_backward", 5.0 * N * F * sizeof(T), 0, s);
    constexpr int W = 16 / sizeof(T);
    const int per_thread = vectorizable<T>(F, {dh13, dg, h13}) ? W : 1;
    launch(per_thread == W ? swiglu_backward_kernel<T, W> : swiglu_backward_kernel<T, 1>, dim3(N, (F + 256 * per_thread - 1) / (256 * per_thread)),
           dim3(256), 0, s, dh13, dg, h13, F);
    cudaCheck(cudaGetLastError());
}

// ---- the last copies in and out of the B*T rows the head sees ----

// grid (B*T): xlast (B, T, D) = the rows (n, K-1) of x (B, TK, D)
template<int V> static __global__ void last_copy_forward_kernel(float* xlast, const float* x, Config c, int T) {
    const int i = blockIdx.x, b = i / T, r = b * T * c.K + token_row(c, T, i % T, c.K - 1);
    copy_row<V>(xlast + (size_t)i * c.D, x + (size_t)r * c.D, c.D);
}
inline void last_copy_forward(float* xlast, const float* x, const Config& c, int B, int T, cudaStream_t s) {
    count_launch("last_copy_forward", 8.0 * B * T * c.D, 0, s);
    launch_rows(last_copy_forward_kernel<4>, last_copy_forward_kernel<1>, vectorizable<float>(c.D, {xlast, x}), B * T, c.D, s, xlast, x, c,
                T);
}
// dx (B, TK, D) = 0 except the last-copy rows, which get dxlast (B, T, D)
template<int V> static __global__ void last_copy_backward_kernel(float* dx, const float* dxlast, Config c, int T) {
    const int i = blockIdx.x, b = i / T, r = b * T * c.K + token_row(c, T, i % T, c.K - 1);
    copy_row<V>(dx + (size_t)r * c.D, dxlast + (size_t)i * c.D, c.D);
}
inline void last_copy_backward(float* dx, const float* dxlast, const Config& c, int B, int T, cudaStream_t s) {
    count_launch("last_copy_backward zero", 4.0 * B * T * c.K * c.D, 0, s);
    cudaCheck(cudaMemsetAsync(dx, 0, (size_t)B * T * c.K * c.D * sizeof(float), s));
    count_launch("last_copy_backward", 8.0 * B * T * c.D, 0, s);
    launch_rows(last_copy_backward_kernel<4>, last_copy_backward_kernel<1>, vectorizable<float>(c.D, {dx, dxlast}), B * T, c.D, s, dx,
                dxlast, c, T);
}
