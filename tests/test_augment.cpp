// Training augmentation against torchvision's semantics: geometric ops against direct index
// references (rot90, shifted windows), colour ops against naive per-pixel formulas, histograms
// and contrast stretches worked out by hand, and seeded determinism of the whole pipeline.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numbers>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/data/augment.h"
#include "engine/data/augment_batch.h"
#include "engine/data/resize.h"
#include "engine/error.h"
#include "engine/io/safetensors.h"
#include "test_util.h"

using namespace dl;
using namespace dl::data;
using Catch::Contains;

namespace {

struct Image {
  int h, w, c;
  std::vector<uint8_t> px;
  Image(int h_, int w_, int c_) : h(h_), w(w_), c(c_), px(static_cast<size_t>(h_) * w_ * c_) {}
  uint8_t& at(int y, int x, int k) { return px[(static_cast<size_t>(y) * w + x) * c + k]; }
  uint8_t at(int y, int x, int k) const { return px[(static_cast<size_t>(y) * w + x) * c + k]; }
};

Image random_image(int h, int w, int c, Generator& gen) {
  Image img(h, w, c);
  for (uint8_t& v : img.px) v = static_cast<uint8_t>(gen.below(256));
  return img;
}

Image op(const std::string& name, float magnitude, const Image& in) {
  Image out(in.h, in.w, in.c);
  apply_randaugment_op(name, magnitude, in.px.data(), in.h, in.w, in.c, out.px.data());
  return out;
}

// Each output pixel is `source(y, x)` of the input, or zero where that lies outside the image.
template <class Source>
Image remap(const Image& in, Source source) {
  Image out(in.h, in.w, in.c);
  for (int y = 0; y < in.h; ++y) {
    for (int x = 0; x < in.w; ++x) {
      const auto [sy, sx] = source(y, x);
      const bool inside = sy >= 0 && sy < in.h && sx >= 0 && sx < in.w;
      for (int k = 0; k < in.c; ++k) out.at(y, x, k) = inside ? in.at(sy, sx, k) : 0;
    }
  }
  return out;
}

// Per-element maximum absolute difference.
int max_diff(const Image& a, const Image& b) {
  int d = 0;
  for (size_t i = 0; i < a.px.size(); ++i) d = std::max(d, std::abs(a.px[i] - b.px[i]));
  return d;
}

double gray_ref(const Image& img, int y, int x) {
  return img.c == 1 ? img.at(y, x, 0)
                    : std::trunc(0.2989 * img.at(y, x, 0) + 0.587 * img.at(y, x, 1) +
                                 0.114 * img.at(y, x, 2));
}

uint8_t clamp_trunc(double v) {
  return static_cast<uint8_t>(std::clamp(v, 0.0, 255.0));
}

}  // namespace

TEST_CASE("hflip mirrors columns and twice is the identity", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (int c : {1, 3}) {
    const Image in = random_image(5, 7, c, gen);
    Image once(5, 7, c), twice(5, 7, c);
    hflip(in.px.data(), 5, 7, c, once.px.data());
    hflip(once.px.data(), 5, 7, c, twice.px.data());
    REQUIRE(once.px == remap(in, [&](int y, int x) { return std::pair{y, in.w - 1 - x}; }).px);
    REQUIRE(twice.px == in.px);
  }
}

TEST_CASE("random crop is a window of the zero-padded image", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const int h = 8, w = 6, c = 3, pad = 4;
  const Image in = random_image(h, w, c, gen);
  // The padded image built directly.
  Image padded(h + 2 * pad, w + 2 * pad, c);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int k = 0; k < c; ++k) padded.at(y + pad, x + pad, k) = in.at(y, x, k);
  const auto window = [&](int top, int left) {
    Image out(h, w, c);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int k = 0; k < c; ++k) out.at(y, x, k) = padded.at(top + y, left + x, k);
    return out;
  };
  for (int top = 0; top <= 2 * pad; ++top) {
    for (int left = 0; left <= 2 * pad; ++left) {
      Image out(h, w, c);
      padded_crop(in.px.data(), h, w, c, pad, top, left, out.px.data());
      REQUIRE(out.px == window(top, left).px);
    }
  }
  std::vector<int> seen((2 * pad + 1) * (2 * pad + 1), 0);
  for (int draw = 0; draw < 200; ++draw) {
    Image out(h, w, c);
    random_crop(in.px.data(), h, w, c, pad, out.px.data(), gen);
    int found = -1;
    for (int top = 0; top <= 2 * pad && found < 0; ++top)
      for (int left = 0; left <= 2 * pad && found < 0; ++left)
        if (out.px == window(top, left).px) found = top * (2 * pad + 1) + left;
    REQUIRE(found >= 0);
    ++seen[found];
  }
  REQUIRE(std::count(seen.begin(), seen.end(), 0) < static_cast<long>(seen.size()) / 2);
  Image same(h, w, c);
  random_crop(in.px.data(), h, w, c, 0, same.px.data(), gen);
  REQUIRE(same.px == in.px);
}

