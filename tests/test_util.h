// Helpers shared by the tests: fresh random seeds (printed on failure) and tolerance checks.
#pragma once
#include <catch2/catch.hpp>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace dl::test {

// A fresh seed per call, so each run draws new inputs; report it with INFO(...) in the test.
// To reproduce a failure, set the environment variable DL_TEST_SEED to the seed it printed (a
// decimal uint64): every call then returns that value, e.g.
//   DL_TEST_SEED=1234 ./test_ops "name of the failing test"
// A value that is not a whole decimal uint64 throws, failing the test that asked for a seed.
inline uint64_t fresh_seed() {
  if (const char* env = std::getenv("DL_TEST_SEED")) {
    const std::string text(env);
    uint64_t seed = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), seed);
    if (ec != std::errc() || end != text.data() + text.size())
      throw std::invalid_argument("DL_TEST_SEED must be a decimal uint64, got '" + text + "'");
    return seed;
  }
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
