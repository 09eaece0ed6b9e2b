// test/cuda_emu_cublas.h: the cuBLASLt of test/cuda_emu.h (included at its end, after the
// device memory and to_tf32 it uses).
#pragma once

// ---- cuBLASLt: the subset the engine uses (kernels/gemm.cuh), each element one fp32 fmaf
// chain over k, with cuBLASLt's argument checks and some it leaves undefined. Types: fp32
// throughout, or bf16 A and B with an fp32 or bf16 C and D (what cublasLtMatmul takes with
// CUBLAS_COMPUTE_32F and fp32 scales); others are NOT_SUPPORTED ----
enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_EXECUTION_FAILED = 13,
                      CUBLAS_STATUS_NOT_SUPPORTED = 15 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cudaDataType { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
typedef cudaDataType cudaDataType_t;
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77 };
enum cublasLtMatmulDescAttributes_t { CUBLASLT_MATMUL_DESC_TRANSA = 3, CUBLASLT_MATMUL_DESC_TRANSB = 4 };
enum cublasLtMatmulAlgoCapAttributes_t { CUBLASLT_ALGO_CAP_OUT_OF_PLACE_RESULT_SUPPORT = 4 };
enum cublasLtMatmulPreferenceAttributes_t {
    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8
};
struct cublasLtContext {};
struct cublasLtMatmulDescOpaque_t { cublasComputeType_t comp; cudaDataType scale; cublasOperation_t op[2] = {CUBLAS_OP_N, CUBLAS_OP_N}; };
struct cublasLtMatrixLayoutOpaque_t { cudaDataType type; uint64_t rows, cols; int64_t ld; };
struct cublasLtMatmulPreferenceOpaque_t { uint64_t workspace = 0; uint32_t align[4] = {256, 256, 256, 256}; };
typedef cublasLtContext* cublasLtHandle_t;
typedef cublasLtMatmulDescOpaque_t* cublasLtMatmulDesc_t;
typedef cublasLtMatrixLayoutOpaque_t* cublasLtMatrixLayout_t;
typedef cublasLtMatmulPreferenceOpaque_t* cublasLtMatmulPreference_t;
// An emulated algorithm holds what it needs: data[0] its workspace, data[1..4] the alignments
// of A, B, C and D it was chosen for, data[5] whether it can write D apart from C.
typedef struct { uint64_t data[8]; } cublasLtMatmulAlgo_t;
typedef struct {
    cublasLtMatmulAlgo_t algo;
    size_t workspaceSize;
    cublasStatus_t state;
    float wavesCount;
    int reserved[4];
} cublasLtMatmulHeuristicResult_t;