TEST_CASE("resized crop: full box is the identity, upsampling is bilinear", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const Image in = random_image(12, 12, 3, gen);
  Image out(12, 12, 3);
  random_resized_crop(in.px.data(), 12, 12, 3, 1.0f, 1.0f, 1.0f, 1.0f, out.px.data(), gen);
  REQUIRE(out.px == in.px);

  // A 6x4 window at (3, 5) resized to 12x12, against bilinear with half-pixel centres in double.
  resized_crop(in.px.data(), 12, 12, 3, 3, 5, 6, 4, out.px.data());
  const auto src = [](int dst, int in_size, int out_size) {
    return std::max((dst + 0.5) * in_size / out_size - 0.5, 0.0);
  };
  int worst = 0;
  for (int y = 0; y < 12; ++y) {
    const double sy = src(y, 6, 12);
    const int y0 = static_cast<int>(sy), y1 = std::min(y0 + 1, 5);
    for (int x = 0; x < 12; ++x) {
      const double sx = src(x, 4, 12);
      const int x0 = static_cast<int>(sx), x1 = std::min(x0 + 1, 3);
      for (int k = 0; k < 3; ++k) {
        const auto p = [&](int yy, int xx) { return double(in.at(3 + yy, 5 + xx, k)); };
        const double fy = sy - y0, fx = sx - x0;
        const double v = (1 - fy) * ((1 - fx) * p(y0, x0) + fx * p(y0, x1)) +
                         fy * ((1 - fx) * p(y1, x0) + fx * p(y1, x1));
        worst = std::max(worst, std::abs(int(out.at(y, x, k)) - int(std::nearbyint(v))));
      }
    }
  }
  REQUIRE(worst <= 1);

  REQUIRE_THROWS_WITH(resized_crop(in.px.data(), 12, 12, 3, 8, 0, 6, 4, out.px.data()),
                      Contains("must lie inside"));
}

TEST_CASE("augment depends only on the generator's seed", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator image_gen(seed);
  const Image in = random_image(32, 32, 3, image_gen);
  AugmentConfig config;
  config.crop = Crop::resized;
  config.resized_scale_min = 0.75f;
  config.randaugment_n = 2;
  config.randaugment_m = 9;
  config.jitter = 0.1f;
  config.erasing_p = 0.25f;
  const auto run = [&](uint64_t s) {
    std::vector<float> out(in.px.size());
    Generator gen(s);
    augment(config, in.px.data(), 32, 32, 3, out.data(), gen);
    return out;
  };
  const std::vector<float> a = run(seed), b = run(seed), other = run(seed ^ 0x9e3779b97f4a7c15ull);
  REQUIRE(a == b);
  REQUIRE(a != other);
  for (float v : a) REQUIRE(std::isfinite(v));

  config.crop = Crop::random;
  const std::vector<float> cropped = run(seed);
  REQUIRE(cropped == run(seed));
}

TEST_CASE("RandAugment ops at magnitude zero are the identity", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (int c : {1, 3}) {
    for (auto [h, w] : {std::pair{9, 9}, std::pair{6, 10}}) {
      const Image in = random_image(h, w, c, gen);
      for (const char* name : {"Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
                               "Brightness", "Color", "Contrast", "Sharpness"}) {
        INFO(name << " c=" << c << " " << h << "x" << w);
        REQUIRE(op(name, 0.0f, in).px == in.px);
      }
      REQUIRE(op("Posterize", 8.0f, in).px == in.px);
      Image none(h, w, c);
      randaugment(in.px.data(), h, w, c, 0, 9, none.px.data(), gen);
      REQUIRE(none.px == in.px);
    }
  }
}

TEST_CASE("RandAugment magnitude table matches torchvision", "[augment]") {
  REQUIRE(randaugment_magnitude("Identity", 9, 32, 32) == 0.0f);
  REQUIRE(randaugment_magnitude("ShearX", 9, 32, 32) == Approx(0.09));
  REQUIRE(randaugment_magnitude("ShearY", 30, 32, 32) == Approx(0.3));
  REQUIRE(randaugment_magnitude("TranslateX", 30, 16, 64) == Approx(150.0 / 331.0 * 64));
  REQUIRE(randaugment_magnitude("TranslateY", 30, 16, 64) == Approx(150.0 / 331.0 * 16));
  REQUIRE(randaugment_magnitude("TranslateX", 9, 32, 32) == Approx(150.0 / 331.0 * 32 * 0.3));
  REQUIRE(randaugment_magnitude("Rotate", 15, 32, 32) == Approx(15.0));
  REQUIRE(randaugment_magnitude("Sharpness", 10, 32, 32) == Approx(0.3));
  REQUIRE(randaugment_magnitude("Solarize", 0, 32, 32) == 255.0f);
  REQUIRE(randaugment_magnitude("Solarize", 30, 32, 32) == 0.0f);
  REQUIRE(randaugment_magnitude("Solarize", 10, 32, 32) == Approx(170.0));
  // 8 - round(bin / 7.5)
  const int expected_bits[] = {8, 8, 8, 8, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6,
                               6, 6, 6, 5, 5, 5, 5, 5, 5, 5, 5, 4, 4, 4, 4};
  for (int bin = 0; bin < 31; ++bin) {
    INFO("bin " << bin);
    REQUIRE(randaugment_magnitude("Posterize", bin, 32, 32) == float(expected_bits[bin]));
  }
  REQUIRE_THROWS_WITH(randaugment_magnitude("Rotate", 31, 32, 32), Contains("[0, 30]"));
  REQUIRE_THROWS_WITH(randaugment_magnitude("Invert", 1, 32, 32), Contains("unknown RandAugment"));
  REQUIRE(randaugment_ops().size() == 14);
}

