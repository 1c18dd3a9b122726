// The processes (ranks) of a data-parallel job and their collectives: sums over a buffer,
// broadcast, barrier. Every rank calls the same collectives in the same order with the same
// shapes; a collective waits for all ranks. Backends: MPI for host memory (and CPU tensors), NCCL
// for GPU tensors (the NCCL id handed out over MPI), each built when found (configure says which);
// a process started without a launcher is a job of one rank whose collectives do nothing.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace dl::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The rank among those on this machine (picks the GPU), and how many ranks share the machine.
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;

  // Sums a contiguous tensor (f32, i32 or i64; bf16 too on a GPU) over the ranks, in place.
  virtual void all_reduce_sum(Tensor& t) = 0;
  // A collective under way: wait() completes it. For a GPU tensor the sum runs on a stream of its
  // own and wait() only makes the engine's stream wait for it (the host does not block).
  class Pending {
   public:
    virtual ~Pending() = default;
    virtual void wait() = 0;
  };
  // all_reduce_sum, started: `t` must not be touched until wait() returns. Ranks start their
  // collectives in the same order.
  virtual std::unique_ptr<Pending> all_reduce_sum_async(Tensor& t) = 0;
  // Copies `root`'s tensor into every rank's (same shape and dtype).
  virtual void broadcast(Tensor& t, int root) = 0;
  // Host values.
  virtual void all_reduce_sum(std::span<double> values) = 0;
  virtual void all_reduce_max(std::span<int64_t> values) = 0;
  // Every rank's value, in rank order.
  virtual std::vector<int64_t> all_gather(int64_t value) = 0;
  virtual void barrier() = 0;
  // Ends every rank of the job at once (after a rank's error: the others may be waiting in a
  // collective and would otherwise wait forever). Does not return.
  [[noreturn]] virtual void abort(int exit_code) = 0;
};

// This process's job: the MPI world when a launcher started it (mpirun, srun: recognised by the
// environment they set) and the build has MPI; otherwise one rank. The first call initialises MPI,
// later calls return the same object. Throws a dl::Error when a launcher started several ranks
// and the build has no MPI (each would otherwise train alone).
Communicator& world();
// world() if a call to it has returned, else nullptr: for an error handler, which must not start
// MPI (or fail to) on its own.
Communicator* started_world();

// Whether this build has the MPI and NCCL backends.
bool built_with_mpi();
bool built_with_nccl();

}  // namespace dl::dist
