// Pooling over NHWC activations on the GPU, with the semantics of kernels/cpu/pool.h: global
// average pooling [n, hw, c] -> [n, c] and 2-D max pooling with an int32 argmax. T is float or
// __nv_bfloat16 (storage; arithmetic in fp32). Gradient rule: outputs are overwritten (=). Every
// kernel is deterministic (no atomics). All work is queued on `stream`.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/shapes.h"

namespace dl::cuda {

// y[b, j] = mean over the hw pixels p of x[b, p, j], accumulated in fp32 in a fixed order (the CPU
// accumulates in fp64).
template <class T>
void global_avg_pool_forward(const T* x, int64_t n, int64_t hw, int64_t c, T* y,
                             cudaStream_t stream);
// dx[b, p, j] = dy[b, j] * (1 / hw), the CPU's float operations.
template <class T>
void global_avg_pool_backward(const T* dy, int64_t n, int64_t hw, int64_t c, T* dx,
                              cudaStream_t stream);

// y[b, oh, ow, j] = max over the k x k window (padding never wins; a NaN propagates, the last NaN
// of the window is the argmax); argmax = the input pixel ih * w + iw within its image of the
// first maximum (as the CPU kernel), -1 for a window entirely in the padding (y = -inf).
template <class T>
void max_pool2d_forward(const Pool2dShape& s, const T* x, T* y, int32_t* argmax,
                        cudaStream_t stream);
// dx[pixel, j] = sum of dy[o, j] over the outputs o whose argmax[o, j] is that pixel, added in
// increasing o (the CPU's order: fp32 results are bit-identical). One thread per input element
// gathers from the windows that cover it, so overlapping windows need no atomics.
template <class T>
void max_pool2d_backward(const Pool2dShape& s, const T* dy, const int32_t* argmax, T* dx,
                         cudaStream_t stream);

}  // namespace dl::cuda
