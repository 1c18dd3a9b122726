// Helpers shared by the tests: fresh random seeds (printed on failure) and tolerance checks.
#pragma once
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/random.h"
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

// What run_in_child saw of a function run in a child process.
struct ChildResult {
  bool finished = false;  // false: still running after the time limit, and killed
  std::string error;      // what() of the exception it threw; empty when it returned
  long peak_rss_kib = 0;  // the child's peak resident memory
};

// Runs f in a forked child process, killed after `seconds`: for code that could hang or allocate
// without bound. f must not use OpenMP (libgomp is not fork-safe) nor Catch2's assertions.
inline ChildResult run_in_child(double seconds, const std::function<void()>& f) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    std::string error;
    try {
      f();
    } catch (const std::exception& e) {
      error = e.what();
    }
    [[maybe_unused]] const ssize_t written = ::write(fds[1], error.data(), error.size());
    ::_exit(0);
  }
  ::close(fds[1]);
  ChildResult result;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int status = 0;
  struct rusage usage {};
  while (::wait4(pid, &status, WNOHANG, &usage) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::wait4(pid, &status, 0, &usage);
      ::close(fds[0]);
      return result;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  result.finished = true;
  result.peak_rss_kib = usage.ru_maxrss;
  char buffer[4096];
  for (ssize_t n; (n = ::read(fds[0], buffer, sizeof buffer)) > 0;) result.error.append(buffer, n);
  ::close(fds[0]);
  return result;
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

// max |got - want| / max |want| over the finite values of two tensors of one shape (got converted
// to f32 where it is bf16 on the CPU); infinity where got is not finite and want is, or where want
// is NaN or an infinity and got is not the same.
inline double max_rel_error(const Tensor& got, const Tensor& want) {
  REQUIRE(got.shape() == want.shape());
  const std::vector<float> g =
      got.dtype() == DType::f32 ? got.to_vector() : got.to(DType::f32).to_vector();
  const std::vector<float> w = want.to_vector();
  double err = 0, scale = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    if (!std::isfinite(w[i])) {  // only the same NaN or infinity matches
      if (!(std::isnan(w[i]) ? std::isnan(g[i]) : g[i] == w[i])) return INFINITY;
      continue;
    }
    if (!std::isfinite(g[i])) return INFINITY;
    err = std::max(err, std::abs(double(g[i]) - w[i]));
    scale = std::max(scale, std::abs(double(w[i])));
  }
  return scale > 0 ? err / scale : err;
}

// ||got - want|| / ||want|| (L2), both f32.
inline double l2_rel_error(const Tensor& got, const Tensor& want) {
  REQUIRE(got.shape() == want.shape());
  const std::vector<float> g = got.to_vector(), w = want.to_vector();
  double err = 0, norm = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    err += (double(g[i]) - w[i]) * (double(g[i]) - w[i]);
    norm += double(w[i]) * w[i];
  }
  return norm > 0 ? std::sqrt(err / norm) : std::sqrt(err);
}

// Each gradient in got is f32 and within a relative L2 error of `bound` of its twin in want (the
// bf16 model tests, CPU and GPU, against the f32 CPU).
inline void check_gradients_close(const std::vector<Tensor>& got, const std::vector<Tensor>& want,
                                  double bound) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("parameter " << i);
    CHECK(got[i].dtype() == DType::f32);
    const double e = l2_rel_error(got[i], want[i]);
    INFO("relative L2 error of the gradient " << e);
    CHECK(e < bound);
  }
}

// A generator from a fresh seed; the seed is reported with the next failure of the test.
inline Generator fresh_generator() {
  const uint64_t seed = fresh_seed();
  UNSCOPED_INFO("seed " << seed);
  return Generator(seed);
}

}  // namespace dl::test
