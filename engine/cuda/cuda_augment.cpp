#include "engine/cuda/cuda_augment.h"

#include <cstring>

#include "engine/cuda/cuda_backend.h"
#include "engine/error.h"
#include "kernels/cuda/augment.cuh"

namespace dl::cuda {

namespace {

using data::RandAugmentOp;

// A blend with weight `factor` for the image, as augment.cpp's adjust_* compute the weights.
AugmentStep blend_step(AugmentStepKind kind, double factor) {
  AugmentStep step;
  step.kind = kind;
  step.r = static_cast<float>(factor);
  step.s = static_cast<float>(1.0 - factor);
  return step;
}

// One RandAugment operation as augment.cpp's apply_op performs it.
AugmentStep randaugment_step(RandAugmentOp op, float magnitude, int h, int w) {
  const double mag = magnitude;
  AugmentStep step;
  switch (op) {
    case RandAugmentOp::Identity:
      return step;
    case RandAugmentOp::ShearX:
    case RandAugmentOp::ShearY:
    case RandAugmentOp::TranslateX:
    case RandAugmentOp::TranslateY:
    case RandAugmentOp::Rotate: {
      step.kind = AugmentStepKind::warp;
      const std::array<float, 6> grid = data::randaugment_warp_grid(op, magnitude, h, w);
      std::memcpy(step.t, grid.data(), sizeof step.t);
      return step;
    }
    case RandAugmentOp::Brightness:
      return blend_step(AugmentStepKind::brightness, 1.0 + mag);
    case RandAugmentOp::Color:
      return blend_step(AugmentStepKind::saturation, 1.0 + mag);
    case RandAugmentOp::Contrast:
      return blend_step(AugmentStepKind::contrast, 1.0 + mag);
    case RandAugmentOp::Sharpness:
      return blend_step(AugmentStepKind::sharpness, 1.0 + mag);
    case RandAugmentOp::Posterize:
      step.kind = AugmentStepKind::posterize;
      step.mask = static_cast<uint8_t>(0xFF << (8 - static_cast<int>(mag)));
      return step;
    case RandAugmentOp::Solarize:
      step.kind = AugmentStepKind::solarize;
      step.threshold = magnitude;
      return step;
    case RandAugmentOp::AutoContrast:
      step.kind = AugmentStepKind::autocontrast;
      return step;
    case RandAugmentOp::Equalize:
      step.kind = AugmentStepKind::equalize;
      return step;
  }
  throw Error("augment_batch: RandAugment op " + std::to_string(static_cast<int>(op)) +
              " does not exist");
}

// `p` validated (data::validate, in augment_batch).
ImageAugment plan_of(const data::AugmentConfig& config, const data::AugmentParams& p,
                     int64_t source, int h, int w) {
  ImageAugment plan;
  plan.source = source;
  if (config.crop == data::Crop::random) {
    plan.crop = AugmentCrop::padded;
  } else if (config.crop == data::Crop::resized) {
    plan.crop = AugmentCrop::resized;
  }
  plan.crop_top = p.crop_top, plan.crop_left = p.crop_left;
  plan.crop_h = p.crop_h, plan.crop_w = p.crop_w;
  plan.flip = p.flip;
  for (int i = 0; i < p.ops; ++i) {
    plan.step[plan.steps++] =
        randaugment_step(static_cast<RandAugmentOp>(p.op[i]), p.magnitude[i], h, w);
  }
  if (config.jitter > 0.0f) {
    constexpr AugmentStepKind kinds[3] = {AugmentStepKind::brightness, AugmentStepKind::contrast,
                                          AugmentStepKind::saturation};
    for (int fn : p.jitter_order)
      plan.step[plan.steps++] = blend_step(kinds[fn], p.jitter_factor[static_cast<size_t>(fn)]);
  }
  if (p.erase) {
    plan.erase = 1;
    plan.erase_top = p.erase_top, plan.erase_left = p.erase_left;
    plan.erase_h = p.erase_h, plan.erase_w = p.erase_w;
  }
  return plan;
}

}  // namespace

Tensor augment_batch(const Tensor& images, const std::vector<int64_t>& indices,
                     const std::vector<data::AugmentParams>& params,
                     const data::AugmentConfig& config) {
  const int h = static_cast<int>(images.size(1)), w = static_cast<int>(images.size(2)),
            c = static_cast<int>(images.size(3));
  const size_t bytes = static_cast<size_t>(h) * w * c;
  DL_CHECK(bytes <= augment_max_image_bytes(), "augmenting on the GPU takes images of up to ",
           augment_max_image_bytes(), " bytes (h * w * c), got ", h, "x", w, "x", c,
           ": augment these on the CPU");
  const auto count = static_cast<int64_t>(indices.size());
  Tensor plans = Tensor::empty({count * static_cast<int64_t>(sizeof(ImageAugment))}, DType::u8);
  auto* plan = reinterpret_cast<ImageAugment*>(plans.raw_data());
  for (int64_t i = 0; i < count; ++i)
    plan[i] =
        plan_of(config, params[static_cast<size_t>(i)], indices[static_cast<size_t>(i)], h, w);
  const Device device = images.device();
  const Tensor device_plans = plans.to(device);
  const Tensor mean = Tensor::from_vector(config.mean, {c}).to(device);
  const Tensor std = Tensor::from_vector(config.std, {c}).to(device);
  Tensor out = Tensor::empty({count, h, w, c}, DType::f32, device);
  augment_images(static_cast<const uint8_t*>(images.raw_data()), h, w, c, config.crop_padding,
                 static_cast<const ImageAugment*>(device_plans.raw_data()), count,
                 static_cast<const float*>(mean.raw_data()),
                 static_cast<const float*>(std.raw_data()), static_cast<float*>(out.raw_data()),
                 stream());
  return out;
}

}  // namespace dl::cuda
