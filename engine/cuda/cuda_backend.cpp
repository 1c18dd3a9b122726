#include "engine/cuda/cuda_backend.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/cuda/registry.h"
#include "engine/error.h"
#include "engine/storage.h"
#include "kernels/cuda/check.h"

namespace dl::cuda {

namespace {

constexpr size_t kSmallLimit = size_t{1} << 20;  // up to here, round to kSmallRound
constexpr size_t kSmallRound = 512;
constexpr size_t kLargeRound = size_t{2} << 20;

size_t round_size(size_t bytes) {
  const size_t unit = bytes <= kSmallLimit ? kSmallRound : kLargeRound;
  return bytes == 0 ? kSmallRound : (bytes + unit - 1) / unit * unit;
}

std::string mib(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return text;
}

// "12.4" from CUDA's 12040.
std::string cuda_version(int v) {
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}

struct Context {
  cudaStream_t stream = nullptr;
  std::once_flag cublas_once, cudnn_once;
  cublasHandle_t cublas = nullptr;
  cudnnHandle_t cudnn = nullptr;

  std::mutex mutex;                                            // guards the allocator below
  std::unordered_map<size_t, std::vector<void*>> free_blocks;  // rounded size -> cached blocks
  MemoryStats stats;
};

std::atomic<int> g_device_index{0};

Context* create_context() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) cudaGetLastError();  // not sticky: clear it for later checks
  if (status == cudaErrorInsufficientDriver) {
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    if (driver == 0)
      throw Error("no CUDA device found (no NVIDIA driver is loaded): use the CPU device");
    throw Error(dl::detail::concat("the NVIDIA driver is too old: it supports CUDA ",
                                   cuda_version(driver), " but this build's CUDA runtime is ",
                                   cuda_version(runtime),
                                   ". HINT: update the driver, or use the CPU device"));
  }
  if (status == cudaErrorNoDevice || (status == cudaSuccess && count == 0))
    throw Error("no CUDA device found: use the CPU device");
  if (status != cudaSuccess)
    throw Error(
        dl::detail::concat("CUDA initialisation failed: ", cuda::detail::cuda_error_text(status),
                           ". HINT: check the GPU with nvidia-smi, or use the CPU device"));
  // Never destroyed: tensors can be freed during static destruction, and destroying handles and
  // streams then races the CUDA runtime's own teardown. The driver releases all at process exit.
  if (g_device_index >= count)
    throw Error(dl::detail::concat(
        "GPU ", g_device_index.load(), " was asked for (a data-parallel ",
        "rank's local rank), but the machine shows ", count, ": start at most one rank per GPU"));
  DL_CUDA_CHECK(cudaSetDevice(g_device_index));
  cudaStream_t stream = nullptr;
  DL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  auto* context = new Context;
  context->stream = stream;
  return context;
}

struct InitResult {
  Context* context = nullptr;
  std::string error;
};

// Runs once; a failure is remembered and reported again on every later use.
const InitResult& init_result() {
  static const InitResult result = [] {
    try {
      return InitResult{create_context(), ""};
    } catch (const std::exception& e) {
      return InitResult{nullptr, e.what()};
    }
  }();
  return result;
}

Context& context() {
  init();
  return *init_result().context;
}

// Frees every cached block; the caller holds the mutex.
void release_cached(Context& ctx) {
  DL_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  for (auto& [size, blocks] : ctx.free_blocks) {
    for (void* p : blocks) {
      DL_CUDA_CHECK(cudaFree(p));
      ctx.stats.reserved -= size;
      ++ctx.stats.device_frees;
    }
  }
  ctx.free_blocks.clear();
}

// Host-to-device copies through pinned staging memory. A cudaMemcpyAsync from pageable memory
// first waits until the stream is idle, so every batch upload stalled the host behind all the
// queued kernels. Here the host copies the data into a pinned slot (at host memcpy speed), queues
// the transfer from the slot and records an event after it; a slot is reused only once its event
// has passed. With kSlots slots and a training step's five uploads (images, the labels for the
// loss and again for the accuracy count, the backward's seed, the optimizer's hyper-parameters),
// the host can run about 1.6 steps ahead of the GPU. The caller's memory is free when
// copy_to_device returns. Slots grow to the largest copy they have staged.
class StagingRing {
 public:
  // Copies up to this size are staged (a batch of 512 fp32 CIFAR-10 images is 6 MiB); larger ones
  // take the pageable path.
  static constexpr size_t kMaxBytes = size_t{32} << 20;
  static constexpr int kSlots = 8;

  void copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
    const std::lock_guard<std::mutex> lock(mutex_);
    Slot& slot = slots_[next_];
    next_ = (next_ + 1) % kSlots;
    if (slot.done == nullptr) {
      DL_CUDA_CHECK(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
    } else {
      DL_CUDA_CHECK(cudaEventSynchronize(slot.done));
    }
    if (slot.buffer.bytes() < bytes) slot.buffer = PinnedBuffer(std::max(bytes, kMinSlotBytes));
    std::memcpy(slot.buffer.data(), src, bytes);
    DL_CUDA_CHECK(cudaMemcpyAsync(dst, slot.buffer.data(), bytes, cudaMemcpyHostToDevice, stream));
    DL_CUDA_CHECK(cudaEventRecord(slot.done, stream));
  }

