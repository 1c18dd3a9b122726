// Every case of the op table (tests/op_cases.h) on the CPU in f32: the output is finite where every
// input is (new tensors start as NaN), and each input's gradient from backward matches central
// finite differences of loss = sum(output * R) (R random, summed in double) at up to 12 random
// elements per input.
//
// Tolerance: |fd - grad| <= 2e-4 max(1, max|grad|) + 1e-3 |grad|. The step is 1e-2: its truncation
// error (step^2 f''' / 6) is about 2e-5 for these smooth ops, and rounding the f32 outputs moves
// the difference quotient by about 1e-4 of the output's scale. Over six runs the largest error was
// 0.11 of the tolerance; GELU's derivative with its x phi(x) term 1% too large fails.
#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "op_cases.h"

namespace {

using dl::Tensor;

constexpr double kStep = 1e-2;
constexpr int kElementsPerInput = 12;

double loss_of(const dl::test::OpCase& c, const std::vector<Tensor>& inputs,
               const std::vector<float>& upstream) {
  dl::NoGradGuard no_grad;
  std::vector<Tensor> copies;
  for (const Tensor& t : inputs) copies.push_back(t.clone());  // running statistics change
  const std::vector<float> out = c.run(copies).to_vector();
  double loss = 0;
  for (size_t i = 0; i < out.size(); ++i) loss += double(out[i]) * upstream[i];
  return loss;
}

TEST_CASE("every op of the table: gradients match finite differences on the CPU", "[ops][table]") {
  dl::Generator gen = dl::test::fresh_generator();
  for (const dl::test::OpCase& c : dl::test::op_cases()) {
    INFO("op case: " << c.name);
    const std::vector<Tensor> drawn = dl::test::draw_inputs(c, gen);
    const Tensor upstream = Tensor::randn(dl::test::output_shape(c, drawn), gen);
    const dl::test::OpResult result =
        dl::test::run_case(c, drawn, dl::Device::cpu(), dl::DType::f32, upstream);
    const std::vector<float> out = result.output.to_vector();
    REQUIRE(std::all_of(out.begin(), out.end(), [](float v) { return std::isfinite(v); }));

    const std::vector<float> r = upstream.to_vector();
    for (size_t i = 0; i < drawn.size(); ++i) {
      if (!dl::test::is_differentiable(c.inputs[i].kind)) continue;
      const std::vector<float> grad = result.gradients[i].to_vector();
      double scale = 1.0;
      for (const float g : grad) scale = std::max(scale, std::abs(double(g)));
      std::set<int64_t> picked;
      const int64_t n = drawn[i].numel();
      while (static_cast<int64_t>(picked.size()) < std::min<int64_t>(n, kElementsPerInput))
        picked.insert(static_cast<int64_t>(gen.next_u64() % static_cast<uint64_t>(n)));
      for (const int64_t j : picked) {
        std::vector<Tensor> plus = drawn, minus = drawn;
        plus[i] = drawn[i].clone();
        minus[i] = drawn[i].clone();
        plus[i].data<float>()[j] += static_cast<float>(kStep);
        minus[i].data<float>()[j] -= static_cast<float>(kStep);
        // The step actually taken, after rounding the perturbed inputs to f32.
        const double step = double(plus[i].data<float>()[j]) - minus[i].data<float>()[j];
        const double fd = (loss_of(c, plus, r) - loss_of(c, minus, r)) / step;
        const double g = grad[static_cast<size_t>(j)];
        INFO("input " << i << ", element " << j << ": backward " << g << ", finite difference "
                      << fd);
        CHECK(std::abs(fd - g) <= 2e-4 * scale + 1e-3 * std::abs(g));
      }
    }
  }
}

TEST_CASE("fill_uninitialized_memory: new tensors start as NaN or the largest integer",
          "[tensor][table]") {
  {
    dl::test::PoisonNewTensors poison;
    for (const float v : Tensor::empty({5}).to_vector()) CHECK(std::isnan(v));
    for (const float v : Tensor::empty({3}, dl::DType::bf16).to(dl::DType::f32).to_vector())
      CHECK(std::isnan(v));
    CHECK(Tensor::empty({2}, dl::DType::i32).data<int32_t>()[1] ==
          std::numeric_limits<int32_t>::max());
    CHECK(Tensor::empty({2}, dl::DType::i64).data<int64_t>()[0] ==
          std::numeric_limits<int64_t>::max());
    CHECK(Tensor::empty({1}, dl::DType::u8).data<uint8_t>()[0] == 255);
    CHECK(Tensor::zeros({4}).to_vector() == std::vector<float>(4, 0.0f));
  }
  CHECK_FALSE(dl::fill_uninitialized_memory());
}

}  // namespace
