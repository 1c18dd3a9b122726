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

bool has_native_bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}

}  // namespace dl::cpu
