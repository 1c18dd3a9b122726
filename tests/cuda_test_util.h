// Shared by the CUDA test binaries (test_cuda_kernels*.cpp): device arrays of fp32 or bf16 that
// can be poisoned (all bits set: NaN) before a kernel writes them, bf16 rounding of reference
// inputs, the tolerance check, random inputs, and the body of main. Each binary is one source file
// that defines CATCH_CONFIG_RUNNER, includes this header and calls run_tests from its main.
//
// Tolerance form: |gpu - cpu| <= rtol |cpu| + atol (times a per-element scale where given).
// fp32 outputs: rtol 1e-5. bf16 outputs are fp32 results rounded once to bf16, half a bf16 ulp is
// at most 2^-8 of the value: rtol 4e-3. Inputs are rounded to bf16 before the CPU sees them.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/cuda/cuda_backend.h"
#include "engine/dtype.h"
#include "kernels/cuda/check.h"

namespace dl::cuda_test {

using Bf16 = __nv_bfloat16;

template <class E>
constexpr bool is_bf16() {
  return std::is_same_v<E, Bf16>;
}

template <class E>
constexpr double out_rtol() {
  return is_bf16<E>() ? 4e-3 : 1e-5;
}

template <class E>
const char* type_name() {
  return is_bf16<E>() ? "bf16" : "fp32";
}

// Values as the device stores them: rounded to bf16 when E is bf16.
template <class E>
std::vector<float> quantize(std::vector<float> v) {
  if constexpr (is_bf16<E>())
    for (float& f : v) f = dl::bf16::from_float(f).to_float();
  return v;
}

// An array of E on the device, from the caching allocator.
template <class E>
class DeviceArray {
 public:
  explicit DeviceArray(size_t count)
      : count_(count), ptr_(static_cast<E*>(dl::cuda::allocate(bytes()))) {}
  explicit DeviceArray(const std::vector<float>& values) : DeviceArray(values.size()) {
    upload(values);
  }
  ~DeviceArray() { dl::cuda::deallocate(ptr_, bytes()); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  E* get() const { return ptr_; }
  size_t bytes() const { return count_ * sizeof(E); }

  // The values must be representable in E (see quantize).
  void upload(const std::vector<float>& values) {
    REQUIRE(values.size() == count_);
    if constexpr (is_bf16<E>()) {
      std::vector<uint16_t> bits(count_);
      for (size_t i = 0; i < count_; ++i) bits[i] = dl::bf16::from_float(values[i]).bits;
      copy_to_device(bits.data());
    } else {
      copy_to_device(values.data());
    }
  }
  std::vector<float> download() const {
    std::vector<float> out(count_);
    if constexpr (is_bf16<E>()) {
      std::vector<uint16_t> bits(count_);
      copy_to_host(bits.data());
      for (size_t i = 0; i < count_; ++i) out[i] = dl::bf16{bits[i]}.to_float();
    } else {
      copy_to_host(out.data());
    }
    return out;
  }
  // Every bit set: NaN in fp32 and bf16.
  void poison() { DL_CUDA_CHECK(cudaMemsetAsync(ptr_, 0xFF, bytes(), dl::cuda::stream())); }

 private:
  void copy_to_device(const void* src) {
    DL_CUDA_CHECK(cudaMemcpyAsync(ptr_, src, bytes(), cudaMemcpyHostToDevice, dl::cuda::stream()));
    dl::cuda::synchronize();
  }
  void copy_to_host(void* dst) const {
    DL_CUDA_CHECK(cudaMemcpyAsync(dst, ptr_, bytes(), cudaMemcpyDeviceToHost, dl::cuda::stream()));
    dl::cuda::synchronize();
  }

  size_t count_;
  E* ptr_;
};

// A poisoned workspace of `bytes` bytes (the kernels must not rely on its contents).
struct Workspace {
  explicit Workspace(size_t bytes) : array((bytes + 3) / 4) { array.poison(); }
  void* get() const { return array.get(); }
  DeviceArray<float> array;
};

// |actual - expected| <= rtol |expected| + atol (* scale[i] when a scale is given). Names the first
// bad element and counts the others.
inline void require_close(const std::vector<float>& actual, const std::vector<float>& expected,
                          double rtol, double atol, const std::string& what,
                          const std::vector<float>* scale = nullptr) {
  REQUIRE(actual.size() == expected.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double err = std::abs(static_cast<double>(actual[i]) - expected[i]);
    const double tol = rtol * std::abs(expected[i]) + atol * (scale ? (*scale)[i] : 1.0f);
    if (!(err <= tol) && bad++ == 0) first = i;
  }
  if (bad) {
    const double err = std::abs(static_cast<double>(actual[first]) - expected[first]);
    FAIL(what << ": " << bad << " of " << actual.size() << " elements out of tolerance; first at "
              << first << ": " << actual[first] << ", expected " << expected[first] << " (|err| "
              << err << ", rtol " << rtol << ", atol " << atol
              << (scale ? " * " + std::to_string((*scale)[first]) : std::string()) << ")");
  }
}

struct Rng {
  explicit Rng(uint64_t seed) : gen(seed) {}
  std::vector<float> normal(size_t n, float mean = 0.0f, float stddev = 1.0f) {
    std::normal_distribution<float> d(mean, stddev);
    std::vector<float> v(n);
    for (float& f : v) f = d(gen);
    return v;
  }
  std::vector<float> uniform(size_t n, float low, float high) {
    std::uniform_real_distribution<float> d(low, high);
    std::vector<float> v(n);
    for (float& f : v) f = d(gen);
    return v;
  }
  std::mt19937_64 gen;
};

inline std::vector<float> abs_of(std::vector<float> v) {
  for (float& f : v) f = std::abs(f);
  return v;
}

// main's body: with no CUDA device, prints why and returns 77 (CTest's SKIP_RETURN_CODE);
// otherwise runs the Catch2 session.
inline int run_tests(int argc, char** argv) {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipping (%s)\n",
                status != cudaSuccess ? cudaGetErrorString(status) : "device count is 0");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}

}  // namespace dl::cuda_test
