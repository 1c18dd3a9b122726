// The models the example binaries can build by name, and how a model is described in a
// checkpoint's metadata so that a checkpoint rebuilds (and only loads into) the same model.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "engine/io/checkpoint.h"
#include "engine/nn.h"

namespace dl::models {

struct ModelSpec {
  std::string name = "convmixer";  // "convmixer" or "resnet"
  int64_t dim = 256;               // ConvMixer channels; ResNet base width
  int64_t depth = 8;               // ConvMixer layers; ResNet blocks per stage
  int64_t kernel = 5;              // ConvMixer depthwise kernel
  int64_t patch = 2;               // ConvMixer patch size
  int64_t classes = 10;
  int64_t in_channels = 3;

  // One line naming every field that shapes the parameters, e.g. "convmixer dim=256 depth=8 ...".
  std::string describe() const;
  std::map<std::string, std::string> to_metadata() const;
  // Throws dl::Error naming `source` when a field is missing or malformed, or the spec does not
  // validate().
  static ModelSpec from_metadata(const std::map<std::string, std::string>& metadata,
                                 const std::string& source);
  // from_metadata, then checked against the tensors the file holds before anything is built: the
  // model it describes must have exactly as many values as the checkpoint's model tensors.
  static ModelSpec from_checkpoint(const io::Checkpoint& checkpoint);
};

// What validate() accepts: far above any model this engine is for (ConvMixer-1536/20, the
// paper's largest, has 52M values), low enough that no spec asks for unbounded memory.
inline constexpr int64_t kMaxDim = 16384;
inline constexpr int64_t kMaxDepth = 1024;
inline constexpr int64_t kMaxKernel = 63;
inline constexpr int64_t kMaxPatch = 1024;
inline constexpr int64_t kMaxClasses = 1'000'000;
inline constexpr int64_t kMaxInChannels = 4;
inline constexpr int64_t kMaxStateValues = int64_t{1} << 30;  // 4 GiB of fp32

// Throws dl::Error for an unknown name (listing the known ones) or a field out of range, naming
// the range, and for a model whose state (parameters and buffers) exceeds kMaxStateValues.
void validate(const ModelSpec& spec);

// The number of values in the state dict (parameters and buffers) of the model `spec` describes,
// computed without building it. validate(spec) first.
int64_t state_size(const ModelSpec& spec);

// validate(spec), then builds the model with parameters drawn from `gen`.
std::shared_ptr<nn::Module> make_model(const ModelSpec& spec, Generator& gen);

}  // namespace dl::models
