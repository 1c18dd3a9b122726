#include "kernels/cpu/pool.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace dl::cpu {

void global_avg_pool_forward(const float* x, int64_t n, int64_t hw, int64_t c, float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n; ++b) {
    std::vector<double> acc(static_cast<size_t>(c), 0.0);
    for (int64_t p = 0; p < hw; ++p)
      for (int64_t j = 0; j < c; ++j) acc[j] += x[(b * hw + p) * c + j];
    for (int64_t j = 0; j < c; ++j) y[b * c + j] = static_cast<float>(acc[j] / hw);
  }
}

void global_avg_pool_backward(const float* dy, int64_t n, int64_t hw, int64_t c, float* dx) {
  const float inv = 1.0f / static_cast<float>(hw);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < n; ++b)
    for (int64_t p = 0; p < hw; ++p)
      for (int64_t j = 0; j < c; ++j) dx[(b * hw + p) * c + j] = dy[b * c + j] * inv;
}

void max_pool2d_forward(const Pool2dShape& s, const float* x, float* y, int32_t* argmax) {
  const int64_t ho = s.h_out(), wo = s.w_out();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t oh = 0; oh < ho; ++oh)
      for (int64_t ow = 0; ow < wo; ++ow) {
        const int64_t out = (n * ho + oh) * wo + ow;
        for (int64_t ch = 0; ch < s.c; ++ch) {
          float best = -std::numeric_limits<float>::infinity();
          int32_t best_at = -1;
          for (int64_t i = 0; i < s.k; ++i) {
            const int64_t ih = oh * s.stride - s.pad + i;
            if (ih < 0 || ih >= s.h) continue;
            for (int64_t j = 0; j < s.k; ++j) {
              const int64_t iw = ow * s.stride - s.pad + j;
              if (iw < 0 || iw >= s.w) continue;
              const int64_t pixel = (n * s.h + ih) * s.w + iw;
              const float v = x[pixel * s.c + ch];
              if (v > best || std::isnan(v) || best_at < 0) {  // NaN propagates, as in PyTorch
                best = v;
                best_at = static_cast<int32_t>(ih * s.w + iw);
              }
            }
          }
          y[out * s.c + ch] = best;
          argmax[out * s.c + ch] = best_at;
        }
      }
}

void max_pool2d_backward(const Pool2dShape& s, const float* dy, const int32_t* argmax, float* dx) {
  const int64_t ho = s.h_out(), wo = s.w_out(), per_image_out = ho * wo * s.c;
  std::fill(dx, dx + s.n * s.h * s.w * s.c, 0.0f);
  // Windows of one image only scatter into that image: parallel over images is race-free.
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t o = n * per_image_out; o < (n + 1) * per_image_out; ++o)
      if (argmax[o] >= 0) dx[(n * s.h * s.w + argmax[o]) * s.c + o % s.c] += dy[o];
}

}  // namespace dl::cpu
