// The data loader over a small in-memory image set: results independent of worker count, prefetch
// depth and batch size; resuming mid-epoch; drop_last; per-epoch shuffling; normalisation-only
// batches; worker errors surfacing from next(); restarting epochs without leaking threads; the
// batch flip of test-time augmentation. Pixel
// (0, 0, 0) of image i holds i, so every sample can be traced back to its image.
#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <numeric>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/data/augment_batch.h"
#include "engine/data/loader.h"
#include "engine/error.h"
#include "test_util.h"

using namespace dl;
using namespace dl::data;
using Catch::Contains;

namespace {

constexpr int64_t kImages = 37, kSide = 8, kChannels = 3, kClasses = 10, kBatch = 5;

ImageDataset make_dataset(uint64_t seed, int64_t images = kImages, int64_t channels = kChannels) {
  Generator gen(seed);
  ImageDataset d;
  d.height = d.width = kSide;
  d.channels = channels;
  d.pixels.resize(static_cast<size_t>(images * d.image_bytes()));
  for (uint8_t& v : d.pixels) v = static_cast<uint8_t>(gen.below(256));
  for (int64_t i = 0; i < images; ++i) {
    d.pixels[static_cast<size_t>(i * d.image_bytes())] = static_cast<uint8_t>(i);
    d.labels.push_back(static_cast<int64_t>(gen.below(kClasses)));
  }
  for (int64_t k = 0; k < kClasses; ++k) d.classes.push_back(std::to_string(k));
  return d;
}

// Every transform of the recipe, so that any difference in the random draws shows.
AugmentConfig strong_augmentation() {
  AugmentConfig a;
  a.crop = Crop::random;
  a.crop_padding = 2;
  a.randaugment_n = 2;
  a.jitter = 0.4f;
  a.erasing_p = 0.5f;
  return a;
}

LoaderOptions options(uint64_t seed) {
  LoaderOptions o;
  o.batch_size = kBatch;
  o.augmentation = strong_augmentation();
  o.seed = seed;
  return o;
}

// One sample: its image's float bits (compared exactly) and its label.
struct Sample {
  std::vector<uint32_t> bits;
  int64_t label = 0;
  bool operator==(const Sample&) const = default;
};
using Samples = std::vector<Sample>;

Samples samples_of(const Batch& b) {
  REQUIRE(b.images.dim() == 4);
  const int64_t count = b.images.size(0);
  if (count == 0) return {};  // a rank's slice of a batch smaller than the ranks
  const int64_t per = b.images.numel() / count;
  REQUIRE(b.labels.shape() == Shape{count});
  const float* images = b.images.data<float>();
  Samples out;
  for (int64_t i = 0; i < count; ++i) {
    Sample s;
    for (int64_t k = 0; k < per; ++k)
      s.bits.push_back(std::bit_cast<uint32_t>(images[i * per + k]));
    s.label = b.labels.data<int64_t>()[i];
    out.push_back(std::move(s));
  }
  return out;
}

// The batches of `epoch` from batch `first` on, as samples.
std::vector<Samples> run_epoch(DataLoader& loader, int64_t epoch, int64_t first = 0) {
  loader.start_epoch(epoch, first);
  std::vector<Samples> out;
  Batch b;
  while (loader.next(b)) out.push_back(samples_of(b));
  return out;
}

Samples concat(const std::vector<Samples>& batches) {
  Samples out;
  for (const Samples& b : batches) out.insert(out.end(), b.begin(), b.end());
  return out;
}

// The image index of each sample of an epoch without augmentation, read back from the tag pixel,
// checking that the sample's label is that image's.
std::vector<int64_t> order_of(DataLoader& loader, const ImageDataset& d, const LoaderOptions& o,
                              int64_t epoch) {
  REQUIRE(!o.augment);
  std::vector<int64_t> order;
  for (const Sample& s : concat(run_epoch(loader, epoch))) {
    const double v = std::bit_cast<float>(s.bits[0]);
    const double index = std::round((v * o.augmentation.std[0] + o.augmentation.mean[0]) * 255.0);
    REQUIRE(index >= 0);
    REQUIRE(index < static_cast<double>(d.size()));
    order.push_back(static_cast<int64_t>(index));
    REQUIRE(s.label == d.labels[static_cast<size_t>(order.back())]);
  }
  return order;
}

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

// The message of the dl::Error that next() throws; fails the test when it returns instead.
std::string next_error(DataLoader& loader) {
  Batch b;
  try {
    loader.next(b);
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("next() returned instead of throwing dl::Error");
  return {};
}

// Threads of this process from Linux's /proc, or -1 where that is not available.
int thread_count() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  return -1;
}

// The thread count once it is at most `limit`, or after a second: a thread that was just joined
// can still be listed for a moment.
int thread_count_within(int limit) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  int n = thread_count();
  while (n > limit && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    n = thread_count();
  }
  return n;
}

}  // namespace

