// test/cuda_emu_nccl.h: the NCCL of test/cuda_emu.h (included at its end), for builds with
// MPI (PHD_MPI): the calls kernels/dist.h makes, on top of MPI_COMM_WORLD, one emulated GPU per
// process. As NCCL, every buffer must be device memory (else ncclInvalidArgument) and the
// communicator's ranks must be MPI's. A call is checked when made and queued on its stream
// (test/cuda_emu_stream.h), reading and writing its buffers when it runs, as NCCL does; a
// group (ncclGroupStart/End) runs its calls in the order made, which every rank makes the
// same (MPI's blocking calls then pair them, wherever each rank's queue runs). The types and operations kernels/dist.h uses only. A
// launch without MPI (kernels/dist.h's PHD_RENDEZVOUS) leaves MPI to this emulation, which
// starts it at ncclCommInitRank: such a run must still be started by mpirun here.
#pragma once
#ifdef PHD_MPI
#include <mpi.h>

enum ncclResult_t { ncclSuccess = 0, ncclSystemError = 2, ncclInvalidArgument = 4, ncclInvalidUsage = 5 };
enum ncclDataType_t { ncclUint8 = 1, ncclInt32 = 2, ncclFloat = 7, ncclDouble = 8 };
enum ncclRedOp_t { ncclSum = 0, ncclMin = 3 };
struct ncclUniqueId { char internal[128]; };
struct ncclComm { int rank, size; };
typedef ncclComm* ncclComm_t;

inline const char* ncclGetErrorString(ncclResult_t r) {
    return r == ncclSuccess ? "no error" : r == ncclSystemError ? "unhandled system error (MPI failed)"
         : r == ncclInvalidArgument ? "invalid argument" : "invalid usage";
}

namespace cuda_emu {
inline size_t nccl_bytes(ncclDataType_t t) { return t == ncclUint8 ? 1 : t == ncclInt32 ? 4 : t == ncclFloat ? 4 : 8; }
inline MPI_Datatype nccl_mpi_type(ncclDataType_t t) {
    return t == ncclUint8 ? MPI_UNSIGNED_CHAR : t == ncclInt32 ? MPI_INT : t == ncclFloat ? MPI_FLOAT : MPI_DOUBLE;
}
inline MPI_Op nccl_mpi_op(ncclRedOp_t op) { return op == ncclSum ? MPI_SUM : MPI_MIN; }
// Every buffer a call names must be device memory of the size it reads or writes.
inline bool nccl_device(const void* p, size_t count, ncclDataType_t t) { return device_memory().holding(p, count * nccl_bytes(t)) != nullptr; }
inline bool nccl_args_ok(ncclComm_t comm, ncclDataType_t t, ncclRedOp_t op) {
    return comm && (t == ncclUint8 || t == ncclInt32 || t == ncclFloat || t == ncclDouble) && (op == ncclSum || op == ncclMin);
}
// Queues op, an MPI call's return code, on stream s: a failed call fails the next synchronization.
template<typename Op> ncclResult_t nccl_queue(cudaStream_t s, Op op) {
    auto work = [op]() -> cudaError_t {
        DeviceAccess access;
        return op() == MPI_SUCCESS ? cudaSuccess : (cudaError_t)cudaErrorIllegalState;
    };
    cudaError_t status;
    if (!deferred(s, work, status)) status = work();
    return status ? ncclInvalidUsage : ncclSuccess;
}
}  // namespace cuda_emu

// The id only has to be the same object on every rank (rank 0 makes it, the caller sends it).
inline ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "cuda_emu nccl %d", (int)getpid());
    return ncclSuccess;
}
inline ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
    int size, me, on;
    if (MPI_Initialized(&on) != MPI_SUCCESS) return ncclSystemError;
    if (!on && (MPI_Init(nullptr, nullptr) != MPI_SUCCESS || atexit([] { MPI_Finalize(); }) != 0)) return ncclSystemError;
    if (MPI_Comm_size(MPI_COMM_WORLD, &size) != MPI_SUCCESS || MPI_Comm_rank(MPI_COMM_WORLD, &me) != MPI_SUCCESS) return ncclSystemError;
    if (nranks != size || rank != me) return ncclInvalidUsage;  // this emulation's ranks are MPI's
    // Every rank must have been handed rank 0's id.
    ncclUniqueId zero = id;
    if (MPI_Bcast(&zero, sizeof zero, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS) return ncclSystemError;
    if (memcmp(&zero, &id, sizeof id) != 0) return ncclInvalidUsage;
    *comm = new ncclComm{rank, nranks};
    return ncclSuccess;
}
inline ncclResult_t ncclCommDestroy(ncclComm_t comm) { delete comm; return ncclSuccess; }
inline ncclResult_t ncclGroupStart() { return ncclSuccess; }
inline ncclResult_t ncclGroupEnd() { return ncclSuccess; }

