#include "kernels/cpu/conv2d.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/depthwise.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"

namespace dl::cpu {

namespace {

bool is_pointwise(const Conv2dShape& s) {
  return s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0 && s.groups == 1;
}

// Rows of the im2col matrix are output pixels; columns of group g are (i, j, ci) for ci in the
// group, so a row is a contiguous copy of channel vectors. Padding reads as zero.
void im2col(const Conv2dShape& s, const float* x, int64_t g, float* col) {
  const int64_t cg = s.c_in / s.groups, ho = s.h_out(), wo = s.w_out(), cols = s.kh * s.kw * cg;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t oh = 0; oh < ho; ++oh)
      for (int64_t ow = 0; ow < wo; ++ow) {
        float* row = col + ((n * ho + oh) * wo + ow) * cols;
        for (int64_t i = 0; i < s.kh; ++i)
          for (int64_t j = 0; j < s.kw; ++j) {
            float* dst = row + (i * s.kw + j) * cg;
            const int64_t ih = oh * s.stride - s.pad + i, iw = ow * s.stride - s.pad + j;
            if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) {
              std::fill(dst, dst + cg, 0.0f);
            } else {
              const float* src = x + ((n * s.h + ih) * s.w + iw) * s.c_in + g * cg;
              std::copy(src, src + cg, dst);
            }
          }
      }
}

// Adds the im2col-shaped gradient back into dx (which the caller zeroed). Parallel over images:
// the scatter of one image never touches another's pixels.
void col2im_add(const Conv2dShape& s, const float* col, int64_t g, float* dx) {
  const int64_t cg = s.c_in / s.groups, ho = s.h_out(), wo = s.w_out(), cols = s.kh * s.kw * cg;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t oh = 0; oh < ho; ++oh)
      for (int64_t ow = 0; ow < wo; ++ow) {
        const float* row = col + ((n * ho + oh) * wo + ow) * cols;
        for (int64_t i = 0; i < s.kh; ++i)
          for (int64_t j = 0; j < s.kw; ++j) {
            const int64_t ih = oh * s.stride - s.pad + i, iw = ow * s.stride - s.pad + j;
            if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) continue;
            float* dst = dx + ((n * s.h + ih) * s.w + iw) * s.c_in + g * cg;
            const float* src = row + (i * s.kw + j) * cg;
            for (int64_t k = 0; k < cg; ++k) dst[k] += src[k];
          }
      }
}

// PyTorch weight [c_out, cg, kh, kw] of group g -> [og, kh * kw * cg] matching the im2col columns.
std::vector<float> weight_as_rows(const Conv2dShape& s, const float* weight, int64_t g) {
  const int64_t cg = s.c_in / s.groups, og = s.c_out / s.groups, taps = s.kh * s.kw;
  std::vector<float> out(static_cast<size_t>(og * taps * cg));
  for (int64_t o = 0; o < og; ++o)
    for (int64_t ci = 0; ci < cg; ++ci)
      for (int64_t t = 0; t < taps; ++t)
        out[(o * taps + t) * cg + ci] = weight[((g * og + o) * cg + ci) * taps + t];
  return out;
}

}  // namespace

void conv2d_forward(const Conv2dShape& s, const float* x, const float* weight, const float* bias,
                    float* y) {
  if (s.depthwise()) return depthwise_forward(s, x, weight, bias, y);
  const int64_t rows = s.n * s.h_out() * s.w_out(), og = s.c_out / s.groups;
  const int64_t cols = s.kh * s.kw * (s.c_in / s.groups);
  if (is_pointwise(s)) {
    gemm(false, true, rows, s.c_out, s.c_in, x, s.c_in, weight, s.c_in, bias, y, s.c_out);
    return;
  }
  std::vector<float> col(static_cast<size_t>(rows * cols));
  for (int64_t g = 0; g < s.groups; ++g) {
    im2col(s, x, g, col.data());
    const std::vector<float> w = weight_as_rows(s, weight, g);
    gemm(false, true, rows, og, cols, col.data(), cols, w.data(), cols,
         bias ? bias + g * og : nullptr, y + g * og, s.c_out);
  }
}

void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* weight, float* dx) {
  if (s.depthwise()) return depthwise_backward_data(s, dy, weight, dx);
  const int64_t rows = s.n * s.h_out() * s.w_out(), og = s.c_out / s.groups;
  const int64_t cols = s.kh * s.kw * (s.c_in / s.groups);
  if (is_pointwise(s)) {
    gemm(false, false, rows, s.c_in, s.c_out, dy, s.c_out, weight, s.c_in, nullptr, dx, s.c_in);
    return;
  }
  std::fill(dx, dx + s.n * s.h * s.w * s.c_in, 0.0f);
  std::vector<float> col(static_cast<size_t>(rows * cols));
  for (int64_t g = 0; g < s.groups; ++g) {
    const std::vector<float> w = weight_as_rows(s, weight, g);
    gemm(false, false, rows, cols, og, dy + g * og, s.c_out, w.data(), cols, nullptr, col.data(),
         cols);
    col2im_add(s, col.data(), g, dx);
  }
}

