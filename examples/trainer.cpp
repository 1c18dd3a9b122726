#include "examples/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <streambuf>
#include <thread>

#include "engine/data/augment_batch.h"
#include "engine/data/loader.h"
#include "engine/dist/data_parallel.h"
#include "engine/error.h"
#include "engine/io/checkpoint.h"
#include "engine/io/json.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/runtime.h"
#include "examples/cli.h"
#include "examples/report.h"
#include "examples/run_directory.h"
#include "examples/runtime.h"

namespace dl::examples {

namespace fs = std::filesystem;

namespace {

std::atomic<bool> g_stop_requested{false};

// A CPU run of this many images or more (epochs x images) takes hours: the header says so.
constexpr int64_t kManyImagesForCpu = 1'000'000;

const std::vector<std::string> kCifar10Classes = {
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};

// --workers 0: on the GPU every core but two (of this rank's share of the machine) augments
// (measured on a 16-core H100 machine: 14 workers keep up with the 16k images/s of the fp32 step);
// on the CPU the step needs the cores.
int loader_workers(int requested, Device device, int ranks_here) {
  if (requested > 0) return requested;
  if (device.is_cpu()) return 2;
  const int cores = static_cast<int>(std::thread::hardware_concurrency()) / ranks_here;
  return std::max(2, cores - 2);
}

// The sums of every rank's stats (their own on one rank).
EpochStats summed_over_ranks(dist::Communicator& comm, EpochStats& local) {
  local.flush();
  if (comm.size() == 1) return local;
  std::array<double, 3> sums = {local.loss_sum, static_cast<double>(local.correct),
                                static_cast<double>(local.seen)};
  comm.all_reduce_sum(sums);
  EpochStats all;
  all.loss_sum = sums[0];
  all.correct = std::llround(sums[1]);
  all.seen = std::llround(sums[2]);
  return all;
}

// Loss and accuracy of each model on `loader`'s data in eval mode, in one pass (each rank its
// share, summed); nothing when a stop is requested meanwhile on any rank (an evaluation is
// abandoned, not awaited, so that a stop saves within a step's time).
std::optional<std::vector<EpochStats>> evaluate(const std::vector<nn::Module*>& models,
                                                data::DataLoader& loader, Device device,
                                                DType activations, Tta tta,
                                                dist::Communicator& comm) {
  NoGradGuard no_grad;
  for (nn::Module* model : models) model->eval();
  std::vector<EpochStats> stats(models.size());
  data::Batch batch;
  loader.start_epoch(0);
  while (!g_stop_requested && loader.next(batch)) {
    if (batch.labels.numel() == 0) continue;  // a last batch smaller than the ranks
    for (size_t m = 0; m < models.size(); ++m) {
      const Tensor logits = evaluation_logits(*models[m], batch.images, device, activations, tta);
      stats[m].add(logits, batch.labels, cross_entropy(logits, batch.labels));
    }
  }
  for (nn::Module* model : models) model->train();
  std::array<int64_t, 1> stopped = {g_stop_requested ? 1 : 0};
  comm.all_reduce_max(stopped);
  if (stopped[0]) return std::nullopt;
  for (EpochStats& s : stats) s = summed_over_ranks(comm, s);
  return stats;
}

// FNV-1a over what defines the run (its settings and data), to find ranks started differently.
int64_t run_fingerprint(const std::map<std::string, std::string>& metadata) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const auto& [key, value] : metadata) {
    if (key == "command") continue;
    for (const std::string* part : {&key, &value})
      for (const char ch : *part + '\0')
        h = (h ^ static_cast<unsigned char>(ch)) * 0x100000001b3ull;
  }
  return static_cast<int64_t>(h >> 1);
}

// The name of the first F32 tensor of the model's state, the optimizer's or the moving average's
// (`ema`, may be null) that holds a NaN or an infinity, or "" (one sum of squares per tensor, read
// back once).
std::string first_non_finite(const nn::Module& model, const optim::Optimizer& opt,
                             const nn::Module* ema) {
  std::vector<std::string> names;
  std::vector<Tensor> tensors;
  auto add = [&](const std::string& name, const Tensor& t) {
    if (t.dtype() == DType::f32) {
      names.push_back(name);
      tensors.push_back(t);
    }
  };
  for (const auto& [name, t] : model.state_dict()) add(name, t);
  for (const auto& [name, t] : opt.state_tensors()) add(name, t);
  if (ema)
    for (const auto& [name, t] : ema->state_dict()) add("ema." + name, t);
  const std::vector<double> norms = squared_norms(tensors);
  for (size_t i = 0; i < norms.size(); ++i)
    if (!std::isfinite(norms[i])) return "'" + names[i] + "'";
  return "";
}

