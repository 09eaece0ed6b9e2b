// test/cuda_emu_cublas.h: the cuBLAS of test/cuda_emu.h (included at its end, after the
// device memory and to_tf32 it uses).
#pragma once

// ---- cuBLAS: the subset the engine uses, fp32 only, computed naively in double, with
// cuBLAS's argument checks ----
enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_EXECUTION_FAILED = 13,
                      CUBLAS_STATUS_NOT_SUPPORTED = 15 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cudaDataType { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
enum cublasMath_t { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 };
struct cublasContext { cublasMath_t math = CUBLAS_DEFAULT_MATH; };
typedef cublasContext* cublasHandle_t;

inline cublasStatus_t cublasCreate(cublasHandle_t* h) { *h = new cublasContext; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasDestroy(cublasHandle_t h) { delete h; return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) { h->math = m; return CUBLAS_STATUS_SUCCESS; }
inline const char* cublasGetStatusString(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? "success" : "cuBLAS error"; }

// Column-major: C(i,j) = alpha * sum_p op(A)(i,p) op(B)(p,j) + beta * C(i,j), C[i + j*ldc].
// With TF32 allowed (the handle's math mode or the compute type) the inputs are rounded to
// TF32 as tensor cores would take them: the worst case, as cuBLAS may also stay in fp32.
inline cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                                 const void* alpha, const void* A, cudaDataType at, int lda, long long sa,
                                                 const void* B, cudaDataType bt, int ldb, long long sb, const void* beta,
                                                 void* C, cudaDataType ct, int ldc, long long sc, int batch,
                                                 cublasComputeType_t comp, cublasGemmAlgo_t) {
    if (at != CUDA_R_32F || bt != CUDA_R_32F || ct != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    // cuBLAS's own checks: a stored matrix's leading dimension covers its rows.
    const int a_rows = ta == CUBLAS_OP_N ? m : k, b_rows = tb == CUBLAS_OP_N ? k : n;
    if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < max(1, a_rows) || ldb < max(1, b_rows) || ldc < max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    cuda_emu::DeviceAccess access;
    // Every element the product touches must be device memory, where a GPU would fault.
    auto on_device = [&](const void* p, int rows, int cols, int ld, long long stride) {
        if (rows == 0 || cols == 0) return true;  // not read
        const long long elems = (long long)ld * (cols - 1) + rows + stride * (batch - 1);
        return access.d.holding(p, (size_t)elems * sizeof(float)) != nullptr;
    };
    if (!on_device(A, a_rows, ta == CUBLAS_OP_N ? k : m, lda, sa) || !on_device(B, b_rows, tb == CUBLAS_OP_N ? n : k, ldb, sb) ||
        !on_device(C, m, n, ldc, sc)) {
        fprintf(stderr, "cuda_emu: cuBLAS given a matrix outside device memory\n");
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    const float al = *(const float*)alpha, be = *(const float*)beta;
    const bool tf32 = comp == CUBLAS_COMPUTE_32F_FAST_TF32 || h->math == CUBLAS_TF32_TENSOR_OP_MATH;
    auto in = [tf32](float x) { return (double)(tf32 ? to_tf32(x) : x); };
    for (int b = 0; b < batch; b++) {
        const float* a = (const float*)A + b * sa;
        const float* bb = (const float*)B + b * sb;
        float* c = (float*)C + b * sc;
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                double s = 0;
                for (int p = 0; p < k; p++)
                    s += in(ta == CUBLAS_OP_N ? a[i + (long)p * lda] : a[p + (long)i * lda]) *
                         in(tb == CUBLAS_OP_N ? bb[p + (long)j * ldb] : bb[j + (long)p * ldb]);
                float& cij = c[i + (long)j * ldc];
                cij = (float)(al * s + (be == 0.0f ? 0.0 : (double)be * cij));  // beta = 0 ignores C, as cuBLAS does
            }
    }
    return CUBLAS_STATUS_SUCCESS;
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
