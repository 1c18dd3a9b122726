#include "models/convmixer.h"

#include "engine/error.h"
#include "engine/ops.h"

namespace dl::models {

PatchEmbeddings::PatchEmbeddings(int64_t dim, int64_t patch, int64_t in_channels, Generator& gen) {
  conv_ = register_module(
      "conv",
      std::make_shared<nn::Conv2d>(nn::Conv2dOptions(in_channels, dim, patch).stride(patch), gen));
  norm_ = register_module("norm", std::make_shared<nn::BatchNorm2d>(dim));
}

Tensor PatchEmbeddings::forward(const Tensor& x) {
  return norm_->forward_gelu(conv_->forward(x));
}

ConvMixerLayer::ConvMixerLayer(int64_t dim, int64_t kernel, Generator& gen) {
  depth_wise_conv_ = register_module(
      "depth_wise_conv",
      std::make_shared<nn::Conv2d>(
          nn::Conv2dOptions(dim, dim, kernel).groups(dim).padding((kernel - 1) / 2), gen));
  norm1_ = register_module("norm1", std::make_shared<nn::BatchNorm2d>(dim));
  point_wise_conv_ = register_module(
      "point_wise_conv", std::make_shared<nn::Conv2d>(nn::Conv2dOptions(dim, dim, 1), gen));
  norm2_ = register_module("norm2", std::make_shared<nn::BatchNorm2d>(dim));
}

Tensor ConvMixerLayer::forward(const Tensor& x) {
  // BatchNorm(GELU(conv)) (+ x) as fused ops: the GELU output is never stored.
  const Tensor y = norm1_->forward_gelu(depth_wise_conv_->forward(x), x);
  return norm2_->forward_gelu(point_wise_conv_->forward(y));
}

ClassificationHead::ClassificationHead(int64_t dim, int64_t classes, Generator& gen) {
  linear_ = register_module("linear", std::make_shared<nn::Linear>(dim, classes, true, gen));
}

Tensor ClassificationHead::forward(const Tensor& x) {
  return linear_->forward(global_avg_pool(x));
}

ConvMixer::ConvMixer(const ConvMixerConfig& c, Generator& gen) : config_(c) {
  DL_CHECK(c.dim > 0 && c.depth >= 0 && c.patch > 0 && c.classes > 0 && c.in_channels > 0,
           "ConvMixer: invalid configuration (dim ", c.dim, ", depth ", c.depth, ", patch ",
           c.patch, ", classes ", c.classes, ")");
  DL_CHECK(c.kernel >= 1 && c.kernel % 2 == 1, "ConvMixer: kernel must be odd, got ", c.kernel);
  // Registration order follows the reference module: layers, then patch embedding, then head.
  // Construction order (which draws from `gen`) is the same as PyTorch's __init__.
  layers_ = register_module("conv_mixer_layers", std::make_shared<nn::Sequential>());
  for (int64_t i = 0; i < c.depth; ++i)
    layers_->push_back(std::make_shared<ConvMixerLayer>(c.dim, c.kernel, gen));
  patch_emb_ = register_module(
      "patch_emb", std::make_shared<PatchEmbeddings>(c.dim, c.patch, c.in_channels, gen));
  classification_ = register_module("classification",
                                    std::make_shared<ClassificationHead>(c.dim, c.classes, gen));
}

Tensor ConvMixer::forward(const Tensor& x) {
  DL_CHECK(x.dim() == 4 && x.size(3) == config_.in_channels,
           "ConvMixer: input must be NHWC [N, H, W, ", config_.in_channels, "], got ",
           shape_str(x.shape()));
  DL_CHECK(x.size(1) % config_.patch == 0 && x.size(2) % config_.patch == 0,
           "ConvMixer: image size ", x.size(1), "x", x.size(2), " is not a multiple of the patch ",
           config_.patch);
  return classification_->forward(layers_->forward(patch_emb_->forward(x)));
}

}  // namespace dl::models
