#include "models/resnet.h"

#include "engine/error.h"

namespace dl::models {

namespace {

using ModuleList = std::vector<std::shared_ptr<nn::Module>>;

void conv_bn_relu(ModuleList& out, int64_t in, int64_t width, Generator& gen) {
  out.push_back(
      std::make_shared<nn::Conv2d>(nn::Conv2dOptions(in, width, 3).padding(1).bias(false), gen));
  out.push_back(std::make_shared<nn::BatchNorm2d>(width));
  out.push_back(std::make_shared<nn::ReLU>());
}

std::shared_ptr<nn::Module> basic_block(int64_t width, Generator& gen) {
  ModuleList branch;
  conv_bn_relu(branch, width, width, gen);
  branch.push_back(
      std::make_shared<nn::Conv2d>(nn::Conv2dOptions(width, width, 3).padding(1).bias(false), gen));
  branch.push_back(std::make_shared<nn::BatchNorm2d>(width));
  return std::make_shared<nn::Sequential>(
      ModuleList{std::make_shared<nn::Residual>(std::make_shared<nn::Sequential>(branch)),
                 std::make_shared<nn::ReLU>()});
}

}  // namespace

SmallResNet::SmallResNet(const SmallResNetConfig& c, Generator& gen) {
  DL_CHECK(c.width > 0 && c.blocks >= 0 && c.classes > 0 && c.in_channels > 0,
           "SmallResNet: invalid configuration (width ", c.width, ", blocks ", c.blocks, ")");
  ModuleList layers;
  conv_bn_relu(layers, c.in_channels, c.width, gen);
  for (int64_t i = 0; i < c.blocks; ++i) layers.push_back(basic_block(c.width, gen));
  layers.push_back(std::make_shared<nn::MaxPool2d>(2, 2));
  conv_bn_relu(layers, c.width, 2 * c.width, gen);
  for (int64_t i = 0; i < c.blocks; ++i) layers.push_back(basic_block(2 * c.width, gen));
  layers.push_back(std::make_shared<nn::MaxPool2d>(2, 2));
  layers.push_back(std::make_shared<nn::AdaptiveAvgPool2d>(1));
  layers.push_back(std::make_shared<nn::Flatten>());
  layers.push_back(std::make_shared<nn::Linear>(2 * c.width, c.classes, true, gen));
  body_ = register_module("body", std::make_shared<nn::Sequential>(layers));
}

Tensor SmallResNet::forward(const Tensor& x) {
  return body_->forward(x);
}

}  // namespace dl::models
