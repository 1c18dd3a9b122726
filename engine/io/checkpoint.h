// Training checkpoints: one safetensors file holding the model's state dict under "model."
// (PyTorch names and layouts), the optimizer's state under "optim.", an exponential moving average
// of the model, when kept, under "ema." (the same names), the trainer's position under "trainer.",
// and string metadata (format, version, the run's configuration). The trainer draws
// every random number from (seed, epoch, sample index), so seed and position are its whole
// random state. Written atomically: a crash mid-write leaves the previous checkpoint intact.
#pragma once
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/io/safetensors.h"
#include "engine/nn.h"
#include "engine/optim.h"

namespace dl::io {

inline constexpr const char* kCheckpointFormat = "convmixer-engine checkpoint";
inline constexpr int kCheckpointVersion = 1;

struct TrainingPosition {
  int64_t epoch = 0;  // the epoch in progress
  int64_t batch = 0;  // batches of that epoch already trained
  int64_t step = 0;   // optimizer steps so far
  // Running statistics of the epoch in progress, so its summary covers the whole epoch.
  double loss_sum = 0.0, seconds = 0.0;
  int64_t correct = 0, seen = 0;
};

// `ema`, when given, is the module holding the model's moving average
// (optim::ExponentialMovingAverage).
void save_checkpoint(const std::string& path, const nn::Module& model,
                     const optim::Optimizer* optimizer, const TrainingPosition& position,
                     std::map<std::string, std::string> metadata, const nn::Module* ema = nullptr);

// A checkpoint file read once: everything a resume needs before and while it builds the run.
struct Checkpoint {
  std::string path;
  std::map<std::string, std::string> metadata;
  std::optional<TrainingPosition> position;  // none in a file holding only a model
  nn::NamedTensors model_state;              // PyTorch names, without the "model." prefix
  nn::NamedTensors optimizer_state;          // "optim." entries
  nn::NamedTensors ema_state;                // PyTorch names, without "ema."; empty: none saved
};

// Reads the file after checking it is a checkpoint of this engine at a known version; a damaged
// file or position is one dl::Error naming it.
Checkpoint read_checkpoint(const std::string& path);
// Metadata only (the file is still read and checked whole).
std::map<std::string, std::string> read_checkpoint_metadata(const std::string& path);

// A checkpoint's metadata value `key` read as a whole decimal number in [min, max], or as a
// comma-separated list of finite numbers. A missing key or a malformed or out-of-range value is a
// dl::Error naming the file and the key.
int64_t metadata_integer(const std::map<std::string, std::string>& metadata, const std::string& key,
                         int64_t min, int64_t max, const std::string& path);
// A comma-separated list of names (data.classes), as written.
std::vector<std::string> metadata_strings(const std::map<std::string, std::string>& metadata,
                                          const std::string& key, const std::string& path);
std::vector<float> metadata_floats(const std::map<std::string, std::string>& metadata,
                                   const std::string& key, const std::string& path);
// A metadata value that holds a JSON object of strings (the run's flags), its members in order.
std::vector<std::pair<std::string, std::string>> metadata_string_object(
    const std::map<std::string, std::string>& metadata, const std::string& key,
    const std::string& path);
// The value itself; a missing key is a dl::Error naming the file and the key.
const std::string& metadata_value(const std::map<std::string, std::string>& metadata,
                                  const std::string& key, const std::string& path);

// Loads the model (and the optimizer and the moving average's module, when given). A checkpoint of
// another model or a missing entry (an `ema` without "ema." entries too) is one dl::Error naming
// the file.
void load_checkpoint(const Checkpoint& checkpoint, nn::Module& model, optim::Optimizer* optimizer,
                     nn::Module* ema = nullptr);
// The model's weights for evaluation: the trained ones, or with `ema` the moving average's (a
// checkpoint without them is a dl::Error naming the file).
void load_weights(const Checkpoint& checkpoint, nn::Module& model, bool ema);
// read_checkpoint, then load_checkpoint; returns the position (an error when there is none).
TrainingPosition load_checkpoint(const std::string& path, nn::Module& model,
                                 optim::Optimizer* optimizer);

}  // namespace dl::io
