// GELU (exact erf form) on the GPU: forward and backward over n contiguous elements.
// T is float or __nv_bfloat16 (storage; arithmetic in fp32). Gradient rule: outputs are
// overwritten (=); autograd accumulates. All work is queued on `stream`.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace dl::cuda {

// y = 0.5 x (1 + erf(x / sqrt 2)). y may alias x.
template <class T>
void gelu_forward(const T* x, T* y, int64_t n, cudaStream_t stream);
// dx = dy * (Phi(x) + x phi(x)). dx may alias dy.
template <class T>
void gelu_backward(const T* x, const T* dy, T* dx, int64_t n, cudaStream_t stream);

}  // namespace dl::cuda
