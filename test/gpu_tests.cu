// The GPU tests as one translation unit: the emulated, ThreadSanitizer, AddressSanitizer and
// native builds compile the engine's headers once here instead of once per file, which
// halves their build time (the files stay separate to read; none of them is compiled alone).
#include "test_main.cpp"
#include "test_gpu.cu"
#include "test_gpu_mma.cu"
#include "test_gpu_kernels.cu"
#include "test_gpu_decode.cu"
#include "test_gpu_emu.cu"
