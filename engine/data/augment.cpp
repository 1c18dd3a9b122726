// Training augmentation (see augment.h). The arithmetic follows torchvision's uint8 tensor code:
// float32 intermediates, blends clamped and truncated, warps and resizes rounded half to even.
// Compiled with -ffp-contract=off (engine/CMakeLists.txt) so that products round as PyTorch's do.
#include "engine/data/augment.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numbers>
#include <optional>
#include <utility>

#include "engine/error.h"

namespace dl::data {

namespace {

constexpr int kBins = 31;   // num_magnitude_bins
constexpr int kTries = 10;  // RandomResizedCrop / RandomErasing attempts

using Op = RandAugmentOp;

bool is_signed(Op op) {
  return op >= Op::ShearX && op <= Op::Sharpness;
}

Op parse_op(const std::string& name) {
  const std::vector<std::string>& names = randaugment_ops();
  const auto it = std::find(names.begin(), names.end(), name);
  DL_CHECK(it != names.end(), "unknown RandAugment op '", name,
           "'; expected Identity, ShearX, ShearY, TranslateX, TranslateY, Rotate, Brightness, "
           "Color, Contrast, Sharpness, Posterize, Solarize, AutoContrast or Equalize");
  return static_cast<Op>(it - names.begin());
}

void check_image(int h, int w, int c) {
  DL_CHECK(h > 0 && w > 0, "image size must be positive, got ", h, "x", w);
  DL_CHECK(c == 1 || c == 3, "images must have 1 or 3 channels, got ", c);
}

size_t numel(int h, int w, int c) {
  return static_cast<size_t>(h) * w * c;
}

float uniform(Generator& gen, float lo, float hi) {
  return lo + (hi - lo) * gen.uniform();
}

// torch.linspace(start, end, 31)[i] in float32 as PyTorch's AVX2 CPU kernel computes it: bins
// 0-15 as two 8-wide vectors (block base plus the rounded k * step), bins 16-30 one at a time as
// end - step * (30 - i) with a fused multiply-add. Other vector widths can differ in the last bit
// of some bins.
float linspace(float start, float end, int i) {
  const float step = (end - start) / static_cast<float>(kBins - 1);
  if (i < 16) {
    const int block = i - i % 8;
    const float base = start + step * static_cast<float>(block);
    return base + static_cast<float>(i % 8) * step;
  }
  return std::fma(-step, static_cast<float>(kBins - 1 - i), end);
}

// Python's math.radians / math.degrees.
double radians(double deg) {
  return deg * (std::numbers::pi / 180.0);
}
double degrees(double rad) {
  return rad * (180.0 / std::numbers::pi);
}

// Tensor.clamp(0, 255).to(uint8): truncation toward zero.
uint8_t clamp_u8(float v) {
  return static_cast<uint8_t>(std::clamp(v, 0.0f, 255.0f));
}

// _blend(img, other, ratio) for one value: ratio * a + (1 - ratio) * b.
uint8_t blend(float ratio, float other_ratio, float a, float b) {
  return clamp_u8(ratio * a + other_ratio * b);
}

// rgb_to_grayscale of one RGB pixel, truncated to uint8.
uint8_t gray(const uint8_t* px) {
  const float g = 0.2989f * px[0] + 0.587f * px[1] + 0.114f * px[2];
  return static_cast<uint8_t>(g);
}

void check_factor(double factor, const char* what) {
  DL_CHECK(factor >= 0.0, what, " factor must be non-negative, got ", factor);
}

void adjust_brightness(const uint8_t* in, int h, int w, int c, double factor, uint8_t* out) {
  check_factor(factor, "brightness");
  const float r = static_cast<float>(factor), s = static_cast<float>(1.0 - factor);
  for (size_t i = 0; i < numel(h, w, c); ++i) out[i] = blend(r, s, in[i], 0.0f);
}

void adjust_saturation(const uint8_t* in, int h, int w, int c, double factor, uint8_t* out) {
  check_factor(factor, "saturation");
  if (c == 1) {
    std::copy(in, in + numel(h, w, c), out);
    return;
  }
  const float r = static_cast<float>(factor), s = static_cast<float>(1.0 - factor);
  for (size_t p = 0; p < static_cast<size_t>(h) * w; ++p) {
    const float g = gray(in + 3 * p);
    for (int k = 0; k < 3; ++k) out[3 * p + k] = blend(r, s, in[3 * p + k], g);
  }
}

void adjust_contrast(const uint8_t* in, int h, int w, int c, double factor, uint8_t* out) {
  check_factor(factor, "contrast");
  const size_t n = static_cast<size_t>(h) * w;
  int64_t sum = 0;
  for (size_t p = 0; p < n; ++p) sum += c == 3 ? gray(in + 3 * p) : in[p];
  const float mean = static_cast<float>(sum) / static_cast<float>(n);
  const float r = static_cast<float>(factor), s = static_cast<float>(1.0 - factor);
  for (size_t i = 0; i < numel(h, w, c); ++i) out[i] = blend(r, s, in[i], mean);
}

// Blend with the image smoothed by [[1,1,1],[1,5,1],[1,1,1]]/13; border pixels stay as they are.
void adjust_sharpness(const uint8_t* in, int h, int w, int c, double factor, uint8_t* out) {
  check_factor(factor, "sharpness");
  if (h <= 2 || w <= 2) {
    std::copy(in, in + numel(h, w, c), out);
    return;
  }
  const float edge = 1.0f / 13.0f, centre = 5.0f / 13.0f;
  const float r = static_cast<float>(factor), s = static_cast<float>(1.0 - factor);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      for (int k = 0; k < c; ++k) {
        const size_t at = (static_cast<size_t>(y) * w + x) * c + k;
        float smooth = in[at];
        if (y > 0 && y < h - 1 && x > 0 && x < w - 1) {
          float acc = 0.0f;
          for (int dy = -1; dy <= 1; ++dy) {
            for (int dx = -1; dx <= 1; ++dx) {
              const uint8_t v = in[(static_cast<size_t>(y + dy) * w + (x + dx)) * c + k];
              acc += (dy == 0 && dx == 0 ? centre : edge) * v;
            }
          }
          smooth = std::nearbyint(acc);
        }
        out[at] = blend(r, s, in[at], smooth);
      }
    }
  }
}

