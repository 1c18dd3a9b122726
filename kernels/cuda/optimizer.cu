// Fused AdamW / SGD kernels: one block per parameter chunk, hyper-parameters read from the device.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/optimizer.cuh"

namespace dl::cuda {

namespace {

constexpr int kBlock = 256;

struct alignas(16) Float4 {
  float v[4];
};
struct alignas(8) Bf16x4 {
  __nv_bfloat16 v[4];
};

__device__ __forceinline__ bool aligned8(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 7u) == 0;
}

// One AdamW update of p (with its state m, v) by the gradient g, engine/optim.cpp's adamw_cpu.
struct AdamWUpdate {
  AdamWHyper h;
  static __device__ AdamWUpdate make(const AdamWHyper& hyper, const OptimChunk&) { return {hyper}; }
  __device__ __forceinline__ void operator()(float& p, float g, float& m, float& v) const {
    p = __fmul_rn(p, h.decay);
    m = __fadd_rn(__fmul_rn(h.beta1, m), __fmul_rn(h.one_minus_beta1, g));
    v = __fadd_rn(__fmul_rn(h.beta2, v), __fmul_rn(h.one_minus_beta2, __fmul_rn(g, g)));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), h.bias_correction2_sqrt), h.eps);
    p = __fsub_rn(p, __fmul_rn(h.step_size, __fdiv_rn(m, denom)));
  }
};

// One SGD update of p (with its momentum buffer, if has_buffer) by g, engine/optim.cpp's sgd_cpu.
struct SGDUpdate {
  SGDHyper h;
  bool has_buffer;
  static __device__ SGDUpdate make(const SGDHyper& hyper, const OptimChunk& c) {
    return {hyper, c.state0 != nullptr};
  }
  __device__ __forceinline__ void operator()(float& p, float grad, float& buf, float&) const {
    float g = h.weight_decay != 0.0f ? __fadd_rn(grad, __fmul_rn(h.weight_decay, p)) : grad;
    if (has_buffer) {
      buf =
          h.first ? g : __fadd_rn(__fmul_rn(h.momentum, buf), __fmul_rn(h.one_minus_dampening, g));
      g = h.nesterov ? __fadd_rn(g, __fmul_rn(h.momentum, buf)) : buf;
    }
    p = __fsub_rn(p, __fmul_rn(h.lr, g));
  }
};

// ----------------------------------------------------------------------------------------------
// CUDA kernels

// Block b updates chunk b: thread t handles the 4-element groups t, t + blockDim, ... (16-byte
// loads when every pointer of the chunk is aligned), then the scalar tail. Per element: AdamW
// reads 16 and writes 12 bytes (+2 with the bf16 copy), ~12 FLOPs incl. a sqrt and two divisions;
// SGD reads 8 (12 with momentum) and writes 4 (8), 2 to 6 FLOPs.
template <class Hyper, class Update>
__global__ void __launch_bounds__(kBlock)
    optim_step_kernel(const OptimChunk* chunks, const Hyper* hyper) {
  const OptimChunk c = chunks[blockIdx.x];
  const Update update = Update::make(hyper[c.hyper], c);
  const bool has0 = c.state0 != nullptr, has1 = c.state1 != nullptr;
  const bool has_bf16 = c.param_bf16 != nullptr;
  const bool vec = aligned16(c.param) && aligned16(c.grad) && (!has0 || aligned16(c.state0)) &&
                   (!has1 || aligned16(c.state1)) && (!has_bf16 || aligned8(c.param_bf16));
  const int groups = vec ? c.numel / 4 : 0;
  for (int i = threadIdx.x; i < groups; i += blockDim.x) {
    Float4 p = reinterpret_cast<const Float4*>(c.param)[i];
    const Float4 g = reinterpret_cast<const Float4*>(c.grad)[i];
    Float4 s0{}, s1{};
    if (has0) s0 = reinterpret_cast<const Float4*>(c.state0)[i];
    if (has1) s1 = reinterpret_cast<const Float4*>(c.state1)[i];
#pragma unroll
    for (int k = 0; k < 4; ++k) update(p.v[k], g.v[k], s0.v[k], s1.v[k]);
    reinterpret_cast<Float4*>(c.param)[i] = p;
    if (has0) reinterpret_cast<Float4*>(c.state0)[i] = s0;
    if (has1) reinterpret_cast<Float4*>(c.state1)[i] = s1;
    if (has_bf16) {
      Bf16x4 b;
#pragma unroll
      for (int k = 0; k < 4; ++k) b.v[k] = __float2bfloat16(p.v[k]);
      reinterpret_cast<Bf16x4*>(c.param_bf16)[i] = b;
    }
  }
  for (int i = groups * 4 + threadIdx.x; i < c.numel; i += blockDim.x) {
    float p = c.param[i], s0 = has0 ? c.state0[i] : 0.0f, s1 = has1 ? c.state1[i] : 0.0f;
    update(p, c.grad[i], s0, s1);
    c.param[i] = p;
    if (has0) c.state0[i] = s0;
    if (has1) c.state1[i] = s1;
    if (has_bf16) c.param_bf16[i] = __float2bfloat16(p);
  }
}

