// Where and how a program computes, set up once from the settings train and bench_model share:
// the device, the CPU threads, the precision and TF32 (through engine/runtime.h). Errors name the
// flags.
#pragma once
#include <string>

#include "engine/tensor.h"

namespace dl::examples {

// bf16: bf16 activations, fp32 parameters, gradients, statistics and optimizer state (CUDA path).
enum class Precision { fp32, bf16 };
std::string to_string(Precision precision);
// "fp32" or "bf16"; anything else is an error naming `flag`.
Precision parse_precision(const std::string& flag, const std::string& text);

struct Runtime {
  Device device;
  DType activations;  // what the input batch is converted to before its copy to the device
};

// dl::resolve_device for the value of --device: an error names the flag's CPU choice.
Device resolve_device(const std::string& device);

// Resolves `device` (auto, cuda or cpu), refuses bf16 and TF32 off the CUDA path, turns TF32 on
// or off there, and sets the CPU thread count (0: all cores).
Runtime setup_runtime(const std::string& device, int threads, Precision precision, bool tf32);

// The caching allocator's peak of device memory in use, in MiB; -1 on the CPU.
double peak_memory_mb(Device device);

}  // namespace dl::examples
