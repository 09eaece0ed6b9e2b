// test/cuda_emu_mma.h: the tensor-core and asynchronous-copy instructions of
// kernels/cuda_compat.h on the CPU (included at the end of test/cuda_emu.h): the layouts
// and rules are those written there, from the PTX ISA. The warp-wide instructions are
// collective as on a GPU: every lane must take part (else the emulation aborts), each
// publishes its operands, then computes what it receives from everyone's.
#pragma once

namespace cuda_emu {
inline float bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
[[noreturn]] inline void fault(const char* what, const void* p) {
    fprintf(stderr, "cuda_emu: %s in lane %d of warp %d (address %p)\n", what, running_fiber().lane, running_fiber().warp, p);
    abort();
}
}  // namespace cuda_emu

// ---- rounding ----

// TF32 (10-bit mantissa) rounding to nearest, ties away from zero, as cvt.rna.tf32.f32.
inline float to_tf32(float x) {
    if (!std::isfinite(x)) return x;
    return cuda_emu::bits_float((cuda_emu::float_bits(x) + 0x1000u) & 0xffffe000u);
}
// Two floats rounded to bf16 (to nearest even, as cvt.rn.bf16x2.f32), lo in the low half.
inline uint32_t pack_bf16(float lo, float hi) { return __float2bfloat16(lo).x | (uint32_t)__float2bfloat16(hi).x << 16; }

// 2^x as ex2.approx.ftz.f32: off by an ulp (cuda_emu.h's approx_ex2), and results below the
// smallest normal flush to 0.
inline float fast_exp2(float x) {
    const float y = cuda_emu::approx_ex2(x);
    return y < 1.17549435e-38f ? 0.0f : y;
}

// ---- mma ----

// d += a b for a 16 x 8 tile over k: each lane publishes its fragment registers, then sums
// its four outputs in k order from everyone's (element(lane, reg, half) reads a published
// register). Products of TF32 or bf16 inputs are exact in fp32.
template<typename Element> inline void mma_tile(float (&d)[4], const uint32_t* a, const uint32_t* b, int k_len, Element element,
                                                const char* what) {
    using namespace cuda_emu;
    Warp& w = running_warp();
    const int lane = running_fiber().lane;
    for (int r = 0; r < 6; r++) w.mma[lane][r] = r < 4 ? a[r] : b[r - 4];
    warp_sync(w, 0xffffffffu, 0xffffffffu, what);
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; i++) {
        const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
        float s = 0.0f;
        for (int k = 0; k < k_len; k++) s += element(w, row, k, true) * element(w, k, col, false);
        d[i] += s;
    }
    w.bar.wait(false);
}
// TF32, k = 8: a (row, k) is lane (row % 8) * 4 + k % 4, register row / 8 + 2 (k / 4); b
// (k, col) lane col * 4 + k % 4, register k / 4.
inline void mma_tf32(float (&d)[4], const float (&a)[4], const float (&b)[2]) {
    const uint32_t ab[4] = {cuda_emu::float_bits(a[0]), cuda_emu::float_bits(a[1]), cuda_emu::float_bits(a[2]), cuda_emu::float_bits(a[3])};
    const uint32_t bb[2] = {cuda_emu::float_bits(b[0]), cuda_emu::float_bits(b[1])};
    mma_tile(d, ab, bb, 8, [](cuda_emu::Warp& w, int r, int c, bool is_a) {
        return cuda_emu::bits_float(is_a ? (uint32_t)w.mma[(r % 8) * 4 + c % 4][r / 8 + 2 * (c / 4)] : (uint32_t)w.mma[c * 4 + r % 4][4 + r / 4]);
    }, "mma_tf32");
}
// bf16, k = 16: a (row, k) is lane (row % 8) * 4 + (k % 8) / 2, register row / 8 + 2 (k / 8),
// half k % 2; b (k, col) lane col * 4 + (k % 8) / 2, register k / 8, half k % 2.
inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma_tile(d, a, b, 16, [](cuda_emu::Warp& w, int r, int c, bool is_a) {
        const uint32_t reg = is_a ? (uint32_t)w.mma[(r % 8) * 4 + (c % 8) / 2][r / 8 + 2 * (c / 8)] : (uint32_t)w.mma[c * 4 + (r % 8) / 2][4 + r / 8];
        const int half = is_a ? c % 2 : r % 2;
        return cuda_emu::bits_float((reg >> (16 * half) & 0xffffu) << 16);
    }, "mma_bf16");
}

// ---- ldmatrix ----

// Each lane publishes its row address (checked: 16-byte aligned, not global memory), then
// takes its elements from the rows of the lanes that address matrix i (8i .. 8i + 7).
template<int N, bool Trans = false> inline void ldmatrix(uint32_t (&r)[N], const void* row) {
    static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
    using namespace cuda_emu;
    Warp& w = running_warp();
    const int lane = running_fiber().lane;
    if (lane < 8 * N) {
        if ((uintptr_t)row % 16) fault("ldmatrix: a row address that is not 16-byte aligned", row);
        if (device_memory().is_device(row)) fault("ldmatrix: a row address in global memory, not shared", row);
    }
    w.slot[lane] = (uint64_t)(uintptr_t)row;
    warp_sync(w, 0xffffffffu, 0xffffffffu, "ldmatrix");
    auto element = [&](int m, int rr, int cc) { return (uint32_t)((const uint16_t*)(uintptr_t)(uint64_t)w.slot[8 * m + rr])[cc]; };
    const int g = lane / 4, t = lane % 4;
    for (int m = 0; m < N; m++)
        r[m] = Trans ? element(m, 2 * t, g) | element(m, 2 * t + 1, g) << 16 : element(m, g, 2 * t) | element(m, g, 2 * t + 1) << 16;
    w.bar.wait(false);
}

// ---- cp.async ----

// The source is read when the copy is issued. On a GPU the destination may change at any
// moment until the cp_async_wait that covers the copy's group; here it holds poison (0xff
// bytes: NaN as float or bf16) from the issue to that wait, then the data. So a kernel that
// reads a stage before its wait, or refills a stage another warp still reads (without a
// barrier between), reads NaN and fails its test, and ThreadSanitizer sees the write at issue.
inline void cp_async16(void* dst, const void* src) {
    using namespace cuda_emu;
    if ((uintptr_t)dst % 16 || (uintptr_t)src % 16) fault("cp.async: a 16-byte copy between addresses that are not 16-byte aligned", src);
    if (!device_memory().holding(src, 16)) fault("cp.async: a source that is not 16 bytes of global memory", src);
    if (device_memory().is_device(dst)) fault("cp.async: a destination in global memory, not shared", dst);
    Fiber& f = running_fiber();
    f.async.push_back({dst, {}, f.commits});
    memcpy(f.async.back().bytes, src, 16);
    memset(dst, kPoison, 16);
}
inline void cp_async_commit() { cuda_emu::running_fiber().commits++; }
// Lands every copy of the groups committed before the last N commits.
template<int N> inline void cp_async_wait() {
    cuda_emu::Fiber& f = cuda_emu::running_fiber();
    size_t kept = 0;
    for (const cuda_emu::Fiber::AsyncCopy& c : f.async) {
        if (c.group < f.commits - N) memcpy(c.dst, c.bytes, 16);
        else f.async[kept++] = c;
    }
    f.async.resize(kept);
}
