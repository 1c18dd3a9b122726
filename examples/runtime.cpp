#include "examples/runtime.h"

#include "engine/error.h"
#include "engine/ops.h"
#include "kernels/cpu/parallel.h"
#ifdef DL_HAVE_CUDA
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_ops.h"
#endif

namespace dl::examples {

std::string to_string(Precision precision) {
  return precision == Precision::bf16 ? "bf16" : "fp32";
}

Precision parse_precision(const std::string& flag, const std::string& text) {
  if (text == "fp32") return Precision::fp32;
  if (text == "bf16") return Precision::bf16;
  throw Error("--" + flag + " must be fp32 or bf16, got '" + text + "'");
}

Runtime setup_runtime(const std::string& device_name, int threads, Precision precision, bool tf32) {
  const Device device = resolve_device(device_name);
  DL_CHECK(precision == Precision::fp32 || device.is_cuda(),
           "--precision bf16 needs the CUDA path; on the CPU use --precision fp32");
  DL_CHECK(!tf32 || device.is_cuda(), "--tf32 applies to the CUDA path only");
#ifdef DL_HAVE_CUDA
  if (device.is_cuda()) cuda::set_allow_tf32(tf32);
#endif
  cpu::set_num_threads(threads);
  return {device, precision == Precision::bf16 ? DType::bf16 : DType::f32};
}

int cpu_threads() {
  return cpu::num_threads();
}

void synchronize([[maybe_unused]] Device device) {
#ifdef DL_HAVE_CUDA
  if (device.is_cuda()) cuda::synchronize();
#endif
}

double peak_memory_mb([[maybe_unused]] Device device) {
#ifdef DL_HAVE_CUDA
  if (device.is_cuda()) return static_cast<double>(cuda::memory_stats().peak_in_use) / (1 << 20);
#endif
  return -1;
}

}  // namespace dl::examples
