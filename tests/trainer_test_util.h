// Shared by the trainer's tests (test_trainer on the CPU, test_cuda_trainer on the GPU): a
// temporary directory, a tiny CIFAR-format data set of random images, a small run's settings, and
// the checkpoint and metrics readers that compare two runs.
#pragma once
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/io/json.h"
#include "engine/io/safetensors.h"
#include "examples/trainer.h"
#include "test_util.h"

namespace dl::test {

// Unique per process and per use, also when DL_TEST_SEED repeats the seed across test binaries.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static int count = 0;
    path = std::filesystem::temp_directory_path() /
           ("dl_test_trainer_" + std::to_string(getpid()) + "_" + std::to_string(count++) + "_" +
            std::to_string(fresh_seed()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

// CIFAR-10 binary batches with `per_file` random 32x32 images each.
inline void write_cifar(const std::filesystem::path& dir, int per_file, Generator& gen) {
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name) {
    std::ofstream out(dir / name, std::ios::binary);
    for (int r = 0; r < per_file; ++r) {
      out.put(static_cast<char>(gen.below(10)));
      for (int i = 0; i < 3072; ++i) out.put(static_cast<char>(gen.below(256)));
    }
  };
  for (int b = 1; b <= 5; ++b) write("data_batch_" + std::to_string(b) + ".bin");
  write("test_batch.bin");
}

// A small ConvMixer on the CPU, with every kind of augmentation on.
inline examples::TrainConfig tiny_config(const std::filesystem::path& data,
                                         const std::filesystem::path& run) {
  examples::TrainConfig c;
  c.data = data.string();
  c.model = {.name = "convmixer", .dim = 8, .depth = 1, .kernel = 3, .patch = 4};
  c.epochs = 2;
  c.batch = 16;  // 80 images: 5 steps per epoch
  c.lr = 0.01;
  c.augmentation.randaugment_n = 2;
  c.augmentation.crop = data::Crop::random;
  c.augmentation.erasing_p = 0.5f;
  c.device = "cpu";
  c.threads = 2;
  c.workers = 2;
  c.seed = 7;
  c.progress = examples::ProgressMode::off;
  c.checkpoint_dir = run.string();
  return c;
}

inline io::SafetensorsFile last_checkpoint(const std::filesystem::path& run) {
  return io::load_safetensors((run / "last.safetensors").string());
}

inline void require_identical(const io::SafetensorsFile& a, const io::SafetensorsFile& b) {
  REQUIRE(a.tensors.size() == b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    INFO("tensor " << a.tensors[i].first);
    REQUIRE(a.tensors[i].first == b.tensors[i].first);
    const Tensor& x = a.tensors[i].second;
    const Tensor& y = b.tensors[i].second;
    REQUIRE(x.shape() == y.shape());
    REQUIRE(std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0);
  }
}

// A run whose first loss is finite and whose first update is not (an lr past float's range),
// stopped after that step: the checkpoint it would write holds infinities, so it must refuse.
inline void require_diverged_state_not_saved(examples::TrainConfig config) {
  config.lr = 1e39;
  config.schedule = optim::Schedule::constant;
  config.stop_after_steps = 1;
  REQUIRE_THROWS_WITH(examples::train(config), Catch::Contains("training diverged by step 1") &&
                                                   Catch::Contains("is not finite"));
  CHECK_FALSE(
      std::filesystem::exists(std::filesystem::path(config.checkpoint_dir) / "last.safetensors"));
}

// The lines of a run's metrics.jsonl, parsed.
inline std::vector<io::JsonValue> metrics_lines(const std::filesystem::path& run) {
  std::vector<io::JsonValue> out;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) out.push_back(io::parse_json(line));
  return out;
}

// metrics.jsonl without the wall-clock fields.
inline std::vector<std::string> metrics_without_timing(const std::filesystem::path& run) {
  std::vector<std::string> out;
  for (const io::JsonValue& entry : metrics_lines(run)) {
    io::JsonValue::Object kept;
    for (const auto& [key, value] : entry.as_object())
      if (key != "epoch_seconds" && key != "img_per_s") kept.emplace_back(key, value);
    out.push_back(io::to_json(io::JsonValue(kept)));
  }
  return out;
}

}  // namespace dl::test
