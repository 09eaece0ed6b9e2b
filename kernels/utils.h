// kernels/utils.h: checked wrappers for every fallible C library call, and the one way the
// engine reports a fatal error: a single line naming the file or flag, then exit(1).
#pragma once
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

// Under mpirun with several ranks (kernels/dist.h sets them): the line names the rank, and
// then every rank is stopped, so that none waits forever for this one.
inline std::string g_die_prefix;
inline void (*g_die_stop)() = nullptr;

[[noreturn]] static inline void die(const char* fmt, ...) {
    fflush(stdout);
    // The whole line in one write: stderr is unbuffered, and another rank's (or thread's)
    // output must not land inside it.
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fputs(("error: " + g_die_prefix + msg + "\n").c_str(), stderr);
    if (g_die_stop) g_die_stop();
    exit(1);
}

static inline FILE* fopen_check(const char* path, const char* mode) {
    FILE* f = fopen(path, mode);
    if (!f) die("%s: cannot open (%s)", path, strerror(errno));
    return f;
}

// Reads exactly n bytes or dies naming the file: a short read means a truncated file.
static inline void fread_check(void* dst, size_t size, size_t count, FILE* f, const char* path) {
    size_t got = fread(dst, size, count, f);
    if (got != count) die("%s: truncated file (wanted %zu items of %zu bytes, got %zu)", path, count, size, got);
}

static inline void fwrite_check(const void* src, size_t size, size_t count, FILE* f, const char* path) {
    if (fwrite(src, size, count, f) != count) die("%s: write failed (%s)", path, strerror(errno));
}

static inline void fclose_check(FILE* f, const char* path) {
    if (fclose(f) != 0) die("%s: close failed (%s)", path, strerror(errno));
}

// Size of a file in bytes, 64-bit.
static inline int64_t file_size_check(FILE* f, const char* path) {
    if (fseeko(f, 0, SEEK_END) != 0) die("%s: cannot seek (%s)", path, strerror(errno));
    int64_t size = (int64_t)ftello(f);
    if (size < 0 || fseeko(f, 0, SEEK_SET) != 0) die("%s: cannot seek (%s)", path, strerror(errno));
    return size;
}

// mkdir -p: creates dir and its missing parents, or dies naming it.
static inline void mkdir_p(const std::string& dir) {
    for (size_t i = 1; i <= dir.size(); i++) {
        if (i < dir.size() && dir[i] != '/') continue;
        std::string part = dir.substr(0, i);
        if (mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) die("%s: cannot create directory (%s)", part.c_str(), strerror(errno));
    }
}

// One run per output folder: an exclusive flock on DIR/train_phd.lock, held until the process
// ends (the kernel drops it then, so a killed run leaves no stale lock), with the holder's
// pid in the file for the error a second run prints.
static inline void lock_dir(const std::string& dir) {
    const std::string path = dir + "/train_phd.lock";
    const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) die("%s: cannot open (%s)", path.c_str(), strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK) die("%s: cannot lock (%s)", path.c_str(), strerror(errno));
        char pid[32] = {0};
        const ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        die("--out %s: another run is using this folder (pid %s); give each run its own --out", dir.c_str(), pid[0] ? pid : "unknown");
    }
    const std::string me = std::to_string((long)getpid()) + "\n";
    if (ftruncate(fd, 0) != 0 || pwrite(fd, me.data(), me.size(), 0) != (ssize_t)me.size())
        die("%s: cannot write (%s)", path.c_str(), strerror(errno));
}

// Files are never written in place: a crash mid-write leaves the previous file intact.
// Usage: FILE* f = atomic_open(path); ...fwrite_check...; atomic_commit(f, path);
static inline std::string atomic_tmp_path(const char* path) { return std::string(path) + ".tmp"; }

static inline FILE* atomic_open(const char* path) {
    return fopen_check(atomic_tmp_path(path).c_str(), "wb");
}

static inline void atomic_commit(FILE* f, const char* path) {
    std::string tmp = atomic_tmp_path(path);
    if (fflush(f) != 0) die("%s: write failed (%s)", tmp.c_str(), strerror(errno));
    fclose_check(f, tmp.c_str());
    if (rename(tmp.c_str(), path) != 0) die("%s: cannot rename from %s (%s)", path, tmp.c_str(), strerror(errno));
}

// Functions that CUDA kernels call too (model.h's predicate and sizes, Rng's draws).
#ifdef __CUDACC__
#define PHD_HOST_DEVICE __host__ __device__
#else
#define PHD_HOST_DEVICE
#endif

// Deterministic random numbers (splitmix64): the same seed gives the same model everywhere,
// and the same draws on the host and the device (kernels/sampling.cuh).
struct Rng {
    uint64_t state;
    PHD_HOST_DEVICE uint64_t next_u64() {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    PHD_HOST_DEVICE double uniform() { return (double)(next_u64() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
    double normal() {  // Box-Muller, one draw per call
        double u1 = uniform(), u2 = uniform();
        return sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2);
    }
};