TEST_CASE("Rotate turns counter-clockwise about the centre", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (int n : {6, 7}) {
    const Image in = random_image(n, n, 3, gen);
    INFO("size " << n);
    // torch.rot90(k=1): out[y][x] = in[x][n-1-y]
    REQUIRE(op("Rotate", 90.0f, in).px == remap(in, [&](int y, int x) {
                                            return std::pair{x, n - 1 - y};
                                          }).px);
    REQUIRE(op("Rotate", -90.0f, in).px == remap(in, [&](int y, int x) {
                                             return std::pair{n - 1 - x, y};
                                           }).px);
    REQUIRE(op("Rotate", 180.0f, in).px == remap(in, [&](int y, int x) {
                                             return std::pair{n - 1 - y, n - 1 - x};
                                           }).px);
  }
  // A small angle keeps the centre pixel of an odd image and zero-fills corners it uncovers.
  const Image in = random_image(9, 9, 1, gen);
  const Image out = op("Rotate", 35.0f, in);
  REQUIRE(out.at(4, 4, 0) == in.at(4, 4, 0));
  const double a =
      35.0 * std::numbers::pi / 180.0;  // no source position within 0.008 of a rounding tie
  const Image ref = remap(in, [&](int y, int x) {
    const double cx = x - 4.0, cy = y - 4.0;
    return std::pair{int(std::nearbyint(std::sin(a) * cx + std::cos(a) * cy + 4.0)),
                     int(std::nearbyint(std::cos(a) * cx - std::sin(a) * cy + 4.0))};
  });
  REQUIRE(out.px == ref.px);
}

TEST_CASE("Translate shifts by whole pixels with zero fill", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const Image in = random_image(7, 10, 3, gen);
  // The magnitude is truncated toward zero like int() in Python.
  REQUIRE(op("TranslateX", 2.7f, in).px == remap(in, [](int y, int x) {
                                             return std::pair{y, x - 2};
                                           }).px);
  REQUIRE(op("TranslateX", -2.7f, in).px == remap(in, [](int y, int x) {
                                              return std::pair{y, x + 2};
                                            }).px);
  REQUIRE(op("TranslateY", -3.0f, in).px == remap(in, [](int y, int x) {
                                              return std::pair{y + 3, x};
                                            }).px);
  REQUIRE(op("TranslateY", 0.9f, in).px == in.px);
}

TEST_CASE("Shear is about the top-left corner", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const Image in = random_image(10, 8, 3, gen);
  // center=[0, 0]: ShearX samples column x + s * (y + 0.5); ShearY samples row y + s * (x + 0.5).
  for (double s : {0.3, -0.3, 0.12}) {
    INFO("shear " << s);
    REQUIRE(op("ShearX", float(s), in).px ==
            remap(in, [&](int y, int x) {
              return std::pair{y, int(std::nearbyint(x + float(s) * (y + 0.5)))};
            }).px);
    REQUIRE(op("ShearY", float(s), in).px ==
            remap(in, [&](int y, int x) {
              return std::pair{int(std::nearbyint(y + float(s) * (x + 0.5))), x};
            }).px);
  }
}

TEST_CASE("Shear resolves exact half-pixel ties as PyTorch's affine grid does", "[augment]") {
  // ShearY 0.2 on 17x23 lands on y + 0.2 * (x + 0.5) = k + 0.5 for x = 17 and 22; PyTorch's grid
  // (x * t0, fused with y * t1, then + t2) rounds to these rows (torchvision 0.14 reference).
  Image in(17, 23, 1);
  for (int i = 0; i < 17 * 23; ++i) in.px[i] = static_cast<uint8_t>(i % 251);
  const Image out = op("ShearY", 0.2f, in);
  REQUIRE(out.at(2, 17, 0) == in.at(6, 17, 0));
  REQUIRE(out.at(3, 22, 0) == in.at(8, 22, 0));
}

TEST_CASE("Brightness, Color and Contrast blend and truncate", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const Image in = random_image(8, 8, 3, gen);

  Image ref(8, 8, 3);
  for (size_t i = 0; i < in.px.size(); ++i) ref.px[i] = clamp_trunc(1.5 * in.px[i]);
  REQUIRE(op("Brightness", 0.5f, in).px == ref.px);
  REQUIRE(op("Brightness", -1.0f, in).px == std::vector<uint8_t>(in.px.size(), 0));
  REQUIRE_THROWS_WITH(op("Brightness", -1.5f, in), Contains("non-negative"));

  // Color 0 replaces each pixel by its grayscale value.
  const Image color = op("Color", -1.0f, in);
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 8; ++x)
      for (int k = 0; k < 3; ++k) REQUIRE(std::abs(color.at(y, x, k) - gray_ref(in, y, x)) <= 1);
  // torchvision's weights sum to 0.9999, so a gray pixel loses one level.
  Image flat(2, 2, 3);
  std::fill(flat.px.begin(), flat.px.end(), uint8_t{100});
  REQUIRE(op("Color", -1.0f, flat).px == std::vector<uint8_t>(12, 99));
  const Image single = random_image(4, 4, 1, gen);
  REQUIRE(op("Color", 0.9f, single).px == single.px);

  // Contrast blends with the mean of the uint8 grayscale image (checked above within one level
  // of the float formula); over 64 pixels the mean is a multiple of 1/64, so the blend is exact.
  double mean = 0;
  for (int p = 0; p < 64; ++p) mean += color.px[3 * p];
  mean /= 64;
  for (size_t i = 0; i < in.px.size(); ++i) ref.px[i] = clamp_trunc(2.0 * in.px[i] - mean);
  REQUIRE(op("Contrast", 1.0f, in).px == ref.px);
  REQUIRE(op("Contrast", -1.0f, in).px == std::vector<uint8_t>(in.px.size(), clamp_trunc(mean)));
}

