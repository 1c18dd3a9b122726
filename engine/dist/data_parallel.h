// Data parallelism over a Communicator, as PyTorch's DistributedDataParallel: every rank holds the
// same model, trains on its slice of each global batch, and sums the gradients over the ranks
// before the optimizer's step. With each rank's loss scaled by its share of the global batch
// (rows on the rank / rows in the global batch), the summed gradient is the one a single process
// computes on the whole batch, up to float rounding.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/dist/communicator.h"
#include "engine/nn.h"

namespace dl::dist {

// Sums the parameters' gradients over the ranks in fixed buckets, in a fixed order (the
// parameters' reverse order, in which a backward finishes them), so that every run sums the same
// way. A bucket's sum starts during the backward, as soon as its last gradient is accumulated (a
// hook on each parameter), while the backward goes on: on a GPU on a stream of its own. Buckets
// start in order, a later one when all before it have started, so every rank starts the same
// collectives in the same order. A parameter without a gradient on a rank counts as zeros there.
// One backward, then one sum_gradients(), per step.
class GradientReducer {
 public:
  static constexpr int64_t kBucketBytes = 25 << 20;  // DistributedDataParallel's default

  GradientReducer(Communicator& comm, std::vector<Tensor> params,
                  int64_t bucket_bytes = kBucketBytes);
  // Removes the parameters' hooks.
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Starts the buckets not yet started, waits for all, and replaces each parameter's gradient by
  // its sum over the ranks (on one rank: by itself, a missing one by zeros).
  void sum_gradients();
  // Bytes summed per call, and in how many collectives.
  int64_t bytes() const { return bytes_; }
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Buckets started by the backward since the last sum_gradients() (the overlap; for tests).
  int64_t started_in_backward() const { return started_in_backward_; }

 private:
  struct Bucket {
    std::vector<size_t> params;                  // indices into params_
    Tensor flat;                                 // their gradients end to end, f32 on their device
    size_t ready = 0;                            // of its parameters, accumulated in this backward
    std::unique_ptr<Communicator::Pending> sum;  // waits when destroyed, before flat goes
  };
  // A parameter's gradient is complete: starts the buckets that are ready, in order.
  void on_ready(size_t bucket);
  void start(Bucket& bucket);

  Communicator& comm_;
  std::vector<Tensor> params_;
  std::vector<Bucket> buckets_;
  size_t next_to_start_ = 0;
  int64_t bytes_ = 0, started_in_backward_ = 0;
};

// Copies rank 0's parameters and buffers into every rank's module (at the start of a run, and to
// give every rank the running statistics of rank 0 before an evaluation, as
// DistributedDataParallel's broadcast_buffers does).
void broadcast_parameters(Communicator& comm, nn::Module& module);
void broadcast_buffers(Communicator& comm, nn::Module& module);

// Makes every BatchNorm2d of `module` normalise a training batch with the statistics of the
// global batch (PyTorch's SyncBatchNorm): per-channel sums over the ranks in forward and backward.
// On one rank it changes nothing.
void sync_batch_norm(nn::Module& module, Communicator& comm);

}  // namespace dl::dist
