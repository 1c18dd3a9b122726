// Pooling over NHWC activations on the CPU. Gradient rule: outputs are overwritten (=).
#pragma once
#include <cstdint>

namespace dl::cpu {

// y[n, c] = mean over the hw pixels of x[n, :, c].
void global_avg_pool_forward(const float* x, int64_t n, int64_t hw, int64_t c, float* y);
void global_avg_pool_backward(const float* dy, int64_t n, int64_t hw, int64_t c, float* dx);

struct Pool2dShape {
  int64_t n = 1, h = 1, w = 1, c = 1, k = 2, stride = 2, pad = 0;
  int64_t h_out() const { return (h + 2 * pad - k) / stride + 1; }
  int64_t w_out() const { return (w + 2 * pad - k) / stride + 1; }
};

// Max over each window (padding never wins); argmax[out] = the input pixel ih * w + iw within its
// image (first maximum; NaN propagates).
void max_pool2d_forward(const Pool2dShape& s, const float* x, float* y, int32_t* argmax);
void max_pool2d_backward(const Pool2dShape& s, const float* dy, const int32_t* argmax, float* dx);

}  // namespace dl::cpu