void posterize(const uint8_t* in, int h, int w, int c, int bits, uint8_t* out) {
  DL_CHECK(bits >= 0 && bits <= 8, "posterize keeps 0 to 8 bits, got ", bits);
  const uint8_t mask = static_cast<uint8_t>(0xFF << (8 - bits));
  for (size_t i = 0; i < numel(h, w, c); ++i) out[i] = in[i] & mask;
}

void solarize(const uint8_t* in, int h, int w, int c, double threshold, uint8_t* out) {
  DL_CHECK(threshold <= 255.0, "solarize threshold must be at most 255, got ", threshold);
  for (size_t i = 0; i < numel(h, w, c); ++i)
    out[i] = in[i] >= threshold ? static_cast<uint8_t>(255 - in[i]) : in[i];
}

// Per channel, stretches [min, max] to [0, 255]; a constant channel is left unchanged.
void autocontrast(const uint8_t* in, int h, int w, int c, uint8_t* out) {
  const size_t n = static_cast<size_t>(h) * w;
  for (int k = 0; k < c; ++k) {
    uint8_t lo = 255, hi = 0;
    for (size_t p = 0; p < n; ++p) {
      lo = std::min(lo, in[p * c + k]);
      hi = std::max(hi, in[p * c + k]);
    }
    const float low = lo == hi ? 0.0f : lo;
    // 255 / (max - min) on a tensor is reciprocal(max - min) * 255 in PyTorch.
    const float scale = lo == hi ? 1.0f : (1.0f / static_cast<float>(hi - lo)) * 255.0f;
    for (size_t p = 0; p < n; ++p) out[p * c + k] = clamp_u8((in[p * c + k] - low) * scale);
  }
}

// Per-channel histogram equalisation (torchvision's _scale_channel, PIL's ImageOps.equalize).
void equalize(const uint8_t* in, int h, int w, int c, uint8_t* out) {
  const size_t n = static_cast<size_t>(h) * w;
  for (int k = 0; k < c; ++k) {
    std::array<int64_t, 256> hist{};
    for (size_t p = 0; p < n; ++p) ++hist[in[p * c + k]];
    int last = 255;
    while (hist[last] == 0) --last;
    const int64_t step = (static_cast<int64_t>(n) - hist[last]) / 255;
    std::array<uint8_t, 256> lut{};
    for (int v = 0; v < 256; ++v) lut[v] = static_cast<uint8_t>(v);
    if (step > 0) {
      int64_t cum = 0;
      lut[0] = 0;
      for (int v = 0; v < 255; ++v) {
        cum += hist[v];
        lut[v + 1] = static_cast<uint8_t>(std::min<int64_t>((cum + step / 2) / step, 255));
      }
    }
    for (size_t p = 0; p < n; ++p) out[p * c + k] = lut[in[p * c + k]];
  }
}

