// The CUDA launchers of kernels/cuda/{elementwise,pool,loss,optimizer,gemm,cudnn_conv} (and
// BatchNorm's evaluation invstd) against the CPU path (kernels/cpu, engine/optim.cpp, the CPU
// DeviceOps' formula) on fresh random inputs over many shapes: batch 1, odd
// sizes, C not a multiple of 8, pointers one element past an aligned address (the scalar paths).
// Outputs are poisoned before each launch (all bits set: NaN; int32 outputs 0x7f7f7f7f, since -1 is
// a valid argmax), so an element a kernel fails to write fails the comparison. This binary has its
// own main: with no CUDA device it exits with 77, which CTest reports as skipped.
//
// Bit for bit (NaN payloads included), because both sides do the same rounded operations:
// add, mul, scale, scale_by, fill, fill_with, ReLU forward and backward, axpy (one rounding: the
// reference is std::fma, since the CPU's axpy may or may not be contracted), fp32 <-> bf16
// conversion (NaN only as NaN: CUDA writes its canonical NaN), add_bias, transpose_batched,
// BatchNorm's evaluation invstd (fp64, as the CPU), global average pool backward, max pool forward
// (values, argmax) and backward (sums in the CPU's order), and every AdamW and SGD step
// (parameters, state, bf16 copies): engine/optim.cpp is compiled with -ffp-contract=off and the
// kernels use explicitly rounded operations. bf16 outputs are the fp32 result rounded once, so the
// reference is the CPU result rounded to bf16.
//
// Tolerances (|gpu - cpu| <= rtol |cpu| + atol, atol times a per-element scale where stated):
// - fp32 outputs: rtol kRtol = 1e-5; bf16 outputs: rtol 4e-3 (out_rtol, cuda_test_util.h).
// - sum and squared_norm accumulate in fp64 on both sides, in different orders: atol n 2^-53 times
//   the sum of |terms| (the worst-case error of an n-term fp64 sum); sum's result is then rounded
//   to fp32 on both sides: rtol 2^-23 (one fp32 ulp).
// - Reductions in fp32 (sum_rows, global average pool, GEMM, conv, bias gradients): atol kSumAtol
//   = 1e-5 times the sum of the absolute values of the terms of each output, from the CPU kernel
//   run on |inputs| (the CPU accumulates in fp64 or in another fp32 order).
// - TF32 (fp32 GEMM and conv with TF32 allowed, bias gradients included): atol kTf32Atol = 2e-3
//   times the same sum: TF32 keeps 10 of fp32's 23 mantissa bits, an input rounded (or truncated)
//   to it is off by at most 2^-10 of its value, a product by 2^-9 = 2e-3.
// - bf16 GEMM and conv inputs are rounded to bf16 before the CPU sees them (the conv weight too:
//   the wrapper rounds the fp32 master weight to bf16), so products are exact and accumulation is
//   fp32: kSumAtol. bf16 conv forward with a bias rounds twice (cuDNN's output, then add_bias),
//   and so does a bf16 GEMM output with the bias epilogue: atol kBf16TwoRoundingsAtol = 4e-3 times
//   the sum of |terms|. cuDNN's bf16 dW is rounded once: rtol 4e-3.
// - Cross-entropy (fp32 expf/logf/sums on the GPU, fp64 on the CPU; logits N(0, 3), at most 1000
//   classes): row losses and their mean rtol 1e-5 + atol kLossAtol = 2e-5; dlogits rtol 1e-5
//   (bf16: 4e-3) + atol kDlogitsAtol |dloss| / n with kDlogitsAtol = 1e-5 (the softmax
//   probabilities are off by a few fp32 ulps).
#define CATCH_CONFIG_RUNNER
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <bit>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda_test_util.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/dtype.h"
#include "engine/optim.h"
#include "engine/tensor.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/loss.h"
#include "kernels/cpu/pool.h"
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/cudnn_conv.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/loss.cuh"
#include "kernels/cuda/optimizer.cuh"
#include "kernels/cuda/pool.cuh"
#include "test_util.h"

namespace dl::cuda_test {
namespace {

using dl::test::fresh_seed;

constexpr double kRtol = 1e-5;
constexpr double kSumAtol = 1e-5;
constexpr double kTf32Atol = 2e-3;
constexpr double kBf16TwoRoundingsAtol = 4e-3;
constexpr double kLossAtol = 2e-5;
constexpr double kDlogitsAtol = 1e-5;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// A poisoned bf16 element (0xffff) as DeviceArray<Bf16>::download widens it.
constexpr float kPoisonedBf16 = std::bit_cast<float>(0xffff0000u);

// Trivially copyable values on the device (labels, argmax, flags and counters, optimizer chunks
// and hyper-parameters), from the caching allocator.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count)
      : count_(count), ptr_(static_cast<T*>(dl::cuda::allocate(bytes()))) {}
  explicit DeviceBuffer(const std::vector<T>& values) : DeviceBuffer(values.size()) {
    DL_CUDA_CHECK(
        cudaMemcpyAsync(ptr_, values.data(), bytes(), cudaMemcpyHostToDevice, dl::cuda::stream()));
    dl::cuda::synchronize();
  }
  ~DeviceBuffer() { dl::cuda::deallocate(ptr_, bytes()); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return ptr_; }
  size_t bytes() const { return count_ * sizeof(T); }
  std::vector<T> download() const {
    std::vector<T> out(count_);
    DL_CUDA_CHECK(
        cudaMemcpyAsync(out.data(), ptr_, bytes(), cudaMemcpyDeviceToHost, dl::cuda::stream()));
    dl::cuda::synchronize();
    return out;
  }
  // Every byte set to `byte`.
  void poison(int byte) { DL_CUDA_CHECK(cudaMemsetAsync(ptr_, byte, bytes(), dl::cuda::stream())); }

 private:
  size_t count_;
  T* ptr_;
};

// A cuBLASLt handle for the test's LtGemm objects.
class LtHandle {
 public:
  LtHandle() { DL_CUBLAS_CHECK(cublasLtCreate(&handle_)); }
  ~LtHandle() { cublasLtDestroy(handle_); }
  LtHandle(const LtHandle&) = delete;
  LtHandle& operator=(const LtHandle&) = delete;
  cublasLtHandle_t get() const { return handle_; }