// Comma-separated; floats with enough digits to read back exactly.
template <class T>
std::string join(const std::vector<T>& items) {
  std::ostringstream out;
  out << std::setprecision(9);
  for (size_t i = 0; i < items.size(); ++i) out << (i ? "," : "") << items[i];
  return out.str();
}

// The training and test splits (subsets as asked) and the augmentation with the normalisation
// statistics filled in.
struct TrainingData {
  data::ImageDataset train, test;
  data::AugmentConfig augmentation;
};

TrainingData load_training_data(const TrainConfig& cfg) {
  std::cerr << "loading " << cfg.data << " ...\n";
  auto load = [&](data::Split split, int64_t subset, const char* flag) {
    data::ImageDataset all = data::load_dataset_cached(cfg.data, split, cfg.cache_dir);
    if (subset > all.size())
      std::cerr << "--" << flag << " " << subset << " is more than the " << all.size()
                << " images of the split: using all of them\n";
    return data::subset(all, subset);
  };
  TrainingData d{.train = load(data::Split::train, cfg.subset, "subset"),
                 .test = load(data::Split::test, cfg.test_subset, "test-subset"),
                 .augmentation = cfg.augmentation};
  DL_CHECK(d.test.height == d.train.height && d.test.width == d.train.width &&
               d.test.channels == d.train.channels,
           cfg.data, ": train and test images differ in size");
  DL_CHECK(d.test.classes == d.train.classes, cfg.data,
           ": the train and test splits have different classes (train: ", join(d.train.classes),
           "; test: ", join(d.test.classes), ")");
  // Symmetric: 0.5 and 0.5. Otherwise CIFAR-10 itself uses the recipe's published statistics and
  // any other data set its own.
  data::AugmentConfig& aug = d.augmentation;
  if (cfg.normalize == Normalization::symmetric) {
    aug.mean = aug.std = std::vector<float>(static_cast<size_t>(d.train.channels), 0.5f);
  } else if (d.train.classes == kCifar10Classes && d.train.channels == 3) {
    aug.mean = data::cifar10_mean();
    aug.std = data::cifar10_std();
  } else {
    const data::ChannelStatistics own = data::channel_statistics(d.train);
    aug.mean = own.mean;
    aug.std = own.std;
  }
  data::validate(aug, static_cast<int>(d.train.channels));
  return d;
}

std::unique_ptr<optim::Optimizer> make_optimizer(const TrainConfig& cfg,
                                                 const std::vector<Tensor>& params) {
  if (cfg.optimizer == OptimizerKind::adamw)
    return std::make_unique<optim::AdamW>(
        params, optim::AdamWOptions{.lr = cfg.lr, .weight_decay = cfg.weight_decay});
  return std::make_unique<optim::SGD>(params, optim::SGDOptions{.lr = cfg.lr,
                                                                .momentum = cfg.momentum,
                                                                .weight_decay = cfg.weight_decay,
                                                                .nesterov = cfg.nesterov});
}

// What a checkpoint records besides tensors: the model, the data's shape, classes and
// normalisation (predict needs them), the seed, the command and the run's settings (for --resume).
std::map<std::string, std::string> checkpoint_metadata(const TrainConfig& cfg,
                                                       const models::ModelSpec& spec,
                                                       const TrainingData& d) {
  std::map<std::string, std::string> metadata = spec.to_metadata();
  metadata["data.height"] = std::to_string(d.train.height);
  metadata["data.width"] = std::to_string(d.train.width);
  metadata["data.classes"] = join(d.train.classes);
  metadata["data.train_images"] = std::to_string(d.train.size());
  metadata["data.mean"] = join(d.augmentation.mean);
  metadata["data.std"] = join(d.augmentation.std);
  metadata["seed"] = std::to_string(cfg.seed);
  metadata["command"] = cfg.command;
  metadata["flags"] = io::to_json(recorded_settings(cfg));
  return metadata;
}