// torchvision's _get_inverse_affine_matrix (scale 1): output to input coordinates, both relative
// to the image centre; the centre and translation are in pixels, the angles in degrees.
std::array<double, 6> inverse_affine(double cx, double cy, double angle, double tx, double ty,
                                     double shear_x, double shear_y) {
  const double rot = radians(angle), sx = radians(shear_x), sy = radians(shear_y);
  const double a = std::cos(rot - sy) / std::cos(sy);
  const double b = -std::cos(rot - sy) * std::tan(sx) / std::cos(sy) - std::sin(rot);
  const double c = std::sin(rot - sy) / std::cos(sy);
  const double d = -std::sin(rot - sy) * std::tan(sx) / std::cos(sy) + std::cos(rot);
  std::array<double, 6> m{d, -b, 0.0, -c, a, 0.0};
  m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty);
  m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty);
  m[2] += cx;
  m[5] += cy;
  return m;
}

// The affine grid's coefficients in grid units: m divided by half the width (x) or height (y).
std::array<float, 6> grid_of(const std::array<double, 6>& m, int h, int w) {
  const float half_w = 0.5f * static_cast<float>(w), half_h = 0.5f * static_cast<float>(h);
  std::array<float, 6> t{};
  for (int k = 0; k < 6; ++k) t[k] = static_cast<float>(m[k]) / (k < 3 ? half_w : half_h);
  return t;
}

// The geometric ops' grids, as torchvision's F.affine builds them.
std::array<float, 6> warp_grid(Op op, double mag, int h, int w) {
  switch (op) {
    case Op::ShearX:  // shear in degrees about the top-left corner (center=[0, 0])
      return grid_of(
          inverse_affine(-0.5 * w, -0.5 * h, 0.0, 0.0, 0.0, degrees(std::atan(mag)), 0.0), h, w);
    case Op::ShearY:
      return grid_of(
          inverse_affine(-0.5 * w, -0.5 * h, 0.0, 0.0, 0.0, 0.0, degrees(std::atan(mag))), h, w);
    case Op::TranslateX:
      return grid_of(inverse_affine(0.0, 0.0, 0.0, std::trunc(mag), 0.0, 0.0, 0.0), h, w);
    case Op::TranslateY:
      return grid_of(inverse_affine(0.0, 0.0, 0.0, 0.0, std::trunc(mag), 0.0, 0.0), h, w);
    case Op::Rotate:  // F.rotate: counter-clockwise for a positive angle
      return grid_of(inverse_affine(0.0, 0.0, -mag, 0.0, 0.0, 0.0, 0.0), h, w);
    default:
      break;
  }
  throw Error("RandAugment op " + randaugment_ops()[static_cast<size_t>(op)] + " is not a warp");
}

// F_t.affine with nearest interpolation and zero fill: the affine grid at pixel centres, then
// grid_sample(align_corners=False) rounding the source position half to even.
void warp_nearest(const std::array<float, 6>& t, const uint8_t* in, int h, int w, int c,
                  uint8_t* out) {
  const float half_w = 0.5f * static_cast<float>(w), half_h = 0.5f * static_cast<float>(h);
  for (int i = 0; i < h; ++i) {
    const float y = -half_h + 0.5f + static_cast<float>(i);
    for (int j = 0; j < w; ++j) {
      const float x = -half_w + 0.5f + static_cast<float>(j);
      // The grid as PyTorch's batched matmul forms it: x * t0, fused with y * t1, then + t2.
      const float gx = std::fma(y, t[1], x * t[0]) + t[2];
      const float gy = std::fma(y, t[4], x * t[3]) + t[5];
      const float sx = std::nearbyint((gx + 1.0f) * half_w - 0.5f);
      const float sy = std::nearbyint((gy + 1.0f) * half_h - 0.5f);
      uint8_t* dst = out + (static_cast<size_t>(i) * w + j) * c;
      if (sx >= 0.0f && sx <= static_cast<float>(w - 1) && sy >= 0.0f &&
          sy <= static_cast<float>(h - 1)) {
        const uint8_t* src = in + (static_cast<size_t>(sy) * w + static_cast<size_t>(sx)) * c;
        std::copy(src, src + c, dst);
      } else {
        std::fill(dst, dst + c, uint8_t{0});
      }
    }
  }
}

void apply_op(Op op, double mag, const uint8_t* in, int h, int w, int c, uint8_t* out) {
  switch (op) {
    case Op::Identity:
      std::copy(in, in + numel(h, w, c), out);
      return;
    case Op::ShearX:
    case Op::ShearY:
    case Op::TranslateX:
    case Op::TranslateY:
    case Op::Rotate:
      warp_nearest(warp_grid(op, mag, h, w), in, h, w, c, out);
      return;
    case Op::Brightness:
      adjust_brightness(in, h, w, c, 1.0 + mag, out);
      return;
    case Op::Color:
      adjust_saturation(in, h, w, c, 1.0 + mag, out);
      return;
    case Op::Contrast:
      adjust_contrast(in, h, w, c, 1.0 + mag, out);
      return;
    case Op::Sharpness:
      adjust_sharpness(in, h, w, c, 1.0 + mag, out);
      return;
    case Op::Posterize:
      posterize(in, h, w, c, static_cast<int>(mag), out);
      return;
    case Op::Solarize:
      solarize(in, h, w, c, mag, out);
      return;
    case Op::AutoContrast:
      autocontrast(in, h, w, c, out);
      return;
    case Op::Equalize:
      equalize(in, h, w, c, out);
      return;
  }
}

