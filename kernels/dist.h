// kernels/dist.h: the ranks of a data-parallel run and what they say to each other.
//
// Launch: `mpirun -np N ./train_phd ...`, one process per rank (per GPU: rank r uses the GPU
// of its rank on its node). A process started without mpirun, or built without MPI (no
// mpi.h when the Makefile ran; then PHD_MPI is not defined), is rank 0 of 1, and every call
// below is then a no-op or a copy. The host collectives are MPI's; the GPU's (the *_device
// calls, with device pointers) are NCCL's, in the CUDA emulation test/cuda_emu_nccl.h's.
// Or, for schedulers that start the processes themselves (torchrun, Slurm's srun), without
// MPI: PHD_RENDEZVOUS names a directory every rank sees, the ranks come from WORLD_SIZE,
// RANK, LOCAL_RANK (or SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID), rank 0's NCCL id goes
// through a file there (init_by_env), and the host collectives too go through NCCL, on a
// device copy of their bytes (by_env; the GPU path only).
//
// A step with N ranks (train_phd.cu's train()): each rank runs its own micro-batches and
// backward; reduce_scatter sums the ranks' gradients so that rank r gets its shard of the
// sum; the gradient norm is each rank's sum of squares over its shard, summed over the
// ranks (sum); AdamW updates the rank's shard of the parameters with the moments of that
// shard, which is all a rank keeps of them (ZeRO-1); all_gather then gives every rank all the
// updated parameters. Shards (struct Shards): the parameter arena (checkpoint order) is cut
// into buckets, and each bucket [a, b) is shared as an arena of its own: rank r owns
// [a + begin(b - a, r), a + begin(b - a, r + 1)), share(b - a) elements each ((b - a) / N
// rounded down to a multiple of 4: pieces start on 16-byte groups where their buckets do,
// for AdamW's 16-byte path; in the last rank's shard only where every bucket is a multiple
// of 4 long), the last rank also what is left over (NCCL's reduce-scatter and all-gather
// take equal pieces).
// A bucket is reduced by itself, so the GPU path (a bucket per layer) starts a layer's
// reduction while the backward still runs (engine.h); the CPU path has one bucket.
//
// Errors: a rank that dies (die() in kernels/utils.h) prints its line, naming the rank, and
// stops every rank (MPI_Abort), so that none waits forever for it; launched without MPI it
// exits, and the scheduler stops the others (torchrun does; srun with --kill-on-bad-exit=1).
// An error that every rank meets at once would print N lines; the start-up, where they are
// common (a bad flag, a missing file), runs on rank 0 first and on the others only after it
// (startup_begin/end), and errors from values all ranks share go through die_everywhere: one
// line either way. agree() and same_on_every_rank() check, collectively, what each rank
// found on its own.
#pragma once
#include <unistd.h>
#include <chrono>
#include <climits>
#include <string>
#include <thread>
#include <utility>
#include <vector>
#include "utils.h"
#ifdef PHD_MPI
#include <mpi.h>
#endif
#if defined(PHD_MPI) && (defined(__CUDACC__) || defined(PHD_EMULATE_GPU))
#define PHD_NCCL 1
#include "cuda_compat.h"  // the emulation's NCCL comes with test/cuda_emu.h
#ifdef __CUDACC__
#include <nccl.h>
#endif
#define ncclCheck(call)                                                                         \
    do {                                                                                        \
        ncclResult_t r_ = (call);                                                               \
        if (r_ != ncclSuccess) die("%s:%d: NCCL: %s", __FILE__, __LINE__, ncclGetErrorString(r_)); \
    } while (0)
#endif

// A rank's shard of an arena cut into buckets: its piece of each bucket, one after another
// in arena order. Alone, the shard is the whole arena (every piece at its own offset).
struct Piece { size_t lo, hi, at; };  // the arena's [lo, hi), at element `at` of the shard
struct Shards {
    std::vector<size_t> bounds;  // (buckets + 1) bucket b is the arena's [bounds[b], bounds[b + 1])
    std::vector<Piece> mine;     // (buckets) this rank's piece of each bucket
    size_t size = 0;             // elements of the shard: the pieces' sum
    int buckets() const { return (int)mine.size(); }
    // This rank's shard (size) of a whole arena (bounds.back()).
    std::vector<float> cut(const std::vector<float>& full) const {
        std::vector<float> shard(size);
        for (const Piece& p : mine) std::copy(full.begin() + p.lo, full.begin() + p.hi, shard.begin() + p.at);
        return shard;
    }
};