// A resumed checkpoint must describe the model these settings and data build, and the data the
// run was trained on: its image size, classes, number of images and normalisation.
void check_same_run(const io::Checkpoint& checkpoint, const models::ModelSpec& spec,
                    const std::map<std::string, std::string>& metadata, const std::string& data) {
  const models::ModelSpec saved = models::ModelSpec::from_checkpoint(checkpoint);
  DL_CHECK(saved.describe() == spec.describe(), checkpoint.path, " is a checkpoint of '",
           saved.describe(), "', but these flags and data build '", spec.describe(),
           "': pass the same model flags and data set to resume");
  for (const char* key : {"data.height", "data.width", "data.classes", "data.train_images",
                          "data.mean", "data.std"}) {
    const auto recorded = checkpoint.metadata.find(key);
    DL_CHECK(recorded == checkpoint.metadata.end() || recorded->second == metadata.at(key),
             checkpoint.path, " was trained on other data: its ", key, " is ", recorded->second,
             ", but ", data, " gives ", metadata.at(key), "; resume with the run's data set");
  }
}

// Fine-tuning: the weights of `path`'s model, which must be `spec` but for its number of classes;
// the tensors that number shapes (the classifier's) keep their fresh initialisation.
void init_weights_from(const std::string& path, const models::ModelSpec& spec, nn::Module& model) {
  io::Checkpoint source;
  try {
    source = io::read_checkpoint(checkpoint_file(path));
  } catch (const Error& e) {
    throw Error("--init-from " + path + ": " + e.what());
  }
  models::ModelSpec saved = models::ModelSpec::from_checkpoint(source);
  const int64_t saved_classes = saved.classes;
  saved.classes = spec.classes;
  DL_CHECK(saved.describe() == spec.describe(), "--init-from ", source.path, " holds '",
           models::ModelSpec::from_checkpoint(source).describe(), "', but this run builds '",
           spec.describe(), "': only the number of classes may differ");
  // The file's tensors, but a fresh copy of the model's own where the class count shapes them; a
  // tensor the file lacks stays out, so that load_state_dict names it.
  nn::NamedTensors state;
  std::string fresh;
  for (const auto& [name, own] : model.state_dict()) {
    for (const auto& [key, t] : source.model_state) {
      if (key != name) continue;
      const bool same_shape = t.shape() == own.shape();
      state.emplace_back(name, same_shape ? t : own.clone());
      if (!same_shape) fresh += (fresh.empty() ? "" : ", ") + name;
    }
  }
  model.load_state_dict(state, source.path);
  std::cerr << "initial weights from " << source.path
            << (fresh.empty()
                    ? ""
                    : "; started afresh for " + std::to_string(spec.classes) + " classes (it had " +
                          std::to_string(saved_classes) + "): " + fresh)
            << "\n";
}

// The --epochs a checkpoint's run was recorded with.
int64_t recorded_epochs_of(const io::Checkpoint& checkpoint) {
  for (const auto& [name, value] :
       io::metadata_string_object(checkpoint.metadata, "flags", checkpoint.path))
    if (name == "epochs") return cli::parse_integer("epochs", value);
  return TrainConfig().epochs;
}

}  // namespace

void request_stop() {
  g_stop_requested = true;
}

namespace {

// A run being trained: its settings, data, model, optimizer and position, and where it saves.
class Training {
 public:
  // Loads the data, builds the model and optimizer (a resumed run's from its checkpoint).
  Training(const TrainConfig& cfg, std::optional<io::Checkpoint> checkpoint, RunDirectory& run);
  // Trains the epochs left: 0 when all are done, 130 when stopped (the position saved).
  int run();

 private:
  // Trains `epoch` from its batch `first`; false when it stopped mid-epoch (the position saved).
  bool train_epoch(int64_t epoch, int64_t first, EpochStats& stats, Progress& progress, double& lr);
  // Evaluates, reports and saves the epoch; false when a stop abandoned its evaluation (the
  // end-of-training position saved).
  bool finish_epoch(int64_t epoch, EpochStats& stats, Progress& progress, double lr);
  // Reads the steps' results, summed over the ranks: the progress line, the divergence check, the
  // first time estimate. Returns the sums.
  EpochStats read_results(int64_t done, int64_t first, EpochStats& stats, Progress& progress);
  // Every checkpoint goes through here: a diverged state is never saved over the last good one.
  void save(const io::TrainingPosition& p);
  // Whether any rank's `stop` holds (every rank calls it at the same point; this rank's alone on
  // one rank).
  bool any_rank_stops(bool stop);
  bool stop_requested() const {
    return g_stop_requested ||
           (cfg_.stop_after_steps > 0 && steps_this_run_ >= cfg_.stop_after_steps);
  }
  std::string resume_hint() const;