float table_magnitude(Op op, int bin, int h, int w) {
  switch (op) {
    case Op::ShearX:
    case Op::ShearY:
      return linspace(0.0f, 0.3f, bin);
    case Op::TranslateX:
      return linspace(0.0f, static_cast<float>(150.0 / 331.0 * w), bin);
    case Op::TranslateY:
      return linspace(0.0f, static_cast<float>(150.0 / 331.0 * h), bin);
    case Op::Rotate:
      return linspace(0.0f, 30.0f, bin);
    case Op::Brightness:
    case Op::Color:
    case Op::Contrast:
    case Op::Sharpness:
      return linspace(0.0f, 0.9f, bin);
    case Op::Posterize:  // 8 - (arange(31) / ((31 - 1) / 4)).round().int()
      return 8.0f - std::nearbyint(static_cast<float>(bin) / 7.5f);
    case Op::Solarize:
      return linspace(255.0f, 0.0f, bin);
    case Op::Identity:
    case Op::AutoContrast:
    case Op::Equalize:
      return 0.0f;
  }
  return 0.0f;
}

void normalize_unchecked(const AugmentConfig& config, const uint8_t* in, int h, int w, int c,
                         float* out) {
  const size_t n = static_cast<size_t>(h) * w;
  for (size_t p = 0; p < n; ++p) {
    for (int k = 0; k < c; ++k) {
      const float x = static_cast<float>(in[p * c + k]) / 255.0f;
      out[p * c + k] = (x - config.mean[k]) / config.std[k];
    }
  }
}

// A window of an image: corner and size.
struct Box {
  int top = 0, left = 0, h = 0, w = 0;
};

// RandomCrop's corner in the image padded by `padding`.
Box draw_padded_crop(int padding, Generator& gen) {
  Box box;
  if (padding > 0) {
    box.top = static_cast<int>(gen.below(2 * static_cast<uint64_t>(padding) + 1));
    box.left = static_cast<int>(gen.below(2 * static_cast<uint64_t>(padding) + 1));
  }
  return box;
}

// RandomResizedCrop's box: ten tries at a random one, then torchvision's centre crop fallback.
Box draw_resized_box(int h, int w, float scale_min, float scale_max, float ratio_min,
                     float ratio_max, Generator& gen) {
  const double area = static_cast<double>(h) * w;
  const float log_lo = std::log(ratio_min), log_hi = std::log(ratio_max);
  for (int t = 0; t < kTries; ++t) {
    const double target = area * uniform(gen, scale_min, scale_max);
    const double aspect = std::exp(uniform(gen, log_lo, log_hi));
    const int cw = static_cast<int>(std::nearbyint(std::sqrt(target * aspect)));
    const int ch = static_cast<int>(std::nearbyint(std::sqrt(target / aspect)));
    if (cw > 0 && cw <= w && ch > 0 && ch <= h) {
      const int top = static_cast<int>(gen.below(static_cast<uint64_t>(h - ch) + 1));
      const int left = static_cast<int>(gen.below(static_cast<uint64_t>(w - cw) + 1));
      return {top, left, ch, cw};
    }
  }
  const double in_ratio = static_cast<double>(w) / h;
  int cw = w, ch = h;
  if (in_ratio < ratio_min) {
    ch = static_cast<int>(std::nearbyint(cw / static_cast<double>(ratio_min)));
  } else if (in_ratio > ratio_max) {
    cw = static_cast<int>(std::nearbyint(ch * static_cast<double>(ratio_max)));
  }
  return {(h - ch) / 2, (w - cw) / 2, ch, cw};
}

// One RandAugment operation: uniform among the 14, signed ones negated with p = 0.5.
std::pair<Op, float> draw_randaugment_op(int bin, int h, int w, Generator& gen) {
  const Op op = static_cast<Op>(gen.below(static_cast<uint64_t>(Op::Equalize) + 1));
  float mag = table_magnitude(op, bin, h, w);
  if (is_signed(op) && gen.below(2) == 1) mag = -mag;
  return {op, mag};
}

