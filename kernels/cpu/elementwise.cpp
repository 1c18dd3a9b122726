#include "kernels/cpu/elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/gelu_math.h"

namespace dl::cpu {

using gelu_math::gelu;
using gelu_math::gelu_derivative;

namespace {
// Fixed chunk for reductions: results do not depend on the thread count.
constexpr int64_t kReduceChunk = 1 << 14;
}  // namespace

template <class T>
void gelu_forward(const T* x, T* y, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) store(y + i, gelu(load(x[i])));
}

template <class T>
void gelu_backward(const T* x, const T* dy, T* dx, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) store(dx + i, load(dy[i]) * gelu_derivative(load(x[i])));
}

template <class T>
void add(const T* a, const T* b, T* out, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) store(out + i, load(a[i]) + load(b[i]));
}

template <class T>
void scale(const T* x, float alpha, T* out, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) store(out + i, alpha * load(x[i]));
}

template <class T>
void axpy(float alpha, const T* x, T* y, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) store(y + i, load(y[i]) + alpha * load(x[i]));
}

void relu_forward(const float* x, float* y, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void relu_backward(const float* x, const float* dy, float* dx, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}

void mul(const float* a, const float* b, float* out, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}

namespace {
// The sum of term(x[i]) in double over fixed chunks of kReduceChunk elements, the chunks' sums
// added in order: the same bits for any thread count.
template <class Term>
double chunked_sum(const float* x, int64_t n, Term term) {
  const int64_t chunks = (n + kReduceChunk - 1) / kReduceChunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t end = std::min(n, (c + 1) * kReduceChunk);
    double s = 0.0;
    for (int64_t i = c * kReduceChunk; i < end; ++i) s += term(static_cast<double>(x[i]));
    partial[c] = s;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}
}  // namespace

double sum(const float* x, int64_t n) {
  return chunked_sum(x, n, [](double v) { return v; });
}

double sum_squares(const float* x, int64_t n) {
  return chunked_sum(x, n, [](double v) { return v * v; });
}

void transpose_batched(const float* in, int64_t batch, int64_t rows, int64_t cols, float* out) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j)
        out[(b * cols + j) * rows + i] = in[(b * rows + i) * cols + j];
}

template <class T>
void sum_rows(const T* x, int64_t rows, int64_t cols, float* out) {
  const int64_t rows_per_chunk = std::max<int64_t>(1, kReduceChunk / std::max<int64_t>(cols, 1));
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  std::vector<double> partial(static_cast<size_t>(chunks * cols), 0.0);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    double* acc = partial.data() + c * cols;
    const int64_t end = std::min(rows, (c + 1) * rows_per_chunk);
    for (int64_t r = c * rows_per_chunk; r < end; ++r)
      for (int64_t j = 0; j < cols; ++j) acc[j] += load(x[r * cols + j]);
  }
  for (int64_t j = 0; j < cols; ++j) {
    double s = 0.0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * cols + j];
    out[j] = static_cast<float>(s);
  }
}

template void gelu_forward(const float*, float*, int64_t);
template void gelu_forward(const bf16*, bf16*, int64_t);
template void gelu_backward(const float*, const float*, float*, int64_t);
template void gelu_backward(const bf16*, const bf16*, bf16*, int64_t);
template void add(const float*, const float*, float*, int64_t);
template void add(const bf16*, const bf16*, bf16*, int64_t);
template void scale(const float*, float, float*, int64_t);
template void scale(const bf16*, float, bf16*, int64_t);
template void axpy(float, const float*, float*, int64_t);
template void axpy(float, const bf16*, bf16*, int64_t);
template void sum_rows(const float*, int64_t, int64_t, float*);
template void sum_rows(const bf16*, int64_t, int64_t, float*);

}  // namespace dl::cpu