void conv2d_backward_weight(const Conv2dShape& s, const float* dy, const float* x, float* dweight,
                            float* dbias) {
  if (s.depthwise()) return depthwise_backward_weight(s, dy, x, dweight, dbias);
  const int64_t rows = s.n * s.h_out() * s.w_out(), og = s.c_out / s.groups;
  const int64_t cg = s.c_in / s.groups, taps = s.kh * s.kw, cols = taps * cg;
  if (dbias) sum_rows(dy, rows, s.c_out, dbias);
  if (is_pointwise(s)) {
    gemm(true, false, s.c_out, s.c_in, rows, dy, s.c_out, x, s.c_in, nullptr, dweight, s.c_in);
    return;
  }
  std::vector<float> col(static_cast<size_t>(rows * cols));
  std::vector<float> w(static_cast<size_t>(og * cols));
  for (int64_t g = 0; g < s.groups; ++g) {
    im2col(s, x, g, col.data());
    gemm(true, false, og, cols, rows, dy + g * og, s.c_out, col.data(), cols, nullptr, w.data(),
         cols);
    for (int64_t o = 0; o < og; ++o)
      for (int64_t ci = 0; ci < cg; ++ci)
        for (int64_t t = 0; t < taps; ++t)
          dweight[((g * og + o) * cg + ci) * taps + t] = w[(o * taps + t) * cg + ci];
  }
}

namespace {
// The bf16 weight of a 1x1 convolution (its GEMM operand), rounded from the f32 master weight.
std::vector<bf16> rounded(const float* weight, int64_t count) {
  std::vector<bf16> out(static_cast<size_t>(count));
  convert(weight, out.data(), count);
  return out;
}

// A bf16 activation's f32 copy, for the convolutions without a bf16 kernel (the patch embedding
// and other im2col convolutions, whose inputs are small).
std::vector<float> widened(const bf16* x, int64_t count) {
  std::vector<float> out(static_cast<size_t>(count));
  convert(x, out.data(), count);
  return out;
}
}  // namespace

void conv2d_forward(const Conv2dShape& s, const bf16* x, const float* weight, const float* bias,
                    bf16* y) {
  if (s.depthwise()) return depthwise_forward(s, x, weight, bias, y);
  const int64_t rows = s.n * s.h_out() * s.w_out();
  if (is_pointwise(s)) {
    const std::vector<bf16> w = rounded(weight, s.c_out * s.c_in);
    gemm(false, true, rows, s.c_out, s.c_in, x, s.c_in, w.data(), s.c_in, bias, y, s.c_out);
    return;
  }
  const std::vector<float> xf = widened(x, s.n * s.h * s.w * s.c_in);
  std::vector<float> yf(static_cast<size_t>(rows * s.c_out));
  conv2d_forward(s, xf.data(), weight, bias, yf.data());
  convert(yf.data(), y, rows * s.c_out);
}

void conv2d_backward_data(const Conv2dShape& s, const bf16* dy, const float* weight, bf16* dx) {
  if (s.depthwise()) return depthwise_backward_data(s, dy, weight, dx);
  const int64_t rows = s.n * s.h_out() * s.w_out(), pixels = s.n * s.h * s.w;
  if (is_pointwise(s)) {
    const std::vector<bf16> w = rounded(weight, s.c_out * s.c_in);
    gemm(false, false, rows, s.c_in, s.c_out, dy, s.c_out, w.data(), s.c_in, nullptr, dx, s.c_in);
    return;
  }
  const std::vector<float> dyf = widened(dy, rows * s.c_out);
  std::vector<float> dxf(static_cast<size_t>(pixels * s.c_in));
  conv2d_backward_data(s, dyf.data(), weight, dxf.data());
  convert(dxf.data(), dx, pixels * s.c_in);
}

void conv2d_backward_weight(const Conv2dShape& s, const bf16* dy, const bf16* x, float* dweight,
                            float* dbias) {
  if (s.depthwise()) return depthwise_backward_weight(s, dy, x, dweight, dbias);
  const int64_t rows = s.n * s.h_out() * s.w_out();
  if (is_pointwise(s)) {
    if (dbias) sum_rows(dy, rows, s.c_out, dbias);
    gemm(true, false, s.c_out, s.c_in, rows, dy, s.c_out, x, s.c_in, nullptr, dweight, s.c_in);
    return;
  }
  const std::vector<float> dyf = widened(dy, rows * s.c_out);
  const std::vector<float> xf = widened(x, s.n * s.h * s.w * s.c_in);
  conv2d_backward_weight(s, dyf.data(), xf.data(), dweight, dbias);
}

}  // namespace dl::cpu