// ColorJitter's order (a random permutation) and factors, uniform in [max(0, 1 - j), 1 + j].
void draw_jitter(float jitter, Generator& gen, std::array<int, 3>& order,
                 std::array<float, 3>& factor) {
  order = {0, 1, 2};
  for (int i = 2; i > 0; --i) std::swap(order[i], order[gen.below(static_cast<uint64_t>(i) + 1)]);
  const float lo = std::max(0.0f, 1.0f - jitter), hi = 1.0f + jitter;
  for (float& f : factor) f = uniform(gen, lo, hi);
}

void apply_jitter(const std::array<int, 3>& order, const std::array<float, 3>& factor,
                  const uint8_t* in, int h, int w, int c, uint8_t* out) {
  std::vector<uint8_t> cur(in, in + numel(h, w, c)), next(cur.size());
  for (int fn : order) {
    if (fn == 0) adjust_brightness(cur.data(), h, w, c, factor[0], next.data());
    if (fn == 1) adjust_contrast(cur.data(), h, w, c, factor[1], next.data());
    if (fn == 2) adjust_saturation(cur.data(), h, w, c, factor[2], next.data());
    cur.swap(next);
  }
  std::copy(cur.begin(), cur.end(), out);
}

// RandomErasing's rectangle (scale 0.02-0.33, ratio 0.3-3.3), if it erases at all.
std::optional<Box> draw_erasing(int h, int w, float p, Generator& gen) {
  if (!(gen.uniform() < p)) return std::nullopt;
  const double area = static_cast<double>(h) * w;
  const float log_lo = std::log(0.3f), log_hi = std::log(3.3f);
  for (int t = 0; t < kTries; ++t) {
    const double target = area * uniform(gen, 0.02f, 0.33f);
    const double aspect = std::exp(uniform(gen, log_lo, log_hi));
    const int eh = static_cast<int>(std::nearbyint(std::sqrt(target * aspect)));
    const int ew = static_cast<int>(std::nearbyint(std::sqrt(target / aspect)));
    if (!(eh < h && ew < w)) continue;
    const int top = static_cast<int>(gen.below(static_cast<uint64_t>(h - eh) + 1));
    const int left = static_cast<int>(gen.below(static_cast<uint64_t>(w - ew) + 1));
    return Box{top, left, eh, ew};
  }
  return std::nullopt;
}

void erase(float* img, int w, int c, const Box& box) {
  for (int y = box.top; y < box.top + box.h; ++y) {
    float* row = img + (static_cast<size_t>(y) * w + box.left) * c;
    std::fill(row, row + static_cast<size_t>(box.w) * c, 0.0f);
  }
}

}  // namespace

std::vector<float> cifar10_mean() {
  return {0.4914f, 0.4822f, 0.4465f};
}
std::vector<float> cifar10_std() {
  return {0.2471f, 0.2435f, 0.2616f};
}

void validate_options(const AugmentConfig& config) {
  DL_CHECK(config.crop_padding >= 0,
           "crop padding (AugmentConfig.crop_padding) must be non-negative, got ",
           config.crop_padding);
  DL_CHECK(config.resized_scale_min > 0.0f &&
               config.resized_scale_min <= config.resized_scale_max &&
               config.resized_scale_max <= 1.0f,
           "random-resized-crop scale range (AugmentConfig.resized_scale_min/max) must satisfy "
           "0 < min <= max <= 1, got (",
           config.resized_scale_min, ", ", config.resized_scale_max, ")");
  DL_CHECK(config.resized_ratio_min > 0.0f && config.resized_ratio_min <= config.resized_ratio_max,
           "random-resized-crop ratio range (AugmentConfig.resized_ratio_min/max) must satisfy "
           "0 < min <= max, got (",
           config.resized_ratio_min, ", ", config.resized_ratio_max, ")");
  DL_CHECK(config.randaugment_n >= 0 && config.randaugment_n <= kMaxRandAugmentOps,
           "RandAugment operations per image (AugmentConfig.randaugment_n) must be in [0, ",
           kMaxRandAugmentOps, "], got ", config.randaugment_n);
  DL_CHECK(config.randaugment_m >= 0 && config.randaugment_m < kBins,
           "RandAugment magnitude (AugmentConfig.randaugment_m) must be in [0, ", kBins - 1,
           "], got ", config.randaugment_m);
  DL_CHECK(config.jitter >= 0.0f,
           "colour jitter strength (AugmentConfig.jitter) must be non-negative, got ",
           config.jitter);
  DL_CHECK(config.erasing_p >= 0.0f && config.erasing_p <= 1.0f,
           "random-erasing probability (AugmentConfig.erasing_p) must be in [0, 1], got ",
           config.erasing_p);
}

