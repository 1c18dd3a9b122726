// Elementwise kernels on the GPU: add, mul, scale, axpy, fill and ReLU over n contiguous elements
// (scale and fill also with their scalar in device memory), conversion between fp32 and bf16, two
// row-vector helpers over a row-major [rows, cols] matrix (a bias added to every row, the column
// sums), a batched transpose, and the sum and squared norm of a whole array. The semantics of
// kernels/cpu/elementwise.h; T is float or __nv_bfloat16 (storage; arithmetic in fp32, sums in
// fp32 or fp64 as stated). Gradient rule: outputs are overwritten (=), except axpy and add_bias,
// which update their output by definition. All work is queued on `stream`.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace dl::cuda {

// out = a + b. out may alias a or b.
template <class T>
void add(const T* a, const T* b, T* out, int64_t n, cudaStream_t stream);
// out = a * b. out may alias a or b.
template <class T>
void mul(const T* a, const T* b, T* out, int64_t n, cudaStream_t stream);
// out = alpha * x. out may alias x.
template <class T>
void scale(const T* x, float alpha, T* out, int64_t n, cudaStream_t stream);
// out = factor[0] * x, where factor is one fp32 value in device memory, read by the kernel (so
// the host never waits for it). out may alias x.
template <class T>
void scale_by(const T* x, const float* factor, T* out, int64_t n, cudaStream_t stream);
// y += alpha * x, with one rounding (fused multiply-add).
template <class T>
void axpy(float alpha, const T* x, T* y, int64_t n, cudaStream_t stream);
// out = value (rounded to T).
template <class T>
void fill(T* out, float value, int64_t n, cudaStream_t stream);
// out = value[0] (rounded to T), where value is one fp32 value in device memory.
template <class T>
void fill_with(T* out, const float* value, int64_t n, cudaStream_t stream);
// y = x > 0 ? x : 0 (a NaN gives 0, as on the CPU). y may alias x.
template <class T>
void relu_forward(const T* x, T* y, int64_t n, cudaStream_t stream);
// dx = x > 0 ? dy : 0. dx may alias dy.
template <class T>
void relu_backward(const T* x, const T* dy, T* dx, int64_t n, cudaStream_t stream);

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

// out[b, j, i] = in[b, i, j] for `batch` row-major [rows, cols] matrices stored one after another
// (e.g. NHWC -> NCHW with rows = H*W, cols = C). Bits are copied unchanged. out must not alias in.
template <class T>
void transpose_batched(const T* in, int64_t batch, int64_t rows, int64_t cols, T* out,
                       cudaStream_t stream);

// Bytes of workspace that sum and squared_norm need for n elements (at least 8). Any contents;
// 8-byte aligned.
size_t reduce_workspace_bytes(int64_t n);
// out[0] = the sum of x's n elements, accumulated in fp64 (as the CPU's sum) and rounded once.
// Deterministic, without atomics: per-block partials go to the workspace and a second kernel adds
// them in a fixed order; the split depends only on n.
template <class T>
void sum(const T* x, int64_t n, float* out, void* workspace, cudaStream_t stream);
// out[0] = the sum of x[i]^2 over n fp32 elements, in fp64 (e.g. a gradient norm), the same way.
void squared_norm(const float* x, int64_t n, double* out, void* workspace, cudaStream_t stream);
// Gradient clipping's scalars (torch.nn.utils.clip_grad_norm_), in one thread: total = sqrt of
// the sum of squares[0..count) added in order in fp64; *total_norm = total rounded to fp32;
// *coefficient = max_norm / (total + 1e-6) rounded to fp32 when that is below 1 and total is
// finite, else 1. Reads count doubles, writes 8 bytes.
void clip_coefficient(const double* squares, int64_t count, double max_norm, float* total_norm,
                      float* coefficient, cudaStream_t stream);
// x[i] *= coefficient[0] over n fp32 elements, unless coefficient[0] is exactly 1: then nothing
// is read or written (as the CPU, which does not scale then; a GPU multiply would also replace a
// NaN's payload by the canonical NaN). Moves 8 n bytes when it scales, none otherwise.
void clip_scale(float* x, const float* coefficient, int64_t n, cudaStream_t stream);

}  // namespace dl::cuda
