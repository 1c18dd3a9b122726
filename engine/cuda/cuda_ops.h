// Settings of the CUDA DeviceOps (engine/cuda/cuda_ops.cpp, which the ops registry gets through
// engine/cuda/registry.h when the machine has a GPU). Compiled only when DL_HAVE_CUDA.
#pragma once

namespace dl::cuda {

// Whether fp32 GEMMs (cuBLASLt) and convolutions (cuDNN) may use TF32 tensor cores: inputs keep
// 10 of fp32's 23 mantissa bits, accumulation stays fp32. Faster, less exact; off by default.
// Applies from the next op on; bf16 work is unaffected.
void set_allow_tf32(bool allow);
bool allow_tf32();

}  // namespace dl::cuda