void validate(const AugmentConfig& config, int channels) {
  DL_CHECK(channels == 1 || channels == 3, "images must have 1 or 3 channels, got ", channels);
  validate_options(config);
  DL_CHECK(config.mean.size() == static_cast<size_t>(channels) &&
               config.std.size() == static_cast<size_t>(channels),
           "AugmentConfig.mean and .std need one value per channel (", channels, "), got ",
           config.mean.size(), " and ", config.std.size());
  for (float s : config.std) DL_CHECK(s > 0.0f, "AugmentConfig.std values must be positive");
}

void augment(const AugmentConfig& config, const uint8_t* in, int h, int w, int c, float* out,
             Generator& gen) {
  check_image(h, w, c);
  validate(config, c);
  apply_augment(config, draw_augment(config, h, w, gen), in, h, w, c, out);
}

AugmentParams draw_augment(const AugmentConfig& config, int h, int w, Generator& gen) {
  DL_CHECK(h > 0 && w > 0, "image size must be positive, got ", h, "x", w);
  validate_options(config);
  AugmentParams p;
  Box crop;
  if (config.crop == Crop::random) {
    crop = draw_padded_crop(config.crop_padding, gen);
  } else if (config.crop == Crop::resized) {
    crop = draw_resized_box(h, w, config.resized_scale_min, config.resized_scale_max,
                            config.resized_ratio_min, config.resized_ratio_max, gen);
  }
  p.crop_top = crop.top, p.crop_left = crop.left, p.crop_h = crop.h, p.crop_w = crop.w;
  p.flip = config.hflip && gen.uniform() < 0.5f;
  p.ops = config.randaugment_n;
  for (int i = 0; i < p.ops; ++i) {
    const auto [op, magnitude] = draw_randaugment_op(config.randaugment_m, h, w, gen);
    p.op[i] = static_cast<int>(op);
    p.magnitude[i] = magnitude;
  }
  if (config.jitter > 0.0f) draw_jitter(config.jitter, gen, p.jitter_order, p.jitter_factor);
  if (config.erasing_p > 0.0f) {
    if (const std::optional<Box> box = draw_erasing(h, w, config.erasing_p, gen)) {
      p.erase = true;
      p.erase_top = box->top, p.erase_left = box->left, p.erase_h = box->h, p.erase_w = box->w;
    }
  }
  return p;
}

void validate(const AugmentParams& p, const AugmentConfig& config, int h, int w) {
  DL_CHECK(p.ops >= 0 && p.ops <= kMaxRandAugmentOps, "AugmentParams: ", p.ops,
           " RandAugment operations");
  if (config.crop == Crop::resized)
    DL_CHECK(p.crop_h > 0 && p.crop_w > 0 && p.crop_top >= 0 && p.crop_left >= 0 &&
                 p.crop_top + p.crop_h <= h && p.crop_left + p.crop_w <= w,
             "AugmentParams: the crop box (top ", p.crop_top, ", left ", p.crop_left, ", ",
             p.crop_h, "x", p.crop_w, ") must lie inside the ", h, "x", w, " image");
  for (int i = 0; i < p.ops; ++i) {
    DL_CHECK(p.op[i] >= 0 && p.op[i] <= static_cast<int>(Op::Equalize), "AugmentParams: op ",
             p.op[i], " is not a RandAugment operation");
    const Op op = static_cast<Op>(p.op[i]);
    const double mag = p.magnitude[i];
    if (op >= Op::Brightness && op <= Op::Sharpness)
      DL_CHECK(1.0 + mag >= 0.0, "AugmentParams: ", randaugment_ops()[p.op[i]], " magnitude ", mag,
               " makes a negative factor");
    if (op == Op::Posterize)
      DL_CHECK(mag >= 0.0 && mag <= 8.0, "AugmentParams: posterize keeps 0 to 8 bits, got ", mag);
    if (op == Op::Solarize)
      DL_CHECK(mag <= 255.0, "AugmentParams: solarize threshold ", mag, " is above 255");
  }
  if (config.jitter > 0.0f) {
    std::array<int, 3> sorted = p.jitter_order;
    std::sort(sorted.begin(), sorted.end());
    DL_CHECK(sorted == (std::array<int, 3>{0, 1, 2}),
             "AugmentParams: the jitter order is not a permutation of 0, 1, 2");
    for (float f : p.jitter_factor)
      DL_CHECK(f >= 0.0f, "AugmentParams: a jitter factor is negative (", f, ")");
  }
  if (p.erase)
    DL_CHECK(p.erase_top >= 0 && p.erase_left >= 0 && p.erase_h >= 0 && p.erase_w >= 0 &&
                 p.erase_top + p.erase_h <= h && p.erase_left + p.erase_w <= w,
             "AugmentParams: the erased rectangle lies outside the image");
}

