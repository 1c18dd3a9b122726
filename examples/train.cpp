// train: trains a registered model (ConvMixer by default) on an image data set, the engine's
// main job. Defaults reproduce the ConvMixer CIFAR-10 recipe (ConvMixer-256/8, k 5, p 2, AdamW
// lr 0.05 one-cycle, wd 0.005, batch 512, 25 epochs, RandAugment N 2 M 12).
// Each epoch: a progress bar (plain lines when not a terminal), one summary line, one JSON line
// appended to the metrics file, and an atomic checkpoint; Ctrl-C writes a checkpoint at the
// current batch and exits, and --resume continues from it (bit-identical on the CPU).
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <iostream>
#include <limits>
#include <set>

#include "engine/error.h"
#include "engine/io/checkpoint.h"
#include "engine/io/json.h"
#include "examples/cli.h"
#include "examples/trainer.h"

using namespace dl;

namespace {

// The first Ctrl-C stops at the next step with a checkpoint; a second one ends the process.
void on_signal(int signal) {
  examples::request_stop();
  std::signal(signal, SIG_DFL);
}

// Flags that only apply to some settings: giving them elsewhere is a mistake worth reporting.
void reject_inapplicable(const cli::Flags& f) {
  auto check = [&](const char* flag, bool applies, const char* when) {
    DL_CHECK(!f.given(flag) || applies, "--", flag, " only applies ", when);
  };
  check("warmup-epochs", f.str("schedule") == "cosine", "with --schedule cosine");
  check("momentum", f.str("optimizer") == "sgd", "with --optimizer sgd");
  check("nesterov", f.str("optimizer") == "sgd", "with --optimizer sgd");
  check("scale", f.str("crop") == "resized", "with --crop resized");
  check("ra-m", f.integer("ra-n") > 0, "when --ra-n is above 0");
  check("kernel", f.str("model") == "convmixer", "with --model convmixer");
  check("patch", f.str("model") == "convmixer", "with --model convmixer");
}

// Settings of this invocation only, never taken from the checkpoint: the machine's (device,
// threads, workers), the terminal's, and where this invocation stops and writes (a
// --checkpoint-dir other than the run's continues the run there, leaving the original as it was).
const std::set<std::string> kPerInvocation = {
    "device", "threads", "workers", "progress", "resume", "stop-after-steps", "checkpoint-dir"};
// Taken from the checkpoint when not given, and free to differ when given: they do not change what
// the run computes.
const std::set<std::string> kFreeOnResume = {"data", "cache-dir", "save-every-minutes"};

// On --resume, flags not given take the values the run was started with; given ones must apply
// to the run's settings and agree with them.
void restore_run_flags(cli::Flags& f) {
  const std::string path = examples::checkpoint_file(f.str("resume"));
  const auto metadata = io::read_checkpoint_metadata(path);
  auto recorded = metadata.find("flags");
  DL_CHECK(recorded != metadata.end(), path, ": the checkpoint does not record its run's flags");
  const io::JsonValue run_flags = io::parse_json(recorded->second);
  for (const auto& [name, value] : run_flags.as_object())
    if (!kPerInvocation.count(name) && !f.given(name)) f.set(name, value.as_string());
  reject_inapplicable(f);
  std::string conflicts;
  for (const auto& [name, value] : run_flags.as_object()) {
    const std::string& saved = value.as_string();
    if (f.given(name) && f.str(name) != saved && !kPerInvocation.count(name) &&
        !kFreeOnResume.count(name))
      conflicts += "\n  --" + name + " " + f.str(name) + " (the run used " + saved + ")";
  }
  DL_CHECK(conflicts.empty(), "these flags differ from the run in ", path, ":", conflicts,
           "\nleave them out to continue the run as it was started",
           conflicts.find("\n  --epochs ") != std::string::npos
               ? " (--epochs cannot change: the learning-rate schedule depends on "
                 "the total; a longer run is a new run)"
               : "");
}

void declare_flags(cli::Flags& f) {
  f.add("data", "data/cifar10", "data set root: CIFAR-10 binary, image folders or IDX files");
  f.add("model", "convmixer", "model: convmixer or resnet");
  f.add("dim", "256", "ConvMixer channels (resnet: base width)");
  f.add("depth", "8", "ConvMixer layers (resnet: blocks per stage)");
  f.add("kernel", "5", "ConvMixer depthwise kernel size (odd)");
  f.add("patch", "2", "ConvMixer patch size");
  f.add("epochs", "25", "training epochs");
  f.add("batch", "512", "images per step");
  f.add("drop-last", "false", "drop the last partial batch of each epoch");
  f.add("optimizer", "adamw", "adamw or sgd");
  f.add("lr", "0.05", "peak learning rate");
  f.add("wd", "0.005", "weight decay (decoupled for adamw)");
  f.add("momentum", "0.9", "sgd momentum");
  f.add("nesterov", "false", "sgd Nesterov momentum");
  f.add("schedule", "onecycle", "onecycle (the recipe's piecewise-linear), cosine or constant");
  f.add("warmup-epochs", "0", "cosine: linear warm-up epochs");
  f.add("label-smoothing", "0", "cross-entropy label smoothing");
  f.add("clip-grad", "0", "clip the gradient norm to this value (0: off)");
  f.add("precision", "fp32", "fp32 or bf16 (bf16 mixed precision needs the CUDA path)");
  f.add("tf32", "false", "allow TF32 in fp32 GEMMs and convolutions (CUDA path)");
  f.add("device", "auto", "auto, cuda or cpu");
  f.add("threads", "0", "CPU threads (0: all cores)");
  f.add("workers", "0",
        "data-loader threads (0: all cores but two on the GPU, where augmentation must keep up "
        "with the step; 2 on the CPU, which the step needs)");
  f.add("seed", "0", "seed for initialisation, shuffling and augmentation");
  f.add("subset", "0", "train on this many images only (0: all), spread over the classes");
  f.add("test-subset", "0", "evaluate on this many test images only (0: all)");
  f.add("eval-every", "1", "evaluate on the test split every N epochs (and after the last)");
  f.add("crop", "none", "none, random (pad 4 + crop) or resized (RandomResizedCrop)");
  f.add("scale", "0.08,1",
        "resized crop: the range of the crop's area fraction, MIN,MAX (or MIN: up to 1)");
  f.add("hflip", "true", "random horizontal flips");
  f.add("ra-n", "2", "RandAugment operations per image (0: off)");
  f.add("ra-m", "12", "RandAugment magnitude (0..30)");
  f.add("jitter", "0", "colour jitter strength (0: off)");
  f.add("reprob", "0", "random-erasing probability");
  f.add("cache-dir", "", "cache the decoded data set here (empty: no cache)");
  f.add("checkpoint-dir", "",
        "checkpoints and metrics are written here (empty: a new runs/<model>-<UTC date-time>)");
  f.add("resume", "",
        "continue from this checkpoint (a file, or a checkpoint directory), with the run's flags; "
        "with a new --checkpoint-dir the run continues there and the original stays as it was");
  f.add("progress", "auto", "progress bar: auto (on a terminal), on or off");
  f.add("save-every-minutes", "10",
        "also write the checkpoint mid-epoch this often, so a crash loses at most this much "
        "(0: at epoch ends only)");
  f.add("stop-after-steps", "0",
        "stop with a checkpoint after this many steps (0: run to the end)");
}

// An integer flag that must fit an int (the range checks are the trainer's).
int int_flag(const cli::Flags& f, const std::string& name) {
  return static_cast<int>(
      f.integer(name, std::numeric_limits<int>::min(), std::numeric_limits<int>::max()));
}

examples::TrainConfig config_from(const cli::Flags& f, int argc, char** argv) {
  examples::TrainConfig c;
  c.data = f.str("data");
  c.model.name = f.str("model");
  c.model.dim = f.integer("dim"), c.model.depth = f.integer("depth");
  c.model.kernel = f.integer("kernel"), c.model.patch = f.integer("patch");
  c.epochs = f.integer("epochs"), c.batch = f.integer("batch");
  c.drop_last = f.boolean("drop-last");
  c.optimizer = f.str("optimizer");
  c.lr = f.real("lr"), c.weight_decay = f.real("wd"), c.momentum = f.real("momentum");
  c.nesterov = f.boolean("nesterov");
  c.schedule = f.str("schedule");
  c.warmup_epochs = f.integer("warmup-epochs");
  c.label_smoothing = static_cast<float>(f.real("label-smoothing"));
  c.clip_grad = f.real("clip-grad");
  c.precision = f.str("precision");
  c.tf32 = f.boolean("tf32");
  c.device = f.str("device");
  c.threads = int_flag(f, "threads");
  c.workers = int_flag(f, "workers");
  c.seed = static_cast<uint64_t>(f.integer("seed", 0));
  c.subset = f.integer("subset"), c.test_subset = f.integer("test-subset");
  c.eval_every = f.integer("eval-every");
  c.augmentation.crop = f.str("crop");
  const auto [scale_min, scale_max] = f.real_range("scale", 1.0);
  c.augmentation.resized_scale_min = static_cast<float>(scale_min);
  c.augmentation.resized_scale_max = static_cast<float>(scale_max);
  c.augmentation.hflip = f.boolean("hflip");
  c.augmentation.randaugment_n = int_flag(f, "ra-n");
  c.augmentation.randaugment_m = int_flag(f, "ra-m");
  c.augmentation.jitter = static_cast<float>(f.real("jitter"));
  c.augmentation.erasing_p = static_cast<float>(f.real("reprob"));
  c.cache_dir = f.str("cache-dir");
  c.checkpoint_dir = f.str("checkpoint-dir");
  c.resume = f.str("resume");
  c.progress = f.str("progress");
  c.stop_after_steps = f.integer("stop-after-steps");
  c.save_every_minutes = f.real("save-every-minutes");
  for (int i = 0; i < argc; ++i) {
    if (i) c.command += ' ';
    c.command += argv[i];
  }
  c.flags = f.values();
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    cli::Flags flags("train",
                     "Trains ConvMixer (or another registered model) on an image data set.");
    declare_flags(flags);
    if (!flags.parse(argc, argv)) return 0;
    if (flags.str("resume").empty())
      reject_inapplicable(flags);
    else
      restore_run_flags(flags);
    // Recorded absolute, so that a resume from another directory finds them.
    for (const char* path_flag : {"data", "cache-dir"})
      if (!flags.str(path_flag).empty())
        flags.set(path_flag,
                  std::filesystem::absolute(flags.str(path_flag)).lexically_normal().string());
    const examples::TrainConfig config = config_from(flags, argc, argv);
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    return examples::train(config);
  } catch (const std::exception& e) {
    // A new line first when a progress bar may be on the terminal's current line.
    std::cerr << (isatty(STDERR_FILENO) ? "\n" : "") << "train: error: " << e.what() << "\n";
    return 1;
  }
}