inline cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) { *h = new cublasLtContext; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) { delete h; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t comp, cudaDataType scale) {
    *d = new cublasLtMatmulDescOpaque_t{comp, scale};
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) { delete d; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const void* v, size_t bytes) {
    if ((a != CUBLASLT_MATMUL_DESC_TRANSA && a != CUBLASLT_MATMUL_DESC_TRANSB) || bytes != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    const int32_t op = *(const int32_t*)v;
    if (op != CUBLAS_OP_N && op != CUBLAS_OP_T) return CUBLAS_STATUS_INVALID_VALUE;
    d->op[a == CUBLASLT_MATMUL_DESC_TRANSB] = (cublasOperation_t)op;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType t, uint64_t rows, uint64_t cols, int64_t ld) {
    *l = new cublasLtMatrixLayoutOpaque_t{t, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) { delete l; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) { *p = new cublasLtMatmulPreferenceOpaque_t; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) { delete p; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t a, const void* v,
                                                           size_t bytes) {
    if (a == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
        if (bytes != sizeof(uint64_t)) return CUBLAS_STATUS_INVALID_VALUE;
        p->workspace = *(const uint64_t*)v;
        return CUBLAS_STATUS_SUCCESS;
    }
    if (bytes != sizeof(uint32_t) || a < CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES || a > CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES)
        return CUBLAS_STATUS_INVALID_VALUE;
    p->align[a - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES] = *(const uint32_t*)v;
    return CUBLAS_STATUS_SUCCESS;
}

namespace cuda_emu {
// The product itself, summed in fp32 over k in order (the tensor cores' and cuBLAS's
// accumulator type; its rounding errors are what the tests' tolerances must allow), into C.
inline void gemm(bool tf32, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float al, const void* A, cudaDataType at, int lda,
                 const void* B, cudaDataType bt, int ldb, float be, void* C, cudaDataType ct, int ldc) {
    // element e of a matrix of type t, as the product takes it
    auto in = [tf32](const void* p, cudaDataType t, long long e) {
        if (t == CUDA_R_16BF) return __bfloat162float(((const __nv_bfloat16*)p)[e]);
        const float x = ((const float*)p)[e];
        return tf32 ? to_tf32(x) : x;
    };
    // A panel of kRows rows of op(A), packed p by p, so that those rows' sums advance together,
    // each still one fmaf chain over p in order: the compiler vectorises across the rows, and
    // the bits are the naive loop's.
    constexpr int kRows = 64;
    std::vector<float> panel((size_t)k * kRows), bj(k);
    float s[kRows];
    for (int i0 = 0; i0 < m; i0 += kRows) {
        const int rows = min(kRows, m - i0);
        for (int p = 0; p < k; p++)
            for (int r = 0; r < rows; r++) {
                const int i = i0 + r;
                panel[(size_t)p * kRows + r] = in(A, at, ta == CUBLAS_OP_N ? i + (long long)p * lda : p + (long long)i * lda);
            }
        for (int j = 0; j < n; j++) {
            for (int p = 0; p < k; p++) bj[p] = in(B, bt, tb == CUBLAS_OP_N ? p + (long long)j * ldb : j + (long long)p * ldb);
            for (int r = 0; r < kRows; r++) s[r] = 0;
            for (int p = 0; p < k; p++)
                for (int r = 0; r < kRows; r++) s[r] = fmaf(panel[(size_t)p * kRows + r], bj[p], s[r]);
            for (int r = 0; r < rows; r++) {
                const long long e = i0 + r + (long long)j * ldc;
                // beta = 0 ignores C, as cuBLAS does
                const float c = ct == CUDA_R_16BF ? __bfloat162float(((__nv_bfloat16*)C)[e]) : ((float*)C)[e];
                const float cij = be == 0.0f ? al * s[r] : fmaf(be, c, al * s[r]);
                if (ct == CUDA_R_16BF) ((__nv_bfloat16*)C)[e] = __float2bfloat16(cij);
                else ((float*)C)[e] = cij;
            }
        }
    }
}
inline size_t elem_bytes(cudaDataType t) { return t == CUDA_R_16BF ? 2 : 4; }
// The bytes a stored matrix spans.
inline size_t span(const cublasLtMatrixLayoutOpaque_t& l) { return l.cols == 0 ? 0 : ((l.cols - 1) * l.ld + l.rows) * elem_bytes(l.type); }
}  // namespace cuda_emu

// The heuristic checks what cuBLASLt checks (the types, as above; op(A) (m, k), op(B) (k, n),
// C and D (m, n) in one layout; leading dimensions that cover the rows) and answers, best
// first, an algorithm that cannot write D apart from C and then one that can (as a GPU's
// list may: cublasLtMatmul refuses the first out of place). Each asks for the whole
// workspace the preference allows and for the alignments the preference promised
// (cuBLASLt's default: 256 bytes): cublasLtMatmul refuses pointers aligned less than its
// algorithm was chosen for, where a GPU's algorithm may fail or read wrong.
inline cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                                     cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d, cublasLtMatmulPreference_t pref,
                                                     int requested, cublasLtMatmulHeuristicResult_t* results, int* count) {
    *count = 0;
    if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
    const bool bf16 = a->type == CUDA_R_16BF;
    if (a->type != b->type || (a->type != CUDA_R_32F && !bf16) || (d->type != CUDA_R_32F && !(bf16 && d->type == CUDA_R_16BF)) ||
        op->scale != CUDA_R_32F || (op->comp == CUBLAS_COMPUTE_32F_FAST_TF32 && bf16))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    const bool na = op->op[0] == CUBLAS_OP_N, nb = op->op[1] == CUBLAS_OP_N;
    const uint64_t m = d->rows, n = d->cols, k = na ? a->cols : a->rows;
    if ((na ? a->rows : a->cols) != m || (nb ? b->rows : b->cols) != k || (nb ? b->cols : b->rows) != n || c->type != d->type ||
        c->rows != d->rows || c->cols != d->cols || c->ld != d->ld)
        return CUBLAS_STATUS_INVALID_VALUE;
    for (cublasLtMatrixLayout_t l : {a, b, d})
        if (l->ld < (int64_t)max<uint64_t>(1, l->rows)) return CUBLAS_STATUS_INVALID_VALUE;
    for (int i = 0; i < min(requested, 2); i++) {
        cublasLtMatmulHeuristicResult_t& r = results[i];
        r = {};
        r.algo.data[0] = pref->workspace;
        for (int j = 0; j < 4; j++) r.algo.data[1 + j] = pref->align[j];
        r.algo.data[5] = i;  // the second writes D apart from C
        r.workspaceSize = pref->workspace;
        r.state = CUBLAS_STATUS_SUCCESS;
        r.wavesCount = 1.0f;
        *count = i + 1;
    }
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulAlgoCapGetAttribute(const cublasLtMatmulAlgo_t* algo, cublasLtMatmulAlgoCapAttributes_t a, void* buf,
                                                        size_t bytes, size_t* written) {
    if (a != CUBLASLT_ALGO_CAP_OUT_OF_PLACE_RESULT_SUPPORT || bytes != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    *(int32_t*)buf = (int32_t)algo->data[5];
    *written = sizeof(int32_t);
    return CUBLAS_STATUS_SUCCESS;
}

// D = alpha op(A) op(B) + beta C, column-major (D(i,j) at D[i + j*ld]). With TF32 allowed (the
// compute type) fp32 inputs are rounded to TF32 as tensor cores would take them: the worst
// case, as cuBLAS may also stay in fp32. bf16 inputs are exact in the products, which tensor
// cores sum in fp32; a bf16 D is the fp32 result rounded to nearest even, once, as cuBLAS's
// epilogue does. Refused as a GPU may fail, or worse: a matrix outside device memory, a
// workspace smaller than the algorithm's, an operand aligned less than the algorithm was
// chosen for, C and D apart for an algorithm that cannot, and C and D that overlap without
// being the same matrix.
inline cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t op, const void* alpha, const void* A, cublasLtMatrixLayout_t a,
                                     const void* B, cublasLtMatrixLayout_t b, const void* beta, const void* C, cublasLtMatrixLayout_t c,
                                     void* D, cublasLtMatrixLayout_t d, const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspace_bytes,
                                     cudaStream_t stream) {
    if (!algo || c->type != d->type || c->rows != d->rows || c->cols != d->cols || c->ld != d->ld) return CUBLAS_STATUS_INVALID_VALUE;
    if (workspace_bytes < algo->data[0]) {
        fprintf(stderr, "cuda_emu: cuBLASLt given %zu bytes of workspace, its algorithm takes %llu\n", workspace_bytes,
                (unsigned long long)algo->data[0]);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    const void* ptrs[4] = {A, B, C, D};
    for (int i = 0; i < 4; i++)
        if ((uintptr_t)ptrs[i] % algo->data[1 + i] != 0) {
            fprintf(stderr, "cuda_emu: cuBLASLt's matrix %c at %p, its algorithm chosen for %llu-byte alignment\n", "ABCD"[i], ptrs[i],
                    (unsigned long long)algo->data[1 + i]);
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    if (C != D && !algo->data[5]) {
        fprintf(stderr, "cuda_emu: cuBLASLt's C and D apart, for an algorithm that writes D in place\n");
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    const uint64_t m = d->rows, n = d->cols, k = op->op[0] == CUBLAS_OP_N ? a->cols : a->rows;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    const float alpha_v = *(const float*)alpha, beta_v = *(const float*)beta;
    const size_t d_bytes = cuda_emu::span(*d);
    if (C != D && beta_v != 0.0f && (const char*)C < (const char*)D + d_bytes && (const char*)D < (const char*)C + d_bytes) {
        fprintf(stderr, "cuda_emu: cuBLASLt's C and D overlap without being one matrix\n");
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    {
        cuda_emu::DeviceMap map;
        // Every byte the product touches must be device memory, where a GPU would fault.
        auto on_device = [&](const void* p, size_t bytes) { return bytes == 0 || map.d.holding(p, bytes) != nullptr; };
        if (!on_device(A, cuda_emu::span(*a)) || !on_device(B, cuda_emu::span(*b)) || (beta_v != 0.0f && !on_device(C, d_bytes)) ||
            !on_device(D, d_bytes) || (algo->data[0] > 0 && !on_device(workspace, algo->data[0]))) {
            fprintf(stderr, "cuda_emu: cuBLASLt given a matrix outside device memory\n");
            return CUBLAS_STATUS_EXECUTION_FAILED;
        }
        map.d.seal(workspace);  // a whole allocation given as workspace is cuBLASLt's from now on
    }
    // Queued on the stream (or recorded while it captures) with the scalars' values, as
    // cuBLASLt reads host scalars at the call (cuda_emu_stream.h, cuda_emu_graph.h).
    const bool tf32 = op->comp == CUBLAS_COMPUTE_32F_FAST_TF32;
    const cublasOperation_t ta = op->op[0], tb = op->op[1];
    const cudaDataType at = a->type, ct = d->type;
    const int lda = (int)a->ld, ldb = (int)b->ld, ldc = (int)d->ld;
    auto product = [=]() -> cudaError_t {
        cuda_emu::DeviceAccess access;
        if (beta_v != 0.0f && C != D)  // out of place: D starts as C's copy, column by column
            for (uint64_t j = 0; j < n; j++)
                memcpy((char*)D + j * ldc * cuda_emu::elem_bytes(ct), (const char*)C + j * ldc * cuda_emu::elem_bytes(ct), m * cuda_emu::elem_bytes(ct));
        cuda_emu::gemm(tf32, ta, tb, (int)m, (int)n, (int)k, alpha_v, A, at, lda, B, at, ldb, beta_v, D, ct, ldc);
        return cudaSuccess;
    };
    cudaError_t status;
    if (!cuda_emu::deferred(stream, product, status)) status = product();
    return status ? CUBLAS_STATUS_EXECUTION_FAILED : CUBLAS_STATUS_SUCCESS;
}
