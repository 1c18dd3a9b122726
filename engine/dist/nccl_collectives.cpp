#include "engine/dist/nccl_collectives.h"

#include <nccl.h>

#include <string>

#include "engine/cuda/cuda_backend.h"
#include "engine/error.h"
#include "kernels/cuda/check.h"

namespace dl::dist {

namespace {

void check(ncclResult_t result, const char* call) {
  DL_CHECK(result == ncclSuccess, call, " failed: ", ncclGetErrorString(result), " (",
           ncclGetLastError(nullptr), ")");
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return ncclFloat32;
    case DType::bf16:
      return ncclBfloat16;
    case DType::i32:
      return ncclInt32;
    case DType::i64:
      return ncclInt64;
    default:
      break;
  }
  throw Error("NCCL all-reduce: no NCCL type for " + std::string(dtype_name(dtype)));
}

}  // namespace

NcclCollectives::NcclCollectives(int rank, int size,
                                 const std::function<void(void*, size_t)>& broadcast_id) {
  ncclUniqueId id{};
  if (rank == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  broadcast_id(&id, sizeof id);
  cuda::init();
  check(ncclCommInitRank(&comm_, size, id, rank), "ncclCommInitRank");
  DL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
}

NcclCollectives::~NcclCollectives() {
  if (comm_) ncclCommDestroy(comm_);
  if (stream_) cudaStreamDestroy(stream_);
}

namespace {

// An event recorded on `from`, waited for by `to`: `to`'s later work runs after `from`'s so far.
void order_after(cudaStream_t from, cudaStream_t to) {
  cudaEvent_t event = nullptr;
  DL_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  DL_CUDA_CHECK(cudaEventRecord(event, from));
  DL_CUDA_CHECK(cudaStreamWaitEvent(to, event, 0));
  DL_CUDA_CHECK(cudaEventDestroy(event));  // released once the wait has happened
}

class NcclPending final : public Communicator::Pending {
 public:
  explicit NcclPending(cudaStream_t stream) : stream_(stream) {}
  ~NcclPending() override { wait(); }
  void wait() override {
    if (!stream_) return;
    order_after(stream_, cuda::stream());
    stream_ = nullptr;
  }

 private:
  cudaStream_t stream_;
};

}  // namespace

std::unique_ptr<Communicator::Pending> NcclCollectives::all_reduce_sum_async(void* data,
                                                                             int64_t count,
                                                                             DType dtype) {
  order_after(cuda::stream(), stream_);
  check(ncclAllReduce(data, data, static_cast<size_t>(count), nccl_type(dtype), ncclSum, comm_,
                      stream_),
        "ncclAllReduce");
  return std::make_unique<NcclPending>(stream_);
}

void NcclCollectives::all_reduce_sum(void* data, int64_t count, DType dtype) {
  check(ncclAllReduce(data, data, static_cast<size_t>(count), nccl_type(dtype), ncclSum, comm_,
                      cuda::stream()),
        "ncclAllReduce");
}

void NcclCollectives::broadcast(void* data, int64_t bytes, int root) {
  check(
      ncclBroadcast(data, data, static_cast<size_t>(bytes), ncclUint8, root, comm_, cuda::stream()),
      "ncclBroadcast");
}

void NcclCollectives::abort() {
  if (comm_) ncclCommAbort(comm_);
  comm_ = nullptr;
}

}  // namespace dl::dist
