#include "models/registry.h"

#include "engine/error.h"
#include "engine/io/checkpoint.h"
#include "models/convmixer.h"
#include "models/resnet.h"

namespace dl::models {

std::string ModelSpec::describe() const {
  if (name == "resnet")
    return detail::concat("resnet width=", dim, " blocks=", depth, " classes=", classes,
                          " in_channels=", in_channels);
  return detail::concat(name, " dim=", dim, " depth=", depth, " kernel=", kernel, " patch=", patch,
                        " classes=", classes, " in_channels=", in_channels);
}

std::map<std::string, std::string> ModelSpec::to_metadata() const {
  return {{"model", name},
          {"model.dim", std::to_string(dim)},
          {"model.depth", std::to_string(depth)},
          {"model.kernel", std::to_string(kernel)},
          {"model.patch", std::to_string(patch)},
          {"model.classes", std::to_string(classes)},
          {"model.in_channels", std::to_string(in_channels)}};
}

ModelSpec ModelSpec::from_metadata(const std::map<std::string, std::string>& metadata,
                                   const std::string& source) {
  const auto integer = [&](const std::string& key) {
    return io::metadata_integer(metadata, key, 0, INT64_MAX, source);
  };
  ModelSpec s;
  s.name = io::metadata_value(metadata, "model", source);
  s.dim = integer("model.dim"), s.depth = integer("model.depth");
  s.kernel = integer("model.kernel"), s.patch = integer("model.patch");
  s.classes = integer("model.classes"), s.in_channels = integer("model.in_channels");
  try {
    validate(s);
  } catch (const Error& e) {
    throw Error(source + ": the checkpoint's metadata describes no valid model: " + e.what());
  }
  return s;
}

ModelSpec ModelSpec::from_checkpoint(const io::Checkpoint& checkpoint) {
  const std::string& path = checkpoint.path;
  const ModelSpec s = from_metadata(checkpoint.metadata, path);
  int64_t held = 0;
  for (const auto& [name, t] : checkpoint.model_state) held += t.numel();
  DL_CHECK(held == state_size(s), path, ": its metadata describes '", s.describe(), "', ",
           state_size(s), " values, but its model tensors hold ", held,
           ": the metadata does not match the weights (a damaged or edited file?)");
  return s;
}

void validate(const ModelSpec& s) {
  const auto check_range = [](int64_t value, int64_t min, int64_t max, const char* what) {
    DL_CHECK(value >= min && value <= max, what, " must be in [", min, ", ", max, "], got ", value);
  };
  DL_CHECK(s.name == "convmixer" || s.name == "resnet", "unknown model '", s.name,
           "' (known: convmixer, resnet)");
  check_range(s.dim, 1, kMaxDim, "model dim");
  check_range(s.depth, 0, kMaxDepth, "model depth");
  check_range(s.classes, 1, kMaxClasses, "the number of classes");
  check_range(s.in_channels, 1, kMaxInChannels, "the number of input channels");
  if (s.name == "convmixer") {
    DL_CHECK(s.kernel >= 1 && s.kernel <= kMaxKernel && s.kernel % 2 == 1,
             "ConvMixer kernel must be odd and in [1, ", kMaxKernel, "], got ", s.kernel);
    check_range(s.patch, 1, kMaxPatch, "ConvMixer patch");
  }
  DL_CHECK(state_size(s) <= kMaxStateValues, "'", s.describe(), "' has ", state_size(s),
           " parameter and buffer values, over the limit of ", kMaxStateValues,
           " (4 GiB of fp32); use a smaller dim or depth");
}

int64_t state_size(const ModelSpec& s) {
  // validate()'s bounds keep every product below 2^46.
  const auto conv = [](int64_t in, int64_t out, int64_t kernel, bool bias) {
    return out * in * kernel * kernel + (bias ? out : 0);
  };
  const auto batch_norm = [](int64_t channels) {
    return 4 * channels + 1;  // weight, bias, running_mean, running_var; num_batches_tracked
  };
  const auto linear = [](int64_t in, int64_t out) { return out * in + out; };
  if (s.name == "resnet") {
    const auto conv_bn = [&](int64_t in, int64_t width) {
      return conv(in, width, 3, false) + batch_norm(width);
    };
    const int64_t w = s.dim;
    return conv_bn(s.in_channels, w) + s.depth * 2 * conv_bn(w, w) + conv_bn(w, 2 * w) +
           s.depth * 2 * conv_bn(2 * w, 2 * w) + linear(2 * w, s.classes);
  }
  const int64_t layer = conv(1, s.dim, s.kernel, true) + batch_norm(s.dim) +
                        conv(s.dim, s.dim, 1, true) + batch_norm(s.dim);
  return s.depth * layer + conv(s.in_channels, s.dim, s.patch, true) + batch_norm(s.dim) +
         linear(s.dim, s.classes);
}

std::shared_ptr<nn::Module> make_model(const ModelSpec& s, Generator& gen) {
  validate(s);
  if (s.name == "convmixer")
    return std::make_shared<ConvMixer>(ConvMixerConfig{.dim = s.dim,
                                                       .depth = s.depth,
                                                       .kernel = s.kernel,
                                                       .patch = s.patch,
                                                       .classes = s.classes,
                                                       .in_channels = s.in_channels},
                                       gen);
  return std::make_shared<SmallResNet>(
      SmallResNetConfig{
          .width = s.dim, .blocks = s.depth, .classes = s.classes, .in_channels = s.in_channels},
      gen);
}

}  // namespace dl::models
