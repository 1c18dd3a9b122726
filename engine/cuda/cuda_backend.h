// The CUDA path's runtime: device 0, one compute stream, a caching allocator, and the cuBLAS and
// cuDNN handles. Compiled only when DL_HAVE_CUDA.
//
// How it is wired in: the first use of the storage registry (engine/storage.cpp) asks
// backend_if_available() (engine/cuda/registry.h), which gives a DeviceBackend for DeviceKind::cuda
// when the machine has a device. Without one, device_backend(Device::cuda()) throws its "not
// available" error, as in a CPU-only build. The context, stream and allocator are created lazily
// by init(), on the first CUDA allocation or copy or the first call of a function below; init()
// also says why no GPU is usable (no device, driver too old).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <cstddef>
#include <string>

namespace dl::cuda {

// The GPU init() will use (0 unless set; init() fails naming it when the machine has fewer).
// Call it before the first CUDA work (engine/runtime.h's select_gpu).
void select_device(int index);
// Initialises the selected device (select_device), the compute stream and the allocator once; later
// calls return at once. Throws dl::Error saying what to do when no GPU is usable: no device ("no
// CUDA device found: use the CPU device"), or a driver older than the CUDA runtime (both versions
// named).
void init();
// Whether init() succeeds; never throws.
bool available();
// Whether the machine has a CUDA device (cudaGetDeviceCount > 0). Loads the driver but creates no
// context; never throws. The registries get the CUDA DeviceBackend and DeviceOps when it holds.
bool device_present();
// Why device_present() is false, in words (the CUDA runtime's message, or "the CUDA driver reports
// no GPU"); empty when a GPU is present. Never throws.
std::string absence_reason();

// The stream that every kernel, copy and library call of the engine is queued on.
cudaStream_t stream();
// Waits until everything queued on stream() has finished.
void synchronize();
// Created once on first use, bound to stream(), then reused.
cublasHandle_t cublas_handle();
cudnnHandle_t cudnn_handle();

// Device memory from the caching allocator. Sizes are rounded up (to 512 B up to 1 MiB, to 2 MiB
// above) and freed blocks wait in per-size free lists, so a steady-state training step calls
// neither cudaMalloc nor cudaFree. Reuse is stream-ordered: a block freed while queued work still
// reads it can be handed out at once, because all work is on stream() and runs in order.
// Out of memory: empties the cache, retries once, then throws dl::Error with the sizes involved.
void* allocate(size_t bytes);
// `bytes` is the size given to allocate().
void deallocate(void* ptr, size_t bytes);

struct MemoryStats {
  size_t in_use = 0;         // bytes handed out (rounded sizes)
  size_t peak_in_use = 0;    // since start or reset_peak_memory()
  size_t reserved = 0;       // bytes held from cudaMalloc: in use plus cached
  size_t device_allocs = 0;  // cudaMalloc calls so far
  size_t device_frees = 0;   // cudaFree calls so far
};
MemoryStats memory_stats();
void reset_peak_memory();
// Gives every cached (free) block back to the driver, after waiting for the stream.
void empty_cache();

// Page-locked host memory, for host<->device copies at full bus speed (the staging buffers of
// every host-to-device tensor copy, in cuda_backend.cpp). Move-only; freed with the object.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t bytes);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& other) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace dl::cuda
