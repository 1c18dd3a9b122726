// evaluate: measures a trained checkpoint on a data set split without training: the loss, the
// accuracy, each class's accuracy and the confusion matrix (rows: true class, columns: predicted),
// printed as text and, with --json FILE, written as one JSON object (scripts/plot_confusion.py
// draws it). The images are normalised as in training (the checkpoint records mean and std) and
// must have the size and classes the checkpoint records. The trained weights are measured, or with
// --ema the moving average a run kept with train --ema; --tta flip averages each image's logits
// with its horizontal flip's, as train --tta flip does.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "engine/data/loader.h"
#include "engine/error.h"
#include "engine/io/checkpoint.h"
#include "engine/io/json.h"
#include "engine/ops.h"
#include "examples/cli.h"
#include "examples/evaluation.h"
#include "examples/run_directory.h"
#include "examples/runtime.h"
#include "models/registry.h"

using namespace dl;

namespace {

// The data set the run was trained on, as its checkpoint records it.
std::string recorded_data(const io::Checkpoint& checkpoint) {
  for (const auto& [name, value] :
       io::metadata_string_object(checkpoint.metadata, "flags", checkpoint.path))
    if (name == "data") return value;
  throw Error(checkpoint.path + ": records no data set: pass --data");
}

struct Evaluation {
  double loss_sum = 0;
  std::vector<std::vector<int64_t>> confusion;  // [true class][predicted class]
};

Evaluation evaluate(nn::Module& model, data::DataLoader& loader, Device device, int64_t classes,
                    examples::Tta tta) {
  NoGradGuard no_grad;
  model.eval();
  Evaluation out{0, std::vector<std::vector<int64_t>>(classes, std::vector<int64_t>(classes, 0))};
  data::Batch batch;
  loader.start_epoch(0);
  while (loader.next(batch)) {
    const Tensor logits = examples::evaluation_logits(model, batch.images, device, DType::f32, tta);
    const int64_t n = logits.size(0);
    out.loss_sum += static_cast<double>(cross_entropy(logits, batch.labels).item()) * n;
    const std::vector<float> values = logits.to(Device::cpu()).to_vector();
    const int64_t* labels = batch.labels.data<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
      const auto row = values.begin() + i * classes;
      ++out.confusion[labels[i]][std::max_element(row, row + classes) - row];
    }
  }
  return out;
}