 private:
  cublasLtHandle_t handle_ = nullptr;
};

std::string show(float v) {
  std::ostringstream s;
  s << v << " (0x" << std::hex << std::bit_cast<uint32_t>(v) << ")";
  return s.str();
}
std::string show(int32_t v) {
  return std::to_string(v);
}

// Bit for bit (NaN payloads included): names the first differing element and counts the others.
template <class T>
void require_identical(const std::vector<T>& actual, const std::vector<T>& expected,
                       const std::string& what) {
  REQUIRE(actual.size() == expected.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < actual.size(); ++i)
    if (std::memcmp(&actual[i], &expected[i], sizeof(T)) != 0 && bad++ == 0) first = i;
  if (bad)
    FAIL(what << ": " << bad << " of " << actual.size() << " elements differ; first at " << first
              << ": " << show(actual[first]) << ", expected " << show(expected[first]));
}

// `offset` zeros, then v: uploaded, its data starts `offset` elements past an aligned address.
std::vector<float> pad_front(const std::vector<float>& v, size_t offset) {
  std::vector<float> out(offset, 0.0f);
  out.insert(out.end(), v.begin(), v.end());
  return out;
}
// v without its first `offset` elements.
std::vector<float> drop_front(const std::vector<float>& v, size_t offset) {
  return {v.begin() + static_cast<std::ptrdiff_t>(offset), v.end()};
}

std::vector<int64_t> random_labels(Rng& rng, int64_t n, int64_t classes) {
  std::uniform_int_distribution<int64_t> d(0, classes - 1);
  std::vector<int64_t> labels(static_cast<size_t>(n));
  for (int64_t& l : labels) l = d(rng.gen);
  return labels;
}

// ------------------------------------------------------------------------------------------------
// Elementwise

template <class E>
void check_map_ops(int64_t n, size_t offset, Rng& rng) {
  INFO(type_name<E>() << " add/scale/fill/axpy, n = " << n << ", offset " << offset);
  const auto count = static_cast<size_t>(n);
  const auto stream = dl::cuda::stream();
  const std::vector<float> a = quantize<E>(rng.normal(count));
  const std::vector<float> b = quantize<E>(rng.normal(count, 0.0f, 10.0f));
  const float alpha = rng.uniform(1, -3.0f, 3.0f)[0], value = rng.normal(1)[0];
  std::vector<float> sum(count), scaled(count), axpy(count), fill(count, value);
  dl::cpu::add(a.data(), b.data(), sum.data(), n);
  dl::cpu::scale(a.data(), alpha, scaled.data(), n);
  for (size_t i = 0; i < count; ++i) axpy[i] = std::fma(alpha, a[i], b[i]);
  axpy = quantize<E>(axpy);

  DeviceArray<E> d_a(pad_front(a, offset)), d_b(pad_front(b, offset)), d_out(count + offset);
  E* const pa = d_a.get() + offset;
  E* const pb = d_b.get() + offset;
  E* const out = d_out.get() + offset;
  d_out.poison();
  dl::cuda::add(pa, pb, out, n, stream);
  require_identical(drop_front(d_out.download(), offset), quantize<E>(sum), "add");
  d_out.poison();
  dl::cuda::scale(pa, alpha, out, n, stream);
  require_identical(drop_front(d_out.download(), offset), quantize<E>(scaled), "scale");
  d_out.poison();
  dl::cuda::fill(out, value, n, stream);
  require_identical(drop_front(d_out.download(), offset), quantize<E>(fill), "fill");
  dl::cuda::axpy(alpha, pa, pb, n, stream);
  require_identical(drop_front(d_b.download(), offset), axpy, "axpy");

  // In place: out aliases an input (a += axpy, then a *= alpha).
  std::vector<float> in_place(count);
  dl::cpu::add(a.data(), axpy.data(), in_place.data(), n);
  in_place = quantize<E>(in_place);
  dl::cuda::add(pa, pb, pa, n, stream);
  require_identical(drop_front(d_a.download(), offset), in_place, "add in place");
  dl::cpu::scale(in_place.data(), alpha, in_place.data(), n);
  dl::cuda::scale(pa, alpha, pa, n, stream);
  require_identical(drop_front(d_a.download(), offset), quantize<E>(in_place), "scale in place");
}

TEMPLATE_TEST_CASE("CUDA add, scale, fill and axpy are bit-identical to the CPU's operations",
                   "[cuda][elementwise]", float, Bf16) {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (int64_t n : {1, 3, 7, 8, 9, 1000, 4099, 65537, (1 << 20) + 3})
    for (size_t offset : {0, 1}) check_map_ops<TestType>(n, offset, rng);
}

// Random fp32 bit patterns other than NaN: every exponent, subnormals, infinities; every fourth
// one exactly halfway between two bf16 values (low half 0x8000: ties round to even).
std::vector<float> random_floats(Rng& rng, size_t count) {
  std::vector<float> x(count);
  for (size_t i = 0; i < count; ++i) {
    do {
      uint32_t bits = static_cast<uint32_t>(rng.gen());
      if (i % 4 == 0) bits = (bits & 0xffff0000u) | 0x8000u;
      x[i] = std::bit_cast<float>(bits);
    } while (std::isnan(x[i]));
  }
  return x;
}

TEST_CASE("CUDA fp32 <-> bf16 conversion rounds to nearest even, as dl::bf16 does",
          "[cuda][elementwise]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  const auto stream = dl::cuda::stream();
  for (int64_t n : {1, 3, 4, 5, 1000, 65537}) {
    for (size_t offset : {0, 1}) {
      INFO("n = " << n << ", offset " << offset);
      const auto count = static_cast<size_t>(n);
      const std::vector<float> x = random_floats(rng, count);
      DeviceArray<float> d_x(pad_front(x, offset)), d_wide(count + offset);
      DeviceArray<Bf16> d_narrow(count + offset);
      d_narrow.poison();
      dl::cuda::convert(d_x.get() + offset, d_narrow.get() + offset, n, stream);
      require_identical(drop_front(d_narrow.download(), offset), quantize<Bf16>(x), "fp32 -> bf16");

      // Every bf16 bit pattern is a candidate, NaNs included (uploaded quiet, widened unchanged).
      std::vector<float> h(count);
      for (float& f : h) f = dl::bf16{static_cast<uint16_t>(rng.gen())}.to_float();
      h = quantize<Bf16>(h);
      DeviceArray<Bf16> d_h(pad_front(h, offset));
      d_wide.poison();
      dl::cuda::convert(d_h.get() + offset, d_wide.get() + offset, n, stream);
      require_identical(drop_front(d_wide.download(), offset), h, "bf16 -> fp32");
    }
  }
  // NaN stays NaN (its bits are CUDA's canonical NaN, not dl::bf16's): zeros first, since the
  // poison is itself a NaN.
  const std::vector<float> nans = {kNaN, -kNaN, std::bit_cast<float>(0x7f800001u),
                                   std::bit_cast<float>(0xffbfffffu), kNaN};
  DeviceArray<float> d_nans(nans);
  DeviceArray<Bf16> d_out(nans.size());
  DL_CUDA_CHECK(cudaMemsetAsync(d_out.get(), 0, d_out.bytes(), stream));
  dl::cuda::convert(d_nans.get(), d_out.get(), static_cast<int64_t>(nans.size()), stream);
  for (float v : d_out.download()) CHECK(std::isnan(v));
}

template <class E>
void check_add_bias(int64_t rows, int64_t cols, size_t offset, Rng& rng) {
  INFO(type_name<E>() << " add_bias, rows " << rows << " cols " << cols << ", offset " << offset);
  const auto count = static_cast<size_t>(rows * cols);
  const std::vector<float> y = quantize<E>(rng.normal(count));
  const std::vector<float> bias = rng.normal(static_cast<size_t>(cols));
  std::vector<float> expected = y;
  for (int64_t r = 0; r < rows; ++r)
    dl::cpu::add(expected.data() + r * cols, bias.data(), expected.data() + r * cols, cols);
  DeviceArray<E> d_y(pad_front(y, offset));
  DeviceArray<float> d_bias(bias);
  dl::cuda::add_bias(d_y.get() + offset, d_bias.get(), rows, cols, dl::cuda::stream());
  require_identical(drop_front(d_y.download(), offset), quantize<E>(expected), "add_bias");
}

template <class E>
void check_sum_rows(int64_t rows, int64_t cols, Rng& rng) {
  INFO(type_name<E>() << " sum_rows, rows " << rows << " cols " << cols);
  const auto count = static_cast<size_t>(rows * cols), cs = static_cast<size_t>(cols);
  const std::vector<float> x = quantize<E>(rng.normal(count)), ax = abs_of(x);
  std::vector<float> ref(cs), scale(cs);
  dl::cpu::sum_rows(x.data(), rows, cols, ref.data());
  dl::cpu::sum_rows(ax.data(), rows, cols, scale.data());
  const size_t ws_bytes = dl::cuda::sum_rows_workspace_bytes(rows, cols);
  Workspace ws(ws_bytes);
  DeviceArray<E> d_x(x);
  DeviceArray<float> d_out(cs);
  d_out.poison();
  dl::cuda::sum_rows(d_x.get(), rows, cols, d_out.get(), ws_bytes ? ws.get() : nullptr,
                     dl::cuda::stream());
  require_close(d_out.download(), ref, kRtol, kSumAtol, "sum_rows", &scale);
}

TEMPLATE_TEST_CASE("CUDA add_bias and sum_rows match the CPU kernels", "[cuda][elementwise]", float,
                   Bf16) {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  // Columns a multiple of 8 take the vectorised add_bias, others (and offset 1) the scalar one.
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 1}, {3, 7}, {5, 8}, {17, 64}, {1000, 33}, {64, 256}, {4099, 12}})
    for (size_t offset : {0, 1}) check_add_bias<TestType>(rows, cols, offset, rng);
  // One row block, exactly 256 rows, several blocks, the 256-block cap (blocks grow), one column.
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 1},
                                                                           {1, 100},
                                                                           {7, 3},
                                                                           {255, 33},
                                                                           {256, 32},
                                                                           {257, 5},
                                                                           {1000, 37},
                                                                           {65539, 12},
                                                                           {100000, 1},
                                                                           {300, 1000}})
    check_sum_rows<TestType>(rows, cols, rng);
}

TEST_CASE("CUDA sum_rows over zero rows writes zeros", "[cuda][elementwise]") {
  DeviceArray<float> d_out(5);
  d_out.poison();
  dl::cuda::sum_rows<float>(nullptr, 0, 5, d_out.get(), nullptr, dl::cuda::stream());
  require_identical(d_out.download(), std::vector<float>(5, 0.0f), "sum_rows");
}

