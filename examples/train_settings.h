// The train command's settings: TrainConfig, and one table giving each setting its flag, help
// line, parsing, range check, the choices it applies to, and what a resume does with it. The
// flag declarations, the parsing, the validation, the applicability check, the settings a
// checkpoint records and the resume rules all derive from that table. Named recipes are complete
// sets of defaults over it (--recipe).
#pragma once
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "engine/data/augment.h"
#include "engine/io/checkpoint.h"
#include "engine/io/json.h"
#include "engine/optim.h"
#include "examples/evaluation.h"
#include "examples/runtime.h"
#include "models/registry.h"

namespace dl::cli {
class Flags;
}

namespace dl::examples {

enum class OptimizerKind { adamw, sgd };
enum class ProgressMode { automatic, on, off };  // automatic: a bar on a terminal, lines elsewhere
// automatic: CIFAR-10 with the ConvMixer recipe's published statistics, other data with its own;
// symmetric: mean 0.5 and std 0.5 per channel, [0, 1] to [-1, 1] (torchvision's common choice).
enum class Normalization { automatic, symmetric };

// The defaults are the convmixer-cifar10 recipe's.
struct TrainConfig {
  std::string recipe = "convmixer-cifar10";  // the named recipe the run started from
  std::string data = "data/cifar10";         // data set root (CIFAR-10 binary, image folders, IDX)
  models::ModelSpec model;                   // classes and in_channels are taken from the data
  int64_t epochs = 25, batch = 512;          // batch: the global batch, split over the ranks
  bool drop_last = false;
  bool sync_bn = false;
  OptimizerKind optimizer = OptimizerKind::adamw;
  double lr = 0.05, weight_decay = 0.005, momentum = 0.9;
  bool nesterov = false;
  optim::Schedule schedule = optim::Schedule::onecycle;
  int64_t warmup_epochs = 0;
  float label_smoothing = 0.0f;
  double clip_grad = 0.0;  // 0: off
  double ema = 0.0;        // the decay of the weights' moving average; 0: none kept
  Precision precision = Precision::fp32;
  bool tf32 = false;
  std::string device = "auto";   // auto, cuda or cpu
  int threads = 0, workers = 0;  // 0: see train --help
  bool data_on_device = false;   // the data set in GPU memory, batches augmented there
  uint64_t seed = 0;
  int64_t subset = 0, test_subset = 0, eval_every = 1;
  Tta tta = Tta::none;
  // RandAugment N 2 M 12 (the engine's own default is off); mean/std are filled in from the data.
  data::AugmentConfig augmentation{.randaugment_n = 2, .randaugment_m = 12};
  Normalization normalize = Normalization::automatic;
  std::string cache_dir;
  // A new run's initial model weights from this checkpoint (fine-tuning); empty: random. Only the
  // number of classes may differ: the tensors it shapes (the classifier) start afresh.
  std::string init_from;
  // Empty: a new runs/<model>-<UTC date-time>. With `resume`: empty (or the checkpoint's own
  // directory) continues the run there; another directory continues it into that one (a branch).
  std::string checkpoint_dir;
  std::string resume;  // a checkpoint file or run directory; empty: a new run
  ProgressMode progress = ProgressMode::automatic;
  int64_t stop_after_steps = 0;    // stop with a checkpoint after this many steps of this run
  double save_every_minutes = 10;  // also checkpoint mid-epoch this often (0: epoch ends only)
  std::string command;             // recorded in the checkpoint's metadata
};

// What a resume does with a setting.
enum class Scope {
  run,         // recorded in the checkpoint; a resume restores it and refuses another value
  free,        // recorded; a resume restores it unless given: it does not change what is computed
  invocation,  // this invocation's own (the machine, the terminal, where it stops and writes)
};

struct Setting {
  std::string name;  // the flag, without "--"
  std::string help;
  Scope scope;
  std::function<std::string(const TrainConfig&)> text;          // the value as the flag spells it
  std::function<void(TrainConfig&, const std::string&)> parse;  // throws naming the flag
  std::function<void(const TrainConfig&)>
      check;  // the value's range, naming the flag; may be empty
  std::function<bool(const TrainConfig&)> applies;  // empty: always
  std::string applies_when;                         // e.g. "with --optimizer sgd"
};

const std::vector<Setting>& train_settings();

// A named complete set of defaults: the settings it gives, as flag texts, over TrainConfig's
// (which are convmixer-cifar10's); any flag given beside it overrides that one setting.
struct Recipe {
  std::string name, origin;
  std::vector<std::pair<std::string, std::string>> settings;
};
const std::vector<Recipe>& recipes();
// TrainConfig with the recipe's settings; an unknown name is an error listing the known ones.
TrainConfig recipe_config(const std::string& name);
// The recipes, what each sets and where it comes from, for train --help.
std::string describe_recipes();

// Declares every setting as a flag, with the default recipe's values as the defaults.
void declare_flags(cli::Flags& flags);

// What an invocation asks for: the settings, and the names of those it gave. On --resume the
// others are taken from the run.
struct TrainRequest {
  TrainConfig config;
  std::set<std::string> given;
};
// The flags' values (the recipe's where not given), each parsed (an error names its flag).
TrainRequest request_from(const cli::Flags& flags);

// Every check that needs neither the data nor the device, each naming its flag.
void validate(const TrainConfig& config);
// The range checks of the settings named in `given` only (a resume's, before the run's are known).
void check_given(const TrainConfig& config, const std::set<std::string>& given);
// A given setting that does not apply to the config's choices is refused, e.g. "--momentum only
// applies with --optimizer sgd".
void check_applicable(const TrainConfig& config, const std::set<std::string>& given);

// The settings a checkpoint records (run and free scope), as flag texts: its "flags" metadata.
io::JsonValue recorded_settings(const TrainConfig& config);
// A resumed run's config: `request`'s invocation settings and given ones, every other setting as
// the checkpoint records it, or, where it records none (a checkpoint older than the setting), as
// TrainConfig's default (the behaviour before the setting existed). Given run settings that
// differ from the run's are refused, all named in one message, except a larger --epochs, which
// extends the run (its schedule is then recomputed over the new total, as timm does on resume);
// a given setting that does not apply is refused too.
TrainConfig resumed_config(const TrainRequest& request, const io::Checkpoint& checkpoint);

}  // namespace dl::examples