  const TrainConfig& cfg_;
  RunDirectory& run_;
  dist::Communicator& comm_;
  const bool resumed_;
  Runtime runtime_;
  TrainingData data_;
  models::ModelSpec spec_;
  std::map<std::string, std::string> metadata_;
  std::shared_ptr<nn::Module> model_;
  std::unique_ptr<optim::Optimizer> opt_;
  std::vector<Tensor> params_;
  // With --ema: the moving average, kept in a second model of the same architecture.
  std::shared_ptr<nn::Module> ema_model_;
  std::optional<optim::ExponentialMovingAverage> ema_;
  std::optional<dist::GradientReducer> gradient_reducer_;  // with several ranks
  std::optional<data::DataLoader> train_loader_, test_loader_;
  int64_t steps_per_epoch_ = 0;
  std::unique_ptr<optim::LRSchedule> schedule_;
  io::TrainingPosition pos_;
  std::ofstream metrics_;
  int64_t steps_this_run_ = 0;
  bool estimated_ = false;
  std::chrono::steady_clock::time_point run_start_, last_save_;
};

Training::Training(const TrainConfig& cfg, std::optional<io::Checkpoint> checkpoint,
                   RunDirectory& run)
    : cfg_(cfg),
      run_(run),
      comm_(dist::world()),
      resumed_(checkpoint.has_value()),
      runtime_(setup_runtime(cfg.device, cfg.threads, cfg.precision, cfg.tf32)) {
  if (cfg.schedule == optim::Schedule::onecycle && cfg.epochs < 3)
    std::cerr << "note: onecycle's breakpoints are whole epochs (2/5 and 4/5 of --epochs, rounded "
                 "down, as in the recipe): over " +
                     std::to_string(cfg.epochs) +
                     (cfg.epochs == 1 ? " epoch the lr never reaches --lr"
                                      : " epochs it has no warm-up") +
                     "; a short run may prefer --schedule linear (by steps) or cosine\n";
  data_ = load_training_data(cfg);
  const data::ImageDataset& train_set = data_.train;

  // The model; a resumed checkpoint must describe the same model and data.
  spec_ = cfg.model;
  spec_.classes = static_cast<int64_t>(train_set.classes.size());
  spec_.in_channels = train_set.channels;
  metadata_ = checkpoint_metadata(cfg, spec_, data_);
  const std::vector<int64_t> fingerprints = comm_.all_gather(run_fingerprint(metadata_));
  for (size_t r = 1; r < fingerprints.size(); ++r)
    DL_CHECK(fingerprints[r] == fingerprints[0], "rank ", r,
             " was started with other settings or data than rank 0: start every rank with the "
             "same flags and the same data set");
  if (checkpoint) check_same_run(*checkpoint, spec_, metadata_, cfg.data);
  if (spec_.name == "convmixer")
    DL_CHECK(train_set.height % spec_.patch == 0 && train_set.width % spec_.patch == 0, "--patch ",
             spec_.patch, " does not divide the ", train_set.height, "x", train_set.width,
             " images of ", cfg.data);
  Generator gen(cfg.seed);
  model_ = models::make_model(spec_, gen);
  model_->to(runtime_.device);
  if (!checkpoint && !cfg.init_from.empty()) init_weights_from(cfg.init_from, spec_, *model_);
  opt_ = make_optimizer(cfg, model_->parameters());
  params_ = model_->parameters();
  if (comm_.size() > 1) {
    dist::broadcast_parameters(comm_, *model_);
    // 1 MB buckets: ConvMixer-256/8's 2.4 MB of gradients in three, the first summed while the
    // backward goes on (DistributedDataParallel's first bucket is 1 MB too).
    gradient_reducer_.emplace(comm_, params_, int64_t{1} << 20);
    if (cfg.sync_bn) dist::sync_batch_norm(*model_, comm_);
  }
  if (cfg.ema > 0) {
    Generator scratch(cfg.seed);  // initial weights overwritten: the average starts as the model
    ema_model_ = models::make_model(spec_, scratch);
    ema_model_->to(runtime_.device);
    ema_.emplace(*model_, *ema_model_, cfg.ema);
  }

  data::LoaderOptions train_options{
      .batch_size = cfg.batch,
      .shuffle = true,
      .drop_last = cfg.drop_last,
      .augment = true,
      .augmentation = data_.augmentation,
      .seed = cfg.seed,
      .workers = loader_workers(cfg.workers, runtime_.device, comm_.local_size()),
      .rank = comm_.rank(),
      .ranks = comm_.size(),
      .device_images = {}};
  if (cfg.data_on_device) {
    DL_CHECK(runtime_.device.is_cuda(),
             "--data-on-device keeps the data set in GPU memory: it needs --device cuda");
    DL_CHECK(cfg.tta == Tta::none,
             "--tta flip flips the test images in host memory: it does not combine with "
             "--data-on-device yet");
    train_options.device_images = data::images_tensor(data_.train, runtime_.device);
  }
  train_loader_.emplace(data_.train, train_options);
  data::LoaderOptions test_options = train_options;
  test_options.shuffle = false, test_options.drop_last = false, test_options.augment = false;
  if (cfg.data_on_device)
    test_options.device_images = data::images_tensor(data_.test, runtime_.device);
  test_loader_.emplace(data_.test, test_options);
  steps_per_epoch_ = train_loader_->batches_per_epoch();
  DL_CHECK(train_loader_->last_batch_size() >= comm_.size(), "the last batch of each epoch has ",
           train_loader_->last_batch_size(), " images (", train_set.size(), " images, --batch ",
           cfg.batch, "), too few for ", comm_.size(),
           " ranks: add --drop-last or choose another --batch");
  schedule_ = optim::make_schedule(cfg.schedule, cfg.lr, cfg.epochs, steps_per_epoch_,
                                   cfg.warmup_epochs * steps_per_epoch_);
  if (!checkpoint) return;

  const std::string& resume = checkpoint->path;
  DL_CHECK(!ema_model_ || !checkpoint->ema_state.empty(), resume, " records --ema ", cfg.ema,
           " but holds no moving average of the weights (no 'ema.' entries): the file is damaged "
           "or was written by another program; resume from a checkpoint the run wrote");
  io::load_checkpoint(*checkpoint, *model_, opt_.get(), ema_model_.get());
  pos_ = *checkpoint->position;
  // pos_.batch == steps_per_epoch_: the epoch was trained, its evaluation had not finished.
  DL_CHECK(
      pos_.batch <= steps_per_epoch_ && pos_.step == pos_.epoch * steps_per_epoch_ + pos_.batch,
      resume, " was trained with another number of batches per epoch (at epoch ", pos_.epoch + 1,
      ", batch ", pos_.batch, ", step ", pos_.step, "; ", cfg.data, " and --batch ", cfg.batch,
      " give ", steps_per_epoch_, "): resume with the run's data set");
  std::cerr << "resumed " << resume << " at epoch " << pos_.epoch + 1 << ", batch " << pos_.batch
            << ", step " << pos_.step << "\n";
  const int64_t recorded_epochs = recorded_epochs_of(*checkpoint);
  if (cfg.epochs != recorded_epochs && pos_.step > 0) {
    const auto old_schedule =
        optim::make_schedule(cfg.schedule, cfg.lr, recorded_epochs, steps_per_epoch_,
                             cfg.warmup_epochs * steps_per_epoch_);
    const double before = old_schedule->lr(pos_.step - 1), after = schedule_->lr(pos_.step);
    std::cerr << "extending the run from " << recorded_epochs << " to " << cfg.epochs
              << " epochs: the learning-rate schedule is recomputed over " << cfg.epochs
              << " epochs; ";
    if (before == after)
      std::cerr << "the lr stays " << after << "\n";
    else
      std::cerr << "at step " << pos_.step << " the lr goes from " << before << " to " << after
                << "\n";
  }
}

std::string Training::resume_hint() const {
  return "continue with --resume " + run_.path().string();
}

void Training::save(const io::TrainingPosition& p) {
  if (!run_.writes()) return;  // rank 0 saves
  const std::string last = run_.checkpoint().string();
  const std::string bad = first_non_finite(*model_, *opt_, ema_model_.get());
  DL_CHECK(bad.empty(), "training diverged by step ", p.step, ": ", bad, " is not finite, so ",
           last, " keeps the last finite state (try a lower --lr or --clip-grad 1)");
  io::save_checkpoint(last, *model_, opt_.get(), p, metadata_, ema_model_.get());
}

bool Training::any_rank_stops(bool stop) {
  std::array<int64_t, 1> flag = {stop ? 1 : 0};
  comm_.all_reduce_max(flag);
  return flag[0] != 0;
}

int Training::run() {
  if (any_rank_stops(g_stop_requested)) {
    std::cerr << "interrupted while loading: nothing trained, nothing saved\n";
    return 130;
  }
  run_.open(spec_.name, resumed_ ? std::optional<int64_t>(pos_.epoch) : std::nullopt);
  // A branch is a run directory from its first moment: its checkpoint is the one it continues,
  // so a crash before its first save leaves something --resume continues.
  if (run_.is_branch()) save(pos_);
  if (run_.writes()) {
    metrics_.open(run_.metrics(), std::ios::app);
    DL_CHECK(metrics_, "cannot open ", run_.metrics().string(), " for writing");
  }

  const Device device = runtime_.device;
  std::cerr << "training " << spec_.describe() << " on " << device.str() << " ("
            << to_string(cfg_.precision) << "), " << data_.train.size() << " train / "
            << data_.test.size() << " test images, " << steps_per_epoch_
            << (steps_per_epoch_ == 1 ? " step" : " steps") << " per epoch"
            << (comm_.size() > 1 ? ", on " + std::to_string(comm_.size()) + " ranks of " +
                                       std::to_string(cfg_.batch / comm_.size()) + " images" +
                                       (cfg_.sync_bn ? " (SyncBatchNorm)" : "")
                                 : "");
  if (ema_)
    std::cerr << "; evaluating the weights and their moving average (--ema " << cfg_.ema << ")";
  if (cfg_.tta == Tta::flip) std::cerr << "; each test image also flipped (--tta flip)";
  std::cerr << "; checkpoint and metrics in " << run_.path().string() << "\n";
  const int64_t images_to_train = (cfg_.epochs - pos_.epoch) * data_.train.size();
  if (device.is_cpu() && images_to_train >= kManyImagesForCpu)
    std::cerr << "note: " << images_to_train
              << " images to train on the CPU is hours of work (a time estimate follows the first "
                 "steps); a run of minutes: --subset 2000 --test-subset 1000 --epochs 4 --dim 64 "
                 "--depth 4 --batch 64 --lr 0.01, or a GPU (--device cuda)\n";
  const bool live = cfg_.progress == ProgressMode::on ||
                    (cfg_.progress == ProgressMode::automatic && isatty(STDERR_FILENO));
  run_start_ = last_save_ = std::chrono::steady_clock::now();
  for (int64_t epoch = pos_.epoch; epoch < cfg_.epochs; ++epoch) {
    const int64_t first = epoch == pos_.epoch ? pos_.batch : 0;
    const bool resumed_epoch = epoch == pos_.epoch && first > 0;
    Progress progress(live, epoch, cfg_.epochs, steps_per_epoch_,
                      resumed_epoch ? pos_.seconds : 0.0);
    EpochStats stats;
    if (resumed_epoch && comm_.rank() == 0) {  // the sums of every rank so far
      stats.loss_sum = pos_.loss_sum;
      stats.correct = pos_.correct;
      stats.seen = pos_.seen;
    }
    double lr = first > 0 ? schedule_->lr(pos_.step - 1) : 0.0;  // the last step's, for the report
    if (!train_epoch(epoch, first, stats, progress, lr)) return 130;
    if (!finish_epoch(epoch, stats, progress, lr)) return 130;
    if (any_rank_stops(stop_requested()) && epoch + 1 < cfg_.epochs) {
      std::cerr << "stopped after epoch " << epoch + 1 << ": checkpoint "
                << run_.checkpoint().string() << "; " << resume_hint() << "\n";
      return 130;
    }
  }
  std::cerr << "done: checkpoint " << run_.checkpoint().string() << ", metrics "
            << run_.metrics().string() << "\n";
  return 0;
}

bool Training::train_epoch(int64_t epoch, int64_t first, EpochStats& stats, Progress& progress,
                           double& lr) {
  data::DataLoader& loader = *train_loader_;
  loader.start_epoch(epoch, first);
  model_->train();
  const double save_every_seconds = cfg_.save_every_minutes * 60.0;
  data::Batch batch;
  int64_t done = first;
  auto last_read = std::chrono::steady_clock::now();
  while (loader.next(batch)) {
    lr = schedule_->lr(pos_.step);
    opt_->set_lr(lr);
    // The labels stay in host memory: cross_entropy checks them there, so the GPU need not
    // report back.
    const Tensor logits =
        model_->forward(batch.images.to(runtime_.activations).to(runtime_.device));
    const Tensor loss = cross_entropy(logits, batch.labels, cfg_.label_smoothing);
    opt_->zero_grad();
    if (gradient_reducer_) {
      // This rank's share of the global batch's mean loss; the gradients summed over the ranks.
      const double share = static_cast<double>(batch.labels.numel()) / batch.global_size;
      loss.backward(Tensor::full({}, share, loss.dtype(), loss.device()));
      gradient_reducer_->sum_gradients();
    } else {
      loss.backward();
    }
    if (cfg_.clip_grad > 0) optim::clip_grad_norm(params_, cfg_.clip_grad);
    opt_->step();
    if (ema_) ema_->update();
    ++pos_.step, ++done, ++steps_this_run_;
    stats.add(logits, batch.labels, loss);
    const auto now = std::chrono::steady_clock::now();
    // The step's results are read every half second, at the epoch's end and before a save (on a
    // GPU the host otherwise runs ahead); a diverged loss is caught there. With several ranks
    // each decision is every rank's: a stop or a save anywhere is one everywhere.
    std::array<int64_t, 3> decisions = {
        stop_requested(),
        save_every_seconds > 0 &&
            std::chrono::duration<double>(now - last_save_).count() >= save_every_seconds,
        now - last_read >= std::chrono::milliseconds(500)};
    comm_.all_reduce_max(decisions);
    const bool stop = decisions[0], save_due = decisions[1];
    EpochStats summed;
    if (stop || save_due || done == steps_per_epoch_ || decisions[2]) {
      last_read = now;
      summed = read_results(done, first, stats, progress);
    }
    // Mid-epoch: the exact position, so that a stop or a crash loses no finished step.
    if ((stop || save_due) && done < steps_per_epoch_) {
      save({.epoch = epoch,
            .batch = done,
            .step = pos_.step,
            .loss_sum = summed.loss_sum,
            .seconds = progress.seconds(),
            .correct = summed.correct,
            .seen = summed.seen});
      last_save_ = now;
      if (stop) {
        progress.finish();
        std::cerr << "stopped at epoch " << epoch + 1 << ", batch " << done << ": checkpoint "
                  << run_.checkpoint().string() << "; " << resume_hint() << "\n";
        return false;
      }
    }
  }
  stats.flush();
  progress.finish();
  return true;
}

EpochStats Training::read_results(int64_t done, int64_t first, EpochStats& stats,
                                  Progress& progress) {
  EpochStats summed = summed_over_ranks(comm_, stats);
  DL_CHECK(std::isfinite(summed.loss_sum), "training diverged: the loss is not finite by step ",
           pos_.step, " (try a lower --lr or --clip-grad 1)");
  progress.update(done, first, summed.seen, summed.loss());
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start_).count();
  if (!estimated_ && steps_this_run_ >= 2 && (steps_this_run_ >= 20 || elapsed >= 10)) {
    estimated_ = true;
    const double per_step = elapsed / static_cast<double>(steps_this_run_);
    const int64_t left = cfg_.epochs * steps_per_epoch_ - pos_.step;
    std::cerr << "timing: " << std::setprecision(3) << per_step << " s per step over the first "
              << steps_this_run_ << " steps: the " << left << " steps left take about "
              << format_duration(per_step * static_cast<double>(left)) << ", evaluations aside\n";
  }
  return summed;
}