TEST_CASE("Sharpness blends with the 3x3 smoothed interior", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const Image in = random_image(6, 7, 3, gen);
  Image blurred = in;
  for (int y = 1; y < 5; ++y) {
    for (int x = 1; x < 6; ++x) {
      for (int k = 0; k < 3; ++k) {
        int sum = 4 * in.at(y, x, k);
        for (int dy = -1; dy <= 1; ++dy)
          for (int dx = -1; dx <= 1; ++dx) sum += in.at(y + dy, x + dx, k);
        blurred.at(y, x, k) = static_cast<uint8_t>(std::nearbyint(sum / 13.0));
      }
    }
  }
  REQUIRE(op("Sharpness", -1.0f, in).px == blurred.px);
  Image sharp(6, 7, 3);
  for (size_t i = 0; i < in.px.size(); ++i)
    sharp.px[i] = clamp_trunc(2.0 * in.px[i] - blurred.px[i]);
  REQUIRE(op("Sharpness", 1.0f, in).px == sharp.px);
  const Image tiny = random_image(2, 5, 3, gen);
  REQUIRE(op("Sharpness", 0.9f, tiny).px == tiny.px);
}

TEST_CASE("Posterize and Solarize", "[augment]") {
  Image ramp(16, 16, 1);
  for (int i = 0; i < 256; ++i) ramp.px[i] = static_cast<uint8_t>(i);
  const Image p4 = op("Posterize", 4.0f, ramp), p0 = op("Posterize", 0.0f, ramp);
  const Image s128 = op("Solarize", 128.0f, ramp), s255 = op("Solarize", 255.0f, ramp);
  const Image s0 = op("Solarize", 0.0f, ramp);
  for (int i = 0; i < 256; ++i) {
    INFO("value " << i);
    REQUIRE(p4.px[i] == (i & 0xF0));
    REQUIRE(p0.px[i] == 0);
    REQUIRE(s128.px[i] == (i >= 128 ? 255 - i : i));
    REQUIRE(s255.px[i] == (i == 255 ? 0 : i));
    REQUIRE(s0.px[i] == 255 - i);
  }
  REQUIRE_THROWS_WITH(op("Posterize", 9.0f, ramp), Contains("0 to 8 bits"));
  REQUIRE_THROWS_WITH(op("Solarize", 256.0f, ramp), Contains("at most 255"));
}

TEST_CASE("AutoContrast stretches each channel to [0, 255]", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  Image in(6, 6, 3);
  for (int p = 0; p < 36; ++p) {
    in.px[3 * p] = static_cast<uint8_t>(50 + gen.below(51));
    in.px[3 * p + 1] = 77;  // constant: unchanged
    in.px[3 * p + 2] = static_cast<uint8_t>(p < 18 ? 0 : 255);
  }
  in.px[0] = 50;
  in.px[3] = 100;
  const Image out = op("AutoContrast", 0.0f, in);
  REQUIRE(out.px[0] == 0);
  REQUIRE(out.px[3] == 255);
  for (int p = 0; p < 36; ++p) {
    const double expected = (in.px[3 * p] - 50) * 255.0 / 50.0;
    REQUIRE(std::abs(out.px[3 * p] - expected) <= 1.0);
    REQUIRE(out.px[3 * p] <= expected + 1e-3);  // truncated, never rounded up
    REQUIRE(out.px[3 * p + 1] == 77);
    REQUIRE(out.px[3 * p + 2] == in.px[3 * p + 2]);
  }
  // PyTorch computes 255 / (max - min) as reciprocal(max - min) * 255; values checked against
  // torchvision 0.14: [0, 41] maps 41 to 254, [63, 119] maps 119 to 255.
  for (auto [lo, hi, top] : {std::tuple{0, 41, 254}, std::tuple{63, 119, 255}}) {
    Image pair(1, 2, 1);
    pair.px = {static_cast<uint8_t>(lo), static_cast<uint8_t>(hi)};
    REQUIRE(op("AutoContrast", 0.0f, pair).px ==
            std::vector<uint8_t>{0, static_cast<uint8_t>(top)});
  }
}

TEST_CASE("Equalize follows torchvision's histogram lookup table", "[augment]") {
  // 512 pixels of 10, 256 of 20, 256 of 30: step = (1024 - 256) / 255 = 3, and the table maps
  // v to (cumulative count below v + 1) / 3, clamped: 10 -> 0, 20 -> 171, 30 -> 255.
  Image in(32, 32, 1);
  for (int i = 0; i < 1024; ++i) in.px[i] = i < 512 ? 10 : (i < 768 ? 20 : 30);
  const Image out = op("Equalize", 0.0f, in);
  for (int i = 0; i < 1024; ++i) REQUIRE(out.px[i] == (i < 512 ? 0 : (i < 768 ? 171 : 255)));
  // Too few pixels outside the brightest level (step 0): unchanged.
  Image small(4, 4, 3);
  for (int i = 0; i < 48; ++i) small.px[i] = static_cast<uint8_t>(i * 5);
  REQUIRE(op("Equalize", 0.0f, small).px == small.px);
}

