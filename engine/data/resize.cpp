#include "engine/data/resize.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/error.h"

namespace dl::data {

namespace {

// The inputs [first, first + weights.size()) that one output pixel averages, and their weights.
struct Taps {
  int first = 0;
  std::vector<float> weights;
};

// PyTorch's _compute_indices_weights_aa (and PIL's precompute_coeffs) for a triangle filter.
std::vector<Taps> taps_for(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double support = std::max(scale, 1.0);  // the triangle's half-width, in input pixels
  const double inv_support = 1.0 / support;
  std::vector<Taps> taps(out_size);
  for (int i = 0; i < out_size; ++i) {
    const double centre = scale * (i + 0.5);
    const int lo = std::max(static_cast<int>(centre - support + 0.5), 0);
    const int hi = std::min(static_cast<int>(centre + support + 0.5), in_size);
    std::vector<double> w;
    double total = 0.0;
    for (int j = lo; j < hi; ++j) {
      const double d = std::abs((j - centre + 0.5) * inv_support);
      w.push_back(d < 1.0 ? 1.0 - d : 0.0);
      total += w.back();
    }
    taps[i].first = lo;
    for (double v : w) taps[i].weights.push_back(static_cast<float>(total > 0 ? v / total : v));
  }
  return taps;
}

}  // namespace

void resize_bilinear_antialiased(const uint8_t* in, int h, int w, int c, int out_h, int out_w,
                                 float* out) {
  DL_CHECK(h > 0 && w > 0 && c > 0 && out_h > 0 && out_w > 0, "resize: sizes must be positive (", h,
           "x", w, "x", c, " to ", out_h, "x", out_w, ")");
  const std::vector<Taps> across = taps_for(w, out_w), down = taps_for(h, out_h);
  std::vector<float> rows(static_cast<size_t>(h) * out_w * c);  // resized along the width
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < out_w; ++x)
      for (int k = 0; k < c; ++k) {
        float sum = 0.0f;
        const Taps& t = across[x];
        for (size_t j = 0; j < t.weights.size(); ++j)
          sum += t.weights[j] * in[(static_cast<size_t>(y) * w + t.first + j) * c + k];
        rows[(static_cast<size_t>(y) * out_w + x) * c + k] = sum;
      }
  for (int y = 0; y < out_h; ++y)
    for (int x = 0; x < out_w; ++x)
      for (int k = 0; k < c; ++k) {
        float sum = 0.0f;
        const Taps& t = down[y];
        for (size_t j = 0; j < t.weights.size(); ++j)
          sum += t.weights[j] * rows[(static_cast<size_t>(t.first + j) * out_w + x) * c + k];
        out[(static_cast<size_t>(y) * out_w + x) * c + k] = sum;
      }
}

}  // namespace dl::data
