#include "kernels/cpu/batchnorm.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/gelu_math.h"

namespace dl::cpu {

namespace {

constexpr int64_t kRowsPerChunk = 256;

// Per-channel sums of f(row, channel) over all rows, in double, chunked so the result is the same
// for any thread count. `terms` values are produced per element; out has terms * c entries.
template <int Terms, class F>
void channel_sums(int64_t rows, int64_t c, F&& f, double* out) {
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<double> partial(static_cast<size_t>(chunks * Terms * c), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < chunks; ++k) {
    double* acc = partial.data() + k * Terms * c;
    const int64_t end = std::min(rows, (k + 1) * kRowsPerChunk);
    for (int64_t r = k * kRowsPerChunk; r < end; ++r) f(r, acc);
  }
  for (int64_t i = 0; i < Terms * c; ++i) out[i] = 0.0;
  for (int64_t k = 0; k < chunks; ++k)
    for (int64_t i = 0; i < Terms * c; ++i) out[i] += partial[k * Terms * c + i];
}

// The kernels below read BatchNorm's input through `input(i)` (element i of the [rows, c] matrix,
// as a float), except their first pass, which reads it through `first_input(i)`, and hand each
// result to `output(i, value)`. Plain BatchNorm loads x in both and stores y. The GELU+BatchNorm
// forms compute GELU(h) in the first pass and keep it in their output tensor (y, or dh), which
// the later passes read it from and then overwrite: the separate GELU op's pass is folded into
// BatchNorm's first, and the residual add (forward) or GELU's backward (backward) into its last.
// Evaluation, a single pass, computes GELU(h) in it.

template <class Input, class Output>
void affine(Input input, int64_t rows, int64_t c, const float* scale, const float* shift,
            Output output) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < c; ++j) output(r * c + j, input(r * c + j) * scale[j] + shift[j]);
}

template <class FirstInput, class Input, class Output>
void forward_train(FirstInput first_input, Input input, int64_t rows, int64_t c, const float* gamma,
                   const float* beta, float eps, float momentum, float* running_mean,
                   float* running_var, Output output, float* save_mean, float* save_invstd,
                   const SumOverRanks& sum_over_ranks) {
  // sums[0:c] = sum x, sums[c] = rows (over the ranks with sum_over_ranks)
  std::vector<double> sums(static_cast<size_t>(c + 1));
  channel_sums<1>(
      rows, c,
      [&](int64_t r, double* acc) {
        for (int64_t j = 0; j < c; ++j) acc[j] += first_input(r * c + j);
      },
      sums.data());
  sums[c] = static_cast<double>(rows);
  if (sum_over_ranks) sum_over_ranks(sums.data(), c + 1);
  const double n = sums[c];
  std::vector<double> mean(static_cast<size_t>(c));
  for (int64_t j = 0; j < c; ++j) mean[j] = sums[j] / n;
  // Second pass on centred values: no cancellation, unlike E[x^2] - E[x]^2.
  std::vector<double> sq(static_cast<size_t>(c));
  channel_sums<1>(
      rows, c,
      [&](int64_t r, double* acc) {
        for (int64_t j = 0; j < c; ++j) {
          const double d = input(r * c + j) - mean[j];
          acc[j] += d * d;
        }
      },
      sq.data());
  if (sum_over_ranks) sum_over_ranks(sq.data(), c);
  std::vector<float> scale(static_cast<size_t>(c)), shift(static_cast<size_t>(c));
  for (int64_t j = 0; j < c; ++j) {
    const double var = sq[j] / n;
    const double invstd = 1.0 / std::sqrt(var + eps);
    save_mean[j] = static_cast<float>(mean[j]);
    save_invstd[j] = static_cast<float>(invstd);
    scale[j] = static_cast<float>(gamma[j] * invstd);
    shift[j] = static_cast<float>(beta[j] - mean[j] * gamma[j] * invstd);
    if (running_mean) {
      const double unbiased = n > 1 ? sq[j] / (n - 1) : var;
      running_mean[j] = static_cast<float>((1.0 - momentum) * running_mean[j] + momentum * mean[j]);
      running_var[j] = static_cast<float>((1.0 - momentum) * running_var[j] + momentum * unbiased);
    }
  }
  affine(input, rows, c, scale.data(), shift.data(), output);
}

