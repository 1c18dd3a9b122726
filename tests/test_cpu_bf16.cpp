// bf16 mixed precision on the CPU (a CPU with AVX512-BF16) against fp32 on the CPU: every case of
// the op table (tests/op_cases.h), then whole training steps. Each op runs twice on the same
// bf16-rounded inputs: once with bf16 activations (parameters stay f32), once in f32, with the
// same random upstream gradient (rounded to bf16), so backward checks every input's gradient. New
// tensors start as NaN; the inputs are fresh random values (the seed is printed).
//
// Tolerance: |bf16 - f32| <= 3e-2 max|f32| over each tensor; for a model's gradients the relative
// L2 error below 0.1 (as the GPU's bf16 test). The bf16 path rounds each op's
// output once (2^-9 relative) and a 1x1 convolution's weight once; products and sums are float,
// so an op's error is a few bf16 roundings, and a few layers' add up to about 1e-2.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cmath>

#include "engine/nn.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/runtime.h"
#include "models/registry.h"
#include "op_cases.h"
#include "test_util.h"

namespace {

using dl::DType;
using dl::Tensor;

constexpr double kRtol = 3e-2;
// BatchNorm's running statistics after a bf16 step (f32, from statistics summed in float): at most
// 1e-4 of the largest value seen; a wrong momentum would be off by percents.
constexpr double kStateRtol = 1e-3;

#define CHECK_CLOSE(got, want, what)                                 \
  do {                                                               \
    const double e_ = dl::test::max_rel_error(got, want);            \
    INFO(what << ": max error " << e_ << " of the largest |value|"); \
    CHECK(e_ <= kRtol);                                              \
  } while (0)

TEST_CASE("every op of the table in bf16 on the CPU matches f32", "[bf16][ops][table]") {
  dl::Generator gen = dl::test::fresh_generator();
  for (const dl::test::OpCase& c : dl::test::op_cases()) {
    INFO("op case: " << c.name);
    const std::vector<Tensor> inputs =
        dl::test::round_activations_to_bf16(c, dl::test::draw_inputs(c, gen));
    const Tensor upstream =
        Tensor::randn(dl::test::output_shape(c, inputs), gen).to(DType::bf16).to(DType::f32);
    const dl::test::OpResult want =
        dl::test::run_case(c, inputs, dl::Device::cpu(), DType::f32, upstream);
    const dl::test::OpResult got =
        dl::test::run_case(c, inputs, dl::Device::cpu(), DType::bf16, upstream);
    dl::test::check_results_close(c, got, want, kRtol, kStateRtol);
  }
}

// One ConvMixer, steps of AdamW in f32 or with bf16 activations, from the same initial weights.
struct Run {
  std::vector<float> losses;
  Tensor logits;                    // of the first step, as f32
  std::vector<Tensor> first_grads;  // the parameters' gradients in the first step
  std::vector<Tensor> params;       // after the last step
};
Run train(uint64_t seed, DType activations, const Tensor& images, const Tensor& labels, int steps) {
  dl::models::ModelSpec spec;
  spec.dim = 32, spec.depth = 2, spec.kernel = 5, spec.patch = 2;
  dl::Generator init(seed);
  auto model = dl::models::make_model(spec, init);
  dl::optim::AdamW opt(model->parameters(), {.lr = 0.01, .weight_decay = 0.05});
  const Tensor x = images.to(activations);
  Run run;
  for (int s = 0; s < steps; ++s) {
    const Tensor logits = model->forward(x);
    const Tensor loss = dl::cross_entropy(logits, labels, 0.1f);
    opt.zero_grad();
    loss.backward();
    if (s == 0)
      for (const Tensor& p : model->parameters()) run.first_grads.push_back(p.grad().clone());
    opt.step();
    run.losses.push_back(loss.item());
    if (s == 0) run.logits = logits.to(DType::f32);
  }
  for (const Tensor& p : model->parameters()) run.params.push_back(p.clone());
  return run;
}

// The fused evaluation form gives the separate ops' bf16 values bit for bit (each op's output
// rounded to bf16 as the separate op stores it), with 37 channels (two whole 16-channel vectors and
// a tail) and 256, for NaN, infinities, values whose GELU is a denormal (0.5 * 1e-39), and a
// denormal BatchNorm output (gamma 0, beta a denormal).
TEST_CASE("bf16 GELU+BatchNorm evaluation equals gelu, batch_norm and add, bit for bit",
          "[bf16][ops]") {
  dl::Generator gen = dl::test::fresh_generator();
  for (const int64_t c : {int64_t{37}, int64_t{256}}) {
    INFO(c << " channels");
    Tensor h = Tensor::randn({3, 5, 4, c}, gen);
    float* hv = h.data<float>();
    const float special[] = {NAN, INFINITY, -INFINITY, 1e-39f, -1e-39f, 3e-38f, -30.0f, 0.0f};
    for (size_t i = 0; i < std::size(special); ++i) hv[(i * 97) % h.numel()] = special[i];
    for (int64_t i = 8; i < h.numel(); i += 11) hv[i] *= 4.0f;
    const Tensor hb = h.to(DType::bf16), residual = Tensor::randn(h.shape(), gen).to(DType::bf16);
    Tensor gamma = Tensor::randn({c}, gen), beta = Tensor::randn({c}, gen);
    gamma.data<float>()[c - 1] = 0.0f, beta.data<float>()[c - 1] = 1e-39f;
    gamma.data<float>()[3] = 0.0f, beta.data<float>()[3] = -2e-39f;
    const Tensor rm = Tensor::randn({c}, gen), rv = Tensor::uniform({c}, 0.5f, 2.0f, gen);
    for (const bool with_residual : {false, true}) {
      INFO("residual " << with_residual);
      const Tensor res = with_residual ? residual : Tensor();
      const Tensor fused = dl::gelu_batch_norm(hb, rm, rv, gamma, beta, false, 0.1f, 1e-5f, res);
      Tensor separate = dl::batch_norm(dl::gelu(hb), rm, rv, gamma, beta, false, 0.1f, 1e-5f);
      if (with_residual) separate = dl::add(separate, res);
      REQUIRE(fused.dtype() == DType::bf16);
      const auto* a = static_cast<const uint16_t*>(fused.raw_data());
      const auto* b = static_cast<const uint16_t*>(separate.raw_data());
      int64_t differ = 0, first = -1;
      for (int64_t i = 0; i < fused.numel(); ++i)
        if (a[i] != b[i] && differ++ == 0) first = i;
      INFO("first difference at " << first << ": " << (first >= 0 ? a[first] : 0) << " against "
                                  << (first >= 0 ? b[first] : 0));
      CHECK(differ == 0);
    }
  }
}

TEST_CASE("a ConvMixer trained with bf16 activations on the CPU stays close to f32",
          "[bf16][model]") {
  dl::Generator gen = dl::test::fresh_generator();
  const uint64_t seed = gen.next_u64();
  const Tensor images = Tensor::randn({8, 16, 16, 3}, gen).to(DType::bf16).to(DType::f32);
  std::vector<int64_t> l(8);
  for (auto& v : l) v = static_cast<int64_t>(gen.next_u64() % 10);
  const Tensor labels = Tensor::from_vector(l, {8});
  const Run f32 = train(seed, DType::f32, images, labels, 3);
  const Run bf16 = train(seed, DType::bf16, images, labels, 3);
  for (size_t s = 0; s < f32.losses.size(); ++s) {
    INFO("step " << s << ": loss " << bf16.losses[s] << " (bf16), " << f32.losses[s] << " (f32)");
    CHECK(std::abs(bf16.losses[s] - f32.losses[s]) <= kRtol * f32.losses[s]);
  }
  CHECK_CLOSE(bf16.logits, f32.logits, "logits of the first step");
  for (const Tensor& p : bf16.params) CHECK(p.dtype() == DType::f32);
  INFO("the first step's gradients");
  dl::test::check_gradients_close(bf16.first_grads, f32.first_grads, 0.1);
}

TEST_CASE("bf16 results on the CPU do not depend on the thread count", "[bf16][model]") {
  dl::Generator gen = dl::test::fresh_generator();
  const uint64_t seed = gen.next_u64();
  const Tensor images = Tensor::randn({8, 16, 16, 3}, gen);
  const Tensor labels = Tensor::from_vector(std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}, {8});
  const int threads = dl::num_threads();
  dl::set_num_threads(1);
  const Run one = train(seed, DType::bf16, images, labels, 2);
  dl::set_num_threads(2);
  const Run two = train(seed, DType::bf16, images, labels, 2);
  dl::set_num_threads(threads);
  CHECK(one.losses == two.losses);
  CHECK(one.logits.to_vector() == two.logits.to_vector());
  for (size_t i = 0; i < one.params.size(); ++i)
    CHECK(one.params[i].to_vector() == two.params[i].to_vector());
}

}  // namespace

// Without bf16 on this CPU: says why and reports skipped (CTest's SKIP_RETURN_CODE). New tensors
// are filled with NaN, as in every test binary (see main.cpp).
int main(int argc, char** argv) {
  if (!dl::supports_bf16(dl::Device::cpu())) {
    std::printf("SKIPPED: this CPU has no AVX512-BF16: the bf16 CPU path is off here\n");
    return 77;
  }
  dl::set_fill_uninitialized_memory(true);
  return Catch::Session().run(argc, argv);
}
