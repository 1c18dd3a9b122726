// NCCL's collectives over GPU tensors for the MPI world (compiled when the build has NCCL), on a
// stream of their own ordered after the engine's by events, so a step's sums run in order with
// its kernels and the host does not wait for them. A watchdog thread ends this rank (and so,
// through mpirun, the job) when an NCCL collective has not completed within DL_NCCL_TIMEOUT
// seconds (default 600: a rank that hangs in NCCL without dying, which mpirun does not notice) or
// the GPU reports an error, saying which. Internal to engine/dist.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>

#include <memory>

#include "engine/dist/communicator.h"
#include "engine/dtype.h"

struct ncclComm;
struct CUstream_st;

namespace dl::dist {

class NcclCollectives {
 public:
  // Collective over all ranks: rank 0 makes the NCCL id and `broadcast_id` (over MPI) hands it to
  // the others. The engine's GPU must be chosen before.
  NcclCollectives(int rank, int size,
                  const std::function<void(void* id, size_t bytes)>& broadcast_id);
  ~NcclCollectives();
  NcclCollectives(const NcclCollectives&) = delete;
  NcclCollectives& operator=(const NcclCollectives&) = delete;

  // The sum on this communicator's own stream, after the work queued so far on the engine's
  // stream; wait() makes the engine's stream wait for it.
  std::unique_ptr<Communicator::Pending> all_reduce_sum_async(void* data, int64_t count,
                                                              DType dtype);
  void broadcast(void* data, int64_t bytes, int root);
  // Ends the communicator without waiting for the other ranks (after an error).
  void abort();

 private:
  // Watches the collective just queued on `stream` (see the file comment).
  void watch(CUstream_st* stream);

  std::atomic<ncclComm*> comm_{nullptr};  // the watchdog may abort it from its thread
  CUstream_st* stream_ = nullptr;         // the asynchronous sums' (created with the communicator)
  struct Watchdog;
  std::unique_ptr<Watchdog> watchdog_;
};

}  // namespace dl::dist
