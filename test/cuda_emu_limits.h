// test/cuda_emu_limits.h: what ptxas decided for each kernel, checked at every launch as the
// driver checks it (included by test/cuda_emu.h). Registers are the one launch limit the
// emulation cannot see for itself: a block of n threads needs n/32 warps of ptxas's registers
// per thread (given out 256 a warp), and the 64K registers of an SM must hold them, or the
// launch fails with "too many resources requested for launch". PHD_EMU_KERNELS names the table
// `dev/ptxas_report.sh --table` writes from train_phd's nvcc build (one line a kernel: its
// mangled name, registers, static shared memory and __launch_bounds__, the largest over the
// architectures it was built for); the emulated binary finds its kernels' names in its own symbol table. With the
// table, a launch also fails when
// - it has more threads than the kernel's __launch_bounds__,
// - static and dynamic shared memory together pass the limit,
// - it has more than 256 threads and the kernel no __launch_bounds__: ptxas may then give the
//   kernel more registers in another build, and the launch fails only on that build. (The
//   project's rule, not the driver's.)
// Kernels not in the table (the tests' own) are launched unchecked. Without nvcc there is no
// table, and the tests that need one say that they skip.
#pragma once
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <string>
#include <sys/stat.h>

namespace cuda_emu {

struct KernelLimits {
    std::string name;     // as ptxas names it (mangled)
    int registers = 0;    // per thread
    size_t static_shared = 0;
    int max_threads = 0;  // __launch_bounds__; 0: none
};

// The main program's load address (it is position-independent).
inline int program_base(dl_phdr_info* info, size_t, void* base) {
    *static_cast<uintptr_t*>(base) = info->dlpi_addr;
    return 1;  // the first object is the program
}

// Each function of this program found in the table, by address. g++ and clang mangle a static
// function with an L after _Z, which nvcc does not.
inline std::unordered_map<uintptr_t, KernelLimits> read_kernel_table(const char* path) {
    std::unordered_map<std::string, KernelLimits> by_name;
    FILE* f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "cuda_emu: cannot open PHD_EMU_KERNELS=%s (dev/ptxas_report.sh --table writes it)\n", path);
        exit(1);
    }
    char name[4096];
    KernelLimits k;
    while (fscanf(f, "%4095s %d %zu %d", name, &k.registers, &k.static_shared, &k.max_threads) == 4) {
        k.name = name;
        by_name[k.name] = k;
    }
    const bool complete = feof(f);
    fclose(f);
    if (!complete || by_name.empty()) {
        fprintf(stderr, "cuda_emu: %s: not a kernel table (name registers static-shared launch-bounds a line)\n", path);
        exit(1);
    }
    std::unordered_map<uintptr_t, KernelLimits> by_address;
    const int fd = open("/proc/self/exe", O_RDONLY);
    struct stat st;
    void* map = fd < 0 || fstat(fd, &st) != 0 ? MAP_FAILED : mmap(nullptr, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        perror("cuda_emu: reading this program's symbols");
        exit(1);
    }
    uintptr_t base = 0;
    dl_iterate_phdr(program_base, &base);
    const char* elf = static_cast<const char*>(map);
    const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(elf);
    const auto* sections = reinterpret_cast<const Elf64_Shdr*>(elf + eh->e_shoff);
    for (int s = 0; s < eh->e_shnum; s++) {
        if (sections[s].sh_type != SHT_SYMTAB) continue;
        const char* names = elf + sections[sections[s].sh_link].sh_offset;
        const auto* syms = reinterpret_cast<const Elf64_Sym*>(elf + sections[s].sh_offset);
        for (size_t i = 0; i < sections[s].sh_size / sizeof(Elf64_Sym); i++) {
            if (ELF64_ST_TYPE(syms[i].st_info) != STT_FUNC || syms[i].st_value == 0) continue;
            std::string n = names + syms[i].st_name;
            if (n.compare(0, 3, "_ZL") == 0) n.erase(2, 1);
            auto it = by_name.find(n);
            if (it != by_name.end()) by_address[base + syms[i].st_value] = it->second;
        }
    }
    munmap(map, (size_t)st.st_size);
    close(fd);
    if (by_address.empty())  // a stripped program, or names that changed: say so, for nothing is checked
        fprintf(stderr, "cuda_emu: none of the kernels of %s is in this program's symbol table: launches go unchecked\n", path);
    return by_address;
}

// The table, loaded at the first launch (a function-local static: once, whichever thread).
inline std::unordered_map<uintptr_t, KernelLimits>* kernel_table() {
    static std::unordered_map<uintptr_t, KernelLimits>* t =
        getenv("PHD_EMU_KERNELS") ? new std::unordered_map<uintptr_t, KernelLimits>(read_kernel_table(getenv("PHD_EMU_KERNELS")))
                                  : nullptr;
    return t;
}
inline const KernelLimits* kernel_limits(const void* kernel) {
    auto* t = kernel_table();
    if (!t) return nullptr;
    auto it = t->find((uintptr_t)kernel);
    return it == t->end() ? nullptr : &it->second;
}

constexpr int kRegisterFile = 65536, kRegistersPerWarpUnit = 256;

// Whether ptxas's counts allow a block of `threads` with `dynamic` bytes of dynamic shared
// memory (limit: the kernel's, as cudaFuncSetAttribute left it); else says why.
inline cudaError_t check_kernel_limits(const void* kernel, unsigned long threads, size_t dynamic, size_t limit) {
    const KernelLimits* k = kernel_limits(kernel);
    if (!k) return cudaSuccess;
    const long warp_registers = ((long)k->registers * 32 + kRegistersPerWarpUnit - 1) / kRegistersPerWarpUnit * kRegistersPerWarpUnit;
    const long registers = (long)((threads + 31) / 32) * warp_registers;
    std::string why;
    if (registers > kRegisterFile)
        why = std::to_string(threads) + " threads of " + std::to_string(k->registers) + " registers need " + std::to_string(registers) +
              " of the SM's " + std::to_string(kRegisterFile);
    else if (k->max_threads > 0 && threads > (unsigned long)k->max_threads)
        why = std::to_string(threads) + " threads, past its __launch_bounds__(" + std::to_string(k->max_threads) + ")";
    else if (k->max_threads == 0 && threads > 256)
        why = std::to_string(threads) + " threads without __launch_bounds__ (this project requires them above 256 threads)";
    else if (k->static_shared + dynamic > (limit > kDefaultDynamicShared ? kMaxDynamicShared : kDefaultDynamicShared))
        why = std::to_string(k->static_shared) + " bytes of static and " + std::to_string(dynamic) + " of dynamic shared memory";
    if (why.empty()) return cudaSuccess;
    fprintf(stderr, "cuda_emu: launch of %s refused: %s\n", k->name.c_str(), why.c_str());
    return cudaErrorLaunchOutOfResources;
}

}  // namespace cuda_emu
