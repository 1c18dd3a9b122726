// Elementwise CPU kernels over contiguous arrays of n elements: float, or T (float or bf16) where
// a kernel is a template, computed in float and rounded once when stored.
// Gradient rule: every kernel overwrites its output (=); autograd does the accumulation.
#pragma once
#include <cstdint>

#include "kernels/cpu/bf16.h"

namespace dl::cpu {

// y = 0.5 x (1 + erf(x / sqrt 2)), the exact GELU (PyTorch's default).
template <class T>
void gelu_forward(const T* x, T* y, int64_t n);
// dx = dy * (Phi(x) + x phi(x)).
template <class T>
void gelu_backward(const T* x, const T* dy, T* dx, int64_t n);
void relu_forward(const float* x, float* y, int64_t n);
// dx = dy where x > 0, else 0.
void relu_backward(const float* x, const float* dy, float* dx, int64_t n);
template <class T>
void add(const T* a, const T* b, T* out, int64_t n);
void mul(const float* a, const float* b, float* out, int64_t n);
template <class T>
void scale(const T* x, float alpha, T* out, int64_t n);
// y += alpha * x
template <class T>
void axpy(float alpha, const T* x, T* y, int64_t n);
// Sum in double, returned as double (deterministic: fixed chunking).
double sum(const float* x, int64_t n);
// Sum over rows of a [rows, cols] matrix into out[cols] (overwrites), accumulated in double.
template <class T>
void sum_rows(const T* x, int64_t rows, int64_t cols, float* out);
// Sum of x[i]^2 in double (deterministic: fixed chunking).
double sum_squares(const float* x, int64_t n);
// out[b, j, i] = in[b, i, j] for `batch` row-major [rows, cols] matrices (NHWC <-> NCHW).
void transpose_batched(const float* in, int64_t batch, int64_t rows, int64_t cols, float* out);

}  // namespace dl::cpu
