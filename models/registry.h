// The models the example binaries can build by name, and how a model is described in a
// checkpoint's metadata so that a checkpoint rebuilds (and only loads into) the same model.
#pragma once
#include <map>
#include <memory>
#include <string>

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
  // Throws dl::Error naming `source` when a field is missing or malformed.
  static ModelSpec from_metadata(const std::map<std::string, std::string>& metadata,
                                 const std::string& source);
};

// Throws dl::Error for an unknown name (listing the known ones) or a field out of range.
void validate(const ModelSpec& spec);

// validate(spec), then builds the model with parameters drawn from `gen`.
std::shared_ptr<nn::Module> make_model(const ModelSpec& spec, Generator& gen);

}  // namespace dl::models
