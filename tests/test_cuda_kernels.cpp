// The CUDA path against the CPU path: every hand-written CUDA kernel (forward and backward, fp32
// and bf16) compared with the CPU kernels in kernels/cpu on fresh random inputs over many shapes,
// and the device backend (caching allocator, copies, library handles). Outputs are poisoned (all
// bits set: NaN) before each run, so an element a kernel fails to write fails the comparison.
// This binary has its own main: with no CUDA device it exits with 77, which CTest reports as
// skipped.
//
// Tolerances (|gpu - cpu| <= rtol |cpu| + atol), stated per output:
// - fp32 outputs: rtol 1e-5. bf16 outputs are fp32 results rounded once to bf16, half a bf16 ulp
//   is at most 2^-8 of the value: rtol 4e-3. Inputs are rounded to bf16 before the CPU sees them.
// - GELU: atol 5e-6 (the CPU's erf is a rational fit with 4e-7 absolute error, times |x| / 2).
// - BatchNorm outputs and statistics (values of order 1 normalised by a reduction): atol 3e-5;
//   y and dx add 3e-7 times the size of the terms the CPU adds in fp32 (x * gamma * invstd and
//   its shift; gamma * invstd * dy and its shift), whose rounding dominates when invstd is large
//   (one row); sums over R rows (dgamma, dbeta): atol 1e-5 sqrt(R).
// - Depthwise conv: atol 1e-5 times the sum of the absolute values of the terms of each output
//   (fp32 accumulation of at most N*H*W products), from the CPU kernel run on |inputs|.
#define CATCH_CONFIG_RUNNER
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda_test_util.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/tensor.h"
#include "kernels/cpu/batchnorm.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/depthwise_conv.cuh"
#include "kernels/cuda/gelu.cuh"
#include "test_util.h"

