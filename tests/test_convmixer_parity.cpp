// Parity with PyTorch: tests/fixtures/convmixer_reference.safetensors was written by
// `scripts/pytorch_reference.py fixture` (ConvMixer-32/2, k 5, p 2, batch 4, label smoothing 0.1).
// The engine loads the same weights and input and must reproduce the logits, the loss, every
// parameter gradient, the running statistics, evaluation-mode logits and two AdamW steps.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>

#include "engine/io/safetensors.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "models/convmixer.h"
#include "test_util.h"

using namespace dl;

namespace {

const io::SafetensorsFile& fixture() {
  static const io::SafetensorsFile file =
      io::load_safetensors(DL_FIXTURE_DIR "/convmixer_reference.safetensors");
  return file;
}

const Tensor& fixture_tensor(const std::string& name) {
  const Tensor* t = fixture().find(name);
  if (!t) FAIL("fixture has no tensor " << name);
  return *t;
}

// Entries "<prefix><name>" as a state dict keyed by <name>.
nn::NamedTensors with_prefix(const std::string& prefix) {
  nn::NamedTensors out;
  for (const auto& [name, t] : fixture().tensors)
    if (name.rfind(prefix, 0) == 0) out.emplace_back(name.substr(prefix.size()), t);
  return out;
}

std::unique_ptr<models::ConvMixer> reference_model() {
  const auto& m = fixture().metadata;
  models::ConvMixerConfig c;
  c.dim = std::stoll(m.at("dim")), c.depth = std::stoll(m.at("depth"));
  c.kernel = std::stoll(m.at("kernel")), c.patch = std::stoll(m.at("patch"));
  c.classes = std::stoll(m.at("classes"));
  auto model = std::make_unique<models::ConvMixer>(c);
  model->load_state_dict(with_prefix("init."), "fixture");
  return model;
}

float label_smoothing() {
  return std::stof(fixture().metadata.at("label_smoothing"));
}

// float32 against float32 computed in another order: a relative band plus an absolute floor
// scaled to the tensor's largest magnitude (gradients span many orders of magnitude).
void require_matches(const Tensor& actual, const std::string& name, double rtol, double floor) {
  const Tensor& expected = fixture_tensor(name);
  const auto e = expected.to_vector();
  double max_abs = 0.0;
  for (float v : e) max_abs = std::max(max_abs, std::abs(double(v)));
  test::require_close(actual.to(expected.dtype()), expected, rtol, floor * max_abs, name);
}

}  // namespace

TEST_CASE("ConvMixer forward and backward match PyTorch in training mode") {
  auto model = reference_model();
  model->train();
  const Tensor logits = model->forward(fixture_tensor("input"));
  const Tensor loss = cross_entropy(logits, fixture_tensor("labels"), label_smoothing());
  loss.backward();
  require_matches(logits, "train.logits", 1e-4, 1e-5);
  require_matches(loss, "train.loss", 1e-5, 0.0);
  for (const auto& [name, p] : model->named_parameters()) {
    INFO("gradient of " << name);
    REQUIRE(p.grad().defined());
    require_matches(p.grad(), "grad." + name, 1e-3, 1e-4);
  }
  for (const auto& [name, b] : model->named_buffers()) {
    if (b.dtype() == DType::i64) {
      REQUIRE(b.to_vector() == fixture_tensor("train_buffers." + name).to_vector());
    } else {
      require_matches(b, "train_buffers." + name, 1e-4, 1e-6);
    }
  }

  model->eval();
  NoGradGuard no_grad;
  require_matches(model->forward(fixture_tensor("input")), "eval.logits", 1e-4, 1e-5);
}

TEST_CASE("Two AdamW steps on ConvMixer match PyTorch") {
  auto model = reference_model();
  model->train();
  const double lr = std::stod(fixture().metadata.at("adamw_lr"));
  INFO("lr " << lr);
  optim::AdamW opt(
      model->parameters(),
      {.lr = lr, .weight_decay = std::stod(fixture().metadata.at("adamw_weight_decay"))});
  for (int step = 1; step <= 2; ++step) {
    INFO("AdamW step " << step);
    const Tensor loss = cross_entropy(model->forward(fixture_tensor("input")),
                                      fixture_tensor("labels"), label_smoothing());
    require_matches(loss, "adamw" + std::to_string(step) + ".loss", 1e-5, 0.0);
    opt.zero_grad();
    loss.backward();
    // AdamW divides each gradient by its own magnitude, so where a gradient is near eps its
    // float rounding would decide the step. The update rule is compared on PyTorch's own
    // gradients (ours are checked above); the result must agree to float rounding.
    for (const auto& [name, p] : model->named_parameters()) {
      require_matches(p.grad(), "adamw" + std::to_string(step) + "_grad." + name, 1e-3, 1e-4);
      p.set_grad(fixture_tensor("adamw" + std::to_string(step) + "_grad." + name).clone());
    }
    opt.step();
    for (const auto& [name, p] : model->named_parameters()) {
      INFO("parameter " << name);
      const Tensor& expected = fixture_tensor("adamw" + std::to_string(step) + "." + name);
      test::require_close(p, expected, 1e-6, 1e-6 * lr, name);
    }
  }
}
