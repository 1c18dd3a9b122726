// Depthwise 2-D convolution on the GPU: NHWC activations, stride 1, "same" padding (k / 2), odd k
// from 3 to 9, any channel count; the semantics of kernels/cpu/conv2d.h with
// groups == c_in == c_out. Weights keep PyTorch's layout [c, 1, k, k] and, with the bias and both
// weight gradients, stay fp32 (the master weights); T (activations) is float or __nv_bfloat16,
// accumulated in fp32. Gradient rule: outputs are overwritten (=). Each function takes such a
// shape (Conv2dShape::depthwise_same) and throws std::invalid_argument for any other.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/shapes.h"

namespace dl::cuda {

// y[n, h, w, c] = bias[c] + sum_{i,j} x[n, h + i - k/2, w + j - k/2, c] * weight[c, 0, i, j],
// reading zero outside the image. bias may be null; y must not alias x.
template <class T>
void depthwise_conv_forward(const Conv2dShape& s, const T* x, const float* weight,
                            const float* bias, T* y, cudaStream_t stream);
// dx[n, h, w, c] = sum_{i,j} dy[n, h - i + k/2, w - j + k/2, c] * weight[c, 0, i, j]; dx must not
// alias dy.
template <class T>
void depthwise_conv_backward_data(const Conv2dShape& s, const T* dy, const float* weight, T* dx,
                                  cudaStream_t stream);

// Bytes of workspace that depthwise_conv_backward_weight needs: fp32 partials, at most
// 1024 x 32 x (k^2 + 1) x 4 bytes (10.3 MiB at k = 9) whatever the shape. Any contents.
size_t depthwise_conv_backward_weight_workspace_bytes(const Conv2dShape& s);
// dweight[c, 0, i, j] = sum_{n,h,w} dy[n, h, w, c] * x[n, h + i - k/2, w + j - k/2, c] and
// dbias[c] = sum_{n,h,w} dy[n, h, w, c] (dbias may be null). Deterministic: per-block partials in
// the workspace, then a fixed-order reduction, with a split that depends only on the shape.
template <class T>
void depthwise_conv_backward_weight(const Conv2dShape& s, const T* x, const T* dy, float* dweight,
                                    float* dbias, void* workspace, cudaStream_t stream);

}  // namespace dl::cuda
