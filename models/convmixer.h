// ConvMixer ("Patches Are All You Need?", Trockman & Kolter), structured like the reference
// PyTorch module so parameter and buffer names match one to one:
//   patch_emb.{conv,norm}  conv_mixer_layers.<i>.{depth_wise_conv,norm1,point_wise_conv,norm2}
//   classification.linear
// Input NHWC [N, H, W, in_channels]; output logits [N, classes].
#pragma once
#include <memory>

#include "engine/nn.h"

namespace dl::models {

struct ConvMixerConfig {
  int64_t dim = 256, depth = 8, kernel = 5, patch = 2, classes = 10, in_channels = 3;
};

// conv (kernel = stride = patch) -> GELU -> BatchNorm
class PatchEmbeddings : public nn::Module {
 public:
  PatchEmbeddings(int64_t dim, int64_t patch, int64_t in_channels, Generator& gen);
  Tensor forward(const Tensor& x) override;

 private:
  std::shared_ptr<nn::Conv2d> conv_;
  std::shared_ptr<nn::BatchNorm2d> norm_;
};

// x = BatchNorm(GELU(DepthwiseConv(x))) + x;  x = BatchNorm(GELU(PointwiseConv(x)))
class ConvMixerLayer : public nn::Module {
 public:
  ConvMixerLayer(int64_t dim, int64_t kernel, Generator& gen);
  Tensor forward(const Tensor& x) override;

 private:
  std::shared_ptr<nn::Conv2d> depth_wise_conv_, point_wise_conv_;
  std::shared_ptr<nn::BatchNorm2d> norm1_, norm2_;
};

// global average pool -> Linear
class ClassificationHead : public nn::Module {
 public:
  ClassificationHead(int64_t dim, int64_t classes, Generator& gen);
  Tensor forward(const Tensor& x) override;

 private:
  std::shared_ptr<nn::Linear> linear_;
};

class ConvMixer : public nn::Module {
 public:
  explicit ConvMixer(const ConvMixerConfig& config, Generator& gen = default_generator());
  Tensor forward(const Tensor& x) override;
  const ConvMixerConfig& config() const { return config_; }

 private:
  ConvMixerConfig config_;
  std::shared_ptr<nn::Sequential> layers_;
  std::shared_ptr<PatchEmbeddings> patch_emb_;
  std::shared_ptr<ClassificationHead> classification_;
};

}  // namespace dl::models