template <class E>
void check_more_map_ops(int64_t n, size_t offset, Rng& rng) {
  INFO(type_name<E>() << " mul/scale_by/fill_with/relu, n = " << n << ", offset " << offset);
  const auto count = static_cast<size_t>(n);
  const auto stream = dl::cuda::stream();
  const std::vector<float> b = quantize<E>(rng.normal(count, 0.0f, 10.0f));
  // ReLU's input: zeros of both signs and NaNs (which give 0) mixed in.
  std::vector<float> a = quantize<E>(rng.normal(count));
  for (size_t i = 0; i < count; i += 5) a[i] = i % 3 == 0 ? 0.0f : i % 3 == 1 ? -0.0f : kNaN;
  const std::vector<float> factor = rng.uniform(1, -3.0f, 3.0f), value = rng.normal(1);
  std::vector<float> product(count), scaled(count), relu(count), relu_grad(count);
  const std::vector<float> finite_a = quantize<E>(rng.normal(count));
  dl::cpu::mul(finite_a.data(), b.data(), product.data(), n);
  dl::cpu::scale(finite_a.data(), factor[0], scaled.data(), n);
  dl::cpu::relu_forward(a.data(), relu.data(), n);
  dl::cpu::relu_backward(a.data(), b.data(), relu_grad.data(), n);

  DeviceArray<E> d_a(pad_front(a, offset)), d_fa(pad_front(finite_a, offset));
  DeviceArray<E> d_b(pad_front(b, offset)), d_out(count + offset);
  DeviceArray<float> d_factor(factor), d_value(value);
  E* const out = d_out.get() + offset;
  d_out.poison();
  dl::cuda::mul(d_fa.get() + offset, d_b.get() + offset, out, n, stream);
  require_identical(drop_front(d_out.download(), offset), quantize<E>(product), "mul");
  d_out.poison();
  dl::cuda::scale_by(d_fa.get() + offset, d_factor.get(), out, n, stream);
  require_identical(drop_front(d_out.download(), offset), quantize<E>(scaled), "scale_by");
  d_out.poison();
  dl::cuda::fill_with(out, d_value.get(), n, stream);
  require_identical(drop_front(d_out.download(), offset),
                    quantize<E>(std::vector<float>(count, value[0])), "fill_with");
  d_out.poison();
  dl::cuda::relu_forward(d_a.get() + offset, out, n, stream);
  require_identical(drop_front(d_out.download(), offset), relu, "relu forward");
  d_out.poison();
  dl::cuda::relu_backward(d_a.get() + offset, d_b.get() + offset, out, n, stream);
  require_identical(drop_front(d_out.download(), offset), relu_grad, "relu backward");
}

TEMPLATE_TEST_CASE("CUDA mul, scale_by, fill_with and ReLU are bit-identical to the CPU's",
                   "[cuda][elementwise]", float, Bf16) {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (int64_t n : {1, 7, 8, 9, 4099, 65537})
    for (size_t offset : {0, 1}) check_more_map_ops<TestType>(n, offset, rng);
}

TEST_CASE("CUDA clip_scale scales by a coefficient below 1 and leaves every bit alone at 1",
          "[cuda][elementwise]") {
  Rng rng(fresh_seed());
  const auto stream = dl::cuda::stream();
  for (int64_t n : {1, 9, 4099}) {
    INFO("n = " << n);
    std::vector<float> x = rng.normal(static_cast<size_t>(n));
    uint32_t payload_nan_bits = 0x7fa00001u;  // a NaN with a payload, not the canonical one
    std::memcpy(&x[static_cast<size_t>(n) / 2], &payload_nan_bits, sizeof(float));
    for (const float coefficient : {1.0f, 0.375f}) {
      INFO("coefficient " << coefficient);
      DeviceArray<float> d_x(x), d_coefficient(std::vector<float>{coefficient});
      dl::cuda::clip_scale(d_x.get(), d_coefficient.get(), n, stream);
      const std::vector<float> got = d_x.download();
      if (coefficient == 1.0f) {
        CHECK(std::memcmp(got.data(), x.data(), x.size() * sizeof(float)) == 0);
      } else {
        for (size_t i = 0; i < x.size(); ++i)
          if (!std::isnan(x[i])) CHECK(got[i] == x[i] * coefficient);
      }
    }
  }
}

TEMPLATE_TEST_CASE("CUDA transpose_batched moves every element unchanged", "[cuda][elementwise]",
                   float, Bf16) {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  // Partial tiles on either axis, one-row and one-column matrices, a ConvMixer-like [1024, 256].
  for (const auto& [batch, rows, cols] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 1},
                                                          {1, 32, 32},
                                                          {2, 33, 65},
                                                          {3, 1000, 7},
                                                          {5, 7, 1000},
                                                          {4, 1, 50},
                                                          {2, 1024, 256}}) {
    INFO(type_name<TestType>() << " batch " << batch << " rows " << rows << " cols " << cols);
    const auto count = static_cast<size_t>(batch * rows * cols);
    const std::vector<float> in = quantize<TestType>(rng.normal(count));
    std::vector<float> expected(count);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j)
          expected[static_cast<size_t>((b * cols + j) * rows + i)] =
              in[static_cast<size_t>((b * rows + i) * cols + j)];
    DeviceArray<TestType> d_in(in), d_out(count);
    d_out.poison();
    dl::cuda::transpose_batched(d_in.get(), batch, rows, cols, d_out.get(), dl::cuda::stream());
    require_identical(d_out.download(), expected, "transpose_batched");
  }
}

TEMPLATE_TEST_CASE("CUDA sum and squared_norm match the CPU's fp64 sums", "[cuda][elementwise]",
                   float, Bf16) {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  const auto stream = dl::cuda::stream();
  // One block, exactly one block's minimum, several blocks, the block cap (ranges grow).
  for (int64_t n : {0, 1, 100, 4096, 4097, (1 << 20) + 3, 5000001}) {
    INFO(type_name<TestType>() << " n = " << n);
    const auto count = static_cast<size_t>(n);
    const std::vector<float> x = quantize<TestType>(rng.normal(count, 0.5f, 1.0f));
    double abs_sum = 0.0, sum_sq = 0.0;
    for (float v : x) {
      abs_sum += std::abs(v);
      sum_sq += static_cast<double>(v) * v;
    }
    const double fp64_err = static_cast<double>(n) * std::ldexp(1.0, -53);
    const auto ref = static_cast<float>(dl::cpu::sum(x.data(), n));
    Workspace ws(dl::cuda::reduce_workspace_bytes(n));
    DeviceArray<TestType> d_x(x);
    DeviceArray<float> d_sum(1);
    d_sum.poison();
    dl::cuda::sum(d_x.get(), n, d_sum.get(), ws.get(), stream);
    require_close(d_sum.download(), {ref}, std::ldexp(1.0, -23), fp64_err * abs_sum, "sum");

    if constexpr (std::is_same_v<TestType, float>) {
      DeviceBuffer<double> d_norm(1);
      d_norm.poison(0xff);
      dl::cuda::squared_norm(d_x.get(), n, d_norm.get(), ws.get(), stream);
      const double norm = d_norm.download()[0];
      INFO("squared_norm " << norm << ", expected " << sum_sq);
      CHECK(std::abs(norm - sum_sq) <= fp64_err * sum_sq);
    }
  }
}

TEST_CASE("CUDA BatchNorm evaluation invstd is bit-identical to the CPU's fp64 formula",
          "[cuda][batchnorm]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (int64_t c : {1, 7, 300}) {
    INFO("c = " << c);
    std::vector<float> var = rng.uniform(static_cast<size_t>(c), 0.0f, 3.0f);
    var[0] = 0.0f;
    const float eps = 1e-5f;
    std::vector<float> expected(var.size());
    for (size_t j = 0; j < var.size(); ++j)
      expected[j] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var[j]) + eps));
    DeviceArray<float> d_var(var), d_invstd(var.size());
    d_invstd.poison();
    dl::cuda::batchnorm_eval_invstd(d_var.get(), c, eps, d_invstd.get(), dl::cuda::stream());
    require_identical(d_invstd.download(), expected, "invstd");
  }
}

// ------------------------------------------------------------------------------------------------
// Pooling

template <class E>
void check_global_avg_pool(int64_t n, int64_t hw, int64_t c, Rng& rng) {
  INFO(type_name<E>() << " global average pool, n " << n << " hw " << hw << " c " << c);
  const auto in = static_cast<size_t>(n * hw * c), out = static_cast<size_t>(n * c);
  const auto stream = dl::cuda::stream();
  const std::vector<float> x = quantize<E>(rng.normal(in, 0.5f, 1.0f)), ax = abs_of(x);
  const std::vector<float> dy = quantize<E>(rng.normal(out));
  std::vector<float> y_ref(out), y_scale(out), dx_ref(in);
  dl::cpu::global_avg_pool_forward(x.data(), n, hw, c, y_ref.data());
  dl::cpu::global_avg_pool_forward(ax.data(), n, hw, c, y_scale.data());
  dl::cpu::global_avg_pool_backward(dy.data(), n, hw, c, dx_ref.data());
  DeviceArray<E> d_x(x), d_y(out), d_dy(dy), d_dx(in);
  d_y.poison();
  dl::cuda::global_avg_pool_forward(d_x.get(), n, hw, c, d_y.get(), stream);
  require_close(d_y.download(), y_ref, out_rtol<E>(), kSumAtol, "forward", &y_scale);
  d_dx.poison();
  dl::cuda::global_avg_pool_backward(d_dy.get(), n, hw, c, d_dx.get(), stream);
  require_identical(d_dx.download(), quantize<E>(dx_ref), "backward");
}

