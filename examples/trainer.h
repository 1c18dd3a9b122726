// The training loop behind the `train` binary, as a library so tests can run, interrupt and
// resume it: per-epoch progress, evaluation, a metrics line (JSON) and an atomic checkpoint.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/data/augment.h"
#include "models/registry.h"

namespace dl::examples {

struct TrainConfig {
  std::string data;         // data set root (CIFAR-10 binary, image folders, IDX)
  models::ModelSpec model;  // classes and in_channels are taken from the data
  int64_t epochs = 25, batch = 512;
  bool drop_last = false;
  std::string optimizer = "adamw";  // adamw or sgd
  double lr = 0.05, weight_decay = 0.005, momentum = 0.9;
  bool nesterov = false;
  std::string schedule = "onecycle";  // onecycle, cosine or constant
  int64_t warmup_epochs = 0;
  float label_smoothing = 0.0f;
  double clip_grad = 0.0;          // 0: off
  std::string precision = "fp32";  // fp32 or bf16
  bool tf32 = false;
  std::string device = "auto";   // auto, cuda or cpu
  int threads = 0, workers = 0;  // 0: see train --help
  uint64_t seed = 0;
  int64_t subset = 0, test_subset = 0, eval_every = 1;
  data::AugmentConfig augmentation;  // mean/std are filled in from the data
  std::string cache_dir;
  // Empty: a new runs/<model>-<UTC date-time>. With `resume`: empty (or the checkpoint's own
  // directory) continues the run there; another directory continues it into that one (a branch).
  std::string checkpoint_dir;
  std::string resume;              // a checkpoint file or directory; empty: a new run
  std::string progress = "auto";   // auto (bar on a terminal), on or off
  int64_t stop_after_steps = 0;    // stop with a checkpoint after this many steps of this run
  double save_every_minutes = 10;  // also checkpoint mid-epoch this often (0: epoch ends only)
  std::string command;             // recorded in the checkpoint's metadata
  // The run's flags (name, value), recorded in the checkpoint so a resume can restore them.
  std::vector<std::pair<std::string, std::string>> flags;
};

// Checks every field that can be checked without the data or the device (the flag each comes from
// is named); train() calls it before loading anything.
void validate(const TrainConfig& config);

// Runs (or resumes) training. Returns 0 when all epochs are done, 130 when stopped early by
// request_stop() or stop_after_steps (a checkpoint of the exact position is written first; a stop
// requested before the first step writes nothing). Everything is validated before the checkpoint
// directory is touched; bad configuration or data is a dl::Error.
int train(const TrainConfig& config);

// The checkpoint a --resume names: the file itself, or a run directory's last.safetensors (a
// directory without one is an error saying so).
std::string checkpoint_file(const std::string& resume);

// Asks a running train() to stop after the current step; safe to call from a signal handler.
void request_stop();

}  // namespace dl::examples
