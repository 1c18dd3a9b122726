#include "kernels/cpu/optimizer.h"

#include <cmath>

namespace dl::cpu {
namespace {
// Below this many elements an update loop runs on one thread.
constexpr int64_t kParallelMin = int64_t{1} << 15;
}  // namespace

void sgd_update(float* p, const float* grad, float* buf, int64_t n, float lr, float wd,
                float momentum, float one_minus_dampening, bool nesterov, bool first) {
#pragma omp parallel for if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    float g = wd != 0 ? grad[i] + wd * p[i] : grad[i];
    if (buf) {
      buf[i] = first ? g : momentum * buf[i] + one_minus_dampening * g;
      g = nesterov ? g + momentum * buf[i] : buf[i];
    }
    p[i] -= lr * g;
  }
}

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, float decay, float beta1,
                  float one_minus_beta1, float beta2, float one_minus_beta2, float step_size,
                  float bias_correction2_sqrt, float eps) {
#pragma omp parallel for if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    p[i] *= decay;
    m[i] = beta1 * m[i] + one_minus_beta1 * g[i];
    v[i] = beta2 * v[i] + one_minus_beta2 * (g[i] * g[i]);
    const float denom = std::sqrt(v[i]) / bias_correction2_sqrt + eps;
    p[i] -= step_size * (m[i] / denom);
  }
}

}  // namespace dl::cpu