TEMPLATE_TEST_CASE("CUDA global average pool matches the CPU kernels", "[cuda][pool]", float,
                   Bf16) {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (const auto& [n, hw, c] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 1},
                                                                                   {1, 49, 3},
                                                                                   {2, 64, 256},
                                                                                   {3, 17, 33},
                                                                                   {5, 1, 8},
                                                                                   {7, 1000, 40},
                                                                                   {64, 64, 256},
                                                                                   {1, 4096, 10}})
    check_global_avg_pool<TestType>(n, hw, c, rng);
}

// Values on a coarse grid (ties: the first maximum wins) with NaN, -inf and +inf mixed in, and
// channel 1 entirely -inf (every window's maximum is -inf, at its first pixel).
std::vector<float> pool_input(Rng& rng, const dl::Pool2dShape& s) {
  const auto count = static_cast<size_t>(s.n * s.h * s.w * s.c);
  std::vector<float> x = rng.normal(count);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (size_t i = 0; i < count; ++i) {
    const float r = u(rng.gen);
    x[i] = r < 0.02f ? kNaN : r < 0.05f ? -kInf : r < 0.06f ? kInf : std::round(x[i] * 4.0f) / 4.0f;
    if (s.c > 1 && i % static_cast<size_t>(s.c) == 1) x[i] = -kInf;
  }
  return x;
}

template <class E>
void check_max_pool(const dl::Pool2dShape& s, Rng& rng) {
  INFO(type_name<E>() << " max pool, n " << s.n << " h " << s.h << " w " << s.w << " c " << s.c
                      << " k " << s.k << " stride " << s.stride << " pad " << s.pad);
  const int64_t ho = s.h_out(), wo = s.w_out();
  const auto in = static_cast<size_t>(s.n * s.h * s.w * s.c);
  const auto out = static_cast<size_t>(s.n * ho * wo * s.c);
  const auto stream = dl::cuda::stream();
  const std::vector<float> x = quantize<E>(pool_input(rng, s));
  std::vector<float> dy = quantize<E>(rng.normal(out));
  DeviceArray<E> d_x(x), d_y(out), d_dy(dy), d_dx(in);
  DeviceBuffer<int32_t> d_argmax(out);

  std::vector<float> y_ref(out);
  std::vector<int32_t> argmax_ref(out);
  dl::cpu::max_pool2d_forward(s, x.data(), y_ref.data(), argmax_ref.data());
  d_y.poison();
  d_argmax.poison(0x7f);
  dl::cuda::max_pool2d_forward(s, d_x.get(), d_y.get(), d_argmax.get(), stream);
  require_identical(d_y.download(), y_ref, "forward y");
  require_identical(d_argmax.download(), argmax_ref, "forward argmax");

  // A window entirely in the padding (argmax -1) passes no gradient, on both sides.
  std::vector<float> dx_ref(in);
  dl::cpu::max_pool2d_backward(s, dy.data(), argmax_ref.data(), dx_ref.data());
  d_dx.poison();
  dl::cuda::max_pool2d_backward(s, d_dy.get(), d_argmax.get(), d_dx.get(), stream);
  require_identical(d_dx.download(), quantize<E>(dx_ref), "backward dx");
}

// Batch 1, odd sizes and channel counts; stride = k, overlapping windows (stride < k), gaps
// (stride > k: pixels in no window), padding, a 1x1 image, and windows entirely in the padding
// (pad >= k: the last shape's first output row, first and last output columns).
const std::vector<dl::Pool2dShape> kMaxPoolShapes = {
    {.n = 1, .h = 5, .w = 5, .c = 3, .k = 2, .stride = 2, .pad = 0},
    {.n = 2, .h = 8, .w = 8, .c = 64, .k = 2, .stride = 2, .pad = 0},
    {.n = 1, .h = 7, .w = 9, .c = 13, .k = 3, .stride = 2, .pad = 1},
    {.n = 3, .h = 6, .w = 5, .c = 8, .k = 3, .stride = 1, .pad = 1},
    {.n = 2, .h = 11, .w = 7, .c = 33, .k = 3, .stride = 3, .pad = 0},
    {.n = 1, .h = 9, .w = 9, .c = 5, .k = 2, .stride = 3, .pad = 0},
    {.n = 4, .h = 16, .w = 16, .c = 40, .k = 3, .stride = 2, .pad = 1},
    {.n = 1, .h = 1, .w = 1, .c = 1, .k = 1, .stride = 1, .pad = 0},
    {.n = 2, .h = 13, .w = 13, .c = 100, .k = 5, .stride = 2, .pad = 2},
    {.n = 8, .h = 32, .w = 32, .c = 64, .k = 2, .stride = 2, .pad = 0},
    {.n = 2, .h = 3, .w = 4, .c = 3, .k = 2, .stride = 3, .pad = 2}};

TEMPLATE_TEST_CASE("CUDA max pool forward and backward are bit-identical to the CPU kernels",
                   "[cuda][pool]", float, Bf16) {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (const dl::Pool2dShape& s : kMaxPoolShapes) check_max_pool<TestType>(s, rng);
}

// ------------------------------------------------------------------------------------------------
// Cross-entropy and accuracy

// `outputs`: also the mean loss and dlogits (else only the row losses, as in evaluation).
template <class E>
void check_cross_entropy(int64_t n, int64_t classes, float eps, float dloss, bool outputs,
                         Rng& rng) {
  INFO(type_name<E>() << " cross-entropy, n " << n << " classes " << classes << ", smoothing "
                      << eps << ", dloss " << dloss << (outputs ? "" : ", row losses only"));
  const auto rows = static_cast<size_t>(n), count = static_cast<size_t>(n * classes);
  const std::vector<float> z = quantize<E>(rng.normal(count, 0.0f, 3.0f));
  const std::vector<int64_t> labels = random_labels(rng, n, classes);
  // Row losses: the CPU kernel on one row at a time; the mean and the softmax over the batch.
  std::vector<float> row_ref(rows), probs(count), dz_ref(count);
  for (size_t i = 0; i < rows; ++i)
    row_ref[i] = static_cast<float>(dl::cpu::cross_entropy_forward(
        z.data() + i * classes, labels.data() + i, 1, classes, eps, probs.data() + i * classes));
  const double mean_ref =
      dl::cpu::cross_entropy_forward(z.data(), labels.data(), n, classes, eps, probs.data());
  dl::cpu::cross_entropy_backward(probs.data(), labels.data(), n, classes, eps, dloss,
                                  dz_ref.data());

  DeviceArray<E> d_z(z), d_dz(count);
  DeviceBuffer<int64_t> d_labels(labels);
  DeviceArray<float> d_row(rows), d_mean(1);
  DeviceBuffer<int32_t> d_bad(std::vector<int32_t>{0});
  d_row.poison();
  d_mean.poison();
  d_dz.poison();
  dl::cuda::cross_entropy_forward_backward(d_z.get(), d_labels.get(), n, classes, eps, dloss,
                                           d_row.get(), outputs ? d_mean.get() : nullptr,
                                           outputs ? d_dz.get() : nullptr, d_bad.get(),
                                           dl::cuda::stream());
  require_close(d_row.download(), row_ref, kRtol, kLossAtol, "row losses");
  REQUIRE(d_bad.download()[0] == 0);
  if (!outputs) return;
  require_close(d_mean.download(), {static_cast<float>(mean_ref)}, kRtol, kLossAtol, "mean loss");
  require_close(d_dz.download(), dz_ref, out_rtol<E>(),
                kDlogitsAtol * std::abs(dloss) / static_cast<double>(n), "dlogits");
}

// (n, classes): one class, one row, fewer classes than a warp's lanes, several lanes' worth,
// 1000 classes, rows across many blocks and the mean's 256 threads.
const std::vector<std::pair<int64_t, int64_t>> kLossShapes = {
    {1, 1},   {1, 10},    {3, 7},      {8, 32},    {33, 33},
    {64, 10}, {100, 100}, {257, 1000}, {1000, 10}, {4099, 37}};

TEMPLATE_TEST_CASE("CUDA cross-entropy (label smoothing 0 and 0.1) matches the CPU kernels",
                   "[cuda][loss]", float, Bf16) {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (size_t i = 0; i < kLossShapes.size(); ++i)
    for (const float eps : {0.0f, 0.1f})
      check_cross_entropy<TestType>(kLossShapes[i].first, kLossShapes[i].second, eps,
                                    i % 2 == 0 ? 1.0f : 1024.0f, i % 4 != 3, rng);
}