TEST_CASE("loader batches do not depend on workers, prefetch or batch size", "[loader]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  const ImageDataset d = make_dataset(seed);
  LoaderOptions o = options(seed);
  o.workers = o.prefetch = 1;
  DataLoader reference(d, o);
  const std::vector<Samples> epoch0 = run_epoch(reference, 0), epoch1 = run_epoch(reference, 1);
  REQUIRE(epoch0.size() == 8);
  REQUIRE(epoch0 != epoch1);

  for (const auto& [workers, prefetch] :
       std::vector<std::pair<int, int>>{{2, 1}, {3, 2}, {3, 5}, {1, 4}, {8, 1}}) {
    INFO(workers << " workers, prefetch " << prefetch);
    o.workers = workers;
    o.prefetch = prefetch;
    DataLoader loader(d, o);
    REQUIRE(run_epoch(loader, 0) == epoch0);
    REQUIRE(run_epoch(loader, 1) == epoch1);
  }

  // A sample's augmentation depends on (seed, epoch, index) only, not on its batch.
  o = options(seed);
  for (const int64_t batch : {1, 4, 37}) {
    INFO("batch size " << batch);
    o.batch_size = batch;
    DataLoader loader(d, o);
    REQUIRE(concat(run_epoch(loader, 1)) == concat(epoch1));
  }
}

TEST_CASE("starting an epoch at batch k gives the epoch's batches from k on", "[loader]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  const ImageDataset d = make_dataset(seed);
  const LoaderOptions o = options(seed);
  DataLoader loader(d, o);
  const std::vector<Samples> full = run_epoch(loader, 3);
  const int64_t n = loader.batches_per_epoch();
  REQUIRE(static_cast<int64_t>(full.size()) == n);
  for (const int64_t k : {int64_t{0}, int64_t{1}, int64_t{4}, n - 1, n}) {
    INFO("first batch " << k);
    const std::vector<Samples> rest(full.begin() + k, full.end());
    REQUIRE(run_epoch(loader, 3, k) == rest);
    DataLoader resumed(d, o);  // as after a restart from a checkpoint
    REQUIRE(run_epoch(resumed, 3, k) == rest);
  }
  REQUIRE_THROWS_WITH(loader.start_epoch(3, n + 1), Contains("outside the epoch"));
  REQUIRE_THROWS_WITH(loader.start_epoch(3, -1), Contains("outside the epoch"));
}

