// bfloat16 on the CPU (C++17: nvcc compiles the files that include it too): the storage type the
// engine's bf16 tensors hold, and the conversions the kernels use to read bf16 activations into
// float and write float results back.
#pragma once
#include <cstdint>
#include <cstring>

namespace dl::cpu {

// bfloat16 storage: the top 16 bits of an IEEE float, rounded to nearest even; a NaN stays a
// (quiet) NaN.
struct bf16 {
  uint16_t bits = 0;
  static bf16 from_float(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    // A select, not a branch, so that loops storing bf16 vectorise.
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t quiet_nan = (u >> 16) | 0x40u;
    return bf16{static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded)};
  }
  float to_float() const {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

// The kernels templated over their activations' type (float or bf16) read and write through
// these: arithmetic is float either way, and a bf16 result is rounded once, when stored.
inline float load(float x) {
  return x;
}
inline float load(bf16 x) {
  return x.to_float();
}
inline void store(float* p, float v) {
  *p = v;
}
inline void store(bf16* p, float v) {
  *p = bf16::from_float(v);
}

// out[i] = in[i] converted (n elements; exact from bf16, rounded to nearest even to bf16).
void convert(const bf16* in, float* out, int64_t n);
void convert(const float* in, bf16* out, int64_t n);

}  // namespace dl::cpu
