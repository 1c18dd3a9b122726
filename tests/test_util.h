// Helpers shared by the tests: fresh random seeds (printed on failure) and tolerance checks.
#pragma once
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace dl::test {

// A fresh seed per call, so each run draws new inputs; report it with INFO(...) in the test.
inline uint64_t fresh_seed() {
  static std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

// |a - b| <= atol + rtol * |b| elementwise; on failure names the first bad index.
inline void require_close(const std::vector<float>& actual, const std::vector<double>& expected,
                          double rtol, double atol, const std::string& what) {
  REQUIRE(actual.size() == expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    const double err = std::abs(static_cast<double>(actual[i]) - expected[i]);
    if (!(err <= atol + rtol * std::abs(expected[i]))) {
      FAIL(what << ": element " << i << " is " << actual[i] << ", expected " << expected[i]
                << " (|err| " << err << " > " << atol << " + " << rtol << "*|ref|)");
    }
  }
}

inline void require_close(const Tensor& actual, const Tensor& expected, double rtol, double atol,
                          const std::string& what) {
  REQUIRE(actual.shape() == expected.shape());
  const std::vector<float> e = expected.to_vector();
  require_close(actual.to_vector(), std::vector<double>(e.begin(), e.end()), rtol, atol, what);
}

}  // namespace dl::test
