// Batches of an in-memory image set for training and evaluation: per-epoch shuffling from the
// seed, augmentation in worker threads, a bounded prefetch queue. Every random choice derives
// from (seed, epoch, sample index), so a run is the same for any number of workers and can resume
// at any batch of any epoch.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/data/augment.h"
#include "engine/data/dataset.h"
#include "engine/tensor.h"

namespace dl::data {

struct Batch {
  Tensor images;            // [B, H, W, C] f32, normalised (and augmented when training)
  Tensor labels;            // [B] i64
  int64_t global_size = 0;  // the images of the global batch this rank's B are a slice of
};

// The horizontal flip of a batch of images [N, H, W, C] in host memory (any dtype): column x of
// each row becomes column W - 1 - x. For test-time augmentation of Batch::images.
Tensor hflip_batch(const Tensor& images);

// Mean and standard deviation of each channel of a data set's pixels on the [0, 1] scale (in
// double over every pixel): the normalisation for AugmentConfig::mean and ::std.
struct ChannelStatistics {
  std::vector<float> mean, std;
};
ChannelStatistics channel_statistics(const ImageDataset& data);

struct LoaderOptions {
  int64_t batch_size = 128;
  bool shuffle = true;
  bool drop_last = false;  // drop the last partial batch
  bool augment = true;     // training transforms; false: normalisation only
  AugmentConfig augmentation;
  uint64_t seed = 0;
  int workers = 2;   // threads preparing batches
  int prefetch = 2;  // batches prepared ahead of the consumer, per worker
  // Data parallelism: each batch of batch_size images (the global batch, in the one order of
  // the epoch) is split over `ranks` processes and this one gets the slice of rank `rank`:
  // images [n * rank / ranks, n * (rank + 1) / ranks) of a batch of n.
  int rank = 0, ranks = 1;
  // The data set as one uint8 tensor on a device (images_tensor in augment_batch.h): batches are
  // then made there by augment_batch, on the thread that calls next() (no workers), from the same
  // order and the same per-image draws; the labels stay in host memory. Undefined: the CPU
  // workers make them.
  Tensor device_images;
};

class DataLoader {
 public:
  // `data` must outlive the loader (the loader keeps a reference; a temporary is refused).
  DataLoader(const ImageDataset& data, LoaderOptions options);
  DataLoader(ImageDataset&& data, LoaderOptions options) = delete;
  DataLoader(const ImageDataset&& data, LoaderOptions options) = delete;
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  int64_t batches_per_epoch() const;
  // The images of the epoch's last batch (batch_size unless it is a partial one).
  int64_t last_batch_size() const;
  // Starts an epoch at batch `first_batch` (non-zero when resuming mid-epoch).
  void start_epoch(int64_t epoch, int64_t first_batch = 0);
  // The next batch of the epoch; false once the epoch is exhausted.
  bool next(Batch& out);

 private:
  void stop_workers();
  void worker_loop();
  Batch make_batch(int64_t epoch, int64_t batch) const;
  // make_batch's images [begin, begin + count) of the epoch's order, by augment_batch.
  Tensor make_device_images(int64_t epoch, int64_t begin, int64_t count) const;

  const ImageDataset& data_;
  LoaderOptions options_;
  std::vector<int64_t> order_;
  int64_t epoch_ = 0, next_to_make_ = 0, next_to_return_ = 0, end_ = 0;
  std::map<int64_t, Batch> ready_;
  bool started_ = false, stopping_ = false;
  std::string worker_error_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
};

// Seed for sample `index` of `epoch`: a different, reproducible stream per sample.
uint64_t sample_seed(uint64_t seed, int64_t epoch, int64_t index);

}  // namespace dl::data
