// Elementwise CPU kernels over contiguous arrays of n elements, float or (where an overload says)
// bf16, computed in float and rounded once when stored.
// Gradient rule: every kernel overwrites its output (=); autograd does the accumulation.
#pragma once
#include <cstdint>

#include "kernels/cpu/bf16.h"

namespace dl::cpu {

// y = 0.5 x (1 + erf(x / sqrt 2)), the exact GELU (PyTorch's default).
void gelu_forward(const float* x, float* y, int64_t n);
void gelu_forward(const bf16* x, bf16* y, int64_t n);
// dx = dy * (Phi(x) + x phi(x)).
void gelu_backward(const float* x, const float* dy, float* dx, int64_t n);
void gelu_backward(const bf16* x, const bf16* dy, bf16* dx, int64_t n);
void relu_forward(const float* x, float* y, int64_t n);
// dx = dy where x > 0, else 0.
void relu_backward(const float* x, const float* dy, float* dx, int64_t n);
void add(const float* a, const float* b, float* out, int64_t n);
void add(const bf16* a, const bf16* b, bf16* out, int64_t n);
void mul(const float* a, const float* b, float* out, int64_t n);
void scale(const float* x, float alpha, float* out, int64_t n);
void scale(const bf16* x, float alpha, bf16* out, int64_t n);
// y += alpha * x
void axpy(float alpha, const float* x, float* y, int64_t n);
void axpy(float alpha, const bf16* x, bf16* y, int64_t n);
// Sum in double, returned as double (deterministic: fixed chunking).
double sum(const float* x, int64_t n);
// Sum over rows of a [rows, cols] matrix into out[cols] (overwrites), accumulated in double.
void sum_rows(const float* x, int64_t rows, int64_t cols, float* out);
void sum_rows(const bf16* x, int64_t rows, int64_t cols, float* out);
// Sum of x[i]^2 in double (deterministic: fixed chunking).
double sum_squares(const float* x, int64_t n);
// out[b, j, i] = in[b, i, j] for `batch` row-major [rows, cols] matrices (NHWC <-> NCHW).
void transpose_batched(const float* in, int64_t batch, int64_t rows, int64_t cols, float* out);

}  // namespace dl::cpu
