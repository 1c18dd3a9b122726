// Device helpers shared by the hand-written kernels (included by .cu files only): element
// conversion to and from fp32, 16-byte packs for vectorised loads, the exact GELU, and ceil_div.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace dl::cuda {

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

__device__ __forceinline__ float to_float(float v) {
  return v;
}
__device__ __forceinline__ float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
// Round to nearest even, as dl::bf16::from_float does on the host.
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

// The value as it is stored in T (fp32: unchanged; bf16: rounded), back in fp32.
template <class T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(from_float<T>(v));
}

// 16 bytes of T: one 128-bit load or store (4 x fp32, 8 x bf16). The address must be 16-aligned.
template <class T>
struct alignas(16) Pack16 {
  static constexpr int size = 16 / sizeof(T);
  T v[size];
};

__host__ __device__ inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

// Exact (erf) GELU and its derivative Phi(x) + x phi(x), as kernels/cpu/elementwise.cpp computes.
// Every operation is explicitly rounded (no contraction into FMAs that could differ between
// kernels): the fused BatchNorm kernels recompute GELU(h) in the statistics pass and in the
// backward, and both must see the same bits (a one-ulp difference shows as a nonzero xhat).
__device__ __forceinline__ float gelu(float x) {
  return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, erff(__fmul_rn(x, kInvSqrt2))));
}
__device__ __forceinline__ float gelu_grad(float x) {
  const float cdf = __fmul_rn(0.5f, __fadd_rn(1.0f, erff(__fmul_rn(x, kInvSqrt2))));
  const float pdf = __fmul_rn(kInvSqrt2Pi, expf(__fmul_rn(__fmul_rn(-0.5f, x), x)));
  return __fadd_rn(cdf, __fmul_rn(x, pdf));
}

}  // namespace dl::cuda
