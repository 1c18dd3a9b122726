// Every case of the op table (tests/op_cases.h) on the CPU in f32: the output, the gradients and
// the inputs after the run are finite where every input is (new tensors start as NaN), and each
// input's gradient from backward matches central differences of loss = sum(output * R) (R random,
// summed in double), twice: along a random direction moving every element by up to the step
// (sum(grad * d) is off when the gradient is wrong anywhere), and element by element (all of a
// small input, the first, the last and 12 drawn of a large one).
//
// Tolerances, with step 1e-2 (truncation step^2 f''' / 6: about 2e-5 for these smooth ops):
// direction |fd - sum(grad d)| <= 1e-4 sum|grad d| + rounding, element |fd - grad| <=
// 2e-4 max|grad| + 1e-3 |grad| + rounding, where rounding bounds what the f32 outputs' rounding
// can move the difference (see central_difference). Over 20 runs the largest errors were 0.07 and
// 0.17 of these. They fail for GELU's derivative with its x phi(x) term 1% too large, a global
// average pool's gradient 10% too large at one pixel, and a loss gradient divided by n - 1.
#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "op_cases.h"

namespace {

using dl::Tensor;

constexpr double kStep = 1e-2;
constexpr int64_t kElementsPerInput = 12;
constexpr int64_t kSmallInput = 64;
constexpr double kRoundings = 4;

std::vector<float> output_of(const dl::test::OpCase& c, const std::vector<Tensor>& inputs) {
  dl::NoGradGuard no_grad;
  std::vector<Tensor> copies;
  for (const Tensor& t : inputs) copies.push_back(t.clone());  // running statistics change
  return c.run(copies).to_vector();
}

// The central difference (loss(plus) - loss(minus)) / step of loss = sum(output * R) in double,
// and how far the f32 outputs' rounding can move it: kRoundings roundings of 2^-24 relative in
// each output that differs between the two runs (the others are bit-identical and cancel), or in
// every output when none differs (the change fell below the outputs' rounding, e.g. in a loss).
struct Difference {
  double value, rounding;
};
Difference central_difference(const std::vector<float>& plus, const std::vector<float>& minus,
                              const std::vector<float>& upstream, double step) {
  double delta = 0, moved = 0, all = 0;
  for (size_t i = 0; i < plus.size(); ++i) {
    delta += (double(plus[i]) - minus[i]) * upstream[i];
    const double size =
        (std::abs(double(plus[i])) + std::abs(double(minus[i]))) * std::abs(upstream[i]);
    all += size;
    if (plus[i] != minus[i]) moved += size;
  }
  return {delta / step, kRoundings * std::ldexp(moved > 0 ? moved : all, -24) / step};
}

bool all_finite(const Tensor& t) {
  const std::vector<float> v = t.to_vector();
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}

// The elements of an input of n elements whose gradient is checked: all of a small one (a bias),
// else the first, the last (the last channel of the last pixel) and kElementsPerInput drawn.
std::set<int64_t> elements_to_check(int64_t n, dl::Generator& gen) {
  std::set<int64_t> picked;
  if (n <= kSmallInput) {
    for (int64_t j = 0; j < n; ++j) picked.insert(j);
    return picked;
  }
  picked = {0, n - 1};
  while (static_cast<int64_t>(picked.size()) < kElementsPerInput + 2)
    picked.insert(static_cast<int64_t>(gen.next_u64() % static_cast<uint64_t>(n)));
  return picked;
}

TEST_CASE("every op of the table: gradients match finite differences on the CPU", "[ops][table]") {
  dl::Generator gen = dl::test::fresh_generator();
  for (const dl::test::OpCase& c : dl::test::op_cases()) {
    INFO("op case: " << c.name);
    const std::vector<Tensor> drawn = dl::test::draw_inputs(c, gen);
    const Tensor upstream = Tensor::randn(dl::test::output_shape(c, drawn), gen);
    const dl::test::OpResult result =
        dl::test::run_case(c, drawn, dl::Device::cpu(), dl::DType::f32, upstream);
    REQUIRE(all_finite(result.output));
    for (size_t i = 0; i < drawn.size(); ++i) {
      INFO("input " << i);
      CHECK(all_finite(result.inputs_after[i]));
      if (result.gradients[i].defined()) CHECK(all_finite(result.gradients[i]));
    }

    const std::vector<float> r = upstream.to_vector();
    for (size_t i = 0; i < drawn.size(); ++i) {
      if (!dl::test::is_differentiable(c.inputs[i].kind)) continue;
      const std::vector<float> grad = result.gradients[i].to_vector();
      double scale = 0;
      for (const float g : grad) scale = std::max(scale, std::abs(double(g)));
      {  // Along a random direction d (every element moved by up to a step): the loss changes by
         // sum(grad * d), which a wrong gradient at a few elements already changes.
        std::vector<Tensor> plus = drawn, minus = drawn;
        plus[i] = drawn[i].clone();
        minus[i] = drawn[i].clone();
        double expected = 0, magnitude = 0;
        for (int64_t j = 0; j < drawn[i].numel(); ++j) {
          const float d = static_cast<float>(kStep * (2.0 * gen.uniform() - 1.0));
          float& p = plus[i].data<float>()[j];
          float& m = minus[i].data<float>()[j];
          p += d;
          m -= d;
          expected += grad[static_cast<size_t>(j)] * (double(p) - m);
          magnitude += std::abs(grad[static_cast<size_t>(j)] * (double(p) - m));
        }
        const Difference fd = central_difference(output_of(c, plus), output_of(c, minus), r, 1.0);
        INFO("input " << i << " along a random direction: backward " << expected
                      << ", finite difference " << fd.value << " (rounding " << fd.rounding << ")");
        CHECK(std::abs(fd.value - expected) <= 1e-4 * magnitude + fd.rounding);
      }
      for (const int64_t j : elements_to_check(drawn[i].numel(), gen)) {
        std::vector<Tensor> plus = drawn, minus = drawn;
        plus[i] = drawn[i].clone();
        minus[i] = drawn[i].clone();
        plus[i].data<float>()[j] += static_cast<float>(kStep);
        minus[i].data<float>()[j] -= static_cast<float>(kStep);
        // The step actually taken, after rounding the perturbed inputs to f32.
        const double step = double(plus[i].data<float>()[j]) - minus[i].data<float>()[j];
        const Difference fd = central_difference(output_of(c, plus), output_of(c, minus), r, step);
        const double g = grad[static_cast<size_t>(j)];
        INFO("input " << i << ", element " << j << ": backward " << g << ", finite difference "
                      << fd.value << " (rounding " << fd.rounding << ")");
        CHECK(std::abs(fd.value - g) <= 2e-4 * scale + 1e-3 * std::abs(g) + fd.rounding);
      }
    }
  }
}

TEST_CASE("fill_uninitialized_memory: new tensors start as NaN or the largest integer",
          "[tensor][table]") {
  const bool before = dl::fill_uninitialized_memory();  // on in every test binary (main.cpp)
  dl::set_fill_uninitialized_memory(false);
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
  CHECK_FALSE(dl::fill_uninitialized_memory());  // the guard restores what it found
  dl::set_fill_uninitialized_memory(before);
}

}  // namespace