template <class Input, class Output>
void forward_eval(Input input, int64_t rows, int64_t c, const float* gamma, const float* beta,
                  const float* running_mean, const float* running_var, float eps, Output output) {
  std::vector<float> scale(static_cast<size_t>(c)), shift(static_cast<size_t>(c));
  for (int64_t j = 0; j < c; ++j) {
    const double invstd = 1.0 / std::sqrt(static_cast<double>(running_var[j]) + eps);
    scale[j] = static_cast<float>(gamma[j] * invstd);
    shift[j] = static_cast<float>(beta[j] - running_mean[j] * gamma[j] * invstd);
  }
  affine(input, rows, c, scale.data(), shift.data(), output);
}

template <class T, class FirstInput, class Input, class Output>
void backward(const T* dy, FirstInput first_input, Input input, int64_t rows, int64_t c,
              const float* gamma, const float* mean, const float* invstd, bool batch_stats,
              Output output, float* dgamma, float* dbeta, const SumOverRanks& sum_over_ranks) {
  // sums[0:c] = sum dy, sums[c:2c] = sum dy * (x - mean), sums[2c] = rows
  std::vector<double> sums(static_cast<size_t>(2 * c + 1));
  channel_sums<2>(
      rows, c,
      [&](int64_t r, double* acc) {
        for (int64_t j = 0; j < c; ++j) {
          const float g = load(dy[r * c + j]);
          acc[j] += g;
          acc[c + j] += g * (first_input(r * c + j) - mean[j]);
        }
      },
      sums.data());
  for (int64_t j = 0; j < c; ++j) {
    dbeta[j] = static_cast<float>(sums[j]);
    dgamma[j] = static_cast<float>(sums[c + j] * invstd[j]);
  }
  sums[2 * c] = static_cast<double>(rows);
  if (batch_stats && sum_over_ranks) sum_over_ranks(sums.data(), 2 * c + 1);
  std::vector<float> a(static_cast<size_t>(c)), b(static_cast<size_t>(c)),
      k(static_cast<size_t>(c));
  for (int64_t j = 0; j < c; ++j) {
    // dx = a * dy + k * (x - mean) + b
    a[j] = gamma[j] * invstd[j];
    if (batch_stats) {
      const double n = sums[2 * c];
      const double inv3 = static_cast<double>(invstd[j]) * invstd[j] * invstd[j];
      k[j] = static_cast<float>(-gamma[j] * inv3 * sums[c + j] / n);
      b[j] = static_cast<float>(-gamma[j] * invstd[j] * sums[j] / n);
    } else {
      k[j] = 0.0f;
      b[j] = 0.0f;
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < c; ++j)
      output(r * c + j, a[j] * load(dy[r * c + j]) + k[j] * (input(r * c + j) - mean[j]) + b[j]);
}

// BatchNorm's input and output as tensors of T.
template <class T>
auto loads(const T* x) {
  return [x](int64_t i) { return load(x[i]); };
}
template <class T>
auto stores(T* y) {
  return [y](int64_t i, float v) { store(y + i, v); };
}

// v as a tensor of T holds it: rounded to bf16, or f32 itself.
template <class T>
float stored(float v) {
  T t;
  store(&t, v);
  return load(t);
}

// GELU(h) as the separate GELU op stores it (evaluation's input).
template <class T>
auto gelu_of(const T* h) {
  return [h](int64_t i) { return stored<T>(gelu_math::gelu(load(h[i]))); };
}

// GELU(h) as the separate GELU op stores it, kept in `keep` for the later passes: the first
// input of the fused forms.
template <class T>
auto gelu_kept_in(T* keep, const T* h) {
  return [keep, h](int64_t i) {
    store(keep + i, gelu_math::gelu(load(h[i])));
    return load(keep[i]);
  };
}

// y = BatchNorm's result as stored, plus the residual: the separate add.
template <class T>
auto stores_plus(T* y, const T* residual) {
  return [y, residual](int64_t i, float v) { store(y + i, stored<T>(v) + load(residual[i])); };
}

// dh = dg as stored, times GELU'(h): the separate GELU backward.
template <class T>
auto stores_gelu_backward(T* dh, const T* h) {
  return [dh, h](int64_t i, float dg) {
    store(dh + i, stored<T>(dg) * gelu_math::gelu_derivative(load(h[i])));
  };
}

}  // namespace

