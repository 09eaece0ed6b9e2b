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

// Work is split into items (row block ic, column-panel chunk): one chunk of every panel
// when there are enough row blocks to keep the threads busy (training), else the panels
// are shared out too, so that a few rows (decoding) still use every thread. Each item packs
// its own rows of A; the order of the sums is the same either way.
template<typename Real>
void gemm(Real* C, long ldc, const Real* A, long ars, long acs, const Real* B, long brs, long bcs,
          int M, int N, int Kd, bool accumulate) {
    constexpr int MR = GemmTile<Real>::MR, NR = GemmTile<Real>::NR;
    constexpr int KC = 256, MC = 64, NC = 1024;  // L1: KC*(MR+NR); L2: MC*KC; L3: KC*NC
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
                    Real* dst = Bpack.get() + (size_t)jp * kc * NR;  // (kc, NR)
                    auto put = [&](int p, int j) {
                        const int col = jc + jp * NR + j;
                        dst[p * NR + j] = col < jc + nc ? B[(long)(pc + p) * brs + (long)col * bcs] : Real(0);
                    };
                    if (brs == 1)  // a column of B is a row of W (x W^T): read it along its unit stride
                        for (int j = 0; j < NR; j++)
                            for (int p = 0; p < kc; p++) put(p, j);
                    else
                        for (int p = 0; p < kc; p++)
                            for (int j = 0; j < NR; j++) put(p, j);
                }
                std::unique_ptr<Real[]> Apack(new Real[(size_t)KC * (MC + MR)]);
                #pragma omp for schedule(static)
                for (int item = 0; item < row_blocks * chunks; item++) {
                    const int ic = item / chunks * MC, mc = std::min(MC, M - ic);
                    const int jp0 = npanels * (item % chunks) / chunks, jp1 = npanels * (item % chunks + 1) / chunks;
                    if (jp0 == jp1) continue;
                    for (int ip = 0; ip * MR < mc; ip++) {
                        Real* dst = Apack.get() + (size_t)ip * kc * MR;
                        for (int p = 0; p < kc; p++)
                            for (int i = 0; i < MR; i++) {
                                int row = ic + ip * MR + i;
                                dst[p * MR + i] = row < ic + mc ? A[(long)row * ars + (long)(pc + p) * acs] : Real(0);
                            }
                    }
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
