// The exact GELU and its derivative in plain float arithmetic, inline, for the kernels that
// compute GELU (elementwise.cpp) or recompute it inside another pass (batchnorm.cpp). Every
// multiply-add is an explicit fma, so a value is the same bits whatever the including file's
// -ffp-contract (the fused GELU+BatchNorm kernels promise the separate ops' values bit for bit).
// Files that include this compile with -fno-trapping-math, so that GCC if-converts the clamps and
// vectorises.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

namespace dl::cpu::gelu_math {

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

// erf and exp written with plain float arithmetic so that the GELU loops vectorise (libm's erff
// and expf are scalar calls, and they were a third of a CPU training step).
//
// erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (|erf| rounds to 1 in float beyond), a rational
// least-squares fit made for this project: max error 6e-8 in exact arithmetic, 4e-7 evaluated in
// float (libm: 1e-7).
inline float erf_approx(float x) {
  x = x < -4.0f ? -4.0f : (x > 4.0f ? 4.0f : x);
  const float t = x * x;
  float p = std::fma(1.9215877e-08f, t, -1.9907034e-06f);
  p = std::fma(p, t, 1.5562648e-04f);
  p = std::fma(p, t, 4.2966488e-03f);
  p = std::fma(p, t, 5.2444711e-02f);
  p = std::fma(p, t, 2.1402769e-01f);
  p = std::fma(p, t, 1.1283786f);
  float q = std::fma(1.0989212e-03f, t, 1.5558333e-02f);
  q = std::fma(q, t, 1.2083416e-01f);
  q = std::fma(q, t, 5.2300477e-01f);
  q = std::fma(q, t, 1.0f);
  return x * p / q;
}

// exp(x) for x <= 0 (all GELU needs): 2^k e^r with k = round(x / ln 2), |r| <= ln 2 / 2, e^r
// by its degree-6 Taylor polynomial (relative error 1.2e-7); results below 2^-126 flush to 0.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693145751953125f,
                  kLn2Lo = 1.42860682030941723212e-6f, kRound = 12582912.0f;  // 1.5 * 2^23
  const float k = std::fma(x, kLog2e, kRound) - kRound;
  const float r = std::fma(-k, kLn2Lo, std::fma(-k, kLn2Hi, x));
  float e = std::fma(r, 1.0f / 720, 1.0f / 120);
  e = std::fma(e, r, 1.0f / 24);
  e = std::fma(e, r, 1.0f / 6);
  e = std::fma(e, r, 0.5f);
  e = std::fma(e, r, 1.0f);
  e = std::fma(e, r, 1.0f);
  const int32_t exponent = static_cast<int32_t>(k) + 127;
  return e * std::bit_cast<float>(exponent << 23);
}

// 0.5 x (1 + erf(x / sqrt 2)).
inline float gelu(float x) {
  return 0.5f * x * (1.0f + erf_approx(x * kInvSqrt2));
}

// d/dx GELU(x) = Phi(x) + x phi(x).
inline float gelu_derivative(float x) {
  const float cdf = 0.5f * (1.0f + erf_approx(x * kInvSqrt2));
  const float pdf = kInvSqrt2Pi * exp_nonpositive(-0.5f * x * x);
  return std::fma(x, pdf, cdf);
}

}  // namespace dl::cpu::gelu_math
