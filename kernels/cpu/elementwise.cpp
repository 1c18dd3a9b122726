#include "kernels/cpu/elementwise.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace dl::cpu {

namespace {
constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
// Fixed chunk for reductions: results do not depend on the thread count.
constexpr int64_t kReduceChunk = 1 << 14;
}  // namespace

void gelu_forward(const float* x, float* y, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * kInvSqrt2));
}

void gelu_backward(const float* x, const float* dy, float* dx, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float cdf = 0.5f * (1.0f + std::erf(v * kInvSqrt2));
    const float pdf = kInvSqrt2Pi * std::exp(-0.5f * v * v);
    dx[i] = dy[i] * (cdf + v * pdf);
  }
}

void relu_forward(const float* x, float* y, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void relu_backward(const float* x, const float* dy, float* dx, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}

void add(const float* a, const float* b, float* out, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void mul(const float* a, const float* b, float* out, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}

void scale(const float* x, float alpha, float* out, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = alpha * x[i];
}

void axpy(float alpha, const float* x, float* y, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

double sum(const float* x, int64_t n) {
  const int64_t chunks = (n + kReduceChunk - 1) / kReduceChunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t end = std::min(n, (c + 1) * kReduceChunk);
    double s = 0.0;
    for (int64_t i = c * kReduceChunk; i < end; ++i) s += x[i];
    partial[c] = s;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

void sum_rows(const float* x, int64_t rows, int64_t cols, float* out) {
  const int64_t rows_per_chunk = std::max<int64_t>(1, kReduceChunk / std::max<int64_t>(cols, 1));
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  std::vector<double> partial(static_cast<size_t>(chunks * cols), 0.0);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    double* acc = partial.data() + c * cols;
    const int64_t end = std::min(rows, (c + 1) * rows_per_chunk);
    for (int64_t r = c * rows_per_chunk; r < end; ++r)
      for (int64_t j = 0; j < cols; ++j) acc[j] += x[r * cols + j];
  }
  for (int64_t j = 0; j < cols; ++j) {
    double s = 0.0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * cols + j];
    out[j] = static_cast<float>(s);
  }
}

}  // namespace dl::cpu
