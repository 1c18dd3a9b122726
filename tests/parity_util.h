// Helpers shared by the PyTorch parity tests: a fixture written by scripts/pytorch_reference.py,
// its tensors and metadata by name, a tolerance check scaled to the reference's magnitude, and the
// check of one training-mode step (logits, loss, gradients, buffers, evaluation-mode logits).
#pragma once
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <string>

#include "engine/io/safetensors.h"
#include "engine/nn.h"
#include "engine/ops.h"
#include "test_util.h"

namespace dl::test {

class ParityFixture {
 public:
  explicit ParityFixture(const std::string& path) : file_(io::load_safetensors(path)) {}

  const Tensor& tensor(const std::string& name) const {
    const Tensor* t = file_.find(name);
    if (!t) FAIL("fixture has no tensor " << name);
    return *t;
  }

  const std::string& meta(const std::string& key) const { return file_.metadata.at(key); }

  // Entries "<prefix><name>" as a state dict keyed by <name>.
  nn::NamedTensors with_prefix(const std::string& prefix) const {
    nn::NamedTensors out;
    for (const auto& [name, t] : file_.tensors)
      if (name.rfind(prefix, 0) == 0) out.emplace_back(name.substr(prefix.size()), t);
    return out;
  }

  // float32 against float32 computed in another order: a relative band plus an absolute floor
  // scaled to the tensor's largest magnitude (gradients span many orders of magnitude).
  void require_matches(const Tensor& actual, const std::string& name, double rtol,
                       double floor) const {
    const Tensor& expected = tensor(name);
    const auto e = expected.to_vector();
    double max_abs = 0.0;
    for (float v : e) max_abs = std::max(max_abs, std::abs(double(v)));
    require_close(actual.to(expected.dtype()), expected, rtol, floor * max_abs, name);
  }

  // `model`, holding the fixture's "init." state, against the fixture's training-mode forward
  // and backward (cross-entropy with the fixture's label smoothing): logits, loss, every
  // parameter gradient, the updated buffers, then evaluation-mode logits.
  void require_training_step_matches(nn::Module& model) const {
    model.train();
    const Tensor logits = model.forward(tensor("input"));
    const Tensor loss = cross_entropy(logits, tensor("labels"), std::stof(meta("label_smoothing")));
    loss.backward();
    require_matches(logits, "train.logits", 1e-4, 1e-5);
    require_matches(loss, "train.loss", 1e-5, 0.0);
    for (const auto& [name, p] : model.named_parameters()) {
      INFO("gradient of " << name);
      REQUIRE(p.grad().defined());
      require_matches(p.grad(), "grad." + name, 1e-3, 1e-4);
    }
    for (const auto& [name, b] : model.named_buffers()) {
      if (b.dtype() == DType::i64) {
        REQUIRE(b.to_vector() == tensor("train_buffers." + name).to_vector());
      } else {
        require_matches(b, "train_buffers." + name, 1e-4, 1e-6);
      }
    }

    model.eval();
    NoGradGuard no_grad;
    require_matches(model.forward(tensor("input")), "eval.logits", 1e-4, 1e-5);
  }

 private:
  io::SafetensorsFile file_;
};

}  // namespace dl::test