TEST_CASE("normalize is (x / 255 - mean) / std", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const Image in = random_image(5, 4, 3, gen);
  AugmentConfig config;
  REQUIRE(config.mean == std::vector<float>{0.4914f, 0.4822f, 0.4465f});
  REQUIRE(config.std == std::vector<float>{0.2471f, 0.2435f, 0.2616f});
  std::vector<float> out(in.px.size());
  normalize(config, in.px.data(), 5, 4, 3, out.data());
  std::vector<double> ref(in.px.size());
  for (size_t i = 0; i < in.px.size(); ++i)
    ref[i] = (in.px[i] / 255.0 - config.mean[i % 3]) / config.std[i % 3];
  test::require_close(out, ref, 1e-5, 1e-6, "normalize");

  // Every transform off: augment is normalize.
  config.hflip = false;
  std::vector<float> aug(in.px.size());
  augment(config, in.px.data(), 5, 4, 3, aug.data(), gen);
  REQUIRE(aug == out);

  config.mean = {0.5f};
  config.std = {0.25f};
  const Image gray = random_image(3, 3, 1, gen);
  std::vector<float> g(9);
  normalize(config, gray.px.data(), 3, 3, 1, g.data());
  for (int i = 0; i < 9; ++i)
    REQUIRE(g[i] == Approx((gray.px[i] / 255.0 - 0.5) / 0.25).margin(1e-6));
}

TEST_CASE("random erasing zeroes one rectangle within the scale and ratio bounds", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const int h = 32, w = 32, c = 3;
  AugmentConfig config;
  config.hflip = false;
  config.mean = {0.5f, 0.5f, 0.5f};  // x / 255 is never 0.5, so only erased values are 0
  config.std = {0.25f, 0.25f, 0.25f};
  const Image in = random_image(h, w, c, gen);
  std::vector<float> clean(in.px.size());
  normalize(config, in.px.data(), h, w, c, clean.data());

  config.erasing_p = 1.0f;
  for (int draw = 0; draw < 50; ++draw) {
    std::vector<float> out(in.px.size());
    augment(config, in.px.data(), h, w, c, out.data(), gen);
    int y0 = h, y1 = -1, x0 = w, x1 = -1, zeros = 0;
    for (int y = 0; y < h; ++y) {
      for (int x = 0; x < w; ++x) {
        for (int k = 0; k < c; ++k) {
          const size_t i = (static_cast<size_t>(y) * w + x) * c + k;
          if (out[i] == 0.0f) {
            ++zeros;
            y0 = std::min(y0, y);
            y1 = std::max(y1, y);
            x0 = std::min(x0, x);
            x1 = std::max(x1, x);
          } else {
            REQUIRE(out[i] == clean[i]);
          }
        }
      }
    }
    REQUIRE(zeros > 0);
    const double eh = y1 - y0 + 1, ew = x1 - x0 + 1;
    REQUIRE(zeros == eh * ew * c);  // a filled rectangle
    REQUIRE((eh - 0.5) * (ew - 0.5) <= 0.33 * h * w);
    REQUIRE((eh + 0.5) * (ew + 0.5) >= 0.02 * h * w);
    REQUIRE((eh - 0.5) / (ew + 0.5) <= 3.3);
    REQUIRE((eh + 0.5) / (ew - 0.5) >= 0.3);
  }

  config.erasing_p = 0.0f;
  std::vector<float> kept(in.px.size());
  augment(config, in.px.data(), h, w, c, kept.data(), gen);
  REQUIRE(kept == clean);
  random_erasing(kept.data(), h, w, c, 0.0f, gen);
  REQUIRE(kept == clean);
}

TEST_CASE("color jitter keeps flat images flat and within the factor range", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (int c : {1, 3}) {
    Image flat(4, 4, c);
    std::fill(flat.px.begin(), flat.px.end(), uint8_t{100});
    for (int draw = 0; draw < 20; ++draw) {
      Image out(4, 4, c);
      color_jitter(flat.px.data(), 4, 4, c, 0.1f, out.px.data(), gen);
      REQUIRE(std::all_of(out.px.begin(), out.px.end(), [&](uint8_t v) { return v == out.px[0]; }));
      // Brightness in [0.9, 1.1]; contrast and saturation with a flat image lose at most 1 each.
      REQUIRE(out.px[0] >= 87);
      REQUIRE(out.px[0] <= 110);
    }
  }
  const Image in = random_image(6, 6, 3, gen);
  Image a(6, 6, 3), b(6, 6, 3);
  Generator g1(seed), g2(seed);
  color_jitter(in.px.data(), 6, 6, 3, 0.4f, a.px.data(), g1);
  color_jitter(in.px.data(), 6, 6, 3, 0.4f, b.px.data(), g2);
  REQUIRE(a.px == b.px);
  REQUIRE(max_diff(a, in) > 0);
}