void apply_augment(const AugmentConfig& config, const AugmentParams& p, const uint8_t* in, int h,
                   int w, int c, float* out) {
  check_image(h, w, c);
  validate(config, c);
  validate(p, config, h, w);
  std::vector<uint8_t> cur(in, in + numel(h, w, c)), next(cur.size());
  const auto step = [&](auto&& transform) {
    transform(cur.data(), next.data());
    cur.swap(next);
  };
  if (config.crop == Crop::random) {
    step([&](const uint8_t* a, uint8_t* b) {
      padded_crop(a, h, w, c, config.crop_padding, p.crop_top, p.crop_left, b);
    });
  } else if (config.crop == Crop::resized) {
    step([&](const uint8_t* a, uint8_t* b) {
      resized_crop(a, h, w, c, p.crop_top, p.crop_left, p.crop_h, p.crop_w, b);
    });
  }
  if (p.flip) step([&](const uint8_t* a, uint8_t* b) { hflip(a, h, w, c, b); });
  for (int i = 0; i < p.ops; ++i) {
    step([&](const uint8_t* a, uint8_t* b) {
      apply_op(static_cast<Op>(p.op[i]), p.magnitude[i], a, h, w, c, b);
    });
  }
  if (config.jitter > 0.0f) {
    step([&](const uint8_t* a, uint8_t* b) {
      apply_jitter(p.jitter_order, p.jitter_factor, a, h, w, c, b);
    });
  }
  normalize_unchecked(config, cur.data(), h, w, c, out);
  if (p.erase) erase(out, w, c, {p.erase_top, p.erase_left, p.erase_h, p.erase_w});
}

void normalize(const AugmentConfig& config, const uint8_t* in, int h, int w, int c, float* out) {
  check_image(h, w, c);
  DL_CHECK(
      config.mean.size() == static_cast<size_t>(c) && config.std.size() == static_cast<size_t>(c),
      "AugmentConfig.mean and .std need one value per channel (", c, "), got ", config.mean.size(),
      " and ", config.std.size());
  normalize_unchecked(config, in, h, w, c, out);
}

void hflip(const uint8_t* in, int h, int w, int c, uint8_t* out) {
  check_image(h, w, c);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const uint8_t* src = in + (static_cast<size_t>(y) * w + (w - 1 - x)) * c;
      std::copy(src, src + c, out + (static_cast<size_t>(y) * w + x) * c);
    }
  }
}

void padded_crop(const uint8_t* in, int h, int w, int c, int padding, int top, int left,
                 uint8_t* out) {
  check_image(h, w, c);
  for (int y = 0; y < h; ++y) {
    const int sy = top + y - padding;
    for (int x = 0; x < w; ++x) {
      const int sx = left + x - padding;
      uint8_t* dst = out + (static_cast<size_t>(y) * w + x) * c;
      if (sy >= 0 && sy < h && sx >= 0 && sx < w) {
        const uint8_t* src = in + (static_cast<size_t>(sy) * w + sx) * c;
        std::copy(src, src + c, dst);
      } else {
        std::fill(dst, dst + c, uint8_t{0});
      }
    }
  }
}

void random_crop(const uint8_t* in, int h, int w, int c, int padding, uint8_t* out,
                 Generator& gen) {
  DL_CHECK(padding >= 0, "random crop padding must be non-negative, got ", padding);
  const Box box = draw_padded_crop(padding, gen);
  padded_crop(in, h, w, c, padding, box.top, box.left, out);
}

void resized_crop(const uint8_t* in, int h, int w, int c, int top, int left, int crop_h, int crop_w,
                  uint8_t* out) {
  check_image(h, w, c);
  DL_CHECK(
      crop_h > 0 && crop_w > 0 && top >= 0 && left >= 0 && top + crop_h <= h && left + crop_w <= w,
      "crop box (top ", top, ", left ", left, ", ", crop_h, "x", crop_w, ") must lie inside the ",
      h, "x", w, " image");
  // upsample_bilinear2d (align_corners=False): source = scale * (dst + 0.5) - 0.5, clamped at 0,
  // with the scale rounded to float and the source position in double, as PyTorch's CPU kernel
  // computes them (bit for bit against tests/fixtures/augment_reference.safetensors; a float
  // source position moves outputs at rounding ties by one level).
  const auto source = [](int dst, int in_size, int out_size, int& i0, int& i1, float& frac) {
    const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
    const double src = std::max(static_cast<double>(scale) * (dst + 0.5) - 0.5, 0.0);
    i0 = static_cast<int>(src);
    i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
    frac = static_cast<float>(src - i0);
  };
  for (int y = 0; y < h; ++y) {
    int y0, y1;
    float fy;
    source(y, crop_h, h, y0, y1, fy);
    const uint8_t* row0 = in + (static_cast<size_t>(top + y0) * w + left) * c;
    const uint8_t* row1 = in + (static_cast<size_t>(top + y1) * w + left) * c;
    for (int x = 0; x < w; ++x) {
      int x0, x1;
      float fx;
      source(x, crop_w, w, x0, x1, fx);
      for (int k = 0; k < c; ++k) {
        const float top_v = (1.0f - fx) * row0[x0 * c + k] + fx * row0[x1 * c + k];
        const float bottom_v = (1.0f - fx) * row1[x0 * c + k] + fx * row1[x1 * c + k];
        const float v = (1.0f - fy) * top_v + fy * bottom_v;
        out[(static_cast<size_t>(y) * w + x) * c + k] =
            static_cast<uint8_t>(std::clamp(std::nearbyint(v), 0.0f, 255.0f));
      }
    }
  }
}

