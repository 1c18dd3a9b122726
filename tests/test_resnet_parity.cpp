// Parity with PyTorch: tests/fixtures/resnet_reference.safetensors was written by
// `scripts/pytorch_reference.py fixture-resnet` (SmallResNet width 4, 1 block per stage, 10
// classes, batch 3 of 1x12x12 images, no label smoothing). The engine loads the same weights and
// input and must reproduce the logits, the loss, every parameter gradient, the running statistics
// and evaluation-mode logits: bias-free convolutions, ReLU, max-pooling, residual sums, global
// average pooling, Flatten and Linear against PyTorch's own.
#include <catch2/catch.hpp>

#include "models/resnet.h"
#include "parity_util.h"

using namespace dl;

TEST_CASE("SmallResNet forward and backward match PyTorch in training mode") {
  const test::ParityFixture fixture(DL_FIXTURE_DIR "/resnet_reference.safetensors");
  models::SmallResNetConfig c;
  c.width = std::stoll(fixture.meta("width")), c.blocks = std::stoll(fixture.meta("blocks"));
  c.classes = std::stoll(fixture.meta("classes"));
  c.in_channels = std::stoll(fixture.meta("in_channels"));
  models::SmallResNet model(c);
  model.load_state_dict(fixture.with_prefix("init."), "fixture");
  fixture.require_training_step_matches(model);
}
