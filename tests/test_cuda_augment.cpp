// Augmentation on the GPU (kernels/cuda/augment.cuh through augment_batch) against the CPU's
// apply_augment: the same images bit for bit, for every RandAugment operation at several
// magnitudes and both signs, the crops, the flip, colour jitter and erasing, on 3- and 1-channel
// images, with fresh random images and draws (the seed is printed). Then the throughput at the
// ConvMixer recipe's setting, printed (a measurement, not a check). Skipped without a GPU.
#define CATCH_CONFIG_RUNNER
#include <chrono>
#include <cstring>

#include "cuda_test_util.h"
#include "engine/data/augment_batch.h"
#include "engine/random.h"
#include "engine/runtime.h"
#include "test_util.h"

using namespace dl;
using namespace dl::data;

namespace {

ImageDataset random_set(int64_t size, int h, int w, int c, Generator& gen) {
  ImageDataset set;
  set.height = h, set.width = w, set.channels = c;
  set.pixels.resize(static_cast<size_t>(size * h * w * c));
  for (uint8_t& v : set.pixels) v = static_cast<uint8_t>(gen.below(256));
  for (int64_t i = 0; i < size; ++i) set.labels.push_back(i % 10);
  return set;
}

// The batch made on the GPU equals the CPU's, byte for byte (the first differing value named).
void require_same_batch(const ImageDataset& set, const std::vector<int64_t>& indices,
                        const std::vector<AugmentParams>& params, const AugmentConfig& config) {
  const Tensor cpu = augment_batch(images_tensor(set, Device::cpu()), indices, params, config);
  const Tensor gpu =
      augment_batch(images_tensor(set, Device::cuda()), indices, params, config).to(Device::cpu());
  REQUIRE(gpu.shape() == cpu.shape());
  const float* a = gpu.data<float>();
  const float* b = cpu.data<float>();
  for (int64_t i = 0; i < cpu.numel(); ++i) {
    if (std::memcmp(a + i, b + i, sizeof(float)) != 0) {
      const int64_t per_image = set.image_bytes();
      FAIL("image " << i / per_image << " of the batch, value " << i % per_image << ": GPU " << a[i]
                    << ", CPU " << b[i]);
    }
  }
}

}  // namespace

TEST_CASE("every RandAugment operation on the GPU equals the CPU's", "[cuda][augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (const auto& [h, w, c] :
       {std::tuple{32, 32, 3}, std::tuple{28, 20, 1}, std::tuple{5, 3, 3}}) {
    INFO("images " << h << "x" << w << "x" << c);
    const ImageDataset set = random_set(16, h, w, c, gen);
    AugmentConfig config;
    if (c == 1) config.mean = {0.5f}, config.std = {0.25f};
    std::vector<int64_t> indices;
    std::vector<AugmentParams> params;
    for (size_t op = 0; op < randaugment_ops().size(); ++op) {
      for (int bin : {0, 1, 9, 12, 30}) {
        for (float sign : {1.0f, -1.0f}) {
          // RandAugment negates the signed ops only (ShearX to Sharpness).
          if (sign < 0 && !(op >= 1 && op <= 9)) continue;
          AugmentParams p;
          p.ops = 1;
          p.op[0] = static_cast<int>(op);
          p.magnitude[0] = sign * randaugment_magnitude(randaugment_ops()[op], bin, h, w);
          indices.push_back(static_cast<int64_t>(gen.below(16)));
          params.push_back(p);
        }
      }
    }
    require_same_batch(set, indices, params, config);
  }
}

TEST_CASE(
    "drawn augmentations on the GPU equal the CPU's: crops, flip, RandAugment, jitter, "
    "erasing",
    "[cuda][augment]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  AugmentConfig recipe;  // the ConvMixer CIFAR-10 recipe's, with everything else on too
  recipe.crop = Crop::random;
  recipe.randaugment_n = 2;
  recipe.randaugment_m = 12;
  recipe.jitter = 0.4f;
  recipe.erasing_p = 0.5f;
  AugmentConfig resized = recipe;
  resized.crop = Crop::resized;
  resized.resized_scale_min = 0.35f;
  resized.resized_ratio_min = 0.75f;
  resized.resized_ratio_max = 1.33f;
  AugmentConfig plain;  // normalisation only, as evaluation uses
  plain.hflip = false;
  for (const AugmentConfig& base : {recipe, resized, plain}) {
    for (const auto& [h, w, c] : {std::tuple{32, 32, 3}, std::tuple{28, 28, 1}}) {
      AugmentConfig config = base;
      if (c == 1) config.mean = {0.5f}, config.std = {0.25f};
      const ImageDataset set = random_set(64, h, w, c, gen);
      std::vector<int64_t> indices;
      std::vector<AugmentParams> params;
      for (int i = 0; i < 256; ++i) {
        indices.push_back(static_cast<int64_t>(gen.below(64)));
        Generator draw(seed + static_cast<uint64_t>(i));
        params.push_back(draw_augment(config, h, w, draw));
      }
      INFO("images " << h << "x" << w << "x" << c << ", crop " << static_cast<int>(config.crop));
      require_same_batch(set, indices, params, config);
    }
  }
}

TEST_CASE("an image too large for the kernel is refused with a message", "[cuda][augment]") {
  Generator gen(1);
  const ImageDataset set = random_set(1, 128, 128, 3, gen);
  REQUIRE_THROWS_WITH(
      augment_batch(images_tensor(set, Device::cuda()), {0}, {AugmentParams{}}, AugmentConfig{}),
      Catch::Contains("augmenting on the GPU takes images of up to"));
}

TEST_CASE("augmentation throughput at the recipe's setting (printed)", "[cuda][augment][.bench]") {
  Generator gen(7);
  const ImageDataset set = random_set(50000, 32, 32, 3, gen);
  const Tensor images = images_tensor(set, Device::cuda());
  AugmentConfig config;
  config.crop = Crop::random;
  config.randaugment_n = 2;
  config.randaugment_m = 12;
  const int64_t batch = 512;
  std::vector<int64_t> indices;
  std::vector<AugmentParams> params;
  for (int64_t i = 0; i < batch; ++i) {
    indices.push_back(static_cast<int64_t>(gen.below(50000)));
    Generator draw(static_cast<uint64_t>(i));
    params.push_back(draw_augment(config, 32, 32, draw));
  }
  augment_batch(images, indices, params, config);  // warm-up
  synchronize(Device::cuda());
  const int repeats = 50;
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < repeats; ++r) augment_batch(images, indices, params, config);
  synchronize(Device::cuda());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "augment_batch, 32x32x3, RandAugment N 2 M 12, random crop, batch %lld: %.0f "
      "images/s (host plans and copies included)\n",
      static_cast<long long>(batch), repeats * batch / seconds);
}

int main(int argc, char** argv) {
  return dl::cuda_test::run_tests(argc, argv);
}
