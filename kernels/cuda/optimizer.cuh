// Fused optimizer updates on the GPU: AdamW and SGD over all parameters in one launch (a
// "multi-tensor apply"), with the formulas and float operations of engine/optim.cpp (PyTorch's
// torch.optim.AdamW / SGD, foreach=False). Parameters, gradients and optimizer state are fp32
// (master weights); an optional bf16 copy of each updated parameter is written in the same pass
// (the bf16 GEMM / conv inputs of mixed precision).
//
// How a caller drives it:
//   1. Once (and whenever the set of parameters changes): describe every parameter as an
//      OptimTensor, split them with make_optim_chunks, copy the chunks to a device array.
//   2. Per step: write the hyper-parameters (adamw_hyper / sgd_hyper on the host, one entry per
//      `hyper` index, e.g. per parameter group) into a small device array with cudaMemcpyAsync,
//      then launch adamw_step / sgd_step. Nothing else changes between steps, so a captured CUDA
//      Graph replays the update with a new learning rate without being rebuilt.
// A parameter whose gradient is undefined in a step must not be in the chunk array of that step
// (the CPU optimizer skips it and does not count the step for it).
//
// Rounding: every operation is an explicitly rounded fp32 operation (no fused multiply-add), in
// the order engine/optim.cpp writes it, so the update is bit-identical to a CPU build that does
// not contract a * b + c into an FMA (e.g. -ffp-contract=off for engine/optim.cpp).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

namespace dl::cuda {

// Elements per chunk: a chunk is one thread block's work.
constexpr int64_t kOptimChunkElems = 8192;

// One parameter tensor of numel contiguous fp32 elements.
//   AdamW: state0 = exp_avg, state1 = exp_avg_sq (both required).
//   SGD:   state0 = momentum_buffer (null without momentum), state1 unused (null).
// param_bf16, if non-null, receives the updated parameter rounded to bf16. `hyper` indexes the
// hyper-parameter array passed to the step.
struct OptimTensor {
  float* param = nullptr;
  const float* grad = nullptr;
  float* state0 = nullptr;
  float* state1 = nullptr;
  __nv_bfloat16* param_bf16 = nullptr;
  int64_t numel = 0;
  int32_t hyper = 0;
};

// At most kOptimChunkElems elements of one tensor: the tensor's pointers advanced to the chunk.
struct OptimChunk {
  float* param;
  const float* grad;
  float* state0;
  float* state1;
  __nv_bfloat16* param_bf16;
  int32_t numel;
  int32_t hyper;
};

// Splits the tensors into chunks of kOptimChunkElems elements (the last chunk of a tensor may be
// shorter; empty tensors give none), in tensor order. Chunk offsets are multiples of 4 elements,
// so a 16-byte aligned tensor gives 16-byte aligned chunks (the vectorised path).
std::vector<OptimChunk> make_optim_chunks(const std::vector<OptimTensor>& tensors);

// AdamW's per-step scalars, computed on the host exactly as engine/optim.cpp does (in double,
// then rounded to float).
struct AdamWHyper {
  float decay;  // 1 - lr wd
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float step_size;              // lr / (1 - beta1^step)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
  float eps;
};
// `step` counts the updates of the parameter, this one included (1 on the first update).
AdamWHyper adamw_hyper(double lr, double weight_decay, double beta1, double beta2, double eps,
                       int64_t step);

struct SGDHyper {
  float lr, weight_decay, momentum, one_minus_dampening;
  int32_t nesterov;  // 0 or 1
  int32_t first;     // 1 on the parameter's first update: the momentum buffer starts as g
};
SGDHyper sgd_hyper(double lr, double weight_decay, double momentum, double dampening, bool nesterov,
                   bool first);

// For each chunk, with h = hyper[chunk.hyper] (all three arrays in device memory):
//   p *= decay; m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
//   p -= step_size (m / (sqrt(v) / bias_correction2_sqrt + eps)).
void adamw_step(const OptimChunk* chunks, int64_t num_chunks, const AdamWHyper* hyper,
                cudaStream_t stream);
//   g = grad + wd p (when wd != 0); with a momentum buffer: buf = first ? g : momentum buf +
//   (1 - dampening) g, g = nesterov ? g + momentum buf : buf; then p -= lr g.
void sgd_step(const OptimChunk* chunks, int64_t num_chunks, const SGDHyper* hyper,
              cudaStream_t stream);

}  // namespace dl::cuda
