// kernels/cpu_gemm.h: the one CPU matrix multiply behind every linear layer, forward and backward.
//
// C(M,N) = [C +] A(M,Kd) B(Kd,N), with A and B given by (pointer, row stride, column
// stride) so that one routine serves x W^T, dy W and dy^T x without copies. It is the
// textbook cache-blocked scheme: B is packed into NR-wide column panels, A into MR-tall row
// panels, and a register-tile micro-kernel does the work.
//
// Determinism: every C element is summed over p = 0..Kd-1 in the same order, by the same
// instructions, whatever the thread count and wherever the element sits in its tile (edge
// tiles are zero-padded, not special-cased). So a row of C depends only on the matching row
// of A: a PHD original row computes bit-for-bit what the vanilla model computes.
#pragma once
#include <algorithm>
#include <memory>
#ifdef _OPENMP
#include <omp.h>
#endif

template<typename Real> struct GemmTile;
template<> struct GemmTile<float>  { static constexpr int MR = 8, NR = 32; };
template<> struct GemmTile<double> { static constexpr int MR = 8, NR = 16; };

template<typename Real, int MR, int NR>
static inline void gemm_microkernel(int kc, const Real* __restrict__ Ap, const Real* __restrict__ Bp,
                                    Real* __restrict__ C, long ldc, int mr, int nr, bool accumulate) {
    Real acc[MR][NR] = {};
    for (int p = 0; p < kc; p++) {
        const Real* a = Ap + (long)p * MR;
        const Real* b = Bp + (long)p * NR;
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] += a[i] * b[j];
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) C[i * ldc + j] = accumulate ? C[i * ldc + j] + acc[i][j] : acc[i][j];
}

// dst (kc, W) = a panel of W vectors of kc elements, vector i at src + i * vs with its
// elements e apart (count of them inside the matrix; the others are zero), as the
// micro-kernel reads it: element p of every vector together. Read along whichever stride is
// 1 (a row of W in x W^T, of x in dW, ...), so that the copy streams.
template<int W, typename Real>
static inline void pack_panel(Real* __restrict__ dst, const Real* __restrict__ src, long vs, long e, int count, int kc) {
    if (e == 1)
        for (int i = 0; i < count; i++)
            for (int p = 0; p < kc; p++) dst[p * W + i] = src[i * vs + p];
    else if (vs == 1 && count == W)
        for (int p = 0; p < kc; p++)
            for (int i = 0; i < W; i++) dst[p * W + i] = src[p * e + i];
    else
        for (int p = 0; p < kc; p++)
            for (int i = 0; i < count; i++) dst[p * W + i] = src[i * vs + p * e];
    for (int p = 0; p < kc; p++)
        for (int i = count; i < W; i++) dst[p * W + i] = Real(0);
}

// Work is split into items (row block ic, column-panel chunk): one chunk of every panel
// when there are enough row blocks to keep the threads busy (training), else the panels
// are shared out too, so that a few rows (decoding) still use every thread. Each item packs
// its own rows of A; the order of the sums is the same either way.
template<typename Real>
void gemm(Real* C, long ldc, const Real* A, long ars, long acs, const Real* B, long brs, long bcs,
          int M, int N, int Kd, bool accumulate) {
    constexpr int MR = GemmTile<Real>::MR, NR = GemmTile<Real>::NR;
    constexpr int KC = 384, MC = 128, NC = 1024;  // A panel KC*MR in L1, B panel KC*NR from L2, A block MC*KC in L2, B block KC*NC in L3 (measured best of KC 256-512, MC 64-128 on the bench's shapes)
    if (Kd == 0) {
        if (!accumulate)
            for (int i = 0; i < M; i++) std::fill(C + i * ldc, C + i * ldc + N, Real(0));
        return;
    }
#ifdef _OPENMP
    const int threads = omp_get_max_threads();
#else
    const int threads = 1;
#endif
    const int row_blocks = (M + MC - 1) / MC;
    const int chunks = row_blocks >= threads ? 1 : (threads + row_blocks - 1) / row_blocks;
    std::unique_ptr<Real[]> Bpack(new Real[(size_t)KC * (NC + NR)]);  // every element is written before it is read
    for (int jc = 0; jc < N; jc += NC) {
        const int nc = std::min(NC, N - jc);
        const int npanels = (nc + NR - 1) / NR;
        for (int pc = 0; pc < Kd; pc += KC) {
            const int kc = std::min(KC, Kd - pc);
            const bool acc_here = accumulate || pc > 0;
            #pragma omp parallel
            {
                #pragma omp for schedule(static)
                for (int jp = 0; jp < npanels; jp++) {
                    const int cols = std::min(NR, nc - jp * NR);  // inside the matrix; the rest of the panel is zero
                    pack_panel<NR>(Bpack.get() + (size_t)jp * kc * NR, B + (long)pc * brs + (long)(jc + jp * NR) * bcs, bcs, brs, cols, kc);
                }
                std::unique_ptr<Real[]> Apack(new Real[(size_t)KC * (MC + MR)]);
                #pragma omp for schedule(static)
                for (int item = 0; item < row_blocks * chunks; item++) {
                    const int ic = item / chunks * MC, mc = std::min(MC, M - ic);
                    const int jp0 = npanels * (item % chunks) / chunks, jp1 = npanels * (item % chunks + 1) / chunks;
                    if (jp0 == jp1) continue;
                    for (int ip = 0; ip * MR < mc; ip++)
                        pack_panel<MR>(Apack.get() + (size_t)ip * kc * MR, A + (long)(ic + ip * MR) * ars + (long)pc * acs, ars, acs,
                                       std::min(MR, mc - ip * MR), kc);
                    for (int jp = jp0; jp < jp1; jp++)
                        for (int ip = 0; ip * MR < mc; ip++) {
                            int mr = std::min(MR, mc - ip * MR), nr = std::min(NR, nc - jp * NR);
                            gemm_microkernel<Real, MR, NR>(kc, Apack.get() + (size_t)ip * kc * MR,
                                                           Bpack.get() + (size_t)jp * kc * NR,
                                                           C + (long)(ic + ip * MR) * ldc + jc + jp * NR, ldc,
                                                           mr, nr, acc_here);
                        }
                }
            }
        }
    }
}
