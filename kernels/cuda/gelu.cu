// GELU kernels: exact erf form, fp32 or bf16 storage, 16-byte vector loads.
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gelu.cuh"

namespace dl::cuda {

namespace {

// ----------------------------------------------------------------------------------------------
// CUDA kernels

// y[i] = gelu(x[i]) over n elements. With `vec`, thread t < n / V handles the 16-byte pack t
// (V = 16 / sizeof(T)) and the next n % V threads handle the scalar tail; otherwise thread t
// handles element t. Moves 2 n sizeof(T) bytes; about 20 FLOPs per element (erf).
template <class T>
__global__ void gelu_forward_kernel(const T* x, T* y, int64_t n, bool vec) {
  using P = Pack16<T>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = vec ? n / P::size : 0;
  if (t < packs) {
    const P in = reinterpret_cast<const P*>(x)[t];
    P out;
#pragma unroll
    for (int k = 0; k < P::size; ++k) out.v[k] = from_float<T>(gelu(to_float(in.v[k])));
    reinterpret_cast<P*>(y)[t] = out;
    return;
  }
  const int64_t i = packs * P::size + (t - packs);
  if (i < n) y[i] = from_float<T>(gelu(to_float(x[i])));
}

// dx[i] = dy[i] * gelu'(x[i]), laid out and vectorised as gelu_forward_kernel.
// Moves 3 n sizeof(T) bytes; about 25 FLOPs per element (erf, exp).
template <class T>
__global__ void gelu_backward_kernel(const T* x, const T* dy, T* dx, int64_t n, bool vec) {
  using P = Pack16<T>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = vec ? n / P::size : 0;
  if (t < packs) {
    const P in = reinterpret_cast<const P*>(x)[t];
    const P g = reinterpret_cast<const P*>(dy)[t];
    P out;
#pragma unroll
    for (int k = 0; k < P::size; ++k)
      out.v[k] = from_float<T>(to_float(g.v[k]) * gelu_grad(to_float(in.v[k])));
    reinterpret_cast<P*>(dx)[t] = out;
    return;
  }
  const int64_t i = packs * P::size + (t - packs);
  if (i < n) dx[i] = from_float<T>(to_float(dy[i]) * gelu_grad(to_float(x[i])));
}

// ----------------------------------------------------------------------------------------------
// kernel launchers

constexpr int kBlock = 256;

// Threads needed: one per pack plus one per tail element (vectorised), else one per element.
int64_t gelu_threads(int64_t n, bool vec, int pack) {
  return vec ? n / pack + n % pack : n;
}

}  // namespace

template <class T>
void gelu_forward(const T* x, T* y, int64_t n, cudaStream_t stream) {
  DL_CUDA_REQUIRE(n >= 0, "negative element count");
  if (n == 0) return;
  const bool vec = aligned16(x) && aligned16(y);
  const int64_t blocks = ceil_div(gelu_threads(n, vec, Pack16<T>::size), kBlock);
  DL_CUDA_REQUIRE(blocks <= INT32_MAX, "too many elements for one launch");
  gelu_forward_kernel<T><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(x, y, n, vec);
  DL_CUDA_CHECK_LAUNCH();
}

template <class T>
void gelu_backward(const T* x, const T* dy, T* dx, int64_t n, cudaStream_t stream) {
  DL_CUDA_REQUIRE(n >= 0, "negative element count");
  if (n == 0) return;
  const bool vec = aligned16(x) && aligned16(dy) && aligned16(dx);
  const int64_t blocks = ceil_div(gelu_threads(n, vec, Pack16<T>::size), kBlock);
  DL_CUDA_REQUIRE(blocks <= INT32_MAX, "too many elements for one launch");
  gelu_backward_kernel<T><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(x, dy, dx, n, vec);
  DL_CUDA_CHECK_LAUNCH();
}

template void gelu_forward<float>(const float*, float*, int64_t, cudaStream_t);
template void gelu_forward<__nv_bfloat16>(const __nv_bfloat16*, __nv_bfloat16*, int64_t,
                                          cudaStream_t);
template void gelu_backward<float>(const float*, const float*, float*, int64_t, cudaStream_t);
template void gelu_backward<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*,
                                           __nv_bfloat16*, int64_t, cudaStream_t);

}  // namespace dl::cuda