TEST_CASE("drop_last gives floor or ceil batches, the partial one last", "[loader]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  const ImageDataset d = make_dataset(seed);
  LoaderOptions o = options(seed);
  o.augment = false;

  DataLoader keep(d, o);
  REQUIRE(keep.batches_per_epoch() == 8);
  const std::vector<Samples> kept = run_epoch(keep, 2);
  REQUIRE(kept.size() == 8);
  for (size_t i = 0; i < 7; ++i) REQUIRE(kept[i].size() == 5);
  REQUIRE(kept[7].size() == 2);
  keep.start_epoch(2, 7);
  Batch last;
  REQUIRE(keep.next(last));
  REQUIRE(last.images.shape() == Shape{2, kSide, kSide, kChannels});
  REQUIRE(last.labels.shape() == Shape{2});
  REQUIRE(!keep.next(last));

  o.drop_last = true;
  DataLoader drop(d, o);
  REQUIRE(drop.batches_per_epoch() == 7);
  const std::vector<Samples> dropped = run_epoch(drop, 2);
  REQUIRE(dropped == std::vector<Samples>(kept.begin(), kept.begin() + 7));

  // A set that divides evenly loses nothing; a batch larger than the set is all of it or nothing.
  const ImageDataset even = make_dataset(seed, 35);
  DataLoader even_drop(even, o);
  REQUIRE(even_drop.batches_per_epoch() == 7);
  REQUIRE(concat(run_epoch(even_drop, 0)).size() == 35);
  o.batch_size = 40;
  REQUIRE_THROWS_WITH(DataLoader(d, o), Contains("leaves no batch"));
  o.drop_last = false;
  DataLoader one(d, o);
  const std::vector<Samples> whole = run_epoch(one, 0);
  REQUIRE(whole.size() == 1);
  REQUIRE(whole[0].size() == 37);
}

TEST_CASE("each epoch is a seeded permutation; shuffle off keeps the data set's order",
          "[loader]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  const ImageDataset d = make_dataset(seed);
  LoaderOptions o = options(seed);
  o.augment = false;
  DataLoader loader(d, o);
  const std::vector<int64_t> order0 = order_of(loader, d, o, 0), order1 = order_of(loader, d, o, 1);
  for (const auto& order : {order0, order1}) {
    std::vector<int64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    REQUIRE(sorted == iota(kImages));
  }
  REQUIRE(order0 != order1);
  REQUIRE(order0 != iota(kImages));

  DataLoader same(d, o);
  REQUIRE(order_of(same, d, o, 1) == order1);
  REQUIRE(order_of(same, d, o, 0) == order0);
  o.seed = seed + 1;
  DataLoader other(d, o);
  REQUIRE(order_of(other, d, o, 0) != order0);

  o.shuffle = false;
  DataLoader in_order(d, o);
  REQUIRE(order_of(in_order, d, o, 0) == iota(kImages));
  REQUIRE(order_of(in_order, d, o, 5) == iota(kImages));
}

TEST_CASE("without augmentation a batch is the normalised images", "[loader]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  const ImageDataset d = make_dataset(seed);
  LoaderOptions o = options(seed);
  o.augment = false;
  o.shuffle = false;
  o.workers = 3;
  o.augmentation.mean = {0.5f, 0.25f, 0.75f};
  o.augmentation.std = {0.2f, 0.3f, 0.4f};
  DataLoader loader(d, o);
  const Samples samples = concat(run_epoch(loader, 4));
  REQUIRE(static_cast<int64_t>(samples.size()) == kImages);
  const size_t per = static_cast<size_t>(d.image_bytes());
  for (int64_t i = 0; i < kImages; ++i) {
    INFO("image " << i);
    const Sample& s = samples[static_cast<size_t>(i)];
    REQUIRE(s.label == d.labels[static_cast<size_t>(i)]);
    std::vector<float> actual(per), expected(per);
    for (size_t k = 0; k < per; ++k) actual[k] = std::bit_cast<float>(s.bits[k]);
    normalize(o.augmentation, d.image(i), kSide, kSide, kChannels, expected.data());
    REQUIRE(actual == expected);
    std::vector<double> ref(per);
    for (size_t k = 0; k < per; ++k)
      ref[k] = (d.image(i)[k] / 255.0 - o.augmentation.mean[k % 3]) / o.augmentation.std[k % 3];
    test::require_close(actual, ref, 1e-6, 1e-6, "normalised image");
  }
}

