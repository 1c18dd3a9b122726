// 2-D convolution on the CPU. Activations are NHWC; weights keep PyTorch's layout
// [c_out, c_in / groups, kh, kw] so that a state dict moves to and from PyTorch unchanged.
// Depthwise convolutions (groups == c_in == c_out) take a direct kernel vectorised over channels;
// every other convolution is im2col + GEMM per group (a 1x1, stride-1 convolution is a plain GEMM).
// bf16 activations (x, y, dy, dx) with f32 weights, bias and weight gradients: the depthwise
// kernels read and write bf16, computing in float; 1x1 convolutions are bf16 GEMMs (the weight
// rounded to bf16, f32 accumulation); the others compute in f32 on a widened copy.
// Gradient rule: outputs are overwritten (=).
#pragma once
#include <cstdint>

#include "kernels/cpu/bf16.h"
#include "kernels/shapes.h"

namespace dl::cpu {

// y[n, ho, wo, c_out] = bias + sum x * weight.  bias may be null.
void conv2d_forward(const Conv2dShape& s, const float* x, const float* weight, const float* bias,
                    float* y);
// dx[n, h, w, c_in] from dy[n, ho, wo, c_out].
void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* weight, float* dx);
// dweight[c_out, c_in/groups, kh, kw] and dbias[c_out] (dbias may be null).
void conv2d_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dweight,
                            float* dbias);

void conv2d_forward(const Conv2dShape& s, const bf16* x, const float* weight, const float* bias,
                    bf16* y);
void conv2d_backward_data(const Conv2dShape& s, const bf16* dy, const float* weight, bf16* dx);
void conv2d_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dweight,
                            float* dbias);

}  // namespace dl::cpu
