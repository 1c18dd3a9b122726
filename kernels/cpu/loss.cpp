#include "kernels/cpu/loss.h"

#include <algorithm>
#include <cmath>

namespace dl::cpu {

double cross_entropy_forward(const float* logits, const int64_t* labels, int64_t n, int64_t classes,
                             float label_smoothing, float* probs) {
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float* z = logits + i * classes;
    const float zmax = *std::max_element(z, z + classes);
    double denom = 0.0, sum_z = 0.0;
    for (int64_t j = 0; j < classes; ++j) {
      denom += std::exp(static_cast<double>(z[j] - zmax));
      sum_z += z[j];
    }
    const double log_denom = std::log(denom) + zmax;
    for (int64_t j = 0; j < classes; ++j)
      probs[i * classes + j] = static_cast<float>(std::exp(z[j] - log_denom));
    const double nll = log_denom - z[labels[i]];
    const double smooth = log_denom - sum_z / static_cast<double>(classes);
    total += (1.0 - label_smoothing) * nll + label_smoothing * smooth;
  }
  return total / static_cast<double>(n);
}

void cross_entropy_backward(const float* probs, const int64_t* labels, int64_t n, int64_t classes,
                            float label_smoothing, float dloss, float* dlogits) {
  const float scale = dloss / static_cast<float>(n);
  const float off = label_smoothing / static_cast<float>(classes);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < classes; ++j) {
      const float target = off + (j == labels[i] ? 1.0f - label_smoothing : 0.0f);
      dlogits[i * classes + j] = scale * (probs[i * classes + j] - target);
    }
}

}  // namespace dl::cpu
