#include "engine/runtime.h"

#include "engine/device_ops.h"
#include "engine/error.h"
#include "kernels/cpu/parallel.h"
#ifdef DL_HAVE_CUDA
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_ops.h"
#endif

namespace dl {

void set_num_threads(int n) {
  cpu::set_num_threads(n);
}

int num_threads() {
  return cpu::num_threads();
}

void set_allow_tf32(bool allow) {
#ifdef DL_HAVE_CUDA
  cuda::set_allow_tf32(allow);
#else
  DL_CHECK(!allow, "TF32 needs the CUDA path: this build has none");
#endif
}

void select_gpu([[maybe_unused]] int index) {
#ifdef DL_HAVE_CUDA
  cuda::select_device(index);
#endif
}

bool supports_bf16(Device device) {
  return device_ops(device).supports_bf16();
}

void synchronize(Device device) {
  device_ops(device).synchronize();
}

size_t max_memory_allocated([[maybe_unused]] Device device) {
#ifdef DL_HAVE_CUDA
  if (device.is_cuda()) return cuda::memory_stats().peak_in_use;
#endif
  return 0;
}

}  // namespace dl
