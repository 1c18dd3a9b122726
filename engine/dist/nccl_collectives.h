// NCCL's collectives over GPU tensors for the MPI world (compiled when the build has NCCL):
// queued on the engine's CUDA stream, so a step's all-reduce runs in order with its kernels and
// the host does not wait for it. Internal to engine/dist.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>

#include "engine/dtype.h"

struct ncclComm;

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

  void all_reduce_sum(void* data, int64_t count, DType dtype);
  void broadcast(void* data, int64_t bytes, int root);
  // Ends the communicator without waiting for the other ranks (after an error).
  void abort();

 private:
  ncclComm* comm_ = nullptr;
};

}  // namespace dl::dist