template <class T>
void batchnorm_forward_train(const T* x, int64_t rows, int64_t c, const float* gamma,
                             const float* beta, float eps, float momentum, float* running_mean,
                             float* running_var, T* y, float* save_mean, float* save_invstd,
                             const SumOverRanks& sum_over_ranks) {
  forward_train(loads(x), loads(x), rows, c, gamma, beta, eps, momentum, running_mean, running_var,
                stores(y), save_mean, save_invstd, sum_over_ranks);
}

template <class T>
void batchnorm_forward_eval(const T* x, int64_t rows, int64_t c, const float* gamma,
                            const float* beta, const float* running_mean, const float* running_var,
                            float eps, T* y) {
  forward_eval(loads(x), rows, c, gamma, beta, running_mean, running_var, eps, stores(y));
}

template <class T>
void batchnorm_backward(const T* dy, const T* x, int64_t rows, int64_t c, const float* gamma,
                        const float* mean, const float* invstd, bool batch_stats, T* dx,
                        float* dgamma, float* dbeta, const SumOverRanks& sum_over_ranks) {
  backward(dy, loads(x), loads(x), rows, c, gamma, mean, invstd, batch_stats, stores(dx), dgamma,
           dbeta, sum_over_ranks);
}

template <class T>
void gelu_batchnorm_forward_train(const T* h, int64_t rows, int64_t c, const float* gamma,
                                  const float* beta, float eps, float momentum, float* running_mean,
                                  float* running_var, const T* residual, T* y, float* save_mean,
                                  float* save_invstd, const SumOverRanks& sum_over_ranks) {
  if (residual) {
    forward_train(gelu_kept_in(y, h), loads(y), rows, c, gamma, beta, eps, momentum, running_mean,
                  running_var, stores_plus(y, residual), save_mean, save_invstd, sum_over_ranks);
  } else {
    forward_train(gelu_kept_in(y, h), loads(y), rows, c, gamma, beta, eps, momentum, running_mean,
                  running_var, stores(y), save_mean, save_invstd, sum_over_ranks);
  }
}

template <class T>
void gelu_batchnorm_forward_eval(const T* h, int64_t rows, int64_t c, const float* gamma,
                                 const float* beta, const float* running_mean,
                                 const float* running_var, float eps, const T* residual, T* y) {
  if (residual) {
    forward_eval(gelu_of(h), rows, c, gamma, beta, running_mean, running_var, eps,
                 stores_plus(y, residual));
  } else {
    forward_eval(gelu_of(h), rows, c, gamma, beta, running_mean, running_var, eps, stores(y));
  }
}

template <class T>
void gelu_batchnorm_backward(const T* dy, const T* h, int64_t rows, int64_t c, const float* gamma,
                             const float* mean, const float* invstd, bool batch_stats, T* dh,
                             float* dgamma, float* dbeta, const SumOverRanks& sum_over_ranks) {
  backward(dy, gelu_kept_in(dh, h), loads(dh), rows, c, gamma, mean, invstd, batch_stats,
           stores_gelu_backward(dh, h), dgamma, dbeta, sum_over_ranks);
}

#define DL_BATCHNORM_INSTANTIATE(T)                                                                \
  template void batchnorm_forward_train(const T*, int64_t, int64_t, const float*, const float*,    \
                                        float, float, float*, float*, T*, float*, float*,          \
                                        const SumOverRanks&);                                      \
  template void batchnorm_forward_eval(const T*, int64_t, int64_t, const float*, const float*,     \
                                       const float*, const float*, float, T*);                     \
  template void batchnorm_backward(const T*, const T*, int64_t, int64_t, const float*,             \
                                   const float*, const float*, bool, T*, float*, float*,           \
                                   const SumOverRanks&);                                           \
  template void gelu_batchnorm_forward_train(const T*, int64_t, int64_t, const float*,             \
                                             const float*, float, float, float*, float*, const T*, \
                                             T*, float*, float*, const SumOverRanks&);             \
  template void gelu_batchnorm_forward_eval(const T*, int64_t, int64_t, const float*,              \
                                            const float*, const float*, const float*, float,       \
                                            const T*, T*);                                         \
  template void gelu_batchnorm_backward(const T*, const T*, int64_t, int64_t, const float*,        \
                                        const float*, const float*, bool, T*, float*, float*,      \
                                        const SumOverRanks&);
DL_BATCHNORM_INSTANTIATE(float)
DL_BATCHNORM_INSTANTIATE(bf16)
#undef DL_BATCHNORM_INSTANTIATE

}  // namespace dl::cpu
