// Elementwise kernels on the GPU: add, scale, axpy and fill over n contiguous elements, conversion
// between fp32 and bf16, and two row-vector helpers over a row-major [rows, cols] matrix (a bias
// added to every row, the column sums). The semantics of kernels/cpu/elementwise.h; T is float or
// __nv_bfloat16 (storage; arithmetic in fp32). Gradient rule: outputs are overwritten (=), except
// axpy and add_bias, which update their output by definition. All work is queued on `stream`.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace dl::cuda {

// out = a + b. out may alias a or b.
template <class T>
void add(const T* a, const T* b, T* out, int64_t n, cudaStream_t stream);
// out = alpha * x. out may alias x.
template <class T>
void scale(const T* x, float alpha, T* out, int64_t n, cudaStream_t stream);
// y += alpha * x, with one rounding (fused multiply-add).
template <class T>
void axpy(float alpha, const T* x, T* y, int64_t n, cudaStream_t stream);
// out = value (rounded to T).
template <class T>
void fill(T* out, float value, int64_t n, cudaStream_t stream);

// y = x rounded to bf16 (round to nearest even, as dl::bf16::from_float does on the host).
void convert(const float* x, __nv_bfloat16* y, int64_t n, cudaStream_t stream);
// y = x widened to fp32 (exact).
void convert(const __nv_bfloat16* x, float* y, int64_t n, cudaStream_t stream);

// y[r, c] += bias[c] over a [rows, cols] matrix; the bias is fp32 (a master weight).
template <class T>
void add_bias(T* y, const float* bias, int64_t rows, int64_t cols, cudaStream_t stream);

// Bytes of workspace that sum_rows needs (0 when one pass suffices). Any contents.
size_t sum_rows_workspace_bytes(int64_t rows, int64_t cols);
// out[c] = sum over r of x[r, c], accumulated in fp32 (the CPU accumulates in fp64), e.g. a bias
// gradient. Deterministic, without atomics: per-block partials go to the workspace and a second
// kernel adds them in a fixed order; the split depends only on the shape.
template <class T>
void sum_rows(const T* x, int64_t rows, int64_t cols, float* out, void* workspace,
              cudaStream_t stream);

}  // namespace dl::cuda
