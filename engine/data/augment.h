// Seeded training augmentation over uint8 HWC images (1 or 3 channels) with torchvision's
// semantics for uint8 tensors, in the order of the ConvMixer CIFAR-10 recipe:
// RandomCrop or RandomResizedCrop -> RandomHorizontalFlip -> RandAugment -> ColorJitter (no hue)
// -> ToTensor + Normalize -> RandomErasing. Every random draw comes from the Generator passed in.
// Unless stated otherwise, `in` and `out` are distinct buffers of the same [h, w, c] size.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/random.h"

namespace dl::data {

// CIFAR-10 channel statistics used by the ConvMixer recipe (locuslab/convmixer-cifar10, train.py):
// mean {0.4914, 0.4822, 0.4465}, std {0.2471, 0.2435, 0.2616}.
std::vector<float> cifar10_mean();
std::vector<float> cifar10_std();

// none; random: RandomCrop(padding=crop_padding), zero fill; resized: RandomResizedCrop with the
// scale and ratio ranges of AugmentConfig, bilinear. The output size is the input size.
enum class Crop { none, random, resized };

struct AugmentConfig {
  Crop crop = Crop::none;
  int crop_padding = 4;
  float resized_scale_min = 0.08f, resized_scale_max = 1.0f;
  float resized_ratio_min = 1.0f, resized_ratio_max = 1.0f;
  bool hflip = true;  // RandomHorizontalFlip(0.5)
  // RandAugment(num_ops=randaugment_n, magnitude=randaugment_m, num_magnitude_bins=31); n = 0 off.
  int randaugment_n = 0, randaugment_m = 9;
  // ColorJitter(brightness=j, contrast=j, saturation=j) in a random order; 0 disables.
  float jitter = 0.0f;
  // RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0) on the normalised image.
  float erasing_p = 0.0f;
  // Normalisation per channel: CIFAR-10's by default; another data set wants its own
  // (channel_statistics in loader.h).
  std::vector<float> mean = cifar10_mean(), std = cifar10_std();
};

// RandAugment's 14 operations in torchvision's order (randaugment_ops() names them).
enum class RandAugmentOp {
  Identity,
  ShearX,
  ShearY,
  TranslateX,
  TranslateY,
  Rotate,
  Brightness,
  Color,
  Contrast,
  Sharpness,
  Posterize,
  Solarize,
  AutoContrast,
  Equalize,
};

// At most this many RandAugment operations per image (validate_options refuses more).
inline constexpr int kMaxRandAugmentOps = 16;

// One image's random choices. Every draw depends on the image's size and the Generator only, never
// on its pixels, so they are drawn first (draw_augment) and applied after (apply_augment): another
// device given the same parameters makes the same image. A plain struct, to copy to a device.
struct AugmentParams {
  // Crop::random: the corner of the window in the image padded by crop_padding. Crop::resized:
  // the box (top, left, crop_h x crop_w) resized to the image's size.
  int crop_top = 0, crop_left = 0, crop_h = 0, crop_w = 0;
  bool flip = false;
  // RandAugment: `ops` operations, each a RandAugmentOp and a signed magnitude.
  int ops = 0;
  std::array<int, kMaxRandAugmentOps> op{};
  std::array<float, kMaxRandAugmentOps> magnitude{};
  // ColorJitter (jitter > 0): brightness (0), contrast (1) and saturation (2) in this order, with
  // these factors.
  std::array<int, 3> jitter_order{0, 1, 2};
  std::array<float, 3> jitter_factor{1.0f, 1.0f, 1.0f};
  // RandomErasing: the rectangle set to zero after normalisation, when `erase`.
  bool erase = false;
  int erase_top = 0, erase_left = 0, erase_h = 0, erase_w = 0;
};

// Throws dl::Error naming the first bad field, leaving out mean and std (which depend on the data).
void validate_options(const AugmentConfig& config);
// validate_options, then mean and std against images with `channels` channels.
void validate(const AugmentConfig& config, int channels);

// Training transform of one image: in is uint8 [h, w, c], out is float [h, w, c] normalised.
// The caller seeds one Generator per sample (from seed, epoch and index), so the result does not
// depend on threading. The same as apply_augment(config, draw_augment(config, h, w, gen), ...).
void augment(const AugmentConfig& config, const uint8_t* in, int h, int w, int c, float* out,
             Generator& gen);
// The random choices of augment() for an h x w image, in the order augment() draws them.
AugmentParams draw_augment(const AugmentConfig& config, int h, int w, Generator& gen);
// Throws dl::Error when `params` are not choices draw_augment could make for an h x w image under
// `config` (parameters from elsewhere: another device's, a corrupted copy).
void validate(const AugmentParams& params, const AugmentConfig& config, int h, int w);
// augment() with its choices given (validated first).
void apply_augment(const AugmentConfig& config, const AugmentParams& params, const uint8_t* in,
                   int h, int w, int c, float* out);
// Evaluation transform: out = (in / 255 - mean) / std per channel.
void normalize(const AugmentConfig& config, const uint8_t* in, int h, int w, int c, float* out);

void hflip(const uint8_t* in, int h, int w, int c, uint8_t* out);
// The h x w window at (top, left) of the image zero-padded by `padding` on every side.
void padded_crop(const uint8_t* in, int h, int w, int c, int padding, int top, int left,
                 uint8_t* out);
// RandomCrop((h, w), padding): top and left uniform in [0, 2 * padding].
void random_crop(const uint8_t* in, int h, int w, int c, int padding, uint8_t* out, Generator& gen);
// The crop_h x crop_w window at (top, left), resized to h x w: bilinear with half-pixel centres
// (align_corners=False), rounded half to even.
void resized_crop(const uint8_t* in, int h, int w, int c, int top, int left, int crop_h, int crop_w,
                  uint8_t* out);
// RandomResizedCrop((h, w), scale, ratio): ten tries at a random box, then torchvision's centre
// crop fallback.
void random_resized_crop(const uint8_t* in, int h, int w, int c, float scale_min, float scale_max,
                         float ratio_min, float ratio_max, uint8_t* out, Generator& gen);

// RandAugment's 14 op names in torchvision's order.
const std::vector<std::string>& randaugment_ops();
// Unsigned magnitude of `op` at `bin` of 31 for an h x w image (torchvision's table).
float randaugment_magnitude(const std::string& op, int bin, int h, int w);
// One op with an explicit (signed) magnitude, as torchvision's _apply_op: geometric ops are
// nearest-neighbour warps with zero fill (shears about the top-left corner, rotation about the
// centre, counter-clockwise for a positive angle; translations truncated to whole pixels).
void apply_randaugment_op(const std::string& op, float magnitude, const uint8_t* in, int h, int w,
                          int c, uint8_t* out);
// The geometric ops (ShearX to Rotate) as apply_augment warps: the affine grid that maps an output
// pixel centre (x, y), relative to the image centre, to its source in grid units [-1, 1]:
// (t0 x + t1 y + t2, t3 x + t4 y + t5), for a device to compute the same warp.
std::array<float, 6> randaugment_warp_grid(RandAugmentOp op, float magnitude, int h, int w);

// RandAugment(num_ops, magnitude): each op uniform among the 14, signed ops negated with p = 0.5.
void randaugment(const uint8_t* in, int h, int w, int c, int num_ops, int magnitude, uint8_t* out,
                 Generator& gen);

// ColorJitter(j, j, j): factors uniform in [max(0, 1 - j), 1 + j], applied in a random order.
void color_jitter(const uint8_t* in, int h, int w, int c, float jitter, uint8_t* out,
                  Generator& gen);

// RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0), in place on float [h, w, c].
void random_erasing(float* img, int h, int w, int c, float p, Generator& gen);

}  // namespace dl::data