struct Dist {
    int rank = 0, size = 1, local_rank = 0;  // local_rank: among the ranks on this machine
    bool started = false;                    // startup_end has run
    bool by_env = false;                     // several ranks started without MPI: every collective over NCCL
#ifdef PHD_NCCL
    mutable ncclComm_t nccl = nullptr;  // the GPUs' communicator, made at the first collective on them
    static constexpr size_t kSmall = 64;
    mutable void* small = nullptr;      // (kSmall bytes) on the device: nccl_host's buffer for small values
#endif

    // Each rank's piece of a bucket of n, the last rank's leftover aside; and the first
    // element of rank r's (r = size: n).
    size_t share(size_t n) const { return n / size / 4 * 4; }
    size_t begin(size_t n, int r) const { return r == size ? n : share(n) * r; }
    // This rank's shard of an arena cut at bounds (0, ..., its size).
    Shards shards(const std::vector<size_t>& bounds) const {
        Shards S;
        S.bounds = bounds;
        for (size_t b = 0; b + 1 < bounds.size(); b++) {
            const size_t n = bounds[b + 1] - bounds[b];
            S.mine.push_back({bounds[b] + begin(n, rank), bounds[b] + begin(n, rank + 1), S.size});
            S.size += S.mine.back().hi - S.mine.back().lo;
        }
        return S;
    }

#ifdef PHD_MPI
    static void check(int rc, const char* what) {
        if (rc != MPI_SUCCESS) {
            char msg[MPI_MAX_ERROR_STRING];
            int len = 0;
            MPI_Error_string(rc, msg, &len);
            die("%s: %s", what, msg);
        }
    }
    // Each rank's count and offset, as MPI's int (the GPU path's NCCL takes size_t).
    void counts(size_t n, std::vector<int>* count, std::vector<int>* displ) const {
        if (n > (size_t)INT_MAX) die("%zu parameters: the CPU path's MPI collectives take at most 2^31 - 1", n);
        for (int r = 0; r < size; r++) {
            count->push_back((int)(begin(n, r + 1) - begin(n, r)));
            displ->push_back((int)begin(n, r));
        }
    }
#endif