// recv (count) on rank r = piece r of send (nranks * count) summed over the ranks.
inline ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t count, ncclDataType_t t, ncclRedOp_t op, ncclComm_t comm,
                                      cudaStream_t s) {
    using namespace cuda_emu;
    {
        DeviceMap map;
        if (!nccl_args_ok(comm, t, op) || !nccl_device(send, count * comm->size, t) || !nccl_device(recv, count, t)) return ncclInvalidArgument;
    }
    return nccl_queue(s, [=] {
        std::vector<char> in((const char*)send, (const char*)send + count * comm->size * nccl_bytes(t));  // send and recv may overlap
        return MPI_Reduce_scatter_block(in.data(), recv, (int)count, nccl_mpi_type(t), nccl_mpi_op(op), MPI_COMM_WORLD);
    });
}
// recv (count) on root = send (count) summed over the ranks; recv is not touched elsewhere.
inline ncclResult_t ncclReduce(const void* send, void* recv, size_t count, ncclDataType_t t, ncclRedOp_t op, int root, ncclComm_t comm,
                               cudaStream_t s) {
    using namespace cuda_emu;
    {
        DeviceMap map;
        if (!nccl_args_ok(comm, t, op) || root < 0 || root >= comm->size || !nccl_device(send, count, t) ||
            (comm->rank == root && !nccl_device(recv, count, t)))
            return ncclInvalidArgument;
    }
    const bool is_root = comm->rank == root;
    return nccl_queue(s, [=] {
        std::vector<char> in((const char*)send, (const char*)send + count * nccl_bytes(t));
        return MPI_Reduce(in.data(), is_root ? recv : nullptr, (int)count, nccl_mpi_type(t), nccl_mpi_op(op), root, MPI_COMM_WORLD);
    });
}
// recv (count, on every rank) = send (count) summed (or the least) over the ranks; in place
// when send == recv.
inline ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t t, ncclRedOp_t op, ncclComm_t comm,
                                  cudaStream_t s) {
    using namespace cuda_emu;
    {
        DeviceMap map;
        if (!nccl_args_ok(comm, t, op) || !nccl_device(send, count, t) || !nccl_device(recv, count, t)) return ncclInvalidArgument;
    }
    return nccl_queue(s, [=] {
        std::vector<char> in((const char*)send, (const char*)send + count * nccl_bytes(t));
        return MPI_Allreduce(in.data(), recv, (int)count, nccl_mpi_type(t), nccl_mpi_op(op), MPI_COMM_WORLD);
    });
}
// recv (nranks * count, on every rank): piece r is rank r's send (count); in place when
// send is piece `rank` of recv.
inline ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t t, ncclComm_t comm, cudaStream_t s) {
    using namespace cuda_emu;
    {
        DeviceMap map;
        if (!nccl_args_ok(comm, t, ncclSum) || !nccl_device(send, count, t) || !nccl_device(recv, count * comm->size, t))
            return ncclInvalidArgument;
    }
    const size_t bytes = count * nccl_bytes(t);
    return nccl_queue(s, [=] {
        std::vector<char> in((const char*)send, (const char*)send + bytes);
        return MPI_Allgather(in.data(), (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
    });
}
// recv (count) on every rank = send (count) of root; in place when send == recv.
inline ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t t, int root, ncclComm_t comm, cudaStream_t s) {
    using namespace cuda_emu;
    {
        DeviceMap map;
        if (!nccl_args_ok(comm, t, ncclSum) || root < 0 || root >= comm->size || !nccl_device(recv, count, t) ||
            (comm->rank == root && !nccl_device(send, count, t)))
            return ncclInvalidArgument;
    }
    const bool is_root = comm->rank == root;
    return nccl_queue(s, [=] {
        if (is_root && send != recv) memmove(recv, send, count * nccl_bytes(t));
        return MPI_Bcast(recv, (int)(count * nccl_bytes(t)), MPI_BYTE, root, MPI_COMM_WORLD);
    });
}
#endif
