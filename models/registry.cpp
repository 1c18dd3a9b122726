#include "models/registry.h"

#include "engine/error.h"
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
  auto field = [&](const std::string& key) -> const std::string& {
    auto it = metadata.find(key);
    DL_CHECK(it != metadata.end(), source, ": not a checkpoint of this engine (no '", key,
             "' in its metadata)");
    return it->second;
  };
  auto integer = [&](const std::string& key) {
    const std::string& v = field(key);
    DL_CHECK(!v.empty() && v.find_first_not_of("0123456789") == std::string::npos, source,
             ": metadata '", key, "' is '", v, "', not a positive integer");
    return std::stoll(v);
  };
  ModelSpec s;
  s.name = field("model");
  s.dim = integer("model.dim"), s.depth = integer("model.depth");
  s.kernel = integer("model.kernel"), s.patch = integer("model.patch");
  s.classes = integer("model.classes"), s.in_channels = integer("model.in_channels");
  return s;
}

void validate(const ModelSpec& s) {
  DL_CHECK(s.name == "convmixer" || s.name == "resnet", "unknown model '", s.name,
           "' (known: convmixer, resnet)");
  DL_CHECK(s.dim > 0, "model dim (--dim) must be positive, got ", s.dim);
  DL_CHECK(s.depth >= 0, "model depth (--depth) must be non-negative, got ", s.depth);
  DL_CHECK(s.classes > 0 && s.in_channels > 0, "a model needs classes and input channels, got ",
           s.classes, " and ", s.in_channels);
  if (s.name == "convmixer") {
    DL_CHECK(s.kernel >= 1 && s.kernel % 2 == 1, "ConvMixer kernel (--kernel) must be odd, got ",
             s.kernel);
    DL_CHECK(s.patch > 0, "ConvMixer patch (--patch) must be positive, got ", s.patch);
  }
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