bool Training::finish_epoch(int64_t epoch, EpochStats& rank_stats, Progress& progress, double lr) {
  const EpochStats stats = summed_over_ranks(comm_, rank_stats);
  const std::string last = run_.checkpoint().string();
  const double epoch_seconds = progress.seconds();
  const bool evaluate_now = (epoch + 1) % cfg_.eval_every == 0 || epoch + 1 == cfg_.epochs;
  std::optional<std::vector<EpochStats>> test;  // the model's, then the moving average's
  if (evaluate_now) {
    progress.evaluating(data_.test.size());
    // Every rank evaluates with rank 0's BatchNorm statistics, the ones its checkpoint holds.
    std::vector<nn::Module*> models = {model_.get()};
    if (ema_model_) models.push_back(ema_model_.get());
    for (nn::Module* model : models) dist::broadcast_buffers(comm_, *model);
    test = evaluate(models, *test_loader_, runtime_.device, runtime_.activations, cfg_.tta, comm_);
    progress.finish();
    if (!test) {
      // The epoch's training is saved; --resume evaluates it again.
      save({.epoch = epoch,
            .batch = steps_per_epoch_,
            .step = pos_.step,
            .loss_sum = stats.loss_sum,
            .seconds = epoch_seconds,
            .correct = stats.correct,
            .seen = stats.seen});
      std::cerr << "stopped during epoch " << epoch + 1 << "'s evaluation: checkpoint " << last
                << " holds its training; " << resume_hint() << "\n";
      return false;
    }
    DL_CHECK(std::isfinite(test->front().loss_sum),
             "training diverged: the test loss is not finite after ", "epoch ", epoch + 1, ", so ",
             last, " keeps the last finite state (try a lower --lr or --clip-grad 1)");
  }
  if (run_.writes())
    report_epoch(metrics_, epoch, pos_.step, stats, test ? &test->front() : nullptr,
                 test && ema_ ? &test->back() : nullptr, lr, epoch_seconds,
                 peak_memory_mb(runtime_.device));
  save({.epoch = epoch + 1, .batch = 0, .step = pos_.step});
  // A metrics line that could not be written (a full disk) stops the run, once the checkpoint is
  // safe: the user sees it instead of a run that lost its history silently.
  DL_CHECK(!run_.writes() || metrics_, "cannot append to ", run_.metrics().string(), " (",
           std::strerror(errno), "): epoch ", epoch + 1,
           "'s metrics line is missing from it; the checkpoint ", last, " is saved: make room and ",
           resume_hint());
  last_save_ = std::chrono::steady_clock::now();
  return true;
}

}  // namespace