    // First thing in main. With PHD_RENDEZVOUS set, the ranks come from the scheduler's
    // variables (init_by_env). Else under mpirun (its variables are set: OpenMPI's, or the PMI
    // ones of MPICH and Slurm) they come from MPI; else one rank, and MPI is never started,
    // so a plain run costs nothing. Ranks other than 0 print nothing on stdout (errors still
    // go to stderr): rank 0 speaks for the run.
    void init([[maybe_unused]] int* argc, [[maybe_unused]] char*** argv) {
        if (getenv("PHD_RENDEZVOUS")) return init_by_env();
        const char* n = getenv("OMPI_COMM_WORLD_SIZE") ? getenv("OMPI_COMM_WORLD_SIZE") : getenv("PMI_SIZE");
        // torchrun sets WORLD_SIZE only in the processes it starts; Slurm's SLURM_NTASKS is
        // also set in a batch script's own shell, where one plain process must still run.
        const char* w = getenv("WORLD_SIZE");
        if (!n && !getenv("PMIX_RANK") && w && atoi(w) > 1)
            die("%s ranks from the scheduler's variables: set PHD_RENDEZVOUS to a directory every rank sees (or start with mpirun)", w);
#ifndef PHD_MPI
        if (n && atoi(n) > 1) die("started by mpirun with %s ranks, but built without MPI (no mpi.h: install libopenmpi-dev and rebuild)", n);
#else
        if (!n && !getenv("PMIX_RANK")) return;
        check(MPI_Init(argc, argv), "MPI_Init");
        check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
        check(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
        check(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size");
        MPI_Comm node;
        check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
        check(MPI_Comm_rank(node, &local_rank), "MPI_Comm_rank");
        check(MPI_Comm_free(&node), "MPI_Comm_free");
        atexit(at_exit);
        if (size == 1) return;
        g_die_stop = [] { MPI_Abort(MPI_COMM_WORLD, 1); };
        quiet_but_rank_0();
#endif
    }
    // Ranks other than 0 print nothing on stdout; their errors name them.
    void quiet_but_rank_0() const {
        g_die_prefix = "rank " + std::to_string(rank) + ": ";
        if (rank != 0 && !freopen("/dev/null", "w", stdout)) die("/dev/null: cannot open for stdout (%s)", strerror(errno));
    }
    // A launch without MPI: the ranks from the scheduler's variables, the GPU of the local
    // rank, and the NCCL communicator now, its id from rank 0 through PHD_RENDEZVOUS.
    void init_by_env() {
        const bool slurm = !getenv("WORLD_SIZE");
        size = env_int(slurm ? "SLURM_NTASKS" : "WORLD_SIZE", 1);
        rank = env_int(slurm ? "SLURM_PROCID" : "RANK", 0);
        local_rank = env_int(slurm ? "SLURM_LOCALID" : "LOCAL_RANK", 0);
        if (rank >= size) die("PHD_RENDEZVOUS: rank %d of %d ranks", rank, size);
        if (size == 1) return;
#ifndef PHD_NCCL
        die("PHD_RENDEZVOUS: a launch without mpirun runs on GPUs over NCCL; this train_phd was built without NCCL");
#else
        by_env = true;
        g_die_stop = [] { _exit(1); };  // no collective on the way out (at_exit's): the scheduler stops the others
        quiet_but_rank_0();
        gpu_init();
        comm();
        atexit(at_exit);  // after comm(): at_exit runs before what the communicator registered
        printf("ranks: %d, started by %s's variables without MPI, the NCCL id through %s\n", size, slurm ? "Slurm" : "torchrun",
               rendezvous_path().c_str());
#endif
    }
    // The value of the variable name (>= least); without it, or not a number, a clear error.
    static int env_int(const char* name, int least) {
        const char* v = getenv(name);
        if (!v) die("PHD_RENDEZVOUS is set, but %s is not: a launch without mpirun takes WORLD_SIZE, RANK and LOCAL_RANK, "
                    "or SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID", name);
        char* end;
        const long x = strtol(v, &end, 10);
        if (end == v || *end || x < least || x > INT_MAX) die("%s: expected a whole number >= %d, got '%s'", name, least, v);
        return (int)x;
    }

    // Start-up runs on rank 0 first: the others wait in startup_begin until rank 0 reaches
    // startup_end, so that an error every rank would meet is printed once, by rank 0. No
    // collective may run between the two.
    void startup_begin() { if (rank != 0) release(); }
    void startup_end() {
        if (rank == 0 && !started) release();
        started = true;
    }
    void release() const {
        int go = 1;
        bcast(&go, sizeof go);
    }
    // Every way out of the process but die(), which aborts: a rank 0 that leaves during its
    // start-up (--help) lets the others go on to leave too.
    static void at_exit();

    // For an error that every rank finds at once, from values they all share (the summed
    // loss): rank 0 prints it and stops the job; the others wait to be stopped.
    template<typename... A> [[noreturn]] void die_everywhere(const char* fmt, A... args) const {
        if (rank == 0) die(fmt, args...);
        wait_to_be_stopped();
    }
    [[noreturn]] void wait_to_be_stopped() const {
        if (by_env) _exit(1);  // every rank knows: each leaves, the failing one having said why
#ifdef PHD_MPI
        MPI_Barrier(MPI_COMM_WORLD);  // the failing rank never comes: MPI_Abort ends this
#endif
        die("the rank that failed did not stop the run");
    }

    // Collective: each rank passes the error it found on its own ("" for none). If any rank
    // found one, the lowest such rank prints it and stops the job; the others wait to be
    // stopped. So one line, however many ranks failed.
    void agree(const std::string& err) const {
        int mine = err.empty() ? size : rank, first = mine;
#ifdef PHD_NCCL
        if (by_env) nccl_host(&first, 1, ncclInt32, ncclMin);
#endif
#ifdef PHD_MPI
        if (size > 1 && !by_env) check(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD), "MPI_Allreduce");
#endif
        if (first == size) return;
        if (first == rank) die("%s", err.c_str());
        wait_to_be_stopped();
    }

    // Collective: every rank must have the values rank 0 has; a rank that differs names the
    // first (name, value) pair that does, with its own value and rank 0's.
    void same_on_every_rank(const std::vector<std::pair<std::string, std::string>>& kv) const {
        std::string err;
        for (const auto& [name, value] : kv) {
            std::string zero = value;
            bcast_string(&zero);
            if (err.empty() && zero != value) err = name + ": " + value + " here, " + zero + " on rank 0";
        }
        agree(err);
    }
    void bcast_string(std::string* s) const {
        unsigned long long n = s->size();
        bcast(&n, sizeof n);
        s->resize(n);
        bcast(&(*s)[0], n);
    }

    // Rank 0's bytes to every rank.
    void bcast([[maybe_unused]] void* p, [[maybe_unused]] size_t bytes) const {
        if (size == 1) return;
        for (size_t at = 0; at < bytes; at += 1 << 30) {  // MPI's counts are int; a bounded device copy
            [[maybe_unused]] const size_t n = std::min(bytes - at, (size_t)1 << 30);
#ifdef PHD_NCCL
            if (by_env) nccl_host((unsigned char*)p + at, n, ncclUint8);
#endif
#ifdef PHD_MPI
            if (!by_env) check(MPI_Bcast((char*)p + at, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
#endif
        }
    }

    // The sum of x over the ranks, the same bits on every rank.
    double sum(double x) const {
#ifdef PHD_NCCL
        if (by_env) nccl_host(&x, 1, ncclDouble, ncclSum);
#endif
#ifdef PHD_MPI
        if (size > 1 && !by_env) check(MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
#endif
        return x;
    }

    // Bucket b of full (the arena, on every rank) summed over the ranks; rank r gets its
    // piece of the sum in its shard. Alone there is nothing to sum: the shard is full itself.
    void reduce_scatter([[maybe_unused]] const float* full, [[maybe_unused]] float* shard, [[maybe_unused]] const Shards& S,
                        [[maybe_unused]] int b) const {
#ifdef PHD_MPI
        if (size == 1) return;
        std::vector<int> count, displ;
        counts(S.bounds[b + 1] - S.bounds[b], &count, &displ);
        check(MPI_Reduce_scatter(full + S.bounds[b], shard + S.mine[b].at, count.data(), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Reduce_scatter");
#endif
    }
    // full (the arena): each rank's pieces, in place, to every rank.
    void all_gather([[maybe_unused]] float* full, [[maybe_unused]] const Shards& S) const {
#ifdef PHD_NCCL
        if (by_env) {
            float* d = nullptr;
            const size_t bytes = S.bounds.back() * sizeof(float);
            cudaCheck(cudaMalloc(&d, bytes));
            cudaCheck(cudaMemcpy(d, full, bytes, cudaMemcpyHostToDevice));
            all_gather_device(d, S, nullptr);
            cudaCheck(cudaMemcpy(full, d, bytes, cudaMemcpyDeviceToHost));  // on the legacy stream: after the gather
            cudaCheck(cudaFree(d));
            return;
        }
#endif
#ifdef PHD_MPI
        if (size == 1) return;
        for (int b = 0; b < S.buckets(); b++) {
            std::vector<int> count, displ;
            counts(S.bounds[b + 1] - S.bounds[b], &count, &displ);
            check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, full + S.bounds[b], count.data(), displ.data(), MPI_FLOAT,
                                 MPI_COMM_WORLD),
                  "MPI_Allgatherv");
        }
#endif
    }
    // The whole of a sharded array (the arena) from every rank's shard (S.size).
    std::vector<float> gather(const float* shard, const Shards& S) const {
        std::vector<float> full(S.bounds.back());
        for (const Piece& p : S.mine) std::copy(shard + p.at, shard + p.at + (p.hi - p.lo), full.begin() + p.lo);
        all_gather(full.data(), S);
        return full;
    }

#ifdef PHD_NCCL
    // Before anything touches the GPU: the rank's device is its local rank's (more ranks
    // than GPUs on a machine share them round-robin, which real NCCL refuses at
    // ncclCommInitRank and the emulation, a device per process, allows).
    void gpu_init() const {
        int n = 0;
        cudaCheck(cudaGetDeviceCount(&n));
        cudaCheck(cudaSetDevice(local_rank % n));
    }
    // The NCCL communicator: under mpirun at the first collective (so never during the
    // start-up), its id sent from rank 0 by MPI; launched without MPI in init, through the
    // rendezvous file, which rank 0 removes once every rank has joined (ncclCommInitRank
    // returns then).
    ncclComm_t comm() const {
        if (nccl) return nccl;
        ncclUniqueId id;
        if (rank == 0) ncclCheck(ncclGetUniqueId(&id));
        if (by_env) rendezvous(&id);
        else bcast(&id, sizeof id);
        ncclCheck(ncclCommInitRank(&nccl, size, id, rank));
        if (by_env && rank == 0 && unlink(rendezvous_path().c_str()) != 0)
            die("%s: cannot remove (%s)", rendezvous_path().c_str(), strerror(errno));
        return nccl;
    }
    static std::string rendezvous_path() { return std::string(getenv("PHD_RENDEZVOUS")) + "/nccl_id"; }
    // Rank 0 writes its id (and the number of ranks) to the file, under a temporary name and
    // renamed, so that no rank reads half of it; a file already there is a failed run's, whose
    // id other ranks may have taken: refused. The others wait for it, PHD_RENDEZVOUS_TIMEOUT
    // seconds at most (default 300).
    void rendezvous(ncclUniqueId* id) const {
        const std::string path = rendezvous_path();
        if (rank == 0) {
            if (access(path.c_str(), F_OK) == 0)
                die("%s: left by an earlier run (remove it, or give PHD_RENDEZVOUS a directory of this run's own)", path.c_str());
            FILE* f = atomic_open(path.c_str());
            fwrite_check(&size, sizeof size, 1, f, path.c_str());
            fwrite_check(id, sizeof *id, 1, f, path.c_str());
            atomic_commit(f, path.c_str());
            return;
        }
        const char* t = getenv("PHD_RENDEZVOUS_TIMEOUT");
        const int timeout = t ? env_int("PHD_RENDEZVOUS_TIMEOUT", 1) : 300;
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(timeout);
        while (access(path.c_str(), F_OK) != 0) {
            if (std::chrono::steady_clock::now() > until)
                die("%s: no NCCL id from rank 0 after %d s (is rank 0 running, and does PHD_RENDEZVOUS name a directory every rank "
                    "sees?)", path.c_str(), timeout);
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        FILE* f = fopen_check(path.c_str(), "rb");
        int n = 0;
        fread_check(&n, sizeof n, 1, f, path.c_str());
        fread_check(id, sizeof *id, 1, f, path.c_str());
        fclose_check(f, path.c_str());
        if (n != size) die("%s: rank 0 has %d ranks, this rank %d (WORLD_SIZE or SLURM_NTASKS)", path.c_str(), n, size);
    }
    // Launched without MPI: x (count of t, on the host) through an NCCL collective on a device
    // copy: summed, or the least, over the ranks (op), or without op rank 0's to every rank.
    // The step's own calls (a sum of one double) use a small buffer made once: no allocation in a step.
    template<typename T> void nccl_host(T* x, size_t count, ncclDataType_t t, int op = -1) const {
        const size_t bytes = count * sizeof(T);
        void* d = small;
        if (bytes > kSmall) cudaCheck(cudaMalloc(&d, bytes));
        else if (!d) {
            cudaCheck(cudaMalloc(&small, kSmall));
            d = small;
        }
        cudaCheck(cudaMemcpy(d, x, bytes, cudaMemcpyHostToDevice));
        if (op < 0) ncclCheck(ncclBroadcast(d, d, count, t, 0, comm(), nullptr));
        else ncclCheck(ncclAllReduce(d, d, count, t, (ncclRedOp_t)op, comm(), nullptr));
        cudaCheck(cudaMemcpy(x, d, bytes, cudaMemcpyDeviceToHost));  // on the legacy stream: after the collective
        if (bytes > kSmall) cudaCheck(cudaFree(d));
    }
    // As reduce_scatter and all_gather, on device memory and the stream s: NCCL's
    // reduce-scatter and all-gather move a bucket's share(n)-element pieces, a reduce and a
    // broadcast the last rank's leftover. Grouped: NCCL runs a group as one launch.
    void reduce_scatter_device(const float* full, float* shard, const Shards& S, int b, cudaStream_t s) const {
        if (size == 1) return;
        ncclComm_t c = comm();
        const size_t n = S.bounds[b + 1] - S.bounds[b], each = share(n), rest = n - each * size;
        const float* in = full + S.bounds[b];
        float* mine = shard + S.mine[b].at;
        ncclCheck(ncclGroupStart());
        ncclCheck(ncclReduceScatter(in, mine, each, ncclFloat, ncclSum, c, s));
        if (rest) ncclCheck(ncclReduce(in + each * size, mine + each, rest, ncclFloat, ncclSum, size - 1, c, s));
        ncclCheck(ncclGroupEnd());
    }
    void all_gather_device(float* full, const Shards& S, cudaStream_t s) const {
        if (size == 1) return;
        ncclComm_t c = comm();
        ncclCheck(ncclGroupStart());
        for (int b = 0; b < S.buckets(); b++) {
            const size_t n = S.bounds[b + 1] - S.bounds[b], each = share(n), rest = n - each * size;
            float* out = full + S.bounds[b];
            ncclCheck(ncclAllGather(out + each * rank, out, each, ncclFloat, c, s));
            if (rest) ncclCheck(ncclBroadcast(out + each * size, out + each * size, rest, ncclFloat, size - 1, c, s));
        }
        ncclCheck(ncclGroupEnd());
    }
#else
    void gpu_init() const {}
    // One rank: nothing to sum or gather.
    template<typename St> void reduce_scatter_device(const float*, float*, const Shards&, int, St) const {}
    template<typename St> void all_gather_device(float*, const Shards&, St) const {}
#endif
};

// The process's place in the run (init() in main; one rank until then).
inline Dist dist;

inline void Dist::at_exit() {
    dist.startup_end();
#ifdef PHD_MPI
    if (!dist.by_env) MPI_Finalize();
#endif
}
