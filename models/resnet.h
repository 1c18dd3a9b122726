// A small ResNet-style CNN for 1- or 3-channel images (e.g. Fashion-MNIST), built from the same
// engine modules as ConvMixer:
//   stem: conv3x3(in, w) -> BN -> ReLU
//   stage 1: `blocks` basic blocks at width w, then max-pool 2x2
//   stage 2: conv3x3(w, 2w) -> BN -> ReLU, `blocks` basic blocks at 2w, then max-pool 2x2
//   head: global average pool -> Linear(2w, classes)
// A basic block is ReLU(x + BN(conv3x3(ReLU(BN(conv3x3(x)))))).
#pragma once
#include <memory>

#include "engine/nn.h"

namespace dl::models {

struct SmallResNetConfig {
  int64_t width = 32, blocks = 1, classes = 10, in_channels = 1;
};

class SmallResNet : public nn::Module {
 public:
  explicit SmallResNet(const SmallResNetConfig& config, Generator& gen = default_generator());
  Tensor forward(const Tensor& x) override;

 private:
  std::shared_ptr<nn::Sequential> body_;
};

}  // namespace dl::models
