#include "engine/io/checkpoint.h"

#include <bit>

#include "engine/error.h"
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
                     std::map<std::string, std::string> metadata) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, t] : model.state_dict()) tensors.emplace_back("model." + name, t);
  if (optimizer)
    for (auto& entry : optimizer->state_tensors()) tensors.push_back(entry);
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
                 .position = position_of(file, path),
                 .model_state = {},
                 .optimizer_state = {}};
  for (const auto& [name, t] : file.tensors) {
    if (name.rfind("model.", 0) == 0) out.model_state.emplace_back(name.substr(6), t);
    if (name.rfind("optim.", 0) == 0) out.optimizer_state.emplace_back(name, t);
  }
  return out;
}

std::map<std::string, std::string> read_checkpoint_metadata(const std::string& path) {
  return read_checkpoint(path).metadata;
}

void load_checkpoint(const Checkpoint& checkpoint, nn::Module& model, optim::Optimizer* optimizer) {
  model.load_state_dict(checkpoint.model_state, checkpoint.path);
  if (optimizer) {
    try {
      optimizer->load_state_tensors(checkpoint.optimizer_state);
    } catch (const Error& e) {
      throw Error(checkpoint.path + ": optimizer state does not fit (" + e.what() + ")");
    }
  }
}

TrainingPosition load_checkpoint(const std::string& path, nn::Module& model,
                                 optim::Optimizer* optimizer) {
  const Checkpoint checkpoint = read_checkpoint(path);
  load_checkpoint(checkpoint, model, optimizer);
  return checkpoint.position;
}

}  // namespace dl::io
