#include "engine/dist/nccl_collectives.h"

#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

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

// The collectives queued and not yet seen complete, oldest first, checked once a second.
struct NcclCollectives::Watchdog {
  struct Collective {
    cudaEvent_t done;
    std::chrono::steady_clock::time_point queued;
  };
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<Collective> in_flight;
  bool stopping = false;
  std::thread thread;
};

namespace {

double timeout_seconds() {
  const char* text = std::getenv("DL_NCCL_TIMEOUT");
  const double value = text ? std::atof(text) : 600.0;
  return value > 0 ? value : 600.0;
}

}  // namespace

NcclCollectives::NcclCollectives(int rank, int size,
                                 const std::function<void(void*, size_t)>& broadcast_id)
    : watchdog_(std::make_unique<Watchdog>()) {
  ncclUniqueId id{};
  if (rank == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  broadcast_id(&id, sizeof id);
  cuda::init();
  ncclComm* comm = nullptr;
  check(ncclCommInitRank(&comm, size, id, rank), "ncclCommInitRank");
  comm_ = comm;
  DL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  int device = 0;
  DL_CUDA_CHECK(cudaGetDevice(&device));
  const double timeout = timeout_seconds();
  // It ends the process with _Exit, not MPI_Abort: MPI is the main thread's alone, and mpirun
  // ends the other ranks when one exits without finalising.
  watchdog_->thread = std::thread([this, device, rank, timeout] {
    cudaSetDevice(device);
    Watchdog& w = *watchdog_;
    std::unique_lock<std::mutex> lock(w.mutex);
    while (!w.stopping) {
      w.wake.wait_for(lock, std::chrono::seconds(1));
      cudaError_t status = cudaSuccess;
      while (!w.in_flight.empty() &&
             (status = cudaEventQuery(w.in_flight.front().done)) == cudaSuccess) {
        cudaEventDestroy(w.in_flight.front().done);
        w.in_flight.pop_front();
      }
      if (w.in_flight.empty()) continue;
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                          w.in_flight.front().queued)
                                .count();
      if (status == cudaErrorNotReady && waited < timeout) continue;
      if (status == cudaErrorNotReady) {
        std::fprintf(stderr,
                     "rank %d: error: an NCCL collective has not completed in %.0f s "
                     "(DL_NCCL_TIMEOUT): another rank stopped taking part; ending this rank\n",
                     rank, waited);
      } else {
        std::fprintf(stderr, "rank %d: error: the GPU failed during NCCL's work: %s\n", rank,
                     cudaGetErrorString(status));
      }
      if (ncclComm* comm = comm_.exchange(nullptr)) ncclCommAbort(comm);
      std::_Exit(1);
    }
  });
}

NcclCollectives::~NcclCollectives() {
  {
    std::lock_guard<std::mutex> lock(watchdog_->mutex);
    watchdog_->stopping = true;
  }
  watchdog_->wake.notify_all();
  watchdog_->thread.join();
  for (const Watchdog::Collective& c : watchdog_->in_flight) cudaEventDestroy(c.done);
  if (ncclComm* comm = comm_.exchange(nullptr)) ncclCommDestroy(comm);
  if (stream_) cudaStreamDestroy(stream_);
}

void NcclCollectives::watch(cudaStream_t stream) {
  cudaEvent_t done = nullptr;
  DL_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  DL_CUDA_CHECK(cudaEventRecord(done, stream));
  std::lock_guard<std::mutex> lock(watchdog_->mutex);
  watchdog_->in_flight.push_back({done, std::chrono::steady_clock::now()});
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
  check(ncclAllReduce(data, data, static_cast<size_t>(count), nccl_type(dtype), ncclSum,
                      comm_.load(), stream_),
        "ncclAllReduce");
  watch(stream_);
  return std::make_unique<NcclPending>(stream_);
}

void NcclCollectives::broadcast(void* data, int64_t bytes, int root) {
  check(ncclBroadcast(data, data, static_cast<size_t>(bytes), ncclUint8, root, comm_.load(),
                      cuda::stream()),
        "ncclBroadcast");
  watch(cuda::stream());
}

void NcclCollectives::abort() {
  if (ncclComm* comm = comm_.exchange(nullptr)) ncclCommAbort(comm);
}

}  // namespace dl::dist