// ----------------------------------------------------------------------------------------------
// kernel launchers

template <class Hyper, class Update>
void launch_step(const OptimChunk* chunks, int64_t num_chunks, const Hyper* hyper,
                 cudaStream_t stream) {
  DL_CUDA_REQUIRE(num_chunks >= 0 && num_chunks <= INT32_MAX, "bad chunk count");
  if (num_chunks == 0) return;
  DL_CUDA_REQUIRE(chunks != nullptr && hyper != nullptr, "chunks and hyper-parameters needed");
  optim_step_kernel<Hyper, Update>
      <<<static_cast<unsigned>(num_chunks), kBlock, 0, stream>>>(chunks, hyper);
  DL_CUDA_CHECK_LAUNCH();
}

}  // namespace

std::vector<OptimChunk> make_optim_chunks(const std::vector<OptimTensor>& tensors) {
  std::vector<OptimChunk> chunks;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const OptimTensor& x = tensors[t];
    DL_CUDA_REQUIRE(x.numel >= 0, "tensor " + std::to_string(t) + " has a negative size");
    if (x.numel == 0) continue;
    DL_CUDA_REQUIRE(x.param != nullptr && x.grad != nullptr,
                    "tensor " + std::to_string(t) + " has no parameter or gradient pointer");
    DL_CUDA_REQUIRE(x.hyper >= 0, "tensor " + std::to_string(t) + " has a negative hyper index");
    for (int64_t off = 0; off < x.numel; off += kOptimChunkElems) {
      const int64_t len = std::min(kOptimChunkElems, x.numel - off);
      chunks.push_back({x.param + off, x.grad + off, x.state0 ? x.state0 + off : nullptr,
                        x.state1 ? x.state1 + off : nullptr,
                        x.param_bf16 ? x.param_bf16 + off : nullptr, static_cast<int32_t>(len),
                        x.hyper});
    }
  }
  return chunks;
}

AdamWHyper adamw_hyper(double lr, double weight_decay, double beta1, double beta2, double eps,
                       int64_t step) {
  DL_CUDA_REQUIRE(step >= 1, "AdamW step counts from 1");
  const double t = static_cast<double>(step);
  const double bias_correction1 = 1 - std::pow(beta1, t);
  const double bias_correction2 = 1 - std::pow(beta2, t);
  return {static_cast<float>(1 - lr * weight_decay),
          static_cast<float>(beta1),
          static_cast<float>(1 - beta1),
          static_cast<float>(beta2),
          static_cast<float>(1 - beta2),
          static_cast<float>(lr / bias_correction1),
          static_cast<float>(std::sqrt(bias_correction2)),
          static_cast<float>(eps)};
}

SGDHyper sgd_hyper(double lr, double weight_decay, double momentum, double dampening, bool nesterov,
                   bool first) {
  return {static_cast<float>(lr),
          static_cast<float>(weight_decay),
          static_cast<float>(momentum),
          static_cast<float>(1 - dampening),
          nesterov ? 1 : 0,
          first ? 1 : 0};
}

void adamw_step(const OptimChunk* chunks, int64_t num_chunks, const AdamWHyper* hyper,
                cudaStream_t stream) {
  launch_step<AdamWHyper, AdamWUpdate>(chunks, num_chunks, hyper, stream);
}

void sgd_step(const OptimChunk* chunks, int64_t num_chunks, const SGDHyper* hyper,
              cudaStream_t stream) {
  launch_step<SGDHyper, SGDUpdate>(chunks, num_chunks, hyper, stream);
}

}  // namespace dl::cuda
