#include "examples/runtime.h"

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/runtime.h"

namespace dl::examples {

std::string to_string(Precision precision) {
  return precision == Precision::bf16 ? "bf16" : "fp32";
}

Precision parse_precision(const std::string& flag, const std::string& text) {
  if (text == "fp32") return Precision::fp32;
  if (text == "bf16") return Precision::bf16;
  throw Error("--" + flag + " must be fp32 or bf16, got '" + text + "'");
}

Device resolve_device(const std::string& device) {
  try {
    return dl::resolve_device(device);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + ". HINT: --device cpu runs on any machine");
  }
}

Runtime setup_runtime(const std::string& device_name, int threads, Precision precision, bool tf32) {
  const Device device = resolve_device(device_name);
  DL_CHECK(precision == Precision::fp32 || supports_bf16(device),
           "--precision bf16 needs the GPU or a CPU with AVX512-BF16 instructions, which this one "
           "lacks; use --precision fp32");
  DL_CHECK(!tf32 || device.is_cuda(), "--tf32 applies to the CUDA path only");
  if (device.is_cuda()) set_allow_tf32(tf32);
  set_num_threads(threads);
  return {device, precision == Precision::bf16 ? DType::bf16 : DType::f32};
}

double peak_memory_mb(Device device) {
  if (!device.is_cuda()) return -1;
  return static_cast<double>(max_memory_allocated(device)) / (1 << 20);
}

}  // namespace dl::examples