TEST_CASE("bad augmentation settings throw one clear error", "[augment]") {
  const std::vector<uint8_t> px(4 * 4 * 3, 0);
  std::vector<float> out(px.size());
  Generator gen(1);
  const auto check = [&](AugmentConfig config, const std::string& message) {
    REQUIRE_THROWS_WITH(augment(config, px.data(), 4, 4, 3, out.data(), gen), Contains(message));
  };
  AugmentConfig config;
  config.randaugment_m = 31;
  check(config, "randaugment_m");
  config = {};
  config.erasing_p = 1.5f;
  check(config, "erasing_p");
  config = {};
  config.randaugment_n = kMaxRandAugmentOps + 1;
  check(config, "randaugment_n) must be in [0, 16]");
  config = {};
  config.resized_scale_min = 0.0f;
  check(config, "scale range");
  config = {};
  config.mean = {0.5f};
  check(config, "one value per channel");
  config = {};
  config.std = {1.0f, 0.0f, 1.0f};
  check(config, "std values must be positive");
  REQUIRE_THROWS_WITH(validate(AugmentConfig{}, 4), Contains("1 or 3 channels"));
  REQUIRE_THROWS_WITH(apply_randaugment_op("Blur", 0.0f, px.data(), 4, 4, 3, nullptr),
                      Contains("unknown RandAugment op 'Blur'"));
  // Parameters that no draw makes (another device's, a corrupted copy) are refused by name.
  const auto check_params = [&](AugmentConfig c, AugmentParams p, const std::string& message) {
    REQUIRE_THROWS_WITH(apply_augment(c, p, px.data(), 4, 4, 3, out.data()), Contains(message));
  };
  AugmentParams params;
  params.ops = kMaxRandAugmentOps + 1;
  check_params({}, params, "RandAugment operations");
  params = {};
  params.ops = 1;
  params.op[0] = 14;
  check_params({}, params, "op 14 is not a RandAugment operation");
  params = {};
  params.erase = true;
  params.erase_top = 3, params.erase_h = 2, params.erase_w = 1;
  check_params({}, params, "erased rectangle lies outside the image");
  AugmentConfig resized;
  resized.crop = Crop::resized;
  params = {};
  params.crop_h = 5, params.crop_w = 4;
  check_params(resized, params, "must lie inside the 4x4 image");
  params = {};
  params.ops = 1;
  params.op[0] = static_cast<int>(RandAugmentOp::Posterize);
  params.magnitude[0] = -4.0f;
  check_params({}, params, "posterize keeps 0 to 8 bits");
  AugmentConfig jitter;
  jitter.jitter = 0.2f;
  params = {};
  params.jitter_order = {0, 0, 2};
  check_params(jitter, params, "not a permutation of 0, 1, 2");
  // augment_batch checks every image's before any is made (its loop runs threads).
  REQUIRE_THROWS_WITH(augment_batch(Tensor::zeros({1, 4, 4, 3}, DType::u8), {0}, {params}, jitter),
                      Contains("not a permutation of 0, 1, 2"));
}

// PIL's BILINEAR resize (Image.resize, and interpolate(antialias=True)) written out in 2D in
// double: each output pixel is a weighted average of the input with separable triangle weights.
double resize_reference(const Image& in, int out_h, int out_w, int y, int x, int k) {
  const auto weight = [](int j, int i, int in_size, int out_size) {
    const double scale = static_cast<double>(in_size) / out_size;
    const double support = std::max(scale, 1.0), centre = scale * (i + 0.5);
    if (j < static_cast<int>(centre - support + 0.5) ||
        j >= static_cast<int>(centre + support + 0.5))
      return 0.0;
    return std::max(0.0, 1.0 - std::abs(j + 0.5 - centre) / support);
  };
  double sum = 0.0, total = 0.0;
  for (int j = 0; j < in.h; ++j)
    for (int i = 0; i < in.w; ++i) {
      const double wt = weight(j, y, in.h, out_h) * weight(i, x, in.w, out_w);
      sum += wt * in.at(j, i, k);
      total += wt;
    }
  return sum / total;
}

