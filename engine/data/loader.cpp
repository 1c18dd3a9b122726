#include "engine/data/loader.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "engine/data/augment_batch.h"
#include "engine/error.h"

namespace dl::data {

Tensor hflip_batch(const Tensor& images) {
  DL_CHECK(images.dim() == 4, "hflip_batch: expected images [N, H, W, C], got ",
           shape_str(images.shape()));
  DL_CHECK(images.device().is_cpu(), "hflip_batch: the images must be in host memory, not on ",
           images.device().str());
  const Tensor in = images.contiguous();
  Tensor out = Tensor::empty(in.shape(), in.dtype());
  const int64_t rows = in.size(0) * in.size(1), width = in.size(2);
  const size_t pixel = static_cast<size_t>(in.size(3)) * dtype_size(in.dtype());
  const auto* src = static_cast<const char*>(in.raw_data());
  auto* dst = static_cast<char*>(out.raw_data());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t x = 0; x < width; ++x)
      std::memcpy(dst + (r * width + x) * pixel, src + (r * width + width - 1 - x) * pixel, pixel);
  return out;
}

ChannelStatistics channel_statistics(const ImageDataset& data) {
  const int64_t c = data.channels, values = static_cast<int64_t>(data.pixels.size()) / c;
  DL_CHECK(values > 0, "channel_statistics: the data set has no images");
  std::vector<double> sum(c, 0.0), sq(c, 0.0);
  for (int64_t i = 0; i < values; ++i)
    for (int64_t j = 0; j < c; ++j) {
      const double v = data.pixels[i * c + j] / 255.0;
      sum[j] += v;
      sq[j] += v * v;
    }
  ChannelStatistics out{std::vector<float>(c), std::vector<float>(c)};
  for (int64_t j = 0; j < c; ++j) {
    const double m = sum[j] / values;
    out.mean[j] = static_cast<float>(m);
    out.std[j] = static_cast<float>(std::sqrt(std::max(sq[j] / values - m * m, 1e-12)));
  }
  return out;
}

uint64_t sample_seed(uint64_t seed, int64_t epoch, int64_t index) {
  uint64_t h = seed ^ 0x9e3779b97f4a7c15ull;
  for (uint64_t v : {static_cast<uint64_t>(epoch), static_cast<uint64_t>(index)}) {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
  }
  return h;
}

DataLoader::DataLoader(const ImageDataset& data, LoaderOptions options)
    : data_(data), options_(std::move(options)) {
  DL_CHECK(options_.batch_size > 0, "batch size must be positive, got ", options_.batch_size);
  DL_CHECK(options_.workers >= 1, "need at least one loader worker, got ", options_.workers);
  DL_CHECK(options_.prefetch >= 1, "prefetch must be at least 1, got ", options_.prefetch);
  DL_CHECK(data_.size() > 0, "the data set is empty");
  DL_CHECK(options_.ranks >= 1 && options_.rank >= 0 && options_.rank < options_.ranks,
           "DataLoader: rank ", options_.rank, " of ", options_.ranks, " is not a rank");
  if (options_.augment) validate(options_.augmentation, static_cast<int>(data_.channels));
  if (options_.device_images.defined())
    DL_CHECK(options_.device_images.shape() ==
                 Shape({data_.size(), data_.height, data_.width, data_.channels}),
             "DataLoader: device_images must be the data set's images (images_tensor)");
  DL_CHECK(batches_per_epoch() > 0, "batch size ", options_.batch_size,
           " with drop_last leaves no "
           "batch of a data set of ",
           data_.size(), " images");
}

DataLoader::~DataLoader() {
  stop_workers();
}

int64_t DataLoader::batches_per_epoch() const {
  const int64_t n = data_.size(), b = options_.batch_size;
  return options_.drop_last ? n / b : (n + b - 1) / b;
}

int64_t DataLoader::last_batch_size() const {
  const int64_t b = options_.batch_size, rest = data_.size() % b;
  return options_.drop_last || rest == 0 ? b : rest;
}