TEST_CASE("a worker's error surfaces from next() as a dl::Error", "[loader]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  const ImageDataset d = make_dataset(seed);
  LoaderOptions o = options(seed);
  o.workers = 3;
  // A bad augmentation setting is caught when the loader is made, before any thread runs.
  o.augmentation.erasing_p = 2.0f;
  REQUIRE_THROWS_WITH(DataLoader(d, o), Contains("AugmentConfig.erasing_p"));

  // Two-channel images pass construction without augmentation but fail in the workers.
  const ImageDataset two = make_dataset(seed, kImages, 2);
  o = options(seed);
  o.workers = 3;
  o.augment = false;
  o.augmentation.mean = o.augmentation.std = {0.5f, 0.5f};
  {
    DataLoader loader(two, o);
    loader.start_epoch(0);
    const std::string message = next_error(loader);
    REQUIRE_THAT(message, Contains("data loader") && Contains("1 or 3 channels"));
    REQUIRE(next_error(loader) == message);  // still failed, never an empty batch
    loader.start_epoch(1, 2);
    REQUIRE(next_error(loader) == message);
  }
  {
    DataLoader abandoned(two, o);  // destroyed while its workers fail, without a next()
    abandoned.start_epoch(0);
  }
  o.augment = true;
  REQUIRE_THROWS_WITH(DataLoader(two, o), Contains("1 or 3 channels"));
}

TEST_CASE("exhausted epochs return false; restarting epochs leaks no threads", "[loader]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  const ImageDataset d = make_dataset(seed);
  LoaderOptions o = options(seed);
  o.workers = 3;
  o.prefetch = 1;
  const int base = thread_count();
  {
    DataLoader loader(d, o);
    const std::vector<Samples> epoch0 = run_epoch(loader, 0), epoch1 = run_epoch(loader, 1);
    Batch b;
    for (int i = 0; i < 3; ++i) REQUIRE(!loader.next(b));
    loader.start_epoch(0, loader.batches_per_epoch());
    REQUIRE(!loader.next(b));

    // Restart mid-epoch, often while the workers wait on the prefetch bound.
    Generator gen(seed);
    for (int round = 0; round < 30; ++round) {
      const int64_t epoch = round % 2, first = static_cast<int64_t>(gen.below(8));
      INFO("round " << round << ": epoch " << epoch << " from batch " << first);
      loader.start_epoch(epoch, first);
      const std::vector<Samples>& full = epoch == 0 ? epoch0 : epoch1;
      const int64_t take = std::min<int64_t>(static_cast<int64_t>(gen.below(3)), 8 - first);
      for (int64_t i = 0; i < take; ++i) {
        REQUIRE(loader.next(b));
        REQUIRE(samples_of(b) == full[static_cast<size_t>(first + i)]);
      }
      if (base > 0) REQUIRE(thread_count_within(base + o.workers) <= base + o.workers);
    }
  }
  if (base > 0) REQUIRE(thread_count_within(base) == base);
}

TEST_CASE("channel_statistics: per-channel mean and std of the pixels on [0, 1]", "[loader]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  for (const int64_t channels : {1, 3}) {
    const ImageDataset d = make_dataset(seed, kImages, channels);
    const ChannelStatistics got = channel_statistics(d);
    REQUIRE(got.mean.size() == static_cast<size_t>(channels));
    REQUIRE(got.std.size() == static_cast<size_t>(channels));
    // Two passes in double: the mean, then the mean squared deviation from it.
    const auto values = static_cast<int64_t>(d.pixels.size()) / channels;
    for (int64_t c = 0; c < channels; ++c) {
      double mean = 0, var = 0;
      for (int64_t i = 0; i < values; ++i) mean += d.pixels[i * channels + c] / 255.0;
      mean /= values;
      for (int64_t i = 0; i < values; ++i) {
        const double dev = d.pixels[i * channels + c] / 255.0 - mean;
        var += dev * dev;
      }
      CHECK(got.mean[c] == Approx(mean).epsilon(0).margin(1e-6));
      CHECK(got.std[c] == Approx(std::sqrt(var / values)).epsilon(0).margin(1e-6));
    }
  }
  ImageDataset empty = make_dataset(seed, 0);
  CHECK_THROWS_WITH(channel_statistics(empty), Contains("no images"));
}

