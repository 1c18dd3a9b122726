// End to end: a tiny ConvMixer memorises 64 random images with random labels (training
// accuracy 100%) within a fixed budget of AdamW steps. Fails if any gradient is wrong enough to
// stall learning, or if BatchNorm/optimizer state misbehaves over many steps.
#include <catch2/catch.hpp>

#include "engine/ops.h"
#include "engine/optim.h"
#include "models/convmixer.h"
#include "test_util.h"

using namespace dl;

TEST_CASE("A tiny ConvMixer overfits 64 random images") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  models::ConvMixer model({.dim = 32, .depth = 2, .kernel = 3, .patch = 2, .classes = 10}, gen);
  optim::AdamW opt(model.parameters(), {.lr = 0.01, .weight_decay = 0.0});
  const int64_t n = 64;
  const Tensor images = Tensor::randn({n, 16, 16, 3}, gen);
  std::vector<int64_t> label_values(n);
  for (auto& l : label_values) l = static_cast<int64_t>(gen.below(10));
  const Tensor labels = Tensor::from_vector(label_values, {n});

  constexpr int kMaxSteps = 150;
  int steps_to_memorise = -1;
  float first_loss = 0.0f, last_loss = 0.0f;
  for (int step = 0; step < kMaxSteps && steps_to_memorise < 0; ++step) {
    const Tensor logits = model.forward(images);
    const Tensor loss = cross_entropy(logits, labels);
    last_loss = loss.item();
    if (step == 0) first_loss = last_loss;
    const auto z = logits.to_vector();
    int64_t correct = 0;
    for (int64_t i = 0; i < n; ++i) {
      int64_t best = 0;
      for (int64_t c = 1; c < 10; ++c)
        if (z[i * 10 + c] > z[i * 10 + best]) best = c;
      correct += best == label_values[i];
    }
    if (correct == n) steps_to_memorise = step;
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  INFO("first loss " << first_loss << ", last loss " << last_loss);
  REQUIRE(steps_to_memorise >= 0);
  REQUIRE(last_loss < 0.5f * first_loss);
}
