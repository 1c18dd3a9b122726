#include "engine/io/checkpoint.h"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>

#include "engine/error.h"
#include "engine/io/json.h"
#include "engine/io/safetensors.h"

namespace dl::io {

namespace {

void check_format(const std::map<std::string, std::string>& metadata, const std::string& path) {
  auto format = metadata.find("format");
  DL_CHECK(format != metadata.end() && format->second == kCheckpointFormat, path,
           ": not a checkpoint of this engine (no \"format\": \"", kCheckpointFormat,
           "\" in its metadata)");
  auto version = metadata.find("format_version");
  DL_CHECK(version != metadata.end() && version->second == std::to_string(kCheckpointVersion), path,
           ": checkpoint format version ",
           version == metadata.end() ? std::string("(none)") : version->second,
           " is not supported (this build reads version ", kCheckpointVersion, ")");
}

// The trainer's position recorded in a checkpoint file.
TrainingPosition position_of(const SafetensorsFile& file, const std::string& path) {
  const Tensor* pos = file.find("trainer.position");
  DL_CHECK(pos && pos->dtype() == DType::i64 && pos->numel() == 7, path,
           ": no valid 'trainer.position' entry (I64[7])");
  const int64_t* p = pos->data<int64_t>();
  const TrainingPosition out{.epoch = p[0],
                             .batch = p[1],
                             .step = p[2],
                             .loss_sum = std::bit_cast<double>(p[5]),
                             .seconds = std::bit_cast<double>(p[6]),
                             .correct = p[3],
                             .seen = p[4]};
  DL_CHECK(out.epoch >= 0 && out.batch >= 0 && out.step >= 0 && out.correct >= 0 &&
               out.correct <= out.seen,
           path, ": damaged training position");
  return out;
}

}  // namespace

void save_checkpoint(const std::string& path, const nn::Module& model,
                     const optim::Optimizer* optimizer, const TrainingPosition& position,
                     std::map<std::string, std::string> metadata, const nn::Module* ema) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, t] : model.state_dict()) tensors.emplace_back("model." + name, t);
  if (optimizer)
    for (auto& entry : optimizer->state_tensors()) tensors.push_back(entry);
  if (ema)
    for (auto& [name, t] : ema->state_dict()) tensors.emplace_back("ema." + name, t);
  const std::vector<int64_t> pos = {position.epoch,
                                    position.batch,
                                    position.step,
                                    position.correct,
                                    position.seen,
                                    std::bit_cast<int64_t>(position.loss_sum),
                                    std::bit_cast<int64_t>(position.seconds)};
  tensors.emplace_back("trainer.position", Tensor::from_vector(pos, {7}));
  metadata["format"] = kCheckpointFormat;
  metadata["format_version"] = std::to_string(kCheckpointVersion);
  save_safetensors(path, tensors, metadata);
}

Checkpoint read_checkpoint(const std::string& path) {
  const SafetensorsFile file = load_safetensors(path);
  check_format(file.metadata, path);
  Checkpoint out{.path = path,
                 .metadata = file.metadata,
                 .position = file.find("trainer.position")
                                 ? std::optional<TrainingPosition>(position_of(file, path))
                                 : std::nullopt,
                 .model_state = {},
                 .optimizer_state = {},
                 .ema_state = {}};
  for (const auto& [name, t] : file.tensors) {
    if (name.starts_with("model.")) out.model_state.emplace_back(name.substr(6), t);
    if (name.starts_with("optim.")) out.optimizer_state.emplace_back(name, t);
    if (name.starts_with("ema.")) out.ema_state.emplace_back(name.substr(4), t);
  }
  return out;
}

std::map<std::string, std::string> read_checkpoint_metadata(const std::string& path) {
  return read_checkpoint(path).metadata;
}

const std::string& metadata_value(const std::map<std::string, std::string>& metadata,
                                  const std::string& key, const std::string& path) {
  const auto it = metadata.find(key);
  DL_CHECK(it != metadata.end(), path, ": the checkpoint's metadata has no '", key, "'");
  return it->second;
}

int64_t metadata_integer(const std::map<std::string, std::string>& metadata, const std::string& key,
                         int64_t min, int64_t max, const std::string& path) {
  const std::string& text = metadata_value(metadata, key, path);
  int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  DL_CHECK(ec == std::errc() && end == text.data() + text.size() && value >= min && value <= max,
           path, ": the checkpoint's metadata '", key, "' is '", text, "', not an integer in [",
           min, ", ", max, "]");
  return value;
}

std::vector<std::pair<std::string, std::string>> metadata_string_object(
    const std::map<std::string, std::string>& metadata, const std::string& key,
    const std::string& path) {
  const std::string& text = metadata_value(metadata, key, path);
  std::vector<std::pair<std::string, std::string>> members;
  try {
    const JsonValue object = parse_json(text);
    for (const auto& [name, value] : object.as_object())
      members.emplace_back(name, value.as_string());
  } catch (const Error& e) {
    throw Error(path + ": the checkpoint's metadata '" + key +
                "' is not a JSON object of strings (" + e.what() + ")");
  }
  return members;
}

std::vector<std::string> metadata_strings(const std::map<std::string, std::string>& metadata,
                                          const std::string& key, const std::string& path) {
  const std::string& text = metadata_value(metadata, key, path);
  std::vector<std::string> values;
  for (size_t begin = 0; begin < text.size();) {
    const size_t comma = std::min(text.find(',', begin), text.size());
    values.push_back(text.substr(begin, comma - begin));
    begin = comma + 1;
  }
  return values;
}

std::vector<float> metadata_floats(const std::map<std::string, std::string>& metadata,
                                   const std::string& key, const std::string& path) {
  const std::string& text = metadata_value(metadata, key, path);
  std::vector<float> values;
  for (size_t begin = 0; begin <= text.size();) {
    const size_t comma = std::min(text.find(',', begin), text.size());
    float value = 0.0f;
    const auto [end, ec] = std::from_chars(text.data() + begin, text.data() + comma, value);
    DL_CHECK(ec == std::errc() && end == text.data() + comma && std::isfinite(value), path,
             ": the checkpoint's metadata '", key, "' is '", text,
             "', not a comma-separated list of finite numbers");
    values.push_back(value);
    begin = comma + 1;
  }
  return values;
}

void load_checkpoint(const Checkpoint& checkpoint, nn::Module& model, optim::Optimizer* optimizer,
                     nn::Module* ema) {
  model.load_state_dict(checkpoint.model_state, checkpoint.path);
  if (ema) load_weights(checkpoint, *ema, true);
  if (optimizer) {
    try {
      optimizer->load_state_tensors(checkpoint.optimizer_state);
    } catch (const Error& e) {
      throw Error(checkpoint.path + ": optimizer state does not fit (" + e.what() + ")");
    }
  }
}

void load_weights(const Checkpoint& checkpoint, nn::Module& model, bool ema) {
  if (!ema) return model.load_state_dict(checkpoint.model_state, checkpoint.path);
  DL_CHECK(!checkpoint.ema_state.empty(), checkpoint.path,
           ": holds no moving average of the model (no 'ema.' entries): its run kept none");
  model.load_state_dict(checkpoint.ema_state, checkpoint.path + "'s moving average");
}

TrainingPosition load_checkpoint(const std::string& path, nn::Module& model,
                                 optim::Optimizer* optimizer) {
  const Checkpoint checkpoint = read_checkpoint(path);
  load_checkpoint(checkpoint, model, optimizer);
  DL_CHECK(checkpoint.position, path, ": no 'trainer.position' entry (not a training checkpoint)");
  return *checkpoint.position;
}

}  // namespace dl::io