TEST_CASE("the ranks' slices of each batch are the one-process batch, in order", "[loader]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  const ImageDataset d = make_dataset(seed);
  for (int ranks : {2, 3}) {
    INFO(ranks << " ranks");
    DataLoader whole(d, options(seed));
    const std::vector<Samples> expected = run_epoch(whole, 1);
    std::vector<std::vector<Samples>> parts;
    for (int r = 0; r < ranks; ++r) {
      LoaderOptions o = options(seed);
      o.rank = r, o.ranks = ranks;
      DataLoader loader(d, o);
      parts.push_back(run_epoch(loader, 1));
      REQUIRE(parts.back().size() == expected.size());
    }
    for (size_t b = 0; b < expected.size(); ++b) {
      Samples joined;
      for (int r = 0; r < ranks; ++r) {
        const Samples& slice = parts[static_cast<size_t>(r)][b];
        // Rank r gets images [n r / ranks, n (r + 1) / ranks) of a batch of n.
        const auto n = static_cast<int64_t>(expected[b].size());
        REQUIRE(static_cast<int64_t>(slice.size()) == n * (r + 1) / ranks - n * r / ranks);
        joined.insert(joined.end(), slice.begin(), slice.end());
      }
      REQUIRE(joined == expected[b]);
    }
  }
  LoaderOptions bad = options(seed);
  bad.rank = 2, bad.ranks = 2;
  REQUIRE_THROWS_WITH(DataLoader(d, bad), Contains("rank 2 of 2 is not a rank"));
}

TEST_CASE("batches made from the set held as one tensor equal the workers' batches", "[loader]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  const ImageDataset d = make_dataset(seed);
  for (bool augment : {true, false}) {
    INFO("augment " << augment);
    LoaderOptions o = options(seed);
    o.augment = augment;
    o.rank = 1, o.ranks = 2;
    DataLoader workers(d, o);
    o.device_images = images_tensor(d, Device::cpu());
    DataLoader in_place(d, o);
    REQUIRE(run_epoch(in_place, 3) == run_epoch(workers, 3));
    REQUIRE(run_epoch(in_place, 4, 2) == run_epoch(workers, 4, 2));
  }
  LoaderOptions o = options(seed);
  o.device_images = Tensor::zeros({2, 8, 8, 3}, DType::u8);
  REQUIRE_THROWS_WITH(DataLoader(d, o), Contains("device_images must be the data set's images"));
}

TEST_CASE("hflip_batch mirrors each row of each image; an asymmetric image changes", "[loader]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const int64_t n = 2, h = 3, w = 5, c = 3;
  const Tensor images = Tensor::randn({n, h, w, c}, gen);
  const Tensor flipped = hflip_batch(images);
  REQUIRE(flipped.shape() == images.shape());
  const float* in = images.data<float>();
  const float* out = flipped.data<float>();
  bool changed = false;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x)
        for (int64_t k = 0; k < c; ++k) {
          const float original = in[((i * h + y) * w + x) * c + k];
          const float mirrored = in[((i * h + y) * w + (w - 1 - x)) * c + k];
          REQUIRE(out[((i * h + y) * w + x) * c + k] == mirrored);
          changed = changed || original != mirrored;
        }
  CHECK(changed);
  CHECK(hflip_batch(flipped).to_vector() == images.to_vector());
  const Tensor labels = Tensor::from_vector(std::vector<int64_t>{1, 2}, {2});
  CHECK_THROWS_WITH(hflip_batch(labels), Contains("expected images [N, H, W, C], got [2]"));
}
