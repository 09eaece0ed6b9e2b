// kernels/gemm.cuh: every matrix product of the engine, through cuBLASLt. Column-major
//   D (m, n) = alpha op(A) op(B) + beta C
// with fp32 accumulation: A and B fp32 (TF32 when allowed) or bf16, C and D fp32 or bf16 in
// one layout. C may be another tensor than D, which cuBLAS's GemmEx cannot do: a residual
// add writes the next buffer of the residual stream from the last (x_next = x + y W^T)
// without first copying x where the product adds (N*D*4 bytes written a residual add).
//
// Each call's plan (the operation's and the matrices' descriptors, and the algorithm
// cuBLASLt's heuristic picks for them) is made at the first call of its shape, types,
// pointer alignments and placement (C = D or not) and kept: later calls only look it up. A
// plan made while a CUDA graph captures (the decoder captures its first step) makes only
// host calls. The alignments are part of it because an algorithm chosen for 256-byte-aligned
// matrices (cuBLASLt's default assumption) may not run on an operand 16 bytes past it, such
// as the v part of a qkv row; the plan tells the heuristic each operand's actual alignment.
// Out of place, the plan takes the heuristic's best algorithm that supports it (not all do).
#pragma once
#include <array>
#include <map>
#include "cuda_compat.h"

class Gemm {
public:
    static constexpr size_t kWorkspace = 32u << 20;  // bytes: cuBLAS's own choice on Hopper
    static constexpr int kCandidates = 8;             // algorithms a plan asks the heuristic for

    explicit Gemm(bool tf32) : tf32_(tf32) {
        cublasCheck(cublasLtCreate(&lt_));
        workspace();  // the first makes it here, outside any graph capture
    }
    ~Gemm() {
        for (auto& kv : plans_) {
            cublasLtMatmulDescDestroy(kv.second.op);
            for (cublasLtMatrixLayout_t l : {kv.second.a, kv.second.b, kv.second.c}) cublasLtMatrixLayoutDestroy(l);
        }
        cublasLtDestroy(lt_);
    }
    Gemm(const Gemm&) = delete;
    Gemm& operator=(const Gemm&) = delete;

    // D = alpha op(A) op(B) + beta C on stream s; C is read only when beta != 0 (pass D, or
    // nullptr, to add in place). A (lda) is op(A)'s (m, k) stored as ta says, B (ldb) op(B)'s
    // (k, n); C and D (ldc).
    template<typename In, typename Out>
    void operator()(cudaStream_t s, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const In* A, int lda,
                    const In* B, int ldb, float beta, const Out* C, Out* D, int ldc) {
        if (!C) C = D;
        const Plan& p = plan(ta, tb, m, n, k, type_of(A), lda, ldb, type_of(D), ldc, {align(A), align(B), align(C), align(D)}, C != D);
        cublasCheck(cublasLtMatmul(lt_, p.op, &alpha, A, p.a, B, p.b, &beta, C, p.c, D, p.c, &p.algo, workspace(), kWorkspace, s));
    }

    // The workspace of every Gemm of the process (for the algorithms that split k), made by
    // the first Gemm and kept for the process's life, as CUDA graphs hold its address. One
    // is enough: the engine's products run one at a time, in order on the legacy stream (or
    // in graphs launched on it); a rank is a process of its own.
    static void* workspace() {
        static void* w = [] {
            void* p;
            cudaCheck(cudaMalloc(&p, kWorkspace));
            return p;
        }();
        return w;
    }

private:
    struct Plan {
        cublasLtMatmulDesc_t op;
        cublasLtMatrixLayout_t a, b, c;  // c: C's and D's
        cublasLtMatmulAlgo_t algo;
    };
    static cudaDataType type_of(const float*) { return CUDA_R_32F; }
    static cudaDataType type_of(const __nv_bfloat16*) { return CUDA_R_16BF; }
    static bool writes_apart(const cublasLtMatmulAlgo_t& algo) {
        int32_t can = 0;
        size_t bytes = 0;
        cublasCheck(cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_OUT_OF_PLACE_RESULT_SUPPORT, &can, sizeof(can), &bytes));
        return can != 0;
    }
    // The largest power of two up to 256 that divides the address.
    static uint32_t align(const void* p) {
        const uintptr_t a = (uintptr_t)p;
        return a % 256 == 0 ? 256 : (uint32_t)(a & (~a + 1));
    }

    const Plan& plan(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, cudaDataType in, int lda, int ldb, cudaDataType out,
                     int ldc, const std::array<uint32_t, 4>& aligns, bool out_of_place) {
        const std::array<long, 15> key = {ta, tb, m, n, k, in, lda, ldb, out, ldc, aligns[0], aligns[1], aligns[2], aligns[3], out_of_place};
        auto made = plans_.find(key);
        if (made != plans_.end()) return made->second;
        Plan p;
        const cublasComputeType_t comp = in == CUDA_R_32F && tf32_ ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        cublasCheck(cublasLtMatmulDescCreate(&p.op, comp, CUDA_R_32F));
        cublasCheck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
        cublasCheck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
        const bool na = ta == CUBLAS_OP_N, nb = tb == CUBLAS_OP_N;
        cublasCheck(cublasLtMatrixLayoutCreate(&p.a, in, na ? m : k, na ? k : m, lda));
        cublasCheck(cublasLtMatrixLayoutCreate(&p.b, in, nb ? k : n, nb ? n : k, ldb));
        cublasCheck(cublasLtMatrixLayoutCreate(&p.c, out, m, n, ldc));
        cublasLtMatmulPreference_t pref;
        cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
        const uint64_t workspace = kWorkspace;
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)));
        const cublasLtMatmulPreferenceAttributes_t what[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        for (int i = 0; i < 4; i++) cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, what[i], &aligns[i], sizeof(uint32_t)));
        cublasLtMatmulHeuristicResult_t found[kCandidates];
        int count = 0;
        const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt_, p.op, p.a, p.b, p.c, p.c, pref, kCandidates, found, &count);
        cublasLtMatmulPreferenceDestroy(pref);
        if (st != CUBLAS_STATUS_SUCCESS) count = 0;
        int pick = 0;  // the best; out of place, the best that can write D apart from C
        while (out_of_place && pick < count && !writes_apart(found[pick].algo)) pick++;
        if (pick >= count)
            die("cuBLASLt: no algorithm (status %d, %d found) for a (%d x %d x %d) product of %s inputs into %s%s, alignments %u %u %u %u bytes",
                (int)st, count, m, n, k, in == CUDA_R_32F ? "fp32" : "bf16", out == CUDA_R_32F ? "fp32" : "bf16",
                out_of_place ? " out of place" : "", aligns[0], aligns[1], aligns[2], aligns[3]);
        p.algo = found[pick].algo;
        return plans_.emplace(key, p).first->second;
    }

    bool tf32_;
    cublasLtHandle_t lt_;
    std::map<std::array<long, 15>, Plan> plans_;  // by shape, types, alignments and placement
};
