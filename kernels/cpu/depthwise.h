// Depthwise 2-D convolution on the CPU (groups == c_in == c_out; conv2d.h dispatches here): NHWC
// activations, f32 or bf16 (computed in float, rounded once when stored); weights [c, 1, kh, kw],
// bias and weight gradients f32. Outputs are overwritten (=).
#pragma once
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/conv2d.h"

namespace dl::cpu {

// y[n, ho, wo, c] = bias + sum over taps x * w (bias may be null).
template <class T>
void depthwise_forward(const Conv2dShape& s, const T* x, const float* weight, const float* bias,
                       T* y);
// dx[n, h, w, c] from dy[n, ho, wo, c].
template <class T>
void depthwise_backward_data(const Conv2dShape& s, const T* dy, const float* weight, T* dx);
// dweight [c, 1, kh, kw] and dbias [c] (may be null): one partial per image, summed in image order,
// so the result does not depend on the thread count.
template <class T>
void depthwise_backward_weight(const Conv2dShape& s, const T* dy, const T* x, float* dweight,
                               float* dbias);

}  // namespace dl::cpu