void random_resized_crop(const uint8_t* in, int h, int w, int c, float scale_min, float scale_max,
                         float ratio_min, float ratio_max, uint8_t* out, Generator& gen) {
  DL_CHECK(scale_min > 0.0f && scale_min <= scale_max,
           "resized crop scale range must satisfy 0 < min <= max, got (", scale_min, ", ",
           scale_max, ")");
  DL_CHECK(ratio_min > 0.0f && ratio_min <= ratio_max,
           "resized crop ratio range must satisfy 0 < min <= max, got (", ratio_min, ", ",
           ratio_max, ")");
  const Box box = draw_resized_box(h, w, scale_min, scale_max, ratio_min, ratio_max, gen);
  resized_crop(in, h, w, c, box.top, box.left, box.h, box.w, out);
}

std::array<float, 6> randaugment_warp_grid(RandAugmentOp op, float magnitude, int h, int w) {
  DL_CHECK(h > 0 && w > 0, "image size must be positive, got ", h, "x", w);
  return warp_grid(op, magnitude, h, w);
}

const std::vector<std::string>& randaugment_ops() {
  static const std::vector<std::string> names{
      "Identity", "ShearX",   "ShearY",    "TranslateX", "TranslateY", "Rotate",       "Brightness",
      "Color",    "Contrast", "Sharpness", "Posterize",  "Solarize",   "AutoContrast", "Equalize"};
  return names;
}

float randaugment_magnitude(const std::string& op, int bin, int h, int w) {
  DL_CHECK(bin >= 0 && bin < kBins, "RandAugment magnitude bin must be in [0, ", kBins - 1,
           "], got ", bin);
  return table_magnitude(parse_op(op), bin, h, w);
}

void apply_randaugment_op(const std::string& op, float magnitude, const uint8_t* in, int h, int w,
                          int c, uint8_t* out) {
  check_image(h, w, c);
  apply_op(parse_op(op), magnitude, in, h, w, c, out);
}

void randaugment(const uint8_t* in, int h, int w, int c, int num_ops, int bin, uint8_t* out,
                 Generator& gen) {
  check_image(h, w, c);
  DL_CHECK(num_ops >= 0, "RandAugment num_ops must be non-negative, got ", num_ops);
  DL_CHECK(bin >= 0 && bin < kBins, "RandAugment magnitude must be in [0, ", kBins - 1, "], got ",
           bin);
  std::vector<uint8_t> cur(in, in + numel(h, w, c)), next(cur.size());
  for (int i = 0; i < num_ops; ++i) {
    const auto [op, magnitude] = draw_randaugment_op(bin, h, w, gen);
    apply_op(op, magnitude, cur.data(), h, w, c, next.data());
    cur.swap(next);
  }
  std::copy(cur.begin(), cur.end(), out);
}

void color_jitter(const uint8_t* in, int h, int w, int c, float jitter, uint8_t* out,
                  Generator& gen) {
  check_image(h, w, c);
  DL_CHECK(jitter >= 0.0f, "color jitter must be non-negative, got ", jitter);
  std::array<int, 3> order;
  std::array<float, 3> factor;
  draw_jitter(jitter, gen, order, factor);
  apply_jitter(order, factor, in, h, w, c, out);
}

void random_erasing(float* img, int h, int w, int c, float p, Generator& gen) {
  DL_CHECK(h > 0 && w > 0 && c > 0, "image size must be positive, got ", h, "x", w, "x", c);
  DL_CHECK(p >= 0.0f && p <= 1.0f, "random erasing probability must be in [0, 1], got ", p);
  if (const std::optional<Box> box = draw_erasing(h, w, p, gen)) erase(img, w, c, *box);
}

}  // namespace dl::data