TEST_CASE("CUDA cross-entropy flags bad labels: NaN losses, zero gradient rows, sticky flag",
          "[cuda][loss]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  const int64_t n = 37, classes = 10;
  const auto rows = static_cast<size_t>(n), count = static_cast<size_t>(n * classes);
  const float eps = 0.1f;
  const std::vector<float> z = rng.normal(count, 0.0f, 3.0f);
  const std::vector<int64_t> good = random_labels(rng, n, classes);
  std::vector<int64_t> labels = good;
  labels[0] = -1;
  labels[5] = classes;
  labels[36] = int64_t{1} << 40;
  // The CPU reference of the good rows (it would read out of bounds for a bad label).
  std::vector<float> row_ref(rows), probs(count), dz_ref(count);
  for (size_t i = 0; i < rows; ++i)
    row_ref[i] = static_cast<float>(dl::cpu::cross_entropy_forward(
        z.data() + i * classes, good.data() + i, 1, classes, eps, probs.data() + i * classes));
  dl::cpu::cross_entropy_backward(probs.data(), good.data(), n, classes, eps, 1.0f, dz_ref.data());

  DeviceArray<float> d_z(z), d_dz(count), d_row(rows), d_mean(1);
  DeviceBuffer<int64_t> d_labels(labels), d_good(good);
  DeviceBuffer<int32_t> d_bad(std::vector<int32_t>{0});
  d_row.poison();
  d_dz.poison();
  d_mean.poison();
  dl::cuda::cross_entropy_forward_backward(d_z.get(), d_labels.get(), n, classes, eps, 1.0f,
                                           d_row.get(), d_mean.get(), d_dz.get(), d_bad.get(),
                                           dl::cuda::stream());
  REQUIRE(d_bad.download()[0] == 1);
  CHECK(std::isnan(d_mean.download()[0]));
  const std::vector<float> row = d_row.download(), dz = d_dz.download();
  std::vector<float> good_row, good_row_ref, good_dz, good_dz_ref;
  for (size_t i = 0; i < rows; ++i) {
    const bool bad = labels[i] != good[i];
    const auto first = static_cast<std::ptrdiff_t>(i * classes);
    const auto last = first + static_cast<std::ptrdiff_t>(classes);
    if (bad) {
      CHECK(std::isnan(row[i]));
      for (auto j = first; j < last; ++j) CHECK(std::bit_cast<uint32_t>(dz[j]) == 0u);
      continue;
    }
    good_row.push_back(row[i]);
    good_row_ref.push_back(row_ref[i]);
    good_dz.insert(good_dz.end(), dz.begin() + first, dz.begin() + last);
    good_dz_ref.insert(good_dz_ref.end(), dz_ref.begin() + first, dz_ref.begin() + last);
  }
  require_close(good_row, good_row_ref, kRtol, kLossAtol, "good rows' losses");
  require_close(good_dz, good_dz_ref, kRtol, kDlogitsAtol / static_cast<double>(n),
                "good rows' dlogits");

  // The kernel never clears the flag: a batch of good labels leaves it set.
  d_row.poison();
  dl::cuda::cross_entropy_forward_backward<float>(d_z.get(), d_good.get(), n, classes, eps, 1.0f,
                                                  d_row.get(), nullptr, nullptr, d_bad.get(),
                                                  dl::cuda::stream());
  CHECK(d_bad.download()[0] == 1);
  require_close(d_row.download(), row_ref, kRtol, kLossAtol, "row losses with good labels");
}

template <class E>
void check_count_correct(int64_t n, int64_t classes, Rng& rng) {
  INFO(type_name<E>() << " count_correct, n " << n << " classes " << classes);
  const auto count = static_cast<size_t>(n * classes);
  // Ties on a coarse grid and NaNs (column 0 included), as the trainer's scan sees them.
  std::vector<float> z = rng.normal(count);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (float& v : z) v = u(rng.gen) < 0.03f ? kNaN : std::round(v * 2.0f) / 2.0f;
  z = quantize<E>(z);
  std::vector<int64_t> labels = random_labels(rng, n, classes);
  int32_t expected = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* row = z.data() + i * classes;
    int64_t best = 0;
    for (int64_t c = 1; c < classes; ++c)
      if (row[c] > row[best]) best = c;
    if (u(rng.gen) < 0.6f) labels[static_cast<size_t>(i)] = best;
    expected += labels[static_cast<size_t>(i)] == best ? 1 : 0;
  }
  DeviceArray<E> d_z(z);
  DeviceBuffer<int64_t> d_labels(labels);
  DeviceBuffer<int32_t> d_correct(std::vector<int32_t>{7});  // the count adds to it
  dl::cuda::count_correct(d_z.get(), d_labels.get(), n, classes, d_correct.get(),
                          dl::cuda::stream());
  REQUIRE(d_correct.download()[0] == 7 + expected);
}

TEMPLATE_TEST_CASE("CUDA accuracy count matches the trainer's argmax scan", "[cuda][loss]", float,
                   Bf16) {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (int64_t n : {1, 31, 33, 256, 1000, 4099})
    for (int64_t classes : {1, 10, 100}) check_count_correct<TestType>(n, classes, rng);
}

// ------------------------------------------------------------------------------------------------
// Optimizer

// A parameter tensor of the test: its size and how far its device arrays start past an aligned
// address, in elements (fp32 arrays, bf16 copy); 0 and 0 take the vectorised path.
struct OptimSpec {
  int64_t numel;
  size_t offset, bf16_offset;
  bool bf16_copy;
};

// Sizes below, at and above a chunk (kOptimChunkElems = 8192); scalar paths from an unaligned fp32
// array (7, 8193) or only an unaligned bf16 copy (20005).
const std::vector<OptimSpec> kOptimSpecs = {
    {1, 0, 0, true},     {3, 0, 0, false},   {4, 0, 0, true},     {7, 1, 1, true},
    {8192, 0, 0, false}, {8193, 1, 0, true}, {20005, 0, 2, true}, {3 * 8192, 0, 0, true}};

// Parameter t is in group t % 2 at index t / 2. Parameter 2 has no gradient in step 2, parameter 4
// none before step 3 (its first update comes late): the optimizers skip such parameters and do
// not count the step for them.
bool has_grad(size_t t, int step) {
  return !(t == 2 && step == 2) && !(t == 4 && step < 3);
}

// One parameter on both sides: the CPU optimizer's tensor, and the device arrays (parameter,
// gradient, two state buffers, bf16 copy) starting `offset` elements into their allocations.
struct OptimParam {
  OptimParam(const OptimSpec& spec, Rng& rng)
      : spec(spec),
        count(static_cast<size_t>(spec.numel)),
        cpu(dl::Tensor::from_vector(rng.normal(count), {spec.numel})),
        param(pad_front(cpu.to_vector(), spec.offset)),
        grad(count + spec.offset),
        state0(std::vector<float>(count + spec.offset, 0.0f)),
        state1(std::vector<float>(count + spec.offset, 0.0f)),
        copy(count + spec.bf16_offset) {}
  float* at(const DeviceArray<float>& a) const { return a.get() + spec.offset; }

  OptimSpec spec;
  size_t count;
  dl::Tensor cpu;
  DeviceArray<float> param, grad, state0, state1;
  DeviceArray<Bf16> copy;
};

std::vector<dl::Tensor> group_tensors(const std::deque<OptimParam>& params, size_t group) {
  std::vector<dl::Tensor> out;
  for (size_t t = group; t < params.size(); t += 2) out.push_back(params[t].cpu);
  return out;
}

template <class Hyper>
using StepLauncher = void (*)(const dl::cuda::OptimChunk*, int64_t, const Hyper*, cudaStream_t);

