// Training augmentation of a batch of uint8 HWC images on the GPU, applying choices made on the
// host (engine/data/augment.h's draw_augment): crop (padded or resized), horizontal flip,
// RandAugment's operations and colour jitter as a list of steps, normalisation, random erasing.
// The arithmetic is engine/data/augment.cpp's, float by float (the file is compiled without
// fused multiply-adds, as that one is), so each image equals the CPU's bit for bit.
//
// One thread block per image, the image in shared memory (two copies of h*w*c bytes): one read
// of the source image (h*w*c bytes) and one write of the output (4*h*w*c bytes) per image; every
// step works in shared memory. Reductions (contrast's mean, autocontrast's range, equalize's
// histogram) use integer shared-memory atomics, so the result does not depend on thread order.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace dl::cuda {

// 16 RandAugment operations and 3 colour-jitter adjustments.
inline constexpr int kMaxAugmentSteps = 19;

enum class AugmentStepKind : int32_t {
  identity,
  warp,        // nearest-neighbour affine warp with zero fill: grid coefficients t[6]
  brightness,  // blend with 0: r * x + s * 0
  saturation,  // blend with the pixel's grey level (1 channel: identity)
  contrast,    // blend with the mean grey level of the image
  sharpness,   // blend with the 3x3 [[1,1,1],[1,5,1],[1,1,1]]/13 smoothed interior
  posterize,   // x & mask
  solarize,    // x >= threshold ? 255 - x : x
  autocontrast,
  equalize,
};

struct AugmentStep {
  AugmentStepKind kind = AugmentStepKind::identity;
  float r = 1.0f, s = 0.0f;  // the blends' weights of the image and of the other term
  int32_t mask = 0xff;       // posterize
  float threshold = 0.0f;    // solarize
  float t[6] = {};           // warp: source = (t0 x + t1 y + t2, t3 x + t4 y + t5) in grid units
};

enum class AugmentCrop : int32_t { none, padded, resized };

// One output image: its source in the data set and every choice, as the host prepared them.
struct ImageAugment {
  int64_t source = 0;  // index of the image in the data set
  AugmentCrop crop = AugmentCrop::none;
  int32_t crop_top = 0, crop_left = 0;  // padded: the window's corner in the padded image
  int32_t crop_h = 0, crop_w = 0;       // resized: the box (with crop_top, crop_left)
  int32_t flip = 0;
  int32_t steps = 0;
  AugmentStep step[kMaxAugmentSteps];
  int32_t erase = 0, erase_top = 0, erase_left = 0, erase_h = 0, erase_w = 0;
};

// Built on the host, read on the device: the same layout on both (checked by both compilers).
static_assert(std::is_trivially_copyable_v<ImageAugment>);
static_assert(sizeof(AugmentStep) == 44 && alignof(AugmentStep) == 4);
static_assert(sizeof(ImageAugment) == 896 && alignof(ImageAugment) == 8);

// The largest h * w * c the kernel takes (two copies must fit in a block's shared memory).
size_t augment_max_image_bytes();

// out[i] (float [h, w, c], normalised with mean and std, both [c] on the device) = the data set's
// image plans[i].source (data: uint8 [images, h, w, c] on the device) with plans[i]'s choices;
// `padding` is the padded crop's. plans: n on the device. c is 1 or 3.
void augment_images(const uint8_t* data, int h, int w, int c, int padding,
                    const ImageAugment* plans, int64_t n, const float* mean, const float* std,
                    float* out, cudaStream_t stream);

}  // namespace dl::cuda