namespace dl::cuda_test {
namespace {

using dl::test::fresh_seed;

// ------------------------------------------------------------------------------------------------
// GELU

template <class E>
void check_gelu(int64_t n, size_t offset, Rng& rng) {
  INFO(type_name<E>() << " gelu, n = " << n << ", offset " << offset << " elements");
  const auto count = static_cast<size_t>(n);
  const std::vector<float> x = quantize<E>(rng.normal(count, 0.0f, 3.0f));
  const std::vector<float> dy = quantize<E>(rng.normal(count));
  std::vector<float> y_ref(count), dx_ref(count);
  dl::cpu::gelu_forward(x.data(), y_ref.data(), n);
  dl::cpu::gelu_backward(x.data(), dy.data(), dx_ref.data(), n);

  // `offset` shifts every array off its 16-byte alignment (the scalar path).
  std::vector<float> padded_x(offset, 0.0f), padded_dy(offset, 0.0f);
  padded_x.insert(padded_x.end(), x.begin(), x.end());
  padded_dy.insert(padded_dy.end(), dy.begin(), dy.end());
  DeviceArray<E> d_x(padded_x), d_dy(padded_dy), d_y(count + offset), d_dx(count + offset);
  d_y.poison();
  d_dx.poison();
  dl::cuda::gelu_forward(d_x.get() + offset, d_y.get() + offset, n, dl::cuda::stream());
  dl::cuda::gelu_backward(d_x.get() + offset, d_dy.get() + offset, d_dx.get() + offset, n,
                          dl::cuda::stream());
  const std::vector<float> y = d_y.download(), dx = d_dx.download();
  require_close({y.begin() + offset, y.end()}, y_ref, out_rtol<E>(), 5e-6, "gelu forward");
  require_close({dx.begin() + offset, dx.end()}, dx_ref, out_rtol<E>(), 5e-6, "gelu backward");
}

TEMPLATE_TEST_CASE("CUDA GELU forward and backward match the CPU kernels", "[cuda][gelu]", float,
                   Bf16) {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (int64_t n : {1, 3, 7, 8, 9, 1000, 4099, 65537, (1 << 20) + 3}) {
    check_gelu<TestType>(n, 0, rng);
    check_gelu<TestType>(n, 1, rng);
  }
}

TEST_CASE("CUDA GELU runs in place", "[cuda][gelu]") {
  Rng rng(fresh_seed());
  const std::vector<float> x = rng.normal(1001, 0.0f, 3.0f);
  std::vector<float> y_ref(x.size());
  dl::cpu::gelu_forward(x.data(), y_ref.data(), static_cast<int64_t>(x.size()));
  DeviceArray<float> d(x);
  dl::cuda::gelu_forward(d.get(), d.get(), static_cast<int64_t>(x.size()), dl::cuda::stream());
  require_close(d.download(), y_ref, 1e-5, 5e-6, "in-place gelu");
}

// ------------------------------------------------------------------------------------------------
// BatchNorm

constexpr float kEps = 1e-5f;
constexpr float kMomentum = 0.1f;
constexpr double kBnAtol = 3e-5;

double sum_atol(int64_t rows) {
  return 1e-5 * std::sqrt(static_cast<double>(rows));
}

// Per-channel offsets and scales, so that channels differ and |mean| is not small against the
// spread.
std::vector<float> bn_input(Rng& rng, int64_t rows, int64_t c) {
  const std::vector<float> offset = rng.uniform(static_cast<size_t>(c), -2.0f, 2.0f);
  const std::vector<float> scale = rng.uniform(static_cast<size_t>(c), 0.5f, 2.0f);
  std::vector<float> x = rng.normal(static_cast<size_t>(rows * c));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < c; ++j) x[r * c + j] = offset[j] + scale[j] * x[r * c + j];
  return x;
}

// BatchNorm's parameters and running statistics, on the host and the device.
struct BnParams {
  BnParams(Rng& rng, int64_t c)
      : gamma(rng.uniform(static_cast<size_t>(c), 0.5f, 1.5f)),
        beta(rng.normal(static_cast<size_t>(c), 0.0f, 0.5f)),
        running_mean(rng.normal(static_cast<size_t>(c), 0.0f, 0.1f)),
        running_var(rng.uniform(static_cast<size_t>(c), 0.5f, 1.5f)),
        d_gamma(gamma),
        d_beta(beta),
        d_running_mean(running_mean),
        d_running_var(running_var) {}
  std::vector<float> gamma, beta, running_mean, running_var;
  DeviceArray<float> d_gamma, d_beta, d_running_mean, d_running_var;
};

// `fused`: BatchNorm's input is GELU(h) and the CUDA side runs the gelu_batchnorm_* launchers.
// The CPU reference then normalises the CUDA GELU's output (checked against the CPU GELU above),
// so that bf16 rounding of GELU(h) is the same on both sides.
template <class E>
void check_batchnorm(int64_t rows, int64_t c, bool fused, bool with_residual, Rng& rng) {
  INFO(type_name<E>() << (fused ? " gelu_batchnorm" : " batchnorm") << ", rows = " << rows
                      << ", c = " << c << (with_residual ? ", residual" : ""));
  const auto m = static_cast<size_t>(rows * c);
  const auto cs = static_cast<size_t>(c);
  const auto stream = dl::cuda::stream();
  const std::vector<float> x = quantize<E>(bn_input(rng, rows, c));
  const std::vector<float> r = with_residual ? quantize<E>(rng.normal(m)) : std::vector<float>();
  const std::vector<float> dy = quantize<E>(rng.normal(m));
  BnParams p(rng, c);
  DeviceArray<E> d_x(x), d_dy(dy), d_y(m), d_dx(m);
  DeviceArray<E> d_r(with_residual ? r : std::vector<float>(1, 0.0f));
  const E* residual = with_residual ? d_r.get() : nullptr;

  // The CPU's input: x, or GELU(x) as the CUDA GELU stores it.
  std::vector<float> v = x;
  if (fused) {
    d_y.poison();
    dl::cuda::gelu_forward(d_x.get(), d_y.get(), static_cast<int64_t>(m), stream);
    v = d_y.download();
  }
  auto add_residual = [&](std::vector<float>& y) {
    if (with_residual)
      for (size_t i = 0; i < m; ++i) y[i] += r[i];
  };

  // Per element 1 + T / 100 with T the size of the CPU's fp32 terms (see the tolerances above).
  auto y_scale = [&](const std::vector<float>& mean, const std::vector<float>& invstd) {
    std::vector<float> scale(m);
    for (size_t i = 0; i < m; ++i) {
      const size_t j = i % cs;
      const float a = p.gamma[j] * invstd[j];
      scale[i] = 1.0f + (std::abs(v[i] * a) + std::abs(p.beta[j] - mean[j] * a)) / 100.0f;
    }
    return scale;
  };
  auto dx_scale = [&](const std::vector<float>& dgamma, const std::vector<float>& dbeta,
                      const std::vector<float>& mean, const std::vector<float>& invstd) {
    std::vector<float> scale(m);
    for (size_t i = 0; i < m; ++i) {
      const size_t j = i % cs;
      const float xhat = (v[i] - mean[j]) * invstd[j];
      const float terms = std::abs(dy[i]) + (std::abs(dbeta[j]) + std::abs(xhat * dgamma[j])) /
                                                static_cast<float>(rows);
      scale[i] = 1.0f + std::abs(p.gamma[j] * invstd[j]) * terms / 100.0f;
    }
    return scale;
  };

  // Training forward.
  std::vector<float> y_ref(m), mean_ref(cs), invstd_ref(cs);
  std::vector<float> rm_ref = p.running_mean, rv_ref = p.running_var;
  dl::cpu::batchnorm_forward_train(v.data(), rows, c, p.gamma.data(), p.beta.data(), kEps,
                                   kMomentum, rm_ref.data(), rv_ref.data(), y_ref.data(),
                                   mean_ref.data(), invstd_ref.data());
  add_residual(y_ref);
  DeviceArray<float> d_mean(cs), d_invstd(cs), d_dgamma(cs), d_dbeta(cs);
  Workspace ws(dl::cuda::batchnorm_workspace_bytes(rows, c));
  d_y.poison();
  d_mean.poison();
  d_invstd.poison();
  const auto train =
      fused ? dl::cuda::gelu_batchnorm_forward_train<E> : dl::cuda::batchnorm_forward_train<E>;
  train(d_x.get(), rows, c, p.d_gamma.get(), p.d_beta.get(), kEps, kMomentum,
        p.d_running_mean.get(), p.d_running_var.get(), residual, d_y.get(), d_mean.get(),
        d_invstd.get(), ws.get(), stream);
  const std::vector<float> train_scale = y_scale(mean_ref, invstd_ref);
  require_close(d_y.download(), y_ref, out_rtol<E>(), kBnAtol, "train forward y", &train_scale);
  require_close(d_mean.download(), mean_ref, 1e-5, kBnAtol, "save_mean");
  require_close(d_invstd.download(), invstd_ref, 1e-5, kBnAtol, "save_invstd");
  require_close(p.d_running_mean.download(), rm_ref, 1e-5, kBnAtol, "running_mean");
  require_close(p.d_running_var.download(), rv_ref, 1e-5, kBnAtol, "running_var");

  // Evaluation forward, with the updated running statistics.
  std::vector<float> eval_invstd(cs);
  for (size_t j = 0; j < cs; ++j) eval_invstd[j] = 1.0f / std::sqrt(rv_ref[j] + kEps);
  dl::cpu::batchnorm_forward_eval(v.data(), rows, c, p.gamma.data(), p.beta.data(), rm_ref.data(),
                                  rv_ref.data(), kEps, y_ref.data());
  add_residual(y_ref);
  p.d_running_mean.upload(rm_ref);
  p.d_running_var.upload(rv_ref);
  d_y.poison();
  const auto eval =
      fused ? dl::cuda::gelu_batchnorm_forward_eval<E> : dl::cuda::batchnorm_forward_eval<E>;
  eval(d_x.get(), rows, c, p.d_gamma.get(), p.d_beta.get(), p.d_running_mean.get(),
       p.d_running_var.get(), kEps, residual, d_y.get(), stream);
  const std::vector<float> eval_scale = y_scale(rm_ref, eval_invstd);
  require_close(d_y.download(), y_ref, out_rtol<E>(), kBnAtol, "eval forward y", &eval_scale);

  // Backward with batch statistics (the CPU's saved ones, on both sides), then in evaluation
  // mode (running statistics as constants).
  for (const bool batch_stats : {true, false}) {
    INFO((batch_stats ? "backward, batch statistics" : "backward, evaluation mode"));
    const std::vector<float>& mean = batch_stats ? mean_ref : rm_ref;
    const std::vector<float>& invstd = batch_stats ? invstd_ref : eval_invstd;
    std::vector<float> dv_ref(m), dgamma_ref(cs), dbeta_ref(cs);
    dl::cpu::batchnorm_backward(dy.data(), v.data(), rows, c, p.gamma.data(), mean.data(),
                                invstd.data(), batch_stats, dv_ref.data(), dgamma_ref.data(),
                                dbeta_ref.data());
    std::vector<float> dx_ref = dv_ref;
    if (fused) dl::cpu::gelu_backward(x.data(), dv_ref.data(), dx_ref.data(), rows * c);
    d_mean.upload(mean);
    d_invstd.upload(invstd);
    d_dx.poison();
    d_dgamma.poison();
    d_dbeta.poison();
    ws.array.poison();
    const auto backward =
        fused ? dl::cuda::gelu_batchnorm_backward<E> : dl::cuda::batchnorm_backward<E>;
    backward(d_dy.get(), d_x.get(), rows, c, p.d_gamma.get(), d_mean.get(), d_invstd.get(),
             batch_stats, d_dx.get(), d_dgamma.get(), d_dbeta.get(), ws.get(), stream);
    const std::vector<float> scale = dx_scale(dgamma_ref, dbeta_ref, mean, invstd);
    require_close(d_dx.download(), dx_ref, out_rtol<E>(), kBnAtol, "backward dx", &scale);
    require_close(d_dgamma.download(), dgamma_ref, 1e-5, sum_atol(rows), "backward dgamma");
    require_close(d_dbeta.download(), dbeta_ref, 1e-5, sum_atol(rows), "backward dbeta");
  }
}

// (rows, c): one row, one channel, C not a multiple of 8 or 32, rows across many row blocks
// (more than 512 * 256 rows: the block count is capped and blocks grow).
const std::vector<std::pair<int64_t, int64_t>> kBnShapes = {
    {1, 1},     {2, 3},      {7, 13},     {64, 32},    {257, 100},
    {1000, 37}, {4099, 256}, {20000, 12}, {150000, 5}, {131072, 40}};

TEMPLATE_TEST_CASE("CUDA BatchNorm forward (train, eval) and backward match the CPU kernels",
                   "[cuda][batchnorm]", float, Bf16) {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (size_t i = 0; i < kBnShapes.size(); ++i)
    check_batchnorm<TestType>(kBnShapes[i].first, kBnShapes[i].second, false, i % 2 == 1, rng);
}

TEMPLATE_TEST_CASE("CUDA fused GELU + BatchNorm (+ residual) match GELU then the CPU BatchNorm",
                   "[cuda][batchnorm]", float, Bf16) {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (size_t i = 0; i < kBnShapes.size(); ++i)
    check_batchnorm<TestType>(kBnShapes[i].first, kBnShapes[i].second, true, i % 2 == 0, rng);
}

TEST_CASE("CUDA BatchNorm without affine parameters or running statistics", "[cuda][batchnorm]") {
  Rng rng(fresh_seed());
  const int64_t rows = 999, c = 19;
  const auto m = static_cast<size_t>(rows * c), cs = static_cast<size_t>(c);
  const std::vector<float> x = bn_input(rng, rows, c), dy = rng.normal(m);
  const std::vector<float> ones(cs, 1.0f), zeros(cs, 0.0f);
  std::vector<float> y_ref(m), mean_ref(cs), invstd_ref(cs), dx_ref(m), dg_ref(cs), db_ref(cs);
  dl::cpu::batchnorm_forward_train(x.data(), rows, c, ones.data(), zeros.data(), kEps, kMomentum,
                                   nullptr, nullptr, y_ref.data(), mean_ref.data(),
                                   invstd_ref.data());
  dl::cpu::batchnorm_backward(dy.data(), x.data(), rows, c, ones.data(), mean_ref.data(),
                              invstd_ref.data(), true, dx_ref.data(), dg_ref.data(), db_ref.data());
  DeviceArray<float> d_x(x), d_dy(dy), d_y(m), d_dx(m), d_mean(cs), d_invstd(cs), d_dg(cs),
      d_db(cs);
  Workspace ws(dl::cuda::batchnorm_workspace_bytes(rows, c));
  d_y.poison();
  dl::cuda::batchnorm_forward_train<float>(d_x.get(), rows, c, nullptr, nullptr, kEps, kMomentum,
                                           nullptr, nullptr, nullptr, d_y.get(), d_mean.get(),
                                           d_invstd.get(), ws.get(), dl::cuda::stream());
  require_close(d_y.download(), y_ref, 1e-5, kBnAtol, "y");
  d_dx.poison();
  dl::cuda::batchnorm_backward<float>(d_dy.get(), d_x.get(), rows, c, nullptr, d_mean.get(),
                                      d_invstd.get(), true, d_dx.get(), d_dg.get(), d_db.get(),
                                      ws.get(), dl::cuda::stream());
  require_close(d_dx.download(), dx_ref, 1e-5, kBnAtol, "dx");
  require_close(d_dg.download(), dg_ref, 1e-5, sum_atol(rows), "dgamma");
}

TEST_CASE("CUDA BatchNorm is deterministic", "[cuda][batchnorm]") {
  Rng rng(fresh_seed());
  const int64_t rows = 70001, c = 48;
  const auto m = static_cast<size_t>(rows * c), cs = static_cast<size_t>(c);
  DeviceArray<float> d_x(bn_input(rng, rows, c)), d_dy(rng.normal(m)), d_y(m), d_dx(m);
  DeviceArray<float> d_mean(cs), d_invstd(cs), d_dg(cs), d_db(cs);
  Workspace ws(dl::cuda::batchnorm_workspace_bytes(rows, c));
  std::vector<std::vector<float>> runs;
  for (int run = 0; run < 2; ++run) {
    dl::cuda::gelu_batchnorm_forward_train<float>(
        d_x.get(), rows, c, nullptr, nullptr, kEps, kMomentum, nullptr, nullptr, nullptr, d_y.get(),
        d_mean.get(), d_invstd.get(), ws.get(), dl::cuda::stream());
    dl::cuda::gelu_batchnorm_backward<float>(d_dy.get(), d_x.get(), rows, c, nullptr, d_mean.get(),
                                             d_invstd.get(), true, d_dx.get(), d_dg.get(),
                                             d_db.get(), ws.get(), dl::cuda::stream());
    for (const DeviceArray<float>* a : {&d_y, &d_mean, &d_invstd, &d_dx, &d_dg, &d_db})
      runs.push_back(a->download());
  }
  for (size_t i = 0; i < runs.size() / 2; ++i)
    REQUIRE(std::memcmp(runs[i].data(), runs[i + runs.size() / 2].data(),
                        runs[i].size() * sizeof(float)) == 0);
}

// ------------------------------------------------------------------------------------------------
// Depthwise conv

template <class E>
void check_depthwise(const dl::Conv2dShape& s, bool with_bias, Rng& rng) {
  INFO(type_name<E>() << " depthwise conv, n " << s.n << " h " << s.h << " w " << s.w << " c "
                      << s.c_in << " k " << s.kh << (with_bias ? ", bias" : ""));
  const auto m = static_cast<size_t>(s.n * s.h * s.w * s.c_in), cs = static_cast<size_t>(s.c_in);
  const auto taps = static_cast<size_t>(s.kh * s.kw);
  const auto stream = dl::cuda::stream();
  const std::vector<float> x = quantize<E>(rng.normal(m));
  const std::vector<float> dy = quantize<E>(rng.normal(m));
  const std::vector<float> weight = rng.normal(cs * taps, 0.0f, 1.0f / static_cast<float>(s.kh));
  const std::vector<float> bias = rng.normal(cs, 0.0f, 0.1f);
  const std::vector<float> ax = abs_of(x), ady = abs_of(dy), aw = abs_of(weight), ab = abs_of(bias);
  DeviceArray<E> d_x(x), d_dy(dy), d_y(m), d_dx(m);
  DeviceArray<float> d_w(weight), d_b(bias), d_dw(cs * taps), d_db(cs);

  std::vector<float> y_ref(m), y_scale(m);
  dl::cpu::conv2d_forward(s, x.data(), weight.data(), with_bias ? bias.data() : nullptr,
                          y_ref.data());
  dl::cpu::conv2d_forward(s, ax.data(), aw.data(), with_bias ? ab.data() : nullptr, y_scale.data());
  d_y.poison();
  dl::cuda::depthwise_conv_forward(s, d_x.get(), d_w.get(), with_bias ? d_b.get() : nullptr,
                                   d_y.get(), stream);
  require_close(d_y.download(), y_ref, out_rtol<E>(), 1e-5, "forward", &y_scale);

  std::vector<float> dx_ref(m), dx_scale(m);
  dl::cpu::conv2d_backward_data(s, dy.data(), weight.data(), dx_ref.data());
  dl::cpu::conv2d_backward_data(s, ady.data(), aw.data(), dx_scale.data());
  d_dx.poison();
  dl::cuda::depthwise_conv_backward_data(s, d_dy.get(), d_w.get(), d_dx.get(), stream);
  require_close(d_dx.download(), dx_ref, out_rtol<E>(), 1e-5, "backward data", &dx_scale);

  std::vector<float> dw_ref(cs * taps), db_ref(cs), dw_scale(cs * taps), db_scale(cs);
  dl::cpu::conv2d_backward_weight(s, dy.data(), x.data(), dw_ref.data(), db_ref.data());
  dl::cpu::conv2d_backward_weight(s, ady.data(), ax.data(), dw_scale.data(), db_scale.data());
  Workspace ws(dl::cuda::depthwise_conv_backward_weight_workspace_bytes(s));
  d_dw.poison();
  d_db.poison();
  dl::cuda::depthwise_conv_backward_weight(s, d_x.get(), d_dy.get(), d_dw.get(),
                                           with_bias ? d_db.get() : nullptr, ws.get(), stream);
  require_close(d_dw.download(), dw_ref, 1e-5, 1e-5, "backward weight", &dw_scale);
  if (with_bias) require_close(d_db.download(), db_ref, 1e-5, 1e-5, "backward bias", &db_scale);
}

// Batch 1 and odd sizes, images smaller than the kernel, C not a multiple of 8 (bf16 scalar
// loads) or of 4 (fp32 scalar loads), several channel tiles, and many tiles per weight-gradient
// slot (64 * 4 tiles for 10 channel tiles: 3 tiles a slot).
const std::vector<dl::Conv2dShape> kDepthwiseShapes = {
    dl::Conv2dShape::depthwise_same(1, 5, 7, 3, 3),
    dl::Conv2dShape::depthwise_same(2, 8, 8, 64, 3),
    dl::Conv2dShape::depthwise_same(1, 9, 9, 13, 9),
    dl::Conv2dShape::depthwise_same(3, 17, 11, 40, 7),
    dl::Conv2dShape::depthwise_same(2, 16, 16, 256, 5),
    dl::Conv2dShape::depthwise_same(1, 1, 1, 5, 3),
    dl::Conv2dShape::depthwise_same(4, 12, 20, 36, 9),
    dl::Conv2dShape::depthwise_same(2, 3, 30, 8, 5),
    dl::Conv2dShape::depthwise_same(1, 33, 7, 100, 7),
    dl::Conv2dShape::depthwise_same(5, 4, 6, 33, 9),
    dl::Conv2dShape::depthwise_same(64, 16, 16, 320, 3),
    dl::Conv2dShape::depthwise_same(8, 16, 16, 256, 9),
};

TEMPLATE_TEST_CASE("CUDA depthwise conv forward and backward match the CPU kernels",
                   "[cuda][depthwise]", float, Bf16) {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (size_t i = 0; i < kDepthwiseShapes.size(); ++i)
    check_depthwise<TestType>(kDepthwiseShapes[i], i % 3 != 2, rng);
}

TEST_CASE("CUDA depthwise conv weight gradient is deterministic", "[cuda][depthwise]") {
  Rng rng(fresh_seed());
  const dl::Conv2dShape s = dl::Conv2dShape::depthwise_same(32, 16, 16, 96, 7);
  const auto m = static_cast<size_t>(s.n * s.h * s.w * s.c_in), cs = static_cast<size_t>(s.c_in);
  DeviceArray<float> d_x(rng.normal(m)), d_dy(rng.normal(m)), d_dw(cs * 49), d_db(cs);
  Workspace ws(dl::cuda::depthwise_conv_backward_weight_workspace_bytes(s));
  std::vector<float> first_w, first_b;
  for (int run = 0; run < 2; ++run) {
    dl::cuda::depthwise_conv_backward_weight(s, d_x.get(), d_dy.get(), d_dw.get(), d_db.get(),
                                             ws.get(), dl::cuda::stream());
    if (run == 0) {
      first_w = d_dw.download();
      first_b = d_db.download();
    } else {
      REQUIRE(d_dw.download() == first_w);
      REQUIRE(d_db.download() == first_b);
    }
  }
}

TEST_CASE("CUDA launchers reject bad arguments with a message", "[cuda]") {
  REQUIRE_THROWS_WITH(dl::cuda::depthwise_conv_backward_weight_workspace_bytes(
                          dl::Conv2dShape::depthwise_same(1, 4, 4, 8, 4)),
                      Catch::Contains("kernel size must be 3, 5, 7 or 9"));
  dl::Conv2dShape strided = dl::Conv2dShape::depthwise_same(1, 8, 8, 8, 3);
  strided.stride = 2;
  REQUIRE_THROWS_WITH(dl::cuda::depthwise_conv_backward_weight_workspace_bytes(strided),
                      Catch::Contains("stride 1"));
  REQUIRE_THROWS_AS(dl::cuda::batchnorm_workspace_bytes(0, 4), std::invalid_argument);
}

// ------------------------------------------------------------------------------------------------
// Device backend

TEST_CASE("CUDA caching allocator reuses freed blocks and keeps statistics", "[cuda][allocator]") {
  const dl::cuda::MemoryStats before = dl::cuda::memory_stats();
  void* a = dl::cuda::allocate(1000);  // rounded to 1024
  dl::cuda::MemoryStats s = dl::cuda::memory_stats();
  CHECK(s.in_use == before.in_use + 1024);
  CHECK(s.peak_in_use >= s.in_use);
  CHECK(s.reserved >= s.in_use);
  dl::cuda::deallocate(a, 1000);
  CHECK(dl::cuda::memory_stats().in_use == before.in_use);

  // A second allocation of the same rounded size comes from the cache: no cudaMalloc.
  const size_t allocs = dl::cuda::memory_stats().device_allocs;
  void* b = dl::cuda::allocate(999);
  CHECK(b == a);
  CHECK(dl::cuda::memory_stats().device_allocs == allocs);
  dl::cuda::deallocate(b, 999);
  for (int step = 0; step < 100; ++step) {
    void* big = dl::cuda::allocate(3 << 20);  // rounded to 4 MiB
    void* small = dl::cuda::allocate(100);
    dl::cuda::deallocate(small, 100);
    dl::cuda::deallocate(big, 3 << 20);
  }
  CHECK(dl::cuda::memory_stats().device_allocs <= allocs + 2);

  dl::cuda::reset_peak_memory();
  void* c = dl::cuda::allocate(5 << 20);  // 6 MiB
  CHECK(dl::cuda::memory_stats().peak_in_use == before.in_use + (6 << 20));
  dl::cuda::deallocate(c, 5 << 20);

  dl::cuda::empty_cache();
  s = dl::cuda::memory_stats();
  CHECK(s.reserved == s.in_use);
  CHECK(s.in_use == before.in_use);
  CHECK(s.device_frees > before.device_frees);
}

TEST_CASE("CUDA tensors: copies both ways, zeros, device-to-device", "[cuda][allocator]") {
  Rng rng(fresh_seed());
  const std::vector<float> values = rng.normal(12345);
  const dl::Tensor host = dl::Tensor::from_vector(values, {12345});
  const dl::Tensor dev = host.to(dl::Device::cuda());
  REQUIRE(dev.device().is_cuda());
  CHECK(dev.to_vector() == values);
  dl::Tensor other = dl::Tensor::zeros({12345}, dl::DType::f32, dl::Device::cuda());
  CHECK(other.to_vector() == std::vector<float>(12345, 0.0f));
  other.copy_(dev);
  CHECK(other.to_vector() == values);
}

TEST_CASE("CUDA library handles are created once and bound to the compute stream",
          "[cuda][handles]") {
  cublasHandle_t blas = dl::cuda::cublas_handle();
  REQUIRE(blas != nullptr);
  CHECK(dl::cuda::cublas_handle() == blas);
  cudaStream_t s = nullptr;
  DL_CUBLAS_CHECK(cublasGetStream(blas, &s));
  CHECK(s == dl::cuda::stream());
  cudnnHandle_t dnn = dl::cuda::cudnn_handle();
  REQUIRE(dnn != nullptr);
  CHECK(dl::cuda::cudnn_handle() == dnn);
  s = nullptr;
  DL_CUDNN_CHECK(cudnnGetStream(dnn, &s));
  CHECK(s == dl::cuda::stream());
}

TEST_CASE("Pinned host buffers copy to and from the device", "[cuda][allocator]") {
  const size_t n = 1 << 16;
  dl::cuda::PinnedBuffer pinned(n * sizeof(float));
  REQUIRE(pinned.data() != nullptr);
  auto* p = static_cast<float*>(pinned.data());
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<float>(i);
  DeviceArray<float> d(n);
  DL_CUDA_CHECK(
      cudaMemcpyAsync(d.get(), p, n * sizeof(float), cudaMemcpyHostToDevice, dl::cuda::stream()));
  const std::vector<float> back = d.download();
  for (size_t i = 0; i < n; ++i) REQUIRE(back[i] == static_cast<float>(i));
  dl::cuda::PinnedBuffer moved = std::move(pinned);
  CHECK(moved.data() == p);
  CHECK(pinned.data() == nullptr);
}

}  // namespace
}  // namespace dl::cuda_test

int main(int argc, char** argv) {
  return dl::cuda_test::run_tests(argc, argv);
}