// Five steps of `opt` (whose options' lr is `lr`) over the parameters, with a learning-rate
// schedule, and the same steps of the fused kernel: one hyper-parameter entry per parameter,
// make_hyper(group lr, group weight decay, the parameter's step count). After each step the
// parameters, the state buffers `names` (as Optimizer::state_tensors names them) and the bf16
// copies must be bit-identical; a parameter left out of a step keeps its poisoned bf16 copy.
template <class Hyper, class MakeHyper>
void check_optimizer_steps(dl::optim::Optimizer& opt, double lr, std::deque<OptimParam>& params,
                           const std::vector<std::string>& names, MakeHyper make_hyper,
                           StepLauncher<Hyper> launch, Rng& rng) {
  const double lr_factor[] = {1.0, 0.5, 2.0, 0.1, 1.0};
  std::vector<int64_t> steps(params.size(), 0);
  for (int step = 1; step <= 5; ++step) {
    INFO("step " << step);
    opt.set_lr(lr * lr_factor[step - 1]);
    std::vector<dl::cuda::OptimTensor> tensors;
    std::vector<Hyper> hyper(params.size());
    for (size_t t = 0; t < params.size(); ++t) {
      OptimParam& p = params[t];
      p.copy.poison();
      if (!has_grad(t, step)) {
        p.cpu.set_grad(dl::Tensor());
        continue;
      }
      const float grad_scale = std::pow(10.0f, rng.uniform(1, -3.0f, 1.0f)[0]);
      const std::vector<float> g = rng.normal(p.count, 0.0f, grad_scale);
      p.cpu.set_grad(dl::Tensor::from_vector(g, {p.spec.numel}));
      p.grad.upload(pad_front(g, p.spec.offset));
      const dl::optim::ParamGroup& group = opt.param_groups()[t % 2];
      hyper[t] = make_hyper(*group.lr, *group.weight_decay, ++steps[t]);
      tensors.push_back(
          {.param = p.at(p.param),
           .grad = p.at(p.grad),
           .state0 = names.empty() ? nullptr : p.at(p.state0),
           .state1 = names.size() == 2 ? p.at(p.state1) : nullptr,
           .param_bf16 = p.spec.bf16_copy ? p.copy.get() + p.spec.bf16_offset : nullptr,
           .numel = p.spec.numel,
           .hyper = static_cast<int32_t>(t)});
    }
    opt.step();
    const std::vector<dl::cuda::OptimChunk> chunks = dl::cuda::make_optim_chunks(tensors);
    DeviceBuffer<dl::cuda::OptimChunk> d_chunks(chunks);
    DeviceBuffer<Hyper> d_hyper(hyper);
    launch(d_chunks.get(), static_cast<int64_t>(chunks.size()), d_hyper.get(), dl::cuda::stream());

    std::map<std::string, std::vector<float>> state;
    for (const auto& [name, tensor] : opt.state_tensors())
      if (tensor.dtype() == dl::DType::f32) state[name] = tensor.to_vector();
    for (size_t t = 0; t < params.size(); ++t) {
      const OptimParam& p = params[t];
      INFO("parameter " << t << " (" << p.spec.numel << " elements, step " << steps[t] << ")");
      const std::vector<float> expected = p.cpu.to_vector();
      require_identical(drop_front(p.param.download(), p.spec.offset), expected, "parameter");
      const std::string prefix =
          "optim.group" + std::to_string(t % 2) + ".param" + std::to_string(t / 2) + ".";
      if (steps[t] > 0) {
        for (size_t b = 0; b < names.size(); ++b)
          require_identical(drop_front((b == 0 ? p.state0 : p.state1).download(), p.spec.offset),
                            state.at(prefix + names[b]), names[b]);
      }
      if (p.spec.bf16_copy)
        require_identical(drop_front(p.copy.download(), p.spec.bf16_offset),
                          has_grad(t, step) ? quantize<Bf16>(expected)
                                            : std::vector<float>(p.count, kPoisonedBf16),
                          "bf16 copy");
    }
  }
}

TEST_CASE("CUDA AdamW steps are bit-identical to dl::optim::AdamW", "[cuda][optimizer]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (const dl::optim::AdamWOptions& o :
       {dl::optim::AdamWOptions{},
        dl::optim::AdamWOptions{
            .lr = 3e-3, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6, .weight_decay = 0.05}}) {
    INFO("lr " << o.lr << ", betas " << o.beta1 << " " << o.beta2 << ", eps " << o.eps
               << ", weight decay " << o.weight_decay);
    std::deque<OptimParam> params;
    for (const OptimSpec& spec : kOptimSpecs) params.emplace_back(spec, rng);
    // Group 1 has its own lr and no weight decay.
    dl::optim::AdamW opt(
        {dl::optim::ParamGroup{.params = group_tensors(params, 0)},
         dl::optim::ParamGroup{
             .params = group_tensors(params, 1), .lr = 3 * o.lr, .weight_decay = 0.0}},
        o);
    check_optimizer_steps<dl::cuda::AdamWHyper>(
        opt, o.lr, params, {"exp_avg", "exp_avg_sq"},
        [&o](double lr, double wd, int64_t step) {
          return dl::cuda::adamw_hyper(lr, wd, o.beta1, o.beta2, o.eps, step);
        },
        dl::cuda::adamw_step, rng);
  }
}

TEST_CASE("CUDA SGD steps are bit-identical to dl::optim::SGD", "[cuda][optimizer]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (const dl::optim::SGDOptions& o :
       {dl::optim::SGDOptions{.lr = 0.1},
        dl::optim::SGDOptions{.lr = 0.05, .momentum = 0.9, .weight_decay = 5e-4},
        dl::optim::SGDOptions{.lr = 0.05, .momentum = 0.9, .dampening = 0.1},
        dl::optim::SGDOptions{
            .lr = 0.02, .momentum = 0.9, .weight_decay = 1e-4, .nesterov = true}}) {
    INFO("lr " << o.lr << ", momentum " << o.momentum << ", dampening " << o.dampening
               << ", weight decay " << o.weight_decay << (o.nesterov ? ", nesterov" : ""));
    std::deque<OptimParam> params;
    for (const OptimSpec& spec : kOptimSpecs) {
      params.emplace_back(spec, rng);
      params.back().state0.poison();  // the first update must overwrite the momentum buffer
    }
    // Group 1 has its own lr and weight decay.
    dl::optim::SGD opt(
        {dl::optim::ParamGroup{.params = group_tensors(params, 0)},
         dl::optim::ParamGroup{
             .params = group_tensors(params, 1), .lr = 2 * o.lr, .weight_decay = 1e-3}},
        o);
    check_optimizer_steps<dl::cuda::SGDHyper>(
        opt, o.lr, params,
        o.momentum != 0 ? std::vector<std::string>{"momentum_buffer"} : std::vector<std::string>{},
        [&o](double lr, double wd, int64_t step) {
          return dl::cuda::sgd_hyper(lr, wd, o.momentum, o.dampening, o.nesterov, step == 1);
        },
        dl::cuda::sgd_step, rng);
  }
}

TEST_CASE("make_optim_chunks splits tensors into chunks in order", "[cuda][optimizer]") {
  std::vector<float> p(20000), g(20000), m(20000);
  std::vector<Bf16> copy(20000);
  const int64_t big = 2 * dl::cuda::kOptimChunkElems + 5;
  const std::vector<dl::cuda::OptimChunk> chunks = dl::cuda::make_optim_chunks(
      {{.param = p.data(), .grad = g.data(), .state0 = m.data(), .numel = big, .hyper = 0},
       {.param = p.data(), .grad = g.data(), .numel = 0, .hyper = 1},
       {.param = p.data() + big,
        .grad = g.data() + big,
        .param_bf16 = copy.data() + big,
        .numel = 3,
        .hyper = 2}});
  REQUIRE(chunks.size() == 4);
  for (int i = 0; i < 3; ++i) {
    const int64_t off = i * dl::cuda::kOptimChunkElems;
    CHECK(chunks[i].param == p.data() + off);
    CHECK(chunks[i].grad == g.data() + off);
    CHECK(chunks[i].state0 == m.data() + off);
    CHECK(chunks[i].state1 == nullptr);
    CHECK(chunks[i].param_bf16 == nullptr);
    CHECK(chunks[i].numel == (i < 2 ? dl::cuda::kOptimChunkElems : 5));
    CHECK(chunks[i].hyper == 0);
  }
  CHECK(chunks[3].param == p.data() + big);
  CHECK(chunks[3].state0 == nullptr);
  CHECK(chunks[3].param_bf16 == copy.data() + big);
  CHECK(chunks[3].numel == 3);
  CHECK(chunks[3].hyper == 2);
}

// ------------------------------------------------------------------------------------------------
// GEMM (cuBLASLt)

template <class E>
constexpr dl::cuda::GemmType gemm_type() {
  return is_bf16<E>() ? dl::cuda::GemmType::bf16 : dl::cuda::GemmType::f32;
}

struct GemmShape {
  int64_t m, n, k;
};

// The three GEMMs on the CPU (x [m, k], w [n, k], dy [m, n]): y = x w^T + bias, dx = dy w,
// dw = dy^T x, dbias = column sums of dy.
struct GemmRef {
  GemmRef(const GemmShape& g, const std::vector<float>& x, const std::vector<float>& w,
          const std::vector<float>& dy, const std::vector<float>* bias)
      : y(static_cast<size_t>(g.m * g.n)),
        dx(static_cast<size_t>(g.m * g.k)),
        dw(static_cast<size_t>(g.n * g.k)),
        dbias(static_cast<size_t>(g.n)) {
    dl::cpu::gemm(false, true, g.m, g.n, g.k, x.data(), g.k, w.data(), g.k,
                  bias ? bias->data() : nullptr, y.data(), g.n);
    dl::cpu::gemm(false, false, g.m, g.k, g.n, dy.data(), g.n, w.data(), g.k, nullptr, dx.data(),
                  g.k);
    dl::cpu::gemm(true, false, g.n, g.k, g.m, dy.data(), g.n, x.data(), g.k, nullptr, dw.data(),
                  g.k);
    dl::cpu::sum_rows(dy.data(), g.m, g.n, dbias.data());
  }
  std::vector<float> y, dx, dw, dbias;
};

