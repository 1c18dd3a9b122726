// predict: classifies PNG/JPEG files with a trained checkpoint (a file, or a run directory: its
// last.safetensors). Each image is decoded (PNG or JPEG, engine/data/image.h), resized to the
// model's input size (antialiased bilinear, engine/data/resize.h, the filter
// scripts/pytorch_reference.py applies with PyTorch), normalised as in training (the checkpoint
// records mean and std) and classified; prints the top-K classes, or with --json one object per
// image with the logits and probabilities. An unreadable image is reported by name, the others are
// still classified, and the exit status is non-zero at the end. The trained weights classify, or
// with --ema the moving average a run kept with train --ema.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "engine/data/dataset.h"
#include "engine/data/resize.h"
#include "engine/error.h"
#include "engine/io/checkpoint.h"
#include "engine/io/json.h"
#include "engine/ops.h"
#include "examples/cli.h"
#include "examples/runtime.h"
#include "models/registry.h"

using namespace dl;

namespace {

int run(int argc, char** argv) {
  cli::Flags flags("predict",
                   "Classifies PNG/JPEG images (any size: resized to the model's input) with a\n"
                   "checkpoint written by train.");
  flags.add("checkpoint", "",
            "the checkpoint: train's last.safetensors, or the run directory holding it; required");
  flags.add("top", "3", "how many classes to print per image");
  flags.add("json", "false", "one JSON object per image, with logits and probabilities");
  flags.add("ema", "false",
            "classify with the moving average of the weights the run kept (train --ema) instead "
            "of the trained weights");
  flags.add("device", "cpu", "cpu, cuda or auto (the GPU when the build and the machine have one)");
  flags.allow_positional("IMAGE");
  if (!flags.parse(argc, argv)) return 0;
  std::string checkpoint = flags.str("checkpoint");
  int64_t top = flags.integer("top", 1);
  const bool json = flags.boolean("json");
  const std::vector<std::string>& images = flags.positional();
  DL_CHECK(!checkpoint.empty(), "--checkpoint is required (see --help)");
  DL_CHECK(!images.empty(), "no images given (see --help)");
  // A run directory stands for its last.safetensors, as with train --resume.
  if (std::filesystem::is_directory(checkpoint)) {
    checkpoint = (std::filesystem::path(checkpoint) / "last.safetensors").string();
    DL_CHECK(std::filesystem::exists(checkpoint), checkpoint,
             ": no such file (not a run directory, or the run has saved no checkpoint yet)");
  }

  // Every size is checked against the file and bounded before anything is allocated.
  const io::Checkpoint file = io::read_checkpoint(checkpoint);
  const std::map<std::string, std::string>& metadata = file.metadata;
  const models::ModelSpec spec = models::ModelSpec::from_checkpoint(file);
  const int64_t height =
      io::metadata_integer(metadata, "data.height", 1, data::kMaxImagePixels, checkpoint);
  const int64_t width =
      io::metadata_integer(metadata, "data.width", 1, data::kMaxImagePixels, checkpoint);
  DL_CHECK(height * width <= data::kMaxImagePixels, checkpoint, ": the checkpoint's images are ",
           width, "x", height, ", over the limit of ", data::kMaxImagePixels, " pixels");
  DL_CHECK(spec.name != "convmixer" || (height % spec.patch == 0 && width % spec.patch == 0),
           checkpoint, ": the checkpoint's images are ", width, "x", height,
           ", not a multiple of its model's patch ", spec.patch);
  const std::vector<std::string> classes =
      io::metadata_strings(metadata, "data.classes", checkpoint);
  const std::vector<float> mean = io::metadata_floats(metadata, "data.mean", checkpoint);
  const std::vector<float> std_dev = io::metadata_floats(metadata, "data.std", checkpoint);
  const int channels = static_cast<int>(spec.in_channels);
  DL_CHECK(static_cast<int64_t>(classes.size()) == spec.classes &&
               static_cast<int>(mean.size()) == channels &&
               static_cast<int>(std_dev.size()) == channels,
           checkpoint, ": inconsistent metadata (classes, mean or std)");
  for (float s : std_dev)
    DL_CHECK(s > 0, checkpoint, ": the checkpoint's metadata 'data.std' is '",
             io::metadata_value(metadata, "data.std", checkpoint),
             "': a standard deviation must be positive");

  Generator gen(0);
  auto model = models::make_model(spec, gen);
  io::load_weights(file, *model, flags.boolean("ema"));
  const Device device = examples::resolve_device(flags.str("device"));
  model->to(device);
  model->eval();
  NoGradGuard no_grad;
  top = std::min<int64_t>(top, spec.classes);

  int failures = 0;
  for (const std::string& path : images) {
    const data::DecodedImage image = data::decode_image(path, channels);
    if (!image.error.empty()) {
      std::cerr << "predict: cannot read " << path << ": " << image.error << "\n";
      ++failures;
      continue;
    }
    Tensor input = Tensor::empty({1, height, width, channels});
    float* x = input.data<float>();
    data::resize_bilinear_antialiased(image.pixels.data(), image.height, image.width, channels,
                                      height, width, x);
    for (int64_t i = 0; i < input.numel(); ++i)
      x[i] = (x[i] / 255.0f - mean[i % channels]) / std_dev[i % channels];
    const std::vector<float> logits = model->forward(input.to(device)).to_vector();
    const float zmax = *std::max_element(logits.begin(), logits.end());
    double denom = 0.0;
    for (float z : logits) denom += std::exp(static_cast<double>(z - zmax));
    std::vector<double> probs;
    for (float z : logits) probs.push_back(std::exp(static_cast<double>(z - zmax)) / denom);
    std::vector<int64_t> order(probs.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return probs[a] > probs[b]; });
    if (json) {
      io::JsonValue::Array z, p, best;
      for (float v : logits) z.emplace_back(static_cast<double>(v));
      for (double v : probs) p.emplace_back(v);
      for (int64_t k = 0; k < top; ++k)
        best.emplace_back(io::JsonValue::Object{{"class", io::JsonValue(classes[order[k]])},
                                                {"index", io::JsonValue(order[k])},
                                                {"prob", io::JsonValue(probs[order[k]])}});
      std::cout << io::to_json(io::JsonValue(io::JsonValue::Object{{"image", io::JsonValue(path)},
                                                                   {"logits", io::JsonValue(z)},
                                                                   {"probs", io::JsonValue(p)},
                                                                   {"top", io::JsonValue(best)}}))
                << "\n";
    } else {
      std::cout << path << ":";
      for (int64_t k = 0; k < top; ++k)
        std::printf(" %s %.4f", classes[order[k]].c_str(), probs[order[k]]);
      std::cout << "\n";
    }
    std::fflush(stdout);
  }
  if (failures)
    std::cerr << "predict: " << failures << " of " << images.size()
              << " images could not be read\n";
  return failures ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "predict: error: " << e.what() << "\n";
    return 2;
  }
}
