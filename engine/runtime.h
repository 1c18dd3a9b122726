// What a program sets or asks of the engine's compute beside the ops: the CPU threads, TF32 on the
// CUDA path, waiting for a device's queued work, its peak memory. The same in every build, so a
// program needs neither kernels/ nor engine/cuda/ headers nor #ifdef DL_HAVE_CUDA.
#pragma once
#include <cstddef>

#include "engine/dtype.h"

namespace dl {

// Threads of the CPU kernels (OpenMP); n <= 0 keeps the current count (at start OpenMP's:
// OMP_NUM_THREADS, else one per core). Results never depend on the count.
void set_num_threads(int n);
int num_threads();

// Whether fp32 GEMMs and convolutions on the CUDA device may use TF32 tensor cores (off at start;
// engine/cuda/cuda_ops.h). Throws dl::Error when turning it on in a build without the CUDA path.
void set_allow_tf32(bool allow);

// Which GPU of the machine the CUDA path uses (0 unless set; a data-parallel rank takes its local
// rank's; one the machine lacks is an error at the first CUDA work). Call it before any CUDA
// work; nothing without CUDA.
void select_gpu(int index);

// Whether `device` computes with bf16 activations (bf16 mixed precision): the GPU, and a CPU with
// bf16 dot-product instructions (AVX512-BF16). Throws dl::Error when the device is not available.
bool supports_bf16(Device device);

// Waits until the work queued on `device` is done; the CPU's is done when its op returns.
// Throws dl::Error when the device is not available.
void synchronize(Device device);

// The most bytes of `device` memory held by tensors at once since the start (the CUDA caching
// allocator's count, rounded sizes); 0 for the CPU, whose memory is not counted.
size_t max_memory_allocated(Device device);

}  // namespace dl
