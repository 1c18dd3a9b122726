// The geometry of a convolution and of a pooling: one struct each, taken by the CPU kernels
// (kernels/cpu), the CUDA kernels (kernels/cuda), the engine's DeviceOps and the tests alike.
// Activations are NHWC; a convolution's weight is [c_out, c_in / groups, kh, kw].
#pragma once
#include <cstdint>

namespace dl {

struct Conv2dShape {
  int64_t n = 1, h = 1, w = 1, c_in = 1, c_out = 1;
  int64_t kh = 1, kw = 1, stride = 1, pad = 0, groups = 1;
  int64_t h_out() const { return (h + 2 * pad - kh) / stride + 1; }
  int64_t w_out() const { return (w + 2 * pad - kw) / stride + 1; }
  bool depthwise() const { return groups == c_in && c_out == c_in; }

  // A depthwise convolution over c channels with a k x k kernel, stride 1 and padding k / 2 (the
  // output has the input's size for odd k): ConvMixer's.
  static Conv2dShape depthwise_same(int64_t n, int64_t h, int64_t w, int64_t c, int64_t k) {
    Conv2dShape s;
    s.n = n, s.h = h, s.w = w, s.c_in = c, s.c_out = c;
    s.kh = k, s.kw = k, s.pad = k / 2, s.groups = c;
    return s;
  }
};

struct Pool2dShape {
  int64_t n = 1, h = 1, w = 1, c = 1, k = 2, stride = 2, pad = 0;
  int64_t h_out() const { return (h + 2 * pad - k) / stride + 1; }
  int64_t w_out() const { return (w + 2 * pad - k) / stride + 1; }
};

}  // namespace dl