namespace {

// Ranks other than 0 print nothing through std::cerr (rank 0 speaks for the job) while this
// lives; what the libraries write to standard error themselves (MPI, NCCL's watchdog, a crash)
// still shows. An error reaches the program's own handler, which prints it after.
class QuietUnlessRankZero {
 public:
  explicit QuietUnlessRankZero(int rank)
      : saved_(rank == 0 ? nullptr : std::cerr.rdbuf(&nowhere_)) {}
  ~QuietUnlessRankZero() {
    if (saved_) std::cerr.rdbuf(saved_);
  }
  QuietUnlessRankZero(const QuietUnlessRankZero&) = delete;
  QuietUnlessRankZero& operator=(const QuietUnlessRankZero&) = delete;

 private:
  struct Nowhere : std::streambuf {
    int overflow(int ch) override { return ch; }
  } nowhere_;
  std::streambuf* saved_;
};

// What data parallelism needs of the settings, before any data is read.
void check_ranks(const TrainConfig& cfg, int ranks) {
  if (ranks == 1) return;
  DL_CHECK(cfg.batch % ranks == 0, "--batch ", cfg.batch,
           " (the global batch) does not split evenly over ", ranks,
           " ranks: choose a multiple of ", ranks);
  DL_CHECK(!cfg.sync_bn || resolve_device(cfg.device).is_cpu(),
           "--sync-bn runs on the CPU only so far: leave it out on the GPU (each rank then "
           "normalises its own slice of the batch)");
}

}  // namespace

