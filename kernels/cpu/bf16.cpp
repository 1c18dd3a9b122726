#include "kernels/cpu/bf16.h"

namespace dl::cpu {

void convert(const bf16* in, float* out, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = in[i].to_float();
}

void convert(const float* in, bf16* out, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = bf16::from_float(in[i]);
}

}  // namespace dl::cpu