// Inputs E, outputs O (forward y and the bias, backward_data dx); dw and dbias are fp32.
template <class E, class O>
void check_gemm(dl::cuda::LtGemm& gemm, const GemmShape& g, bool with_bias, Rng& rng) {
  const bool tf32 = gemm.allow_tf32() && !is_bf16<E>();
  INFO(type_name<E>() << " -> " << type_name<O>() << (tf32 ? " (TF32)" : "") << " GEMM, m " << g.m
                      << " n " << g.n << " k " << g.k << (with_bias ? ", bias" : ""));
  const double atol = tf32 ? kTf32Atol : kSumAtol;
  const auto stream = dl::cuda::stream();
  const auto mk = static_cast<size_t>(g.m * g.k), nk = static_cast<size_t>(g.n * g.k);
  const auto mn = static_cast<size_t>(g.m * g.n), ns = static_cast<size_t>(g.n);
  const std::vector<float> x = quantize<E>(rng.normal(mk));
  const std::vector<float> w =
      quantize<E>(rng.normal(nk, 0.0f, 1.0f / std::sqrt(static_cast<float>(g.k))));
  const std::vector<float> dy = quantize<E>(rng.normal(mn));
  const std::vector<float> bias = quantize<O>(rng.normal(ns, 0.0f, 0.5f));
  const std::vector<float> ax = abs_of(x), aw = abs_of(w), ady = abs_of(dy), ab = abs_of(bias);
  const GemmRef ref(g, x, w, dy, with_bias ? &bias : nullptr);
  const GemmRef scale(g, ax, aw, ady, with_bias ? &ab : nullptr);
  const dl::cuda::GemmType in = gemm_type<E>(), out = gemm_type<O>();

  DeviceArray<E> d_x(x), d_w(w), d_dy(dy);
  DeviceArray<O> d_bias(bias), d_y(mn), d_dx(mk);
  DeviceArray<float> d_dw(nk), d_dbias(ns);
  d_y.poison();
  gemm.forward(d_x.get(), d_w.get(), with_bias ? d_bias.get() : nullptr, d_y.get(), g.m, g.n, g.k,
               in, out, stream);
  // A bf16 output with the bias epilogue is rounded twice (measured on an H100, CUDA 13.0): x w^T
  // is rounded to bf16 before the bias is added, an error of up to half a bf16 ulp of |x w^T|,
  // which can be far above the result where the bias cancels it. Hence the tolerance of cuDNN's
  // bf16 forward with a bias: kBf16TwoRoundingsAtol times the sum of |terms|.
  require_close(d_y.download(), ref.y, out_rtol<O>(),
                is_bf16<O>() && with_bias ? kBf16TwoRoundingsAtol : atol, "forward", &scale.y);
  d_dx.poison();
  gemm.backward_data(d_dy.get(), d_w.get(), d_dx.get(), g.m, g.n, g.k, in, out, stream);
  require_close(d_dx.download(), ref.dx, out_rtol<O>(), atol, "backward_data", &scale.dx);
  d_dw.poison();
  d_dbias.poison();
  gemm.backward_weight(d_dy.get(), d_x.get(), d_dw.get(), with_bias ? d_dbias.get() : nullptr, g.m,
                       g.n, g.k, in, stream);
  require_close(d_dw.download(), ref.dw, kRtol, atol, "backward_weight dw", &scale.dw);
  if (with_bias)
    require_close(d_dbias.download(), ref.dbias, kRtol, atol, "backward_weight dbias",
                  &scale.dbias);
}

// One row (batch 1), odd sizes, n and k not multiples of 8, the classifier (n = 10), pointwise
// conv widths, and many rows for the bias gradient.
const std::vector<GemmShape> kGemmShapes = {
    {1, 1, 1},       {1, 10, 256},  {2, 3, 5},    {7, 13, 9},     {33, 17, 100},  {64, 10, 256},
    {100, 256, 256}, {257, 64, 33}, {1000, 7, 3}, {4099, 24, 40}, {512, 768, 64}, {16385, 16, 8}};

// An LtGemm over a poisoned workspace of the recommended size.
struct GemmFixture {
  explicit GemmFixture(bool allow_tf32)
      : ws(dl::cuda::LtGemm::kRecommendedWorkspace),
        gemm(lt.get(), ws.get(), dl::cuda::LtGemm::kRecommendedWorkspace, allow_tf32) {}
  LtHandle lt;
  Workspace ws;
  dl::cuda::LtGemm gemm;
};

TEST_CASE("cuBLASLt fp32 GEMMs (exact) match the CPU GEMM, with bias and bias-gradient epilogues",
          "[cuda][gemm]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  GemmFixture f(false);
  for (size_t i = 0; i < kGemmShapes.size(); ++i)
    check_gemm<float, float>(f.gemm, kGemmShapes[i], i % 3 != 2, rng);
}

TEST_CASE("cuBLASLt fp32 GEMMs with TF32 match the CPU GEMM within TF32 rounding", "[cuda][gemm]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  GemmFixture f(true);
  for (size_t i = 0; i < kGemmShapes.size(); ++i)
    check_gemm<float, float>(f.gemm, kGemmShapes[i], i % 3 != 0, rng);
}

TEST_CASE("cuBLASLt bf16 GEMMs (bf16 and fp32 outputs) match the CPU GEMM", "[cuda][gemm]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  GemmFixture f(true);  // TF32 does not apply to bf16 inputs
  for (size_t i = 0; i < kGemmShapes.size(); ++i) {
    check_gemm<Bf16, Bf16>(f.gemm, kGemmShapes[i], i % 3 != 1, rng);
    check_gemm<Bf16, float>(f.gemm, kGemmShapes[i], i % 3 != 2, rng);
  }
}

TEST_CASE("LtGemm caches one plan per shape and alignment; empty sums give zero gradients",
          "[cuda][gemm]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  GemmFixture f(false);
  const auto stream = dl::cuda::stream();
  const GemmShape g{33, 17, 9};
  check_gemm<float, float>(f.gemm, g, true, rng);
  const size_t plans = f.gemm.cached_plans();
  CHECK(plans >= 3);
  check_gemm<float, float>(f.gemm, g, true, rng);
  CHECK(f.gemm.cached_plans() == plans);

  // x one element past an aligned address (4-byte alignment): a plan of its own.
  const auto mk = static_cast<size_t>(g.m * g.k), nk = static_cast<size_t>(g.n * g.k);
  const auto mn = static_cast<size_t>(g.m * g.n);
  const std::vector<float> x = rng.normal(mk), w = rng.normal(nk), dy(mn, 0.0f);
  const GemmRef ref(g, x, w, dy, nullptr), scale(g, abs_of(x), abs_of(w), dy, nullptr);
  DeviceArray<float> d_x(pad_front(x, 1)), d_w(w), d_y(mn);
  d_y.poison();
  f.gemm.forward(d_x.get() + 1, d_w.get(), nullptr, d_y.get(), g.m, g.n, g.k,
                 dl::cuda::GemmType::f32, dl::cuda::GemmType::f32, stream);
  require_close(d_y.download(), ref.y, kRtol, kSumAtol, "unaligned forward", &scale.y);
  CHECK(f.gemm.cached_plans() == plans + 1);

  // A sum over nothing: n = 0 for backward_data, m = 0 for backward_weight.
  DeviceArray<float> d_dx(mk), d_dw(nk), d_dbias(static_cast<size_t>(g.n));
  d_dx.poison();
  d_dw.poison();
  d_dbias.poison();
  f.gemm.backward_data(nullptr, nullptr, d_dx.get(), g.m, 0, g.k, dl::cuda::GemmType::f32,
                       dl::cuda::GemmType::f32, stream);
  f.gemm.backward_weight(nullptr, nullptr, d_dw.get(), d_dbias.get(), 0, g.n, g.k,
                         dl::cuda::GemmType::f32, stream);
  require_identical(d_dx.download(), std::vector<float>(mk, 0.0f), "dx with n = 0");
  require_identical(d_dw.download(), std::vector<float>(nk, 0.0f), "dw with m = 0");
  require_identical(d_dbias.download(), std::vector<float>(static_cast<size_t>(g.n), 0.0f),
                    "dbias with m = 0");
}

// ------------------------------------------------------------------------------------------------
// Dense conv (cuDNN)

