// test/cuda_emu_cublas.h: the cuBLAS of test/cuda_emu.h (included at its end, after the
// device memory and to_tf32 it uses).
#pragma once

// ---- cuBLAS: the subset the engine uses, each element one fp32 fmaf chain over k, with cuBLAS's
// argument checks. Types: fp32 throughout, or bf16 A and B with an fp32 or bf16 C (the
// combinations cublasGemmEx takes with CUBLAS_COMPUTE_32F); others are NOT_SUPPORTED ----
enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_EXECUTION_FAILED = 13,
                      CUBLAS_STATUS_NOT_SUPPORTED = 15 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cudaDataType { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
enum cublasMath_t { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 };
struct cublasContext { cublasMath_t math = CUBLAS_DEFAULT_MATH; cudaStream_t stream = nullptr; };
typedef cublasContext* cublasHandle_t;

inline cublasStatus_t cublasCreate(cublasHandle_t* h) { *h = new cublasContext; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasDestroy(cublasHandle_t h) { delete h; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) { h->stream = s; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) { h->math = m; return CUBLAS_STATUS_SUCCESS; }
inline const char* cublasGetStatusString(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? "success" : "cuBLAS error"; }

namespace cuda_emu {
// The product itself, summed in fp32 over k in order (the tensor cores' and cuBLAS's
// accumulator type; its rounding errors are what the tests' tolerances must allow).
inline void gemm(cublasMath_t math, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float al, const void* A,
                 cudaDataType at, int lda, long long sa, const void* B, cudaDataType bt, int ldb, long long sb, float be, void* C,
                 cudaDataType ct, int ldc, long long sc, int batch, cublasComputeType_t comp) {
    const bool bf16 = at == CUDA_R_16BF;
    const bool tf32 = !bf16 && (comp == CUBLAS_COMPUTE_32F_FAST_TF32 || math == CUBLAS_TF32_TENSOR_OP_MATH);
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
    for (int b = 0; b < batch; b++)
        for (int i0 = 0; i0 < m; i0 += kRows) {
            const int rows = min(kRows, m - i0);
            for (int p = 0; p < k; p++)
                for (int r = 0; r < rows; r++) {
                    const int i = i0 + r;
                    panel[(size_t)p * kRows + r] = in(A, at, b * sa + (ta == CUBLAS_OP_N ? i + (long long)p * lda : p + (long long)i * lda));
                }
            for (int j = 0; j < n; j++) {
                for (int p = 0; p < k; p++) bj[p] = in(B, bt, b * sb + (tb == CUBLAS_OP_N ? p + (long long)j * ldb : j + (long long)p * ldb));
                for (int r = 0; r < kRows; r++) s[r] = 0;
                for (int p = 0; p < k; p++)
                    for (int r = 0; r < kRows; r++) s[r] = fmaf(panel[(size_t)p * kRows + r], bj[p], s[r]);
                for (int r = 0; r < rows; r++) {
                    const long long e = b * sc + i0 + r + (long long)j * ldc;
                    // beta = 0 ignores C, as cuBLAS does
                    const float c = ct == CUDA_R_16BF ? __bfloat162float(((__nv_bfloat16*)C)[e]) : ((float*)C)[e];
                    const float cij = be == 0.0f ? al * s[r] : fmaf(be, c, al * s[r]);
                    if (ct == CUDA_R_16BF) ((__nv_bfloat16*)C)[e] = __float2bfloat16(cij);
                    else ((float*)C)[e] = cij;
                }
            }
        }
}
}  // namespace cuda_emu

// Column-major: C(i,j) = alpha * sum_p op(A)(i,p) op(B)(p,j) + beta * C(i,j), C[i + j*ldc].
// With TF32 allowed (the handle's math mode or the compute type) fp32 inputs are rounded to
// TF32 as tensor cores would take them: the worst case, as cuBLAS may also stay in fp32.
// bf16 inputs are exact in the products, which tensor cores sum in fp32; a bf16 C is the
// fp32 result rounded to nearest even, once, as cuBLAS's epilogue does.
inline cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                                 const void* alpha, const void* A, cudaDataType at, int lda, long long sa,
                                                 const void* B, cudaDataType bt, int ldb, long long sb, const void* beta,
                                                 void* C, cudaDataType ct, int ldc, long long sc, int batch,
                                                 cublasComputeType_t comp, cublasGemmAlgo_t) {
    const bool bf16 = at == CUDA_R_16BF;
    if (at != bt || (at != CUDA_R_32F && !bf16) || (ct != CUDA_R_32F && !(bf16 && ct == CUDA_R_16BF)))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    // cuBLAS's own checks: a stored matrix's leading dimension covers its rows.
    const int a_rows = ta == CUBLAS_OP_N ? m : k, b_rows = tb == CUBLAS_OP_N ? k : n;
    if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < max(1, a_rows) || ldb < max(1, b_rows) || ldc < max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    {
        cuda_emu::DeviceMap map;
        // Every element the product touches must be device memory, where a GPU would fault.
        auto on_device = [&](const void* p, cudaDataType t, int rows, int cols, int ld, long long stride) {
            if (rows == 0 || cols == 0) return true;  // not read
            const long long elems = (long long)ld * (cols - 1) + rows + stride * (batch - 1);
            return map.d.holding(p, (size_t)elems * (t == CUDA_R_16BF ? 2 : 4)) != nullptr;
        };
        if (!on_device(A, at, a_rows, ta == CUBLAS_OP_N ? k : m, lda, sa) || !on_device(B, bt, b_rows, tb == CUBLAS_OP_N ? n : k, ldb, sb) ||
            !on_device(C, ct, m, n, ldc, sc)) {
            fprintf(stderr, "cuda_emu: cuBLAS given a matrix outside device memory\n");
            return CUBLAS_STATUS_EXECUTION_FAILED;
        }
    }
    // Queued on the handle's stream (or recorded while it captures) with the scalars' values, as
    // cuBLAS reads host scalars at the call (cuda_emu_stream.h, cuda_emu_graph.h).
    const float alpha_v = *(const float*)alpha, beta_v = *(const float*)beta;
    const cublasMath_t math = h->math;
    auto product = [=]() -> cudaError_t {
        cuda_emu::DeviceAccess access;
        cuda_emu::gemm(math, ta, tb, m, n, k, alpha_v, A, at, lda, sa, B, bt, ldb, sb, beta_v, C, ct, ldc, sc, batch, comp);
        return cudaSuccess;
    };
    cudaError_t status;
    if (!cuda_emu::deferred(h->stream, product, status)) status = product();
    return status ? CUBLAS_STATUS_EXECUTION_FAILED : CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                   const void* alpha, const void* A, cudaDataType at, int lda, const void* B, cudaDataType bt,
                                   int ldb, const void* beta, void* C, cudaDataType ct, int ldc, cublasComputeType_t comp,
                                   cublasGemmAlgo_t algo) {
    return cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc, 0, 1, comp, algo);
}
inline cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                  const float* alpha, const float* A, int lda, const float* B, int ldb, const float* beta,
                                  float* C, int ldc) {
    return cublasGemmEx(h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, beta, C, CUDA_R_32F, ldc,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}