 private:
  static constexpr size_t kMinSlotBytes = size_t{1} << 20;
  struct Slot {
    PinnedBuffer buffer;
    cudaEvent_t done = nullptr;
  };
  std::mutex mutex_;
  Slot slots_[kSlots];
  int next_ = 0;
};

// The DeviceBackend that Storage uses for DeviceKind::cuda. Host-to-device copies go through the
// staging ring and stay queued (up to StagingRing::kMaxBytes); device-to-host copies wait for
// the stream, since the host reads the result next; device-to-device copies and memsets stay
// queued.
class CudaBackend final : public DeviceBackend {
 public:
  void* allocate(size_t bytes) override { return cuda::allocate(bytes); }
  void deallocate(void* ptr, size_t bytes) override { cuda::deallocate(ptr, bytes); }
  void copy(void* dst, Device to, const void* src, Device from, size_t bytes) override {
    if (bytes == 0) return;
    if (from.is_cpu() && bytes <= StagingRing::kMaxBytes) {
      staging_.copy_to_device(dst, src, bytes, stream());
      return;
    }
    const cudaMemcpyKind kind = from.is_cpu() ? cudaMemcpyHostToDevice
                                : to.is_cpu() ? cudaMemcpyDeviceToHost
                                              : cudaMemcpyDeviceToDevice;
    DL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, stream()));
    if (kind != cudaMemcpyDeviceToDevice) synchronize();
  }
  void memset_zero(void* dst, size_t bytes) override {
    if (bytes) DL_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream()));
  }

 private:
  StagingRing staging_;
};

}  // namespace

void select_device(int index) {
  g_device_index = index;
}

void init() {
  const InitResult& result = init_result();
  if (result.context == nullptr) throw Error(result.error);
}

bool available() {
  return init_result().context != nullptr;
}

DeviceBackend* backend_if_available() {
  // Leaked on purpose, like the Context.
  static DeviceBackend* const backend = device_present() ? new CudaBackend : nullptr;
  return backend;
}

bool device_present() {
  return absence_reason().empty();
}

std::string absence_reason() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the error: "no device" is an answer here, not a failure
    return cudaGetErrorString(status);
  }
  return count > 0 ? "" : "the CUDA driver reports no GPU";
}

cudaStream_t stream() {
  return context().stream;
}

void synchronize() {
  DL_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

cublasHandle_t cublas_handle() {
  Context& ctx = context();
  std::call_once(ctx.cublas_once, [&] {
    DL_CUBLAS_CHECK(cublasCreate(&ctx.cublas));
    DL_CUBLAS_CHECK(cublasSetStream(ctx.cublas, ctx.stream));
  });
  return ctx.cublas;
}

cudnnHandle_t cudnn_handle() {
  Context& ctx = context();
  std::call_once(ctx.cudnn_once, [&] {
    DL_CUDNN_CHECK(cudnnCreate(&ctx.cudnn));
    DL_CUDNN_CHECK(cudnnSetStream(ctx.cudnn, ctx.stream));
  });
  return ctx.cudnn;
}

void* allocate(size_t bytes) {
  Context& ctx = context();
  const size_t size = round_size(bytes);
  std::lock_guard<std::mutex> lock(ctx.mutex);
  void* ptr = nullptr;
  auto cached = ctx.free_blocks.find(size);
  if (cached != ctx.free_blocks.end() && !cached->second.empty()) {
    ptr = cached->second.back();
    cached->second.pop_back();
  } else {
    cudaError_t status = cudaMalloc(&ptr, size);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cached(ctx);
      status = cudaMalloc(&ptr, size);
    }
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t free = 0, total = 0;
      cudaMemGetInfo(&free, &total);
      throw Error(dl::detail::concat(
          "CUDA out of memory: asked for ", bytes, " bytes (", mib(size), " rounded) with ",
          mib(ctx.stats.in_use), " in use by tensors and ", mib(ctx.stats.reserved),
          " reserved by the caching allocator; the GPU has ", mib(free), " free of ", mib(total),
          ". HINT: reduce the batch size or the model width"));
    }
    DL_CUDA_CHECK(status);
    ctx.stats.reserved += size;
    ++ctx.stats.device_allocs;
  }
  ctx.stats.in_use += size;
  if (ctx.stats.in_use > ctx.stats.peak_in_use) ctx.stats.peak_in_use = ctx.stats.in_use;
  return ptr;
}

void deallocate(void* ptr, size_t bytes) {
  if (ptr == nullptr) return;
  Context& ctx = context();
  const size_t size = round_size(bytes);
  std::lock_guard<std::mutex> lock(ctx.mutex);
  ctx.free_blocks[size].push_back(ptr);
  ctx.stats.in_use -= size;
}

MemoryStats memory_stats() {
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mutex);
  return ctx.stats;
}

void reset_peak_memory() {
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mutex);
  ctx.stats.peak_in_use = ctx.stats.in_use;
}

void empty_cache() {
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.mutex);
  release_cached(ctx);
}

PinnedBuffer::PinnedBuffer(size_t bytes) : bytes_(bytes) {
  init();
  DL_CUDA_CHECK(cudaMallocHost(&data_, bytes == 0 ? 1 : bytes));
}

PinnedBuffer::~PinnedBuffer() {
  if (data_) cudaFreeHost(data_);
}

PinnedBuffer::PinnedBuffer(PinnedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  if (this != &other) {
    if (data_) cudaFreeHost(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

}  // namespace dl::cuda