template <class E>
void check_conv(dl::cuda::CudnnConv2d& conv, bool tf32, const dl::Conv2dShape& s, bool with_bias,
                Rng& rng) {
  const bool tf32_math = tf32 && !is_bf16<E>();
  INFO(type_name<E>() << (tf32_math ? " (TF32)" : "") << " conv, n " << s.n << " h " << s.h << " w "
                      << s.w << " c_in " << s.c_in << " c_out " << s.c_out << " k " << s.kh << "x"
                      << s.kw << " stride " << s.stride << " pad " << s.pad
                      << (with_bias ? ", bias" : ""));
  const double atol = tf32_math ? kTf32Atol : kSumAtol;
  const auto stream = dl::cuda::stream();
  const auto in = static_cast<size_t>(s.n * s.h * s.w * s.c_in);
  const auto out = static_cast<size_t>(s.n * s.h_out() * s.w_out() * s.c_out);
  const auto wn = static_cast<size_t>(s.c_out * s.c_in * s.kh * s.kw);
  const auto cs_out = static_cast<size_t>(s.c_out);
  const std::vector<float> x = quantize<E>(rng.normal(in)), dy = quantize<E>(rng.normal(out));
  // The wrapper rounds the fp32 weight to E; the bias stays fp32 (add_bias).
  const std::vector<float> weight =
      quantize<E>(rng.normal(wn, 0.0f, 1.0f / std::sqrt(static_cast<float>(s.c_in * s.kh * s.kw))));
  const std::vector<float> bias = rng.normal(cs_out, 0.0f, 0.5f);
  const std::vector<float> ax = abs_of(x), ady = abs_of(dy), aw = abs_of(weight), ab = abs_of(bias);
  const size_t ws_bytes = conv.workspace_bytes<E>(s);
  Workspace ws(ws_bytes);
  DeviceArray<E> d_x(x), d_dy(dy), d_y(out), d_dx(in);
  DeviceArray<float> d_w(weight), d_b(bias), d_dw(wn), d_db(cs_out);

  std::vector<float> y_ref(out), y_scale(out);
  dl::cpu::conv2d_forward(s, x.data(), weight.data(), with_bias ? bias.data() : nullptr,
                          y_ref.data());
  dl::cpu::conv2d_forward(s, ax.data(), aw.data(), with_bias ? ab.data() : nullptr, y_scale.data());
  d_y.poison();
  conv.forward(s, d_x.get(), d_w.get(), with_bias ? d_b.get() : nullptr, d_y.get(), ws.get(),
               ws_bytes, stream);
  require_close(d_y.download(), y_ref, out_rtol<E>(),
                is_bf16<E>() && with_bias ? kBf16TwoRoundingsAtol : atol, "forward", &y_scale);

  std::vector<float> dx_ref(in), dx_scale(in);
  dl::cpu::conv2d_backward_data(s, dy.data(), weight.data(), dx_ref.data());
  dl::cpu::conv2d_backward_data(s, ady.data(), aw.data(), dx_scale.data());
  d_dx.poison();
  conv.backward_data(s, d_dy.get(), d_w.get(), d_dx.get(), ws.get(), ws_bytes, stream);
  require_close(d_dx.download(), dx_ref, out_rtol<E>(), atol, "backward data", &dx_scale);

  std::vector<float> dw_ref(wn), db_ref(cs_out), dw_scale(wn), db_scale(cs_out);
  dl::cpu::conv2d_backward_weight(s, dy.data(), x.data(), dw_ref.data(), db_ref.data());
  dl::cpu::conv2d_backward_weight(s, ady.data(), ax.data(), dw_scale.data(), db_scale.data());
  d_dw.poison();
  d_db.poison();
  conv.backward_filter(s, d_x.get(), d_dy.get(), d_dw.get(), with_bias ? d_db.get() : nullptr,
                       ws.get(), ws_bytes, stream);
  require_close(d_dw.download(), dw_ref, out_rtol<E>(), atol, "backward filter", &dw_scale);
  if (with_bias)
    require_close(d_db.download(), db_ref, kRtol, kSumAtol, "backward bias", &db_scale);
}

// Patch embeddings (kernel = stride = 2, 4, 7; RGB input: C = 3), including sizes the patches do
// not divide (the uncovered pixels get a zero gradient), and padded 3x3 convolutions at stride 1
// and 2, a 1x1 image, a non-square kernel (KCRS <-> KRSC with r != s).
const std::vector<dl::Conv2dShape> kConvShapes = {
    {.n = 1, .h = 5, .w = 7, .c_in = 3, .c_out = 10, .kh = 2, .kw = 2, .stride = 2, .pad = 0},
    {.n = 4, .h = 32, .w = 32, .c_in = 3, .c_out = 256, .kh = 2, .kw = 2, .stride = 2, .pad = 0},
    {.n = 2, .h = 9, .w = 9, .c_in = 13, .c_out = 7, .kh = 2, .kw = 2, .stride = 2, .pad = 0},
    {.n = 1, .h = 16, .w = 16, .c_in = 3, .c_out = 48, .kh = 4, .kw = 4, .stride = 4, .pad = 0},
    {.n = 3, .h = 17, .w = 13, .c_in = 5, .c_out = 20, .kh = 4, .kw = 4, .stride = 4, .pad = 0},
    {.n = 2, .h = 32, .w = 32, .c_in = 3, .c_out = 33, .kh = 7, .kw = 7, .stride = 7, .pad = 0},
    {.n = 1, .h = 14, .w = 15, .c_in = 3, .c_out = 256, .kh = 7, .kw = 7, .stride = 7, .pad = 0},
    {.n = 1, .h = 9, .w = 11, .c_in = 3, .c_out = 16, .kh = 3, .kw = 3, .stride = 1, .pad = 1},
    {.n = 4, .h = 16, .w = 16, .c_in = 32, .c_out = 24, .kh = 3, .kw = 3, .stride = 1, .pad = 1},
    {.n = 2, .h = 15, .w = 15, .c_in = 13, .c_out = 7, .kh = 3, .kw = 3, .stride = 2, .pad = 1},
    {.n = 1, .h = 1, .w = 1, .c_in = 5, .c_out = 3, .kh = 3, .kw = 3, .stride = 1, .pad = 1},
    {.n = 2, .h = 8, .w = 9, .c_in = 6, .c_out = 5, .kh = 3, .kw = 2, .stride = 1, .pad = 0}};

TEMPLATE_TEST_CASE("cuDNN conv forward and backward match the CPU conv", "[cuda][conv]", float,
                   Bf16) {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  dl::cuda::CudnnConv2d conv(dl::cuda::cudnn_handle(), false);
  for (size_t i = 0; i < kConvShapes.size(); ++i)
    check_conv<TestType>(conv, false, kConvShapes[i], i % 2 == 0, rng);
}

TEST_CASE("cuDNN fp32 conv with TF32 matches the CPU conv within TF32 rounding", "[cuda][conv]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  dl::cuda::CudnnConv2d conv(dl::cuda::cudnn_handle(), true);
  for (size_t i = 0; i < kConvShapes.size(); ++i)
    check_conv<float>(conv, true, kConvShapes[i], i % 2 == 1, rng);
}

// ------------------------------------------------------------------------------------------------
// Argument checks

TEST_CASE("More CUDA launchers reject bad arguments with a message", "[cuda]") {
  const auto stream = dl::cuda::stream();
  REQUIRE_THROWS_WITH(
      dl::cuda::cross_entropy_forward_backward<float>(nullptr, nullptr, 1, 10, 1.5f, 1.0f, nullptr,
                                                      nullptr, nullptr, nullptr, stream),
      Catch::Contains("label_smoothing must be in [0, 1]"));
  REQUIRE_THROWS_AS(dl::cuda::count_correct<float>(nullptr, nullptr, 1, 0, nullptr, stream),
                    std::invalid_argument);
  REQUIRE_THROWS_WITH(dl::cuda::max_pool2d_forward<float>({.n = 1, .h = 2, .w = 2, .c = 1, .k = 3},
                                                          nullptr, nullptr, nullptr, stream),
                      Catch::Contains("window larger than the padded input"));
  REQUIRE_THROWS_WITH(dl::cuda::sum_rows<float>(nullptr, 1000, 4, nullptr, nullptr, stream),
                      Catch::Contains("sum_rows needs a workspace"));
  REQUIRE_THROWS_WITH(dl::cuda::adamw_hyper(1e-3, 0.0, 0.9, 0.999, 1e-8, 0),
                      Catch::Contains("AdamW step counts from 1"));
  REQUIRE_THROWS_AS(dl::cuda::make_optim_chunks({{.numel = -1}}), std::invalid_argument);

  GemmFixture f(false);
  REQUIRE_THROWS_WITH(f.gemm.forward(nullptr, nullptr, nullptr, nullptr, 1, 1, 1,
                                     dl::cuda::GemmType::f32, dl::cuda::GemmType::bf16, stream),
                      Catch::Contains("fp32 inputs give an fp32 output"));

  dl::cuda::CudnnConv2d conv(dl::cuda::cudnn_handle(), false);
  const dl::Conv2dShape s = kConvShapes[0];
  const size_t ws_bytes = conv.workspace_bytes<float>(s);
  Workspace ws(ws_bytes);
  REQUIRE_THROWS_WITH(
      conv.forward<float>(s, nullptr, nullptr, nullptr, nullptr, ws.get(), ws_bytes - 1, stream),
      Catch::Contains("workspace smaller than"));
  dl::Conv2dShape grouped = kConvShapes[8];
  grouped.groups = 2;
  REQUIRE_THROWS_WITH(conv.workspace_bytes<float>(grouped), Catch::Contains("groups must be 1"));
}

}  // namespace
}  // namespace dl::cuda_test

int main(int argc, char** argv) {
  return dl::cuda_test::run_tests(argc, argv);
}