TEST_CASE("RandAugment ops, their magnitudes, hflip and resized_crop equal torchvision's") {
  // tests/fixtures/augment_reference.safetensors: `scripts/pytorch_reference.py fixture-augment`
  // (torchvision's _apply_op, RandAugment's magnitude table, F.hflip, F.resized_crop on uint8
  // tensors). Every output byte must match.
  const io::SafetensorsFile file =
      io::load_safetensors(std::string(DL_FIXTURE_DIR) + "/augment_reference.safetensors");
  const auto entry = [&](const std::string& name) -> const Tensor& {
    const Tensor* t = file.find(name);
    INFO(name);
    REQUIRE(t != nullptr);
    return *t;
  };
  const auto bytes = [](const Tensor& t) {
    return std::vector<uint8_t>(t.data<uint8_t>(), t.data<uint8_t>() + t.numel());
  };
  const Tensor& rgb = entry("input.rgb");
  const int h = static_cast<int>(rgb.size(0)), w = static_cast<int>(rgb.size(1));
  int compared = 0;
  for (const std::string& op : randaugment_ops()) {
    for (int bin : {0, 6, 12, 23, 30}) {
      const std::string key = op + "." + std::to_string(bin);
      const float magnitude = entry("magnitude." + key).item();
      INFO(key);
      CHECK(randaugment_magnitude(op, bin, h, w) == magnitude);
      for (const char* sign : {"+", "-"}) {
        for (const char* image : {"rgb", "grey"}) {
          const Tensor* expected = file.find(std::string(image) + "." + key + "." + sign);
          if (expected == nullptr) continue;  // unsigned ops have no "-" entry
          INFO(image << " " << sign);
          const Tensor& in = entry(std::string("input.") + image);
          const int c = static_cast<int>(in.size(2));
          std::vector<uint8_t> out(static_cast<size_t>(h) * w * c, 0xA5);
          apply_randaugment_op(op, sign[0] == '-' ? -magnitude : magnitude, in.data<uint8_t>(), h,
                               w, c, out.data());
          REQUIRE(out == bytes(*expected));
          ++compared;
        }
      }
    }
  }
  CHECK(compared == 230);  // (9 signed ops x 2 signs + 5 unsigned) x 5 bins x 2 images

  std::vector<uint8_t> out(static_cast<size_t>(h) * w * 3, 0xA5);
  hflip(rgb.data<uint8_t>(), h, w, 3, out.data());
  CHECK(out == bytes(entry("hflip")));
  for (int i = 0; i < 4; ++i) {
    const std::string name = "resized_crop." + std::to_string(i);
    const int64_t* box = entry(name + ".box").data<int64_t>();
    INFO(name << ": top " << box[0] << " left " << box[1] << " " << box[2] << "x" << box[3]);
    std::fill(out.begin(), out.end(), 0xA5);
    resized_crop(rgb.data<uint8_t>(), h, w, 3, static_cast<int>(box[0]), static_cast<int>(box[1]),
                 static_cast<int>(box[2]), static_cast<int>(box[3]), out.data());
    CHECK(out == bytes(entry(name)));
  }
}

TEST_CASE("Antialiased bilinear resize equals PyTorch's interpolate(antialias=True)") {
  // tests/fixtures/resize_reference.safetensors: `scripts/pytorch_reference.py fixture-resize`.
  const io::SafetensorsFile file =
      io::load_safetensors(std::string(DL_FIXTURE_DIR) + "/resize_reference.safetensors");
  const Tensor* input = file.find("input");
  REQUIRE(input != nullptr);
  const int h = static_cast<int>(input->size(0)), w = static_cast<int>(input->size(1));
  const int c = static_cast<int>(input->size(2));
  int checked = 0;
  for (const auto& [name, expected] : file.tensors) {
    if (name.rfind("resized_", 0) != 0) continue;
    INFO(name);
    const int out_h = static_cast<int>(expected.size(0)),
              out_w = static_cast<int>(expected.size(1));
    std::vector<float> out(static_cast<size_t>(out_h) * out_w * c, -1.0f);
    resize_bilinear_antialiased(input->data<uint8_t>(), h, w, c, out_h, out_w, out.data());
    const float* ref = expected.data<float>();
    // Float rounding in different orders: up to 2.6e-4 (of 255) seen.
    for (size_t i = 0; i < out.size(); ++i)
      REQUIRE(out[i] == Approx(ref[i]).epsilon(0).margin(5e-4));
    ++checked;
  }
  CHECK(checked == 5);
}

TEST_CASE("Antialiased bilinear resize follows PIL's filter") {
  Generator gen(test::fresh_seed());
  SECTION("worked by hand: 4 pixels to 2") {
    Image in(1, 4, 1);
    in.px = {0, 100, 200, 40};
    std::vector<float> out(2, -1.0f);
    resize_bilinear_antialiased(in.px.data(), 1, 4, 1, 1, 2, out.data());
    // Scale 2: the triangle spans 2 pixels each side; weights (3, 3, 1)/7 and (1, 3, 3)/7.
    CHECK(out[0] == Approx(500.0 / 7).epsilon(1e-6));
    CHECK(out[1] == Approx(820.0 / 7).epsilon(1e-6));
  }
  SECTION("the same size is an exact copy") {
    const Image in = random_image(7, 5, 3, gen);
    std::vector<float> out(in.px.size(), -1.0f);
    resize_bilinear_antialiased(in.px.data(), 7, 5, 3, 7, 5, out.data());
    for (size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == in.px[i]);
  }
  SECTION("shrinking, growing and both, against the 2-D reference") {
    for (auto [h, w, out_h, out_w] : {std::tuple{37, 53, 32, 32}, std::tuple{9, 12, 32, 32},
                                      std::tuple{50, 20, 32, 28}, std::tuple{32, 96, 32, 32}}) {
      const int c = 1 + 2 * static_cast<int>(gen.below(2));
      const Image in = random_image(h, w, c, gen);
      std::vector<float> out(static_cast<size_t>(out_h) * out_w * c, -1.0f);
      resize_bilinear_antialiased(in.px.data(), h, w, c, out_h, out_w, out.data());
      INFO(h << "x" << w << "x" << c << " to " << out_h << "x" << out_w);
      for (int y = 0; y < out_h; ++y)
        for (int x = 0; x < out_w; ++x)
          for (int k = 0; k < c; ++k)
            REQUIRE(out[(static_cast<size_t>(y) * out_w + x) * c + k] ==
                    Approx(resize_reference(in, out_h, out_w, y, x, k)).margin(1e-3));
    }
  }
}

