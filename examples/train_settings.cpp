#include "examples/train_settings.h"

#include <charconv>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <utility>

#include "engine/error.h"
#include "examples/cli.h"

namespace dl::examples {

namespace {

// Upper bound of --threads and --workers: beyond it a thread count is a typo, and the system
// refuses the threads anyway.
constexpr int kMaxThreads = 1024;
// Bounds that keep the step and schedule arithmetic (epochs x steps per epoch) far from overflow.
constexpr int64_t kMaxEpochs = 1'000'000, kMaxBatch = 1 << 20;

// The shortest text that reads back as the same number (0.05, 1e-09).
template <class T>
std::string number_text(T value) {
  char buf[64];
  const auto [end, error] = std::to_chars(buf, buf + sizeof buf, value);
  DL_CHECK(error == std::errc(), "internal: cannot format a number");
  return std::string(buf, end);
}

template <class E>
using Choices = std::vector<std::pair<E, std::string>>;

const Choices<OptimizerKind> kOptimizers = {{OptimizerKind::adamw, "adamw"},
                                            {OptimizerKind::sgd, "sgd"}};
const Choices<optim::Schedule> kSchedules = {{optim::Schedule::onecycle, "onecycle"},
                                             {optim::Schedule::cosine, "cosine"},
                                             {optim::Schedule::linear, "linear"},
                                             {optim::Schedule::constant, "constant"}};
const Choices<data::Crop> kCrops = {
    {data::Crop::none, "none"}, {data::Crop::random, "random"}, {data::Crop::resized, "resized"}};
const Choices<Normalization> kNormalizations = {{Normalization::automatic, "auto"},
                                                {Normalization::symmetric, "symmetric"}};
const Choices<ProgressMode> kProgressModes = {
    {ProgressMode::automatic, "auto"}, {ProgressMode::on, "on"}, {ProgressMode::off, "off"}};

template <class E>
std::string choice_text(E value, const Choices<E>& choices) {
  for (const auto& [choice, name] : choices)
    if (choice == value) return name;
  throw Error("internal: a choice without a name");
}

template <class E>
E parse_choice(const std::string& flag, const std::string& text, const Choices<E>& choices) {
  std::string names;
  for (size_t i = 0; i < choices.size(); ++i) {
    names += i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ";
    names += choices[i].second;
    if (choices[i].second == text) return choices[i].first;
  }
  throw Error("--" + flag + " must be " + names + ", got '" + text + "'");
}

// Where a setting's row begins: its flag, what a resume does with it, and its help line.
struct Row {
  const char* name;
  Scope scope;
  const char* help;
};

// A number's allowed values: outside [min, max] it is refused with "--<flag> <phrase>, got <v>".
struct Range {
  double min, max;
  const char* phrase;
};

template <class T>
std::function<void(const TrainConfig&)> range_check(const std::string& flag, Range range,
                                                    std::function<T(const TrainConfig&)> value) {
  return [=](const TrainConfig& c) {
    const T v = value(c);
    DL_CHECK(static_cast<double>(v) >= range.min && static_cast<double>(v) <= range.max, "--", flag,
             " ", range.phrase, ", got ", v);
  };
}

// In each builder, `field` is a generic lambda returning the setting's member of a TrainConfig,
// const or not.

template <class T, class Field>
Setting integer(Row row, Field field, Range range) {
  const std::string flag = row.name;
  return {row.name,
          row.help,
          row.scope,
          [field](const TrainConfig& c) { return number_text(field(c)); },
          [field, flag, range](TrainConfig& c, const std::string& text) {
            const int64_t v = cli::parse_integer(flag, text);
            DL_CHECK(std::in_range<T>(v), "--", flag, " ", range.phrase, ", got ", v);
            field(c) = static_cast<T>(v);
          },
          range_check<T>(flag, range, [field](const TrainConfig& c) { return field(c); }),
          {},
          {}};
}

template <class T, class Field>
Setting real(Row row, Field field, Range range) {
  const std::string flag = row.name;
  return {row.name,
          row.help,
          row.scope,
          [field](const TrainConfig& c) { return number_text(field(c)); },
          [field, flag](TrainConfig& c, const std::string& text) {
            const double v = cli::parse_real(flag, text);
            DL_CHECK(std::abs(v) <= std::numeric_limits<T>::max(), "--", flag, " ", text,
                     " is out of range (at most ", std::numeric_limits<T>::max(), ")");
            field(c) = static_cast<T>(v);
          },
          range_check<T>(flag, range, [field](const TrainConfig& c) { return field(c); }),
          {},
          {}};
}

template <class Field>
Setting boolean(Row row, Field field) {
  const std::string flag = row.name;
  return {row.name,
          row.help,
          row.scope,
          [field](const TrainConfig& c) { return std::string(field(c) ? "true" : "false"); },
          [field, flag](TrainConfig& c, const std::string& text) {
            field(c) = cli::parse_boolean(flag, text);
          },
          {},
          {},
          {}};
}

template <class E, class Field>
Setting choice(Row row, Field field, const Choices<E>& choices) {
  const std::string flag = row.name;
  return {row.name,
          row.help,
          row.scope,
          [field, &choices](const TrainConfig& c) { return choice_text(field(c), choices); },
          [field, flag, &choices](TrainConfig& c, const std::string& text) {
            field(c) = parse_choice(flag, text, choices);
          },
          {},
          {},
          {}};
}

// A text setting; `absolute_path`: a path recorded absolute, so a resume from elsewhere finds it.
template <class Field>
Setting text(Row row, Field field, bool absolute_path = false) {
  return {row.name,
          row.help,
          row.scope,
          [field](const TrainConfig& c) { return field(c); },
          [field, absolute_path](TrainConfig& c, const std::string& text) {
            field(c) = absolute_path && !text.empty()
                           ? std::filesystem::absolute(text).lexically_normal().string()
                           : text;
          },
          {},
          {},
          {}};
}

// The setting, given only where `applies` holds ("--<flag> only applies <when>" elsewhere).
Setting only(Setting setting, std::function<bool(const TrainConfig&)> applies, std::string when) {
  setting.applies = std::move(applies);
  setting.applies_when = std::move(when);
  return setting;
}

const std::vector<Recipe> kRecipes = {
    {"convmixer-cifar10",
     "the ConvMixer authors' CIFAR-10 recipe (locuslab/convmixer-cifar10, train.py --lr-max=0.05 "
     "--ra-n=2 --ra-m=12 --wd=0.005 --scale=1.0 --jitter=0 --reprob=0: about 92.5% in 25 "
     "epochs)",
     {{"model", "convmixer"},
      {"dim", "256"},
      {"depth", "8"},
      {"kernel", "5"},
      {"patch", "2"},
      {"epochs", "25"},
      {"batch", "512"},
      {"optimizer", "adamw"},
      {"lr", "0.05"},
      {"wd", "0.005"},
      {"schedule", "onecycle"},
      {"crop", "none"},
      {"hflip", "true"},
      {"ra-n", "2"},
      {"ra-m", "12"},
      {"jitter", "0"},
      {"reprob", "0"},
      {"label-smoothing", "0"},
      {"normalize", "auto"}}},
    {"labml",
     "labml_nn's ConvMixer experiment, where this project started (labml_nn/conv_mixer/"
     "experiment.py and its CIFAR-10 configs): Adam at a constant 2.5e-4 without weight decay "
     "(AdamW's update with --wd 0 is Adam's), training images padded by 4, cropped and flipped, "
     "test images as they are, both normalised to [-1, 1]",
     {{"model", "convmixer"},
      {"dim", "256"},
      {"depth", "8"},
      {"kernel", "7"},
      {"patch", "2"},
      {"epochs", "150"},
      {"batch", "64"},
      {"optimizer", "adamw"},
      {"lr", "0.00025"},
      {"wd", "0"},
      {"schedule", "constant"},
      {"crop", "random"},
      {"hflip", "true"},
      {"ra-n", "0"},
      {"jitter", "0"},
      {"reprob", "0"},
      {"label-smoothing", "0"},
      {"normalize", "symmetric"}}},
};

const Recipe& find_recipe(const std::string& name) {
  std::string names;
  for (const Recipe& r : kRecipes) {
    if (r.name == name) return r;
    names += (names.empty() ? "" : " or ") + r.name;
  }
  throw Error("--recipe must be " + names + ", got '" + name + "'");
}

bool is_sgd(const TrainConfig& c) {
  return c.optimizer == OptimizerKind::sgd;
}
bool is_convmixer(const TrainConfig& c) {
  return c.model.name == "convmixer";
}

constexpr double kNoMax = std::numeric_limits<double>::infinity();
// The model flags' ranges are the model registry's bounds, spelled out in their messages.
static_assert(models::kMaxDim == 16384 && models::kMaxDepth == 1024 && models::kMaxKernel == 63 &&
              models::kMaxPatch == 1024);

std::vector<Setting> make_table() {
  using S = Scope;
  const Range positive{1, kNoMax, "must be positive"};
  const Range zero_or_positive{0, kNoMax, "must be 0 (all) or positive"};
  const Range non_negative{0, kNoMax, "must be non-negative"};
  const Range off_or_positive{0, kNoMax, "must be 0 (off) or positive"};
  const Range unit{0, 1, "must be in [0, 1]"};
  return {
      Setting{"recipe",
              "a complete set of defaults (see above); the flags given beside it override them",
              S::run,
              [](const TrainConfig& c) { return c.recipe; },
              // Any name: a run recorded with a recipe since renamed still resumes. The command
              // line's is checked by request_from.
              [](TrainConfig& c, const std::string& text) { c.recipe = text; },
              {},
              {},
              {}},
      text(
          {"data", S::free, "data set root: CIFAR-10 binary, image folders or IDX files"},
          [](auto& c) -> auto& { return c.data; }, true),
      text(
          {"model", S::run, "model: convmixer or resnet"},
          [](auto& c) -> auto& { return c.model.name; }),
      integer<int64_t>({"dim", S::run, "ConvMixer channels (resnet: base width)"},
                       [](auto& c) -> auto& { return c.model.dim; },
                       {1, models::kMaxDim, "must be in [1, 16384]"}),
      integer<int64_t>({"depth", S::run, "ConvMixer layers (resnet: blocks per stage)"},
                       [](auto& c) -> auto& { return c.model.depth; },
                       {1, models::kMaxDepth, "must be in [1, 1024]"}),
      only(integer<int64_t>({"kernel", S::run, "ConvMixer depthwise kernel size (odd)"},
                            [](auto& c) -> auto& { return c.model.kernel; },
                            {1, models::kMaxKernel, "must be in [1, 63]"}),
           is_convmixer, "with --model convmixer"),
      only(integer<int64_t>({"patch", S::run, "ConvMixer patch size"},
                            [](auto& c) -> auto& { return c.model.patch; },
                            {1, models::kMaxPatch, "must be in [1, 1024]"}),
           is_convmixer, "with --model convmixer"),
      integer<int64_t>({"epochs", S::run, "training epochs"},
                       [](auto& c) -> auto& { return c.epochs; },
                       {1, kMaxEpochs, "must be in [1, 1000000]"}),
      integer<int64_t>({"batch", S::run, "images per step"},
                       [](auto& c) -> auto& { return c.batch; },
                       {1, kMaxBatch, "must be in [1, 1048576]"}),
      boolean(
          {"drop-last", S::run, "drop the last partial batch of each epoch"},
          [](auto& c) -> auto& { return c.drop_last; }),
      boolean(
          {"sync-bn", S::run,
           "data-parallel (mpirun): BatchNorm normalises with the global batch's statistics "
           "(SyncBatchNorm); without it, each rank with its own slice's"},
          [](auto& c) -> auto& { return c.sync_bn; }),
      choice(
          {"optimizer", S::run, "adamw or sgd"}, [](auto& c) -> auto& { return c.optimizer; },
          kOptimizers),
      real<double>(
          {"lr", S::run, "peak learning rate"}, [](auto& c) -> auto& { return c.lr; },
          non_negative),
      real<double>(
          {"wd", S::run, "weight decay (decoupled for adamw)"},
          [](auto& c) -> auto& { return c.weight_decay; }, non_negative),
      only(real<double>(
               {"momentum", S::run, "sgd momentum"}, [](auto& c) -> auto& { return c.momentum; },
               non_negative),
           is_sgd, "with --optimizer sgd"),
      only(boolean(
               {"nesterov", S::run, "sgd Nesterov momentum"},
               [](auto& c) -> auto& { return c.nesterov; }),
           is_sgd, "with --optimizer sgd"),
      choice(
          {"schedule", S::run,
           "onecycle (the recipe's piecewise-linear, by whole epochs), cosine, linear (warm-up, "
           "then straight down to 0, by steps: for short runs) or constant"},
          [](auto& c) -> auto& { return c.schedule; }, kSchedules),
      only(
          integer<int64_t>(
              {"warmup-epochs", S::run, "cosine and linear: linear warm-up epochs"},
              [](auto& c) -> auto& { return c.warmup_epochs; }, non_negative),
          [](const TrainConfig& c) {
            return c.schedule == optim::Schedule::cosine || c.schedule == optim::Schedule::linear;
          },
          "with --schedule cosine or linear"),
      real<float>(
          {"label-smoothing", S::run, "cross-entropy label smoothing"},
          [](auto& c) -> auto& { return c.label_smoothing; }, unit),
      real<double>(
          {"clip-grad", S::run, "clip the gradient norm to this value (0: off)"},
          [](auto& c) -> auto& { return c.clip_grad; }, off_or_positive),
      real<double>(
          {"ema", S::run,
           "also keep, evaluate and checkpoint an exponential moving average of the weights and "
           "BatchNorm statistics with this decay per step, e.g. 0.999 (0: off)"},
          [](auto& c) -> auto& { return c.ema; },
          {0, std::nextafter(1.0, 0.0), "must be 0 (off) or in (0, 1)"}),
      Setting{"precision",
              "fp32 or bf16 (bf16 mixed precision: the GPU, or a CPU with AVX512-BF16)",
              S::run,
              [](const TrainConfig& c) { return to_string(c.precision); },
              [](TrainConfig& c, const std::string& text) {
                c.precision = parse_precision("precision", text);
              },
              {},
              {},
              {}},
      boolean(
          {"tf32", S::run, "allow TF32 in fp32 GEMMs and convolutions (CUDA path)"},
          [](auto& c) -> auto& { return c.tf32; }),
      text(
          {"device", S::invocation, "auto, cuda or cpu"},
          [](auto& c) -> auto& { return c.device; }),
      integer<int>({"threads", S::invocation, "CPU threads (0: all cores)"},
                   [](auto& c) -> auto& { return c.threads; },
                   {0, kMaxThreads, "must be 0 (all cores) or in [1, 1024]"}),
      integer<int>({"workers", S::invocation,
                    "data-loader threads (0: all cores but two on the GPU, where augmentation "
                    "must keep up with the step; 2 on the CPU, which the step needs)"},
                   [](auto& c) -> auto& { return c.workers; },
                   {0, kMaxThreads, "must be 0 (automatic) or in [1, 1024]"}),
      boolean(
          {"data-on-device", S::invocation,
           "keep the decoded data set in GPU memory and augment batches there (the same "
           "images as the CPU workers make); not yet run on a GPU"},
          [](auto& c) -> auto& { return c.data_on_device; }),
      integer<uint64_t>(
          {"seed", S::run, "seed for initialisation, shuffling and augmentation"},
          [](auto& c) -> auto& { return c.seed; }, non_negative),
      integer<int64_t>(
          {"subset", S::run, "train on this many images only (0: all), spread over the classes"},
          [](auto& c) -> auto& { return c.subset; }, zero_or_positive),
      integer<int64_t>(
          {"test-subset", S::run, "evaluate on this many test images only (0: all)"},
          [](auto& c) -> auto& { return c.test_subset; }, zero_or_positive),
      integer<int64_t>(
          {"eval-every", S::run, "evaluate on the test split every N epochs (and after the last)"},
          [](auto& c) -> auto& { return c.eval_every; }, positive),
      Setting{"tta",
              "test-time augmentation in evaluation: none, or flip (the mean of the logits of "
              "each image and its horizontal flip)",
              S::run,
              [](const TrainConfig& c) { return to_string(c.tta); },
              [](TrainConfig& c, const std::string& text) { c.tta = parse_tta("tta", text); },
              {},
              {},
              {}},
      choice(
          {"crop", S::run, "none, random (pad 4 + crop) or resized (RandomResizedCrop)"},
          [](auto& c) -> auto& { return c.augmentation.crop; }, kCrops),
      only(
          Setting{"scale",
                  "resized crop: the range of the crop's area fraction, MIN,MAX (or MIN: up to 1)",
                  S::run,
                  [](const TrainConfig& c) {
                    return number_text(c.augmentation.resized_scale_min) + "," +
                           number_text(c.augmentation.resized_scale_max);
                  },
                  [](TrainConfig& c, const std::string& text) {
                    const auto [min, max] = cli::parse_real_range("scale", text, 1.0);
                    c.augmentation.resized_scale_min = static_cast<float>(min);
                    c.augmentation.resized_scale_max = static_cast<float>(max);
                  },
                  [](const TrainConfig& c) {
                    const data::AugmentConfig& a = c.augmentation;
                    DL_CHECK(a.resized_scale_min > 0 &&
                                 a.resized_scale_min <= a.resized_scale_max &&
                                 a.resized_scale_max <= 1,
                             "--scale MIN,MAX must satisfy 0 < MIN <= MAX <= 1, got ",
                             a.resized_scale_min, ",", a.resized_scale_max);
                  },
                  {},
                  {}},
          [](const TrainConfig& c) { return c.augmentation.crop == data::Crop::resized; },
          "with --crop resized"),
      boolean(
          {"hflip", S::run, "random horizontal flips"},
          [](auto& c) -> auto& { return c.augmentation.hflip; }),
      integer<int>({"ra-n", S::run, "RandAugment operations per image (0: off)"},
                   [](auto& c) -> auto& { return c.augmentation.randaugment_n; },
                   {0, data::kMaxRandAugmentOps, "must be in [0, 16]"}),
      only(
          integer<int>({"ra-m", S::run, "RandAugment magnitude (0..30)"},
                       [](auto& c) -> auto& { return c.augmentation.randaugment_m; },
                       {0, 30, "must be in [0, 30]"}),
          [](const TrainConfig& c) { return c.augmentation.randaugment_n > 0; },
          "when --ra-n is above 0"),
      real<float>(
          {"jitter", S::run, "colour jitter strength (0: off)"},
          [](auto& c) -> auto& { return c.augmentation.jitter; }, off_or_positive),
      real<float>(
          {"reprob", S::run, "random-erasing probability"},
          [](auto& c) -> auto& { return c.augmentation.erasing_p; }, unit),
      choice(
          {"normalize", S::run,
           "auto (CIFAR-10: the ConvMixer recipe's statistics; other data: its own) or "
           "symmetric (mean 0.5, std 0.5: [0, 1] to [-1, 1])"},
          [](auto& c) -> auto& { return c.normalize; }, kNormalizations),
      text(
          {"init-from", S::run,
           "start a new run from this checkpoint's model weights (a file or run directory; "
           "fine-tuning): only the number of classes may differ, the classifier then starts "
           "afresh (empty: random weights)"},
          [](auto& c) -> auto& { return c.init_from; }, true),
      text(
          {"cache-dir", S::free, "cache the decoded data set here (empty: no cache)"},
          [](auto& c) -> auto& { return c.cache_dir; }, true),
      text(
          {"checkpoint-dir", S::invocation,
           "checkpoints and metrics are written here (empty: a new runs/<model>-<UTC "
           "date-time>)"},
          [](auto& c) -> auto& { return c.checkpoint_dir; }),
      text(
          {"resume", S::invocation,
           "continue from this checkpoint (a file, or a checkpoint directory), with the run's "
           "settings (a larger --epochs extends it); with a new --checkpoint-dir the run "
           "continues there and the original stays as it was"},
          [](auto& c) -> auto& { return c.resume; }),
      choice(
          {"progress", S::invocation, "progress bar: auto (on a terminal), on or off"},
          [](auto& c) -> auto& { return c.progress; }, kProgressModes),
      real<double>(
          {"save-every-minutes", S::free,
           "also write the checkpoint mid-epoch this often, so a crash loses at most "
           "this much (0: at epoch ends only)"},
          [](auto& c) -> auto& { return c.save_every_minutes; }, off_or_positive),
      integer<int64_t>(
          {"stop-after-steps", S::invocation,
           "stop with a checkpoint after this many steps (0: run to the end; a stop exits with "
           "status 130, as after Ctrl-C)"},
          [](auto& c) -> auto& { return c.stop_after_steps; }, off_or_positive),
  };
}

}  // namespace

const std::vector<Setting>& train_settings() {
  static const std::vector<Setting> table = make_table();
  return table;
}

const std::vector<Recipe>& recipes() {
  return kRecipes;
}

TrainConfig recipe_config(const std::string& name) {
  TrainConfig config;
  for (const auto& [flag, value] : find_recipe(name).settings)
    for (const Setting& s : train_settings())
      if (s.name == flag) s.parse(config, value);
  config.recipe = name;
  return config;
}

std::string describe_recipes() {
  std::string out =
      "recipes (--recipe NAME sets each of these; a flag given beside it overrides that one):";
  for (const Recipe& r : kRecipes) {
    out += "\n  " + r.name + (r.name == TrainConfig().recipe ? " (the default)" : "") + ": " +
           r.origin + "\n     ";
    for (const auto& [flag, value] : r.settings) out += " --" + flag + " " + value;
  }
  return out;
}

void declare_flags(cli::Flags& flags) {
  const TrainConfig defaults;
  for (const Setting& s : train_settings()) flags.add(s.name, s.text(defaults), s.help);
}

TrainRequest request_from(const cli::Flags& flags) {
  TrainRequest request{recipe_config(flags.str("recipe")), {}};
  for (const Setting& s : train_settings()) {
    // Not given: the recipe's value, parsed too (a relative default path is recorded absolute).
    s.parse(request.config, flags.given(s.name) ? flags.str(s.name) : s.text(request.config));
    if (flags.given(s.name)) request.given.insert(s.name);
  }
  return request;
}

void validate(const TrainConfig& c) {
  for (const Setting& s : train_settings())
    if (s.check) s.check(c);
  DL_CHECK(c.warmup_epochs <= c.epochs, "--warmup-epochs must lie in [0, --epochs = ", c.epochs,
           "], got ", c.warmup_epochs);
  DL_CHECK(c.schedule != optim::Schedule::linear || c.warmup_epochs < c.epochs,
           "--schedule linear decays after its warm-up: --warmup-epochs must be below --epochs = ",
           c.epochs, ", got ", c.warmup_epochs);
  DL_CHECK(!c.data.empty(), "--data is empty: name the data set's folder");
  models::ModelSpec spec = c.model;
  spec.classes = spec.in_channels = 1;  // stand-ins: both are taken from the data later
  models::validate(spec);
  // The library's own checks: the schedule's, on a stand-in one-step epoch, and the
  // augmentation's settings that have no flag.
  optim::make_schedule(c.schedule, c.lr, c.epochs, 1, c.warmup_epochs);
  data::validate_options(c.augmentation);
}

void check_given(const TrainConfig& config, const std::set<std::string>& given) {
  for (const Setting& s : train_settings())
    if (given.count(s.name) && s.check) s.check(config);
}

void check_applicable(const TrainConfig& config, const std::set<std::string>& given) {
  for (const Setting& s : train_settings())
    DL_CHECK(!given.count(s.name) || !s.applies || s.applies(config), "--", s.name,
             " only applies ", s.applies_when);
}

io::JsonValue recorded_settings(const TrainConfig& config) {
  io::JsonValue::Object out;
  for (const Setting& s : train_settings())
    if (s.scope != Scope::invocation) out.emplace_back(s.name, io::JsonValue(s.text(config)));
  return io::JsonValue(out);
}

TrainConfig resumed_config(const TrainRequest& request, const io::Checkpoint& checkpoint_file) {
  const std::string& checkpoint = checkpoint_file.path;
  std::map<std::string, std::string> recorded_texts;
  for (const auto& [name, value] :
       io::metadata_string_object(checkpoint_file.metadata, "flags", checkpoint))
    recorded_texts[name] = value;
  const TrainConfig before;  // what the run used where it records nothing
  TrainConfig run = request.config;
  for (const Setting& s : train_settings()) {
    if (s.scope == Scope::invocation) continue;
    const auto text = recorded_texts.find(s.name);
    try {
      s.parse(run, text != recorded_texts.end() ? text->second : s.text(before));
    } catch (const Error& e) {
      throw Error(checkpoint + ": its recorded settings are damaged (" + e.what() + ")");
    }
  }
  TrainConfig resumed = run;
  std::string conflicts;
  for (const Setting& s : train_settings()) {
    if (!request.given.count(s.name)) continue;
    const std::string asked = s.text(request.config), used = s.text(run);
    s.parse(resumed, asked);
    // A run may be extended: more epochs, over a schedule recomputed for the new total.
    const bool extends = s.name == "epochs" && resumed.epochs > run.epochs;
    if (s.scope == Scope::run && asked != used && !extends)
      conflicts += "\n  --" + s.name + " " + asked + " (the run used " + used + ")";
  }
  check_applicable(resumed, request.given);
  DL_CHECK(conflicts.empty(), "these flags differ from the run in ", checkpoint, ":", conflicts,
           "\nleave them out to continue the run as it was started",
           conflicts.find("\n  --epochs ") != std::string::npos
               ? " (--epochs can only grow: a longer run continues over a schedule recomputed "
                 "for the new total)"
               : "");
  return resumed;
}

}  // namespace dl::examples