int run(int argc, char** argv) {
  cli::Flags flags("evaluate",
                   "Measures a checkpoint on a data set split: loss, accuracy, each class's "
                   "accuracy and the confusion matrix.");
  flags.add("checkpoint", "", "train's last.safetensors, or the run directory holding it");
  flags.add("data", "", "the data set (empty: the one the run was trained on)");
  flags.add("split", "test", "test or train");
  flags.add("subset", "0", "this many images only (0: all), spread over the classes");
  flags.add("ema", "false",
            "measure the moving average of the weights the run kept (train --ema) instead of "
            "the trained weights");
  flags.add("tta", "none",
            "test-time augmentation: none, or flip (the mean of the logits of each image and its "
            "horizontal flip)");
  flags.add("json", "", "also write the results to this file as one JSON object");
  flags.add("device", "cpu", "cpu, cuda or auto");
  flags.add("threads", "0", "CPU threads (0: all cores)");
  if (!flags.parse(argc, argv)) return 0;
  DL_CHECK(!flags.str("checkpoint").empty(), "--checkpoint is required (see --help)");
  const std::string split_text = flags.str("split");
  DL_CHECK(split_text == "test" || split_text == "train", "--split must be test or train, got '",
           split_text, "'");
  const data::Split split = split_text == "test" ? data::Split::test : data::Split::train;
  const int64_t subset = flags.integer("subset", 0);
  const bool ema = flags.boolean("ema");
  const examples::Tta tta = examples::parse_tta("tta", flags.str("tta"));
  const examples::Runtime runtime =
      examples::setup_runtime(flags.str("device"), static_cast<int>(flags.integer("threads", 0)),
                              examples::Precision::fp32, false);

  const io::Checkpoint checkpoint =
      io::read_checkpoint(examples::checkpoint_file(flags.str("checkpoint")));
  const models::ModelSpec spec = models::ModelSpec::from_checkpoint(checkpoint);
  const std::string& path = checkpoint.path;
  const std::string data_root = flags.given("data") ? flags.str("data") : recorded_data(checkpoint);
  const std::vector<std::string> classes =
      io::metadata_strings(checkpoint.metadata, "data.classes", path);
  data::ImageDataset set = data::subset(data::load_dataset_cached(data_root, split, ""), subset);
  const auto join = [](const std::vector<std::string>& names) {
    std::string out;
    for (const std::string& name : names) out += (out.empty() ? "" : ",") + name;
    return out;
  };
  DL_CHECK(set.classes == classes, data_root, " has other classes (", join(set.classes),
           ") than the checkpoint ", path, " was trained on (", join(classes), ")");
  DL_CHECK(
      set.height == io::metadata_integer(checkpoint.metadata, "data.height", 1, 1 << 30, path) &&
          set.width == io::metadata_integer(checkpoint.metadata, "data.width", 1, 1 << 30, path) &&
          set.channels == spec.in_channels,
      data_root, "'s images are ", set.width, "x", set.height, "x", set.channels, ", not the ",
      io::metadata_value(checkpoint.metadata, "data.width", path), "x",
      io::metadata_value(checkpoint.metadata, "data.height", path), "x", spec.in_channels,
      " the checkpoint ", path, " was trained on");

  Generator gen(0);
  const std::shared_ptr<nn::Module> model = models::make_model(spec, gen);
  io::load_weights(checkpoint, *model, ema);
  model->to(runtime.device);
  data::LoaderOptions options;
  options.batch_size = 256, options.shuffle = false, options.augment = false;
  options.augmentation.mean = io::metadata_floats(checkpoint.metadata, "data.mean", path);
  options.augmentation.std = io::metadata_floats(checkpoint.metadata, "data.std", path);
  data::DataLoader loader(set, options);
  const Evaluation result = evaluate(*model, loader, runtime.device, spec.classes, tta);

  const auto n = static_cast<size_t>(spec.classes);
  int64_t correct = 0;
  for (size_t c = 0; c < n; ++c) correct += result.confusion[c][c];
  const double accuracy = static_cast<double>(correct) / static_cast<double>(set.size());
  const double loss = result.loss_sum / static_cast<double>(set.size());
  std::printf("%s%s on %s (%s, %lld images%s): loss %.4f, accuracy %.4f\n", path.c_str(),
              ema ? " (moving average)" : "", data_root.c_str(), split_text.c_str(),
              static_cast<long long>(set.size()), tta == examples::Tta::flip ? ", flip TTA" : "",
              loss, accuracy);
  std::printf("\nper class (accuracy, images):\n");
  io::JsonValue::Array per_class, matrix;
  for (size_t c = 0; c < n; ++c) {
    int64_t total = 0;
    io::JsonValue::Array row;
    for (size_t p = 0; p < n; ++p) {
      total += result.confusion[c][p];
      row.emplace_back(result.confusion[c][p]);
    }
    const double class_accuracy = total ? static_cast<double>(result.confusion[c][c]) / total : 0;
    std::printf("  %-16s %.4f  %lld\n", classes[c].c_str(), class_accuracy,
                static_cast<long long>(total));
    per_class.emplace_back(class_accuracy);
    matrix.emplace_back(row);
  }
  std::printf("\nconfusion matrix (rows: true class, columns: predicted, in the order above):\n");
  for (size_t c = 0; c < n; ++c) {
    for (size_t p = 0; p < n; ++p)
      std::printf("%s%6lld", p ? " " : "  ", static_cast<long long>(result.confusion[c][p]));
    std::printf("\n");
  }
  if (!flags.str("json").empty()) {
    io::JsonValue::Array names;
    for (const std::string& name : classes) names.emplace_back(name);
    const io::JsonValue out(io::JsonValue::Object{{"checkpoint", io::JsonValue(path)},
                                                  {"data", io::JsonValue(data_root)},
                                                  {"split", io::JsonValue(split_text)},
                                                  {"ema", io::JsonValue(ema)},
                                                  {"tta", io::JsonValue(examples::to_string(tta))},
                                                  {"images", io::JsonValue(set.size())},
                                                  {"loss", io::JsonValue(loss)},
                                                  {"accuracy", io::JsonValue(accuracy)},
                                                  {"classes", io::JsonValue(names)},
                                                  {"class_accuracy", io::JsonValue(per_class)},
                                                  {"confusion", io::JsonValue(matrix)}});
    std::ofstream file(flags.str("json"), std::ios::trunc);
    file << io::to_json(out) << "\n" << std::flush;
    DL_CHECK(file, "cannot write ", flags.str("json"));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "evaluate: error: " << e.what() << "\n";
    return 1;
  }
}