namespace {

// The pipeline step by step through the public transforms, each drawing from `gen` as it runs:
// what augment() computed before its draws were split from their application.
std::vector<float> augment_step_by_step(const AugmentConfig& config, const Image& in,
                                        Generator& gen) {
  Image cur = in, next(in.h, in.w, in.c);
  const int h = in.h, w = in.w, c = in.c;
  if (config.crop == Crop::random) {
    random_crop(cur.px.data(), h, w, c, config.crop_padding, next.px.data(), gen);
    std::swap(cur, next);
  } else if (config.crop == Crop::resized) {
    random_resized_crop(cur.px.data(), h, w, c, config.resized_scale_min, config.resized_scale_max,
                        config.resized_ratio_min, config.resized_ratio_max, next.px.data(), gen);
    std::swap(cur, next);
  }
  if (config.hflip && gen.uniform() < 0.5f) {
    hflip(cur.px.data(), h, w, c, next.px.data());
    std::swap(cur, next);
  }
  if (config.randaugment_n > 0) {
    randaugment(cur.px.data(), h, w, c, config.randaugment_n, config.randaugment_m, next.px.data(),
                gen);
    std::swap(cur, next);
  }
  if (config.jitter > 0.0f) {
    color_jitter(cur.px.data(), h, w, c, config.jitter, next.px.data(), gen);
    std::swap(cur, next);
  }
  std::vector<float> out(cur.px.size());
  normalize(config, cur.px.data(), h, w, c, out.data());
  if (config.erasing_p > 0.0f) random_erasing(out.data(), h, w, c, config.erasing_p, gen);
  return out;
}

}  // namespace

// augment() draws every random choice first (draw_augment) and then applies them (apply_augment):
// its images must be those of the transforms run one after the other, each drawing as it goes.
TEST_CASE("augment equals its transforms run one by one on the same generator", "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  AugmentConfig everything;
  everything.crop = Crop::random;
  everything.randaugment_n = 2;
  everything.randaugment_m = 12;
  everything.jitter = 0.4f;
  everything.erasing_p = 0.5f;
  AugmentConfig resized;
  resized.crop = Crop::resized;
  resized.resized_scale_min = 0.35f;
  resized.resized_ratio_min = 0.75f;
  resized.resized_ratio_max = 1.33f;
  resized.randaugment_n = 3;
  resized.randaugment_m = 9;
  resized.erasing_p = 1.0f;
  resized.mean = {0.5f};
  resized.std = {0.25f};
  const AugmentConfig flip_only;
  Generator pixels(seed);
  for (const auto& [config, h, w, c] :
       {std::tuple{everything, 32, 32, 3}, std::tuple{resized, 28, 20, 1},
        std::tuple{flip_only, 17, 23, 3}}) {
    const Image in = random_image(h, w, c, pixels);
    for (uint64_t k = 0; k < 24; ++k) {
      INFO("image " << h << "x" << w << "x" << c << ", draw " << k);
      Generator a(seed + k), b(seed + k);
      std::vector<float> got(in.px.size(), std::nanf(""));
      augment(config, in.px.data(), h, w, c, got.data(), a);
      const std::vector<float> want = augment_step_by_step(config, in, b);
      REQUIRE(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
      // Both consumed the same draws.
      REQUIRE(a.below(1u << 30) == b.below(1u << 30));
    }
  }
}

TEST_CASE("augment_batch makes each image as augment() does, from the set held as one tensor",
          "[augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator pixels(seed);
  ImageDataset set;
  set.height = 9, set.width = 7, set.channels = 3;
  for (int i = 0; i < 12; ++i) {
    const Image img = random_image(9, 7, 3, pixels);
    set.pixels.insert(set.pixels.end(), img.px.begin(), img.px.end());
    set.labels.push_back(i % 10);
  }
  AugmentConfig config;
  config.crop = Crop::random;
  config.randaugment_n = 2;
  config.jitter = 0.3f;
  config.erasing_p = 0.5f;
  const Tensor images = images_tensor(set, Device::cpu());
  REQUIRE(images.shape() == Shape{12, 9, 7, 3});
  const std::vector<int64_t> indices = {11, 0, 5, 5, 3};
  std::vector<AugmentParams> params;
  for (size_t i = 0; i < indices.size(); ++i) {
    Generator gen(seed + i);
    params.push_back(draw_augment(config, 9, 7, gen));
  }
  const Tensor out = augment_batch(images, indices, params, config);
  REQUIRE(out.shape() == Shape{5, 9, 7, 3});
  const size_t bytes = 9 * 7 * 3;
  for (size_t i = 0; i < indices.size(); ++i) {
    INFO("batch image " << i);
    Generator gen(seed + i);
    std::vector<float> want(bytes);
    augment(config, set.image(indices[i]), 9, 7, 3, want.data(), gen);
    REQUIRE(std::memcmp(out.data<float>() + i * bytes, want.data(), bytes * sizeof(float)) == 0);
  }
  REQUIRE_THROWS_WITH(augment_batch(images, {12}, {AugmentParams{}}, config),
                      Contains("image 12 is outside the 12 images"));
  REQUIRE_THROWS_WITH(augment_batch(images, {1, 2}, {AugmentParams{}}, config),
                      Contains("2 indices but 1 parameter sets"));
  REQUIRE_THROWS_WITH(augment_batch(Tensor::zeros({2, 9, 7, 3}), {0}, {AugmentParams{}}, config),
                      Contains("contiguous uint8 [n, h, w, c]"));
}