void DataLoader::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void DataLoader::start_epoch(int64_t epoch, int64_t first_batch) {
  DL_CHECK(first_batch >= 0 && first_batch <= batches_per_epoch(), "batch ", first_batch,
           " is outside the epoch's ", batches_per_epoch(), " batches");
  stop_workers();
  order_.resize(static_cast<size_t>(data_.size()));
  std::iota(order_.begin(), order_.end(), 0);
  if (options_.shuffle) {
    Generator gen(sample_seed(options_.seed, epoch, -1));
    for (int64_t i = data_.size() - 1; i > 0; --i)
      std::swap(order_[i], order_[gen.below(static_cast<uint64_t>(i + 1))]);
  }
  epoch_ = epoch;
  started_ = true;
  next_to_make_ = next_to_return_ = first_batch;
  end_ = batches_per_epoch();
  ready_.clear();
  worker_error_.clear();
  stopping_ = false;
  if (options_.device_images.defined()) return;  // next() makes each batch itself
  for (int i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { worker_loop(); });
}

void DataLoader::worker_loop() {
  const int64_t ahead = static_cast<int64_t>(options_.workers) * options_.prefetch;
  while (true) {
    int64_t batch = 0;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] {
        return stopping_ || next_to_make_ >= end_ || next_to_make_ < next_to_return_ + ahead;
      });
      if (stopping_ || next_to_make_ >= end_) return;
      batch = next_to_make_++;
    }
    Batch made;
    std::string error;
    try {
      made = make_batch(epoch_, batch);
    } catch (const std::exception& e) {
      error = e.what();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error.empty() && worker_error_.empty()) worker_error_ = error;
      ready_[batch] = std::move(made);
    }
    cv_.notify_all();
  }
}

bool DataLoader::next(Batch& out) {
  std::unique_lock<std::mutex> lock(mutex_);
  DL_CHECK(started_, "DataLoader: call start_epoch before next");
  if (next_to_return_ >= end_) return false;
  if (options_.device_images.defined()) {
    out = make_batch(epoch_, next_to_return_++);
    return true;
  }
  cv_.wait(lock, [&] { return ready_.count(next_to_return_) > 0; });
  DL_CHECK(worker_error_.empty(), "data loader: ", worker_error_);
  out = std::move(ready_[next_to_return_]);
  ready_.erase(next_to_return_++);
  lock.unlock();
  cv_.notify_all();
  return true;
}

Batch DataLoader::make_batch(int64_t epoch, int64_t batch) const {
  const int64_t global_begin = batch * options_.batch_size;
  const int64_t global_count = std::min(options_.batch_size, data_.size() - global_begin);
  const int64_t begin = global_begin + global_count * options_.rank / options_.ranks;
  const int64_t count = global_begin + global_count * (options_.rank + 1) / options_.ranks - begin;
  const int h = static_cast<int>(data_.height), w = static_cast<int>(data_.width),
            c = static_cast<int>(data_.channels);
  Batch out;
  out.global_size = global_count;
  out.labels = Tensor::empty({count}, DType::i64);
  int64_t* labels = out.labels.data<int64_t>();
  for (int64_t i = 0; i < count; ++i)
    labels[i] = data_.labels[static_cast<size_t>(order_[static_cast<size_t>(begin + i)])];
  if (options_.device_images.defined()) {
    out.images = make_device_images(epoch, begin, count);
    return out;
  }
  out.images = Tensor::empty({count, data_.height, data_.width, data_.channels});
  float* images = out.images.data<float>();
  const int64_t pixels = data_.image_bytes();
  for (int64_t i = 0; i < count; ++i) {
    const int64_t index = order_[static_cast<size_t>(begin + i)];
    if (options_.augment) {
      Generator gen(sample_seed(options_.seed, epoch, index));
      augment(options_.augmentation, data_.image(index), h, w, c, images + i * pixels, gen);
    } else {
      normalize(options_.augmentation, data_.image(index), h, w, c, images + i * pixels);
    }
  }
  return out;
}

Tensor DataLoader::make_device_images(int64_t epoch, int64_t begin, int64_t count) const {
  const int h = static_cast<int>(data_.height), w = static_cast<int>(data_.width);
  std::vector<int64_t> indices(static_cast<size_t>(count));
  std::vector<AugmentParams> params(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const int64_t index = order_[static_cast<size_t>(begin + i)];
    indices[static_cast<size_t>(i)] = index;
    if (options_.augment) {
      Generator gen(sample_seed(options_.seed, epoch, index));
      params[static_cast<size_t>(i)] = draw_augment(options_.augmentation, h, w, gen);
    }
  }
  if (options_.augment) {
    return augment_batch(options_.device_images, indices, params, options_.augmentation);
  }
  // Evaluation: normalisation only.
  AugmentConfig plain;
  plain.hflip = false;
  plain.mean = options_.augmentation.mean;
  plain.std = options_.augmentation.std;
  return augment_batch(options_.device_images, indices, params, plain);
}

}  // namespace dl::data
