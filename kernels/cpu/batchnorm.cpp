#include "kernels/cpu/batchnorm.h"

#include <cmath>
#include <vector>

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

template <class T>
void affine(const T* x, int64_t rows, int64_t c, const float* scale, const float* shift, T* y) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < c; ++j) store(y + r * c + j, load(x[r * c + j]) * scale[j] + shift[j]);
}

template <class T>
void forward_train(const T* x, int64_t rows, int64_t c, const float* gamma, const float* beta,
                   float eps, float momentum, float* running_mean, float* running_var, T* y,
                   float* save_mean, float* save_invstd, const SumOverRanks& sum_over_ranks) {
  // sums[0:c] = sum x, sums[c] = rows (over the ranks with sum_over_ranks)
  std::vector<double> sums(static_cast<size_t>(c + 1));
  channel_sums<1>(
      rows, c,
      [&](int64_t r, double* acc) {
        for (int64_t j = 0; j < c; ++j) acc[j] += load(x[r * c + j]);
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
          const double d = load(x[r * c + j]) - mean[j];
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
  affine(x, rows, c, scale.data(), shift.data(), y);
}

template <class T>
void forward_eval(const T* x, int64_t rows, int64_t c, const float* gamma, const float* beta,
                  const float* running_mean, const float* running_var, float eps, T* y) {
  std::vector<float> scale(static_cast<size_t>(c)), shift(static_cast<size_t>(c));
  for (int64_t j = 0; j < c; ++j) {
    const double invstd = 1.0 / std::sqrt(static_cast<double>(running_var[j]) + eps);
    scale[j] = static_cast<float>(gamma[j] * invstd);
    shift[j] = static_cast<float>(beta[j] - running_mean[j] * gamma[j] * invstd);
  }
  affine(x, rows, c, scale.data(), shift.data(), y);
}

template <class T>
void backward(const T* dy, const T* x, int64_t rows, int64_t c, const float* gamma,
              const float* mean, const float* invstd, bool batch_stats, T* dx, float* dgamma,
              float* dbeta, const SumOverRanks& sum_over_ranks) {
  // sums[0:c] = sum dy, sums[c:2c] = sum dy * (x - mean), sums[2c] = rows
  std::vector<double> sums(static_cast<size_t>(2 * c + 1));
  channel_sums<2>(
      rows, c,
      [&](int64_t r, double* acc) {
        for (int64_t j = 0; j < c; ++j) {
          const float g = load(dy[r * c + j]);
          acc[j] += g;
          acc[c + j] += g * (load(x[r * c + j]) - mean[j]);
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
      store(dx + r * c + j,
            a[j] * load(dy[r * c + j]) + k[j] * (load(x[r * c + j]) - mean[j]) + b[j]);
}

}  // namespace

void batchnorm_forward_train(const float* x, int64_t rows, int64_t c, const float* gamma,
                             const float* beta, float eps, float momentum, float* running_mean,
                             float* running_var, float* y, float* save_mean, float* save_invstd,
                             const SumOverRanks& sum_over_ranks) {
  forward_train(x, rows, c, gamma, beta, eps, momentum, running_mean, running_var, y, save_mean,
                save_invstd, sum_over_ranks);
}
void batchnorm_forward_train(const bf16* x, int64_t rows, int64_t c, const float* gamma,
                             const float* beta, float eps, float momentum, float* running_mean,
                             float* running_var, bf16* y, float* save_mean, float* save_invstd,
                             const SumOverRanks& sum_over_ranks) {
  forward_train(x, rows, c, gamma, beta, eps, momentum, running_mean, running_var, y, save_mean,
                save_invstd, sum_over_ranks);
}

void batchnorm_forward_eval(const float* x, int64_t rows, int64_t c, const float* gamma,
                            const float* beta, const float* running_mean, const float* running_var,
                            float eps, float* y) {
  forward_eval(x, rows, c, gamma, beta, running_mean, running_var, eps, y);
}
void batchnorm_forward_eval(const bf16* x, int64_t rows, int64_t c, const float* gamma,
                            const float* beta, const float* running_mean, const float* running_var,
                            float eps, bf16* y) {
  forward_eval(x, rows, c, gamma, beta, running_mean, running_var, eps, y);
}

void batchnorm_backward(const float* dy, const float* x, int64_t rows, int64_t c,
                        const float* gamma, const float* mean, const float* invstd,
                        bool batch_stats, float* dx, float* dgamma, float* dbeta,
                        const SumOverRanks& sum_over_ranks) {
  backward(dy, x, rows, c, gamma, mean, invstd, batch_stats, dx, dgamma, dbeta, sum_over_ranks);
}
void batchnorm_backward(const bf16* dy, const bf16* x, int64_t rows, int64_t c, const float* gamma,
                        const float* mean, const float* invstd, bool batch_stats, bf16* dx,
                        float* dgamma, float* dbeta, const SumOverRanks& sum_over_ranks) {
  backward(dy, x, rows, c, gamma, mean, invstd, batch_stats, dx, dgamma, dbeta, sum_over_ranks);
}

}  // namespace dl::cpu
