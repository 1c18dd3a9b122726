// Pooling over NHWC activations on the CPU. Gradient rule: outputs are overwritten (=).
#pragma once
#include <cstdint>

#include "kernels/shapes.h"

namespace dl::cpu {

// y[n, c] = mean over the hw pixels of x[n, :, c].
void global_avg_pool_forward(const float* x, int64_t n, int64_t hw, int64_t c, float* y);
void global_avg_pool_backward(const float* dy, int64_t n, int64_t hw, int64_t c, float* dx);

// Max over each window (padding never wins); argmax[out] = the input pixel ih * w + iw within its
// image (first maximum; NaN propagates).
void max_pool2d_forward(const Pool2dShape& s, const float* x, float* y, int32_t* argmax);
void max_pool2d_backward(const Pool2dShape& s, const float* dy, const int32_t* argmax, float* dx);

}  // namespace dl::cpu