int train(const TrainConfig& requested, const std::set<std::string>& given) {
  dist::Communicator& comm = dist::world();
  const QuietUnlessRankZero quiet(comm.rank());
  // With several GPUs on a machine, each rank its own (before any CUDA work).
  select_gpu(comm.local_rank());
  const std::string resume = requested.resume.empty() ? "" : checkpoint_file(requested.resume);
  // What can be checked before any file is touched: a new run's settings and device; on a resume
  // the device and the settings given (the others are the run's).
  if (resume.empty()) {
    check_applicable(requested, given);
    validate(requested);
    setup_runtime(requested.device, requested.threads, requested.precision, requested.tf32);
    if (!requested.init_from.empty())
      DL_CHECK(fs::is_regular_file(checkpoint_file(requested.init_from)), "--init-from ",
               requested.init_from, ": no such checkpoint file");
  } else {
    DL_CHECK(!given.count("init-from"),
             "--init-from starts a new run from another run's weights; "
             "it does not combine with --resume");
    check_given(requested, given);
    resolve_device(requested.device);
  }
  // Where the run writes is decided from the paths; the directory, when it exists, is locked
  // from here on, so no other process writes a newer checkpoint while this one reads it.
  RunDirectory run(requested.checkpoint_dir, resume, comm.rank() == 0);
  std::optional<io::Checkpoint> checkpoint;
  if (!resume.empty()) {
    checkpoint = io::read_checkpoint(resume);
    DL_CHECK(checkpoint->position, resume,
             ": no 'trainer.position' entry (a model file, not a training checkpoint)");
  }
  const TrainConfig cfg = checkpoint ? resumed_config({requested, given}, *checkpoint) : requested;
  if (checkpoint) {
    validate(cfg);
    if (checkpoint->position->epoch >= cfg.epochs) {
      std::cerr << resume << " has finished " << checkpoint->position->epoch << " epochs (--epochs "
                << cfg.epochs << "): nothing to train; a larger --epochs continues it\n";
      return 0;
    }
  }
  check_ranks(cfg, comm.size());
  run.check();
  Training training(cfg, std::move(checkpoint), run);
  return training.run();
}

}  // namespace dl::examples
