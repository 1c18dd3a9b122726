#include "examples/trainer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <thread>

#include "engine/data/loader.h"
#include "engine/error.h"
#include "engine/io/checkpoint.h"
#include "engine/io/json.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "kernels/cpu/parallel.h"
#ifdef DL_HAVE_CUDA
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_ops.h"
#endif

namespace dl::examples {

namespace fs = std::filesystem;

namespace {

std::atomic<bool> g_stop_requested{false};

// Upper bound of --threads and --workers: beyond it a thread count is a typo, and the system
// refuses the threads anyway.
constexpr int kMaxThreads = 1024;

const std::vector<std::string> kCifar10Classes = {
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};

// --workers 0: on the GPU every core but two augments (measured on a 16-core H100 machine: 14
// workers keep up with the 16k images/s of the fp32 step); on the CPU the step needs the cores.
int loader_workers(int requested, Device device) {
  if (requested > 0) return requested;
  if (device.is_cpu()) return 2;
  return std::max(2, static_cast<int>(std::thread::hardware_concurrency()) - 2);
}

// Loss and accuracy over the batches of an epoch. A batch's loss and correct count stay on the
// model's device until flush() reads them, so a GPU step does not wait for its own results; the
// sums are the same double additions in the same order whenever flush() runs.
struct EpochStats {
  double loss_sum = 0.0;
  int64_t correct = 0, seen = 0;
  void add(const Tensor& logits, const Tensor& labels, const Tensor& loss) {
    pending_.push_back({loss.detach(), count_correct(logits.detach(), labels), logits.size(0)});
  }
  void flush() {
    for (const Pending& p : pending_) {
      loss_sum += static_cast<double>(p.loss.item()) * p.n;
      correct += static_cast<int64_t>(p.correct.item());
      seen += p.n;
    }
    pending_.clear();
  }
  double loss() const { return seen ? loss_sum / seen : 0.0; }
  double accuracy() const { return seen ? static_cast<double>(correct) / seen : 0.0; }

 private:
  struct Pending {
    Tensor loss, correct;
    int64_t n;
  };
  std::vector<Pending> pending_;
};

EpochStats evaluate(nn::Module& model, data::DataLoader& loader, Device device, DType activations) {
  NoGradGuard no_grad;
  model.eval();
  EpochStats stats;
  data::Batch batch;
  loader.start_epoch(0);
  while (loader.next(batch)) {
    const Tensor logits = model.forward(batch.images.to(activations).to(device));
    stats.add(logits, batch.labels, cross_entropy(logits, batch.labels));
  }
  stats.flush();
  model.train();
  return stats;
}

std::string format_duration(double seconds) {
  const int s = static_cast<int>(seconds + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60);
  return buf;
}

// An exclusive flock on <dir>/.lock for the run's lifetime: two trainers never write the same
// checkpoint directory. The kernel drops the lock when the process ends, even on a crash.
class RunLock {
 public:
  explicit RunLock(const fs::path& dir) {
    const fs::path path = dir / ".lock";
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    DL_CHECK(fd_ >= 0, "cannot open ", path.string(), ": ", std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd_);
      throw Error("another train process is writing " + dir.string() +
                  " (it holds .lock): wait for it or choose another --checkpoint-dir");
    }
  }
  ~RunLock() { ::close(fd_); }
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  int fd_ = -1;
};

// Progress of one epoch; `prior_seconds` is the time the epoch had run before a resume.
class Progress {
 public:
  Progress(bool live, int64_t epoch, int64_t epochs, int64_t total, double prior_seconds)
      : live_(live),
        epoch_(epoch),
        epochs_(epochs),
        total_(total),
        prior_seconds_(prior_seconds),
        start_(std::chrono::steady_clock::now()) {}
  // `done` batches of the epoch, `first` of them before this run; `images` and `loss` so far.
  void update(int64_t done, int64_t first, int64_t images, double loss) {
    const double rate = images / std::max(seconds(), 1e-9);
    const double eta = (total_ - done) * this_run() / std::max<int64_t>(done - first, 1);
    const int64_t every = std::max<int64_t>(1, total_ / 10);
    if (live_) {
      const int width = 30, filled = static_cast<int>(width * done / std::max<int64_t>(total_, 1));
      std::fprintf(stderr, "\repoch %lld/%lld [%s%s] %lld/%lld  %.0f img/s  loss %.4f  ETA %s ",
                   (long long)epoch_ + 1, (long long)epochs_, std::string(filled, '#').c_str(),
                   std::string(width - filled, '.').c_str(), (long long)done, (long long)total_,
                   rate, loss, format_duration(eta).c_str());
    } else if (done / every > printed_ / every || done == total_) {
      std::fprintf(stderr, "epoch %lld/%lld batch %lld/%lld  %.0f img/s  loss %.4f  ETA %s\n",
                   (long long)epoch_ + 1, (long long)epochs_, (long long)done, (long long)total_,
                   rate, loss, format_duration(eta).c_str());
    }
    printed_ = done;
  }
  void finish() {
    if (live_) std::fprintf(stderr, "\r\033[K");
  }
  double seconds() const { return prior_seconds_ + this_run(); }

 private:
  double this_run() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  bool live_;
  int64_t epoch_, epochs_, total_;
  int64_t printed_ = 0;  // `done` at the last update
  double prior_seconds_;
  std::chrono::steady_clock::time_point start_;
};

// A new run's own directory, runs/<model>-<UTC date-time> (then -2, -3, ... when that exists),
// created here so that two runs started in the same second cannot both take it.
fs::path claim_new_run_dir(const std::string& model) {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &utc);
  const std::string base = "runs/" + model + "-" + stamp;
  fs::create_directories("runs");
  for (int n = 1;; ++n) {
    const fs::path dir = n == 1 ? base : base + "-" + std::to_string(n);
    if (fs::create_directory(dir)) return dir;
  }
}

// Checkpoints are written to "last.safetensors.tmp.<pid>" and renamed; a process killed mid-write
// leaves that file behind. The caller holds the directory's RunLock, so no writer is using one.
void remove_stale_temporaries(const fs::path& dir) {
  const std::string prefix = "last.safetensors.tmp.";
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > prefix.size() && name.rfind(prefix, 0) == 0 &&
        name.find_first_not_of("0123456789", prefix.size()) == std::string::npos)
      fs::remove(entry.path());
  }
}

// A run stopped between appending an epoch's metrics line and writing that epoch's checkpoint
// trains the epoch again after --resume; dropping the lines of epochs the checkpoint has not
// finished (and a line a crash cut short) keeps one line per epoch. Rewritten atomically.
void keep_metrics_of_finished_epochs(const fs::path& path, int64_t finished_epochs) {
  std::ifstream in(path);
  if (!in) return;
  std::string kept;
  bool dropped = false;
  for (std::string line; std::getline(in, line);) {
    int64_t epoch = 0;
    try {
      const io::JsonValue entry = io::parse_json(line);
      for (const auto& [key, value] : entry.as_object())
        if (key == "epoch") epoch = value.as_int();
    } catch (const Error&) {
      epoch = -1;  // a line cut short by a crash
    }
    if (epoch >= 1 && epoch <= finished_epochs) {
      kept += line + "\n";
    } else {
      dropped = true;
    }
  }
  if (!dropped) return;
  const fs::path tmp = path.string() + ".tmp";
  std::ofstream out(tmp, std::ios::trunc);
  out << kept << std::flush;
  DL_CHECK(out, "cannot rewrite ", path.string(), " (writing ", tmp.string(), " failed)");
  out.close();
  fs::rename(tmp, path);
}

// The name of the first F32 tensor of the model's state or the optimizer's that holds a NaN or an
// infinity, or "" (one sum of squares per tensor, read back once).
std::string first_non_finite(const nn::Module& model, const optim::Optimizer& opt) {
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
  // CIFAR-10 itself uses the recipe's published statistics; any other data set its own.
  data::AugmentConfig& aug = d.augmentation;
  if (d.train.classes == kCifar10Classes && d.train.channels == 3) {
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
  if (cfg.optimizer == "adamw")
    return std::make_unique<optim::AdamW>(
        params, optim::AdamWOptions{.lr = cfg.lr, .weight_decay = cfg.weight_decay});
  return std::make_unique<optim::SGD>(params, optim::SGDOptions{.lr = cfg.lr,
                                                                .momentum = cfg.momentum,
                                                                .weight_decay = cfg.weight_decay,
                                                                .nesterov = cfg.nesterov});
}

// What a checkpoint records besides tensors: the model, the data's shape, classes and
// normalisation (predict needs them), the seed, the command and the run's flags (for --resume).
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
  io::JsonValue::Object flags;
  for (const auto& [name, value] : cfg.flags) flags.emplace_back(name, io::JsonValue(value));
  metadata["flags"] = io::to_json(io::JsonValue(flags));
  return metadata;
}

// One epoch's summary: a line on stdout and a JSON line appended to the metrics file, with the
// test figures when the epoch was evaluated and the device's peak memory on the GPU.
void report_epoch(std::ostream& metrics, int64_t epoch, int64_t step, const EpochStats& train,
                  const EpochStats* test, double lr, double seconds,
                  [[maybe_unused]] Device device) {
  const double img_per_s = train.seen / std::max(seconds, 1e-9);
  char test_text[64] = "test loss - acc -";
  if (test)
    std::snprintf(test_text, sizeof test_text, "test loss %.4f acc %.4f", test->loss(),
                  test->accuracy());
  std::printf("epoch %3lld | train loss %.4f acc %.4f | %s | lr %.6f | %.1f s | %.0f img/s\n",
              static_cast<long long>(epoch + 1), train.loss(), train.accuracy(), test_text, lr,
              seconds, img_per_s);
  std::fflush(stdout);
  io::JsonValue::Object line = {{"epoch", io::JsonValue(epoch + 1)},
                                {"step", io::JsonValue(step)},
                                {"train_loss", io::JsonValue(train.loss())},
                                {"train_acc", io::JsonValue(train.accuracy())},
                                {"lr", io::JsonValue(lr)},
                                {"epoch_seconds", io::JsonValue(seconds)},
                                {"img_per_s", io::JsonValue(img_per_s)}};
  if (test) {
    line.emplace_back("test_loss", io::JsonValue(test->loss()));
    line.emplace_back("test_acc", io::JsonValue(test->accuracy()));
  }
#ifdef DL_HAVE_CUDA
  if (device.is_cuda()) {
    const double peak_mb = static_cast<double>(cuda::memory_stats().peak_in_use) / (1 << 20);
    line.emplace_back("peak_mem_mb", io::JsonValue(peak_mb));
  }
#endif
  metrics << io::to_json(io::JsonValue(line)) << "\n" << std::flush;
}

// `path` can be made a directory and written: the nearest existing directory at or above it is
// writable, and nothing on the way is a file or a link to nothing.
void check_writable_directory(const fs::path& path, const char* what) {
  fs::path existing = fs::absolute(path);
  while (!fs::exists(existing) && existing.has_parent_path() &&
         existing != existing.parent_path()) {
    DL_CHECK(!fs::is_symlink(existing), what, " ", path.string(), ": ", existing.string(),
             " is a link to nothing");
    existing = existing.parent_path();
  }
  DL_CHECK(fs::is_directory(existing), what, " ", path.string(), ": ", existing.string(),
           " is not a directory");
  DL_CHECK(access(existing.c_str(), W_OK) == 0, what, " ", path.string(), ": cannot write in ",
           existing.string(), " (", std::strerror(errno), ")");
}

// A directory a new run (or a branch) may write into: it holds no checkpoint and no metrics of
// another run.
// `advice` says what to do about a checkpoint found there.
void check_unused(const fs::path& dir, const std::string& advice) {
  const fs::path last = dir / "last.safetensors", metrics = dir / "metrics.jsonl";
  DL_CHECK(!fs::exists(last), last.string(), " already exists: ", advice);
  DL_CHECK(!fs::exists(metrics) || fs::file_size(metrics) == 0, metrics.string(),
           " holds the metrics of a run that saved no checkpoint there: move it away, or choose "
           "another --checkpoint-dir");
}

// Where a run writes its checkpoint and metrics, decided before the data is read.
struct RunDirectory {
  fs::path dir;             // empty: a new runs/<model>-<time>, claimed when training starts
  bool in_place = false;    // a resumed run continuing in its own directory
  fs::path metrics_origin;  // a branch: the metrics of the run it continues, when there are some
  std::string advice;       // what to do when the directory turns out to be in use
};

// A new run writes into `checkpoint_dir` (or its own new directory), never over another run's
// files. A resumed run continues in place when `resume` is its directory's last.safetensors and
// `checkpoint_dir` is empty or that directory; with another `checkpoint_dir` it continues there
// (a branch: the original stays as it was). Any other checkpoint file (an older copy, a file
// outside a run directory) needs a `checkpoint_dir`, since continuing beside it could write over
// another run's checkpoint and metrics.
RunDirectory plan_run_directory(const fs::path& checkpoint_dir, const std::string& resume) {
  if (resume.empty()) {
    if (checkpoint_dir.empty())
      check_writable_directory("runs", "the directory of new runs");
    else
      check_writable_directory(checkpoint_dir, "--checkpoint-dir");
    const std::string advice = "pass --resume " + checkpoint_dir.string() +
                               " to continue that run, or choose another --checkpoint-dir";
    if (!checkpoint_dir.empty()) check_unused(checkpoint_dir, advice);
    return {.dir = checkpoint_dir, .in_place = false, .metrics_origin = {}, .advice = advice};
  }
  const fs::path file(resume);
  const fs::path origin = file.has_parent_path() ? file.parent_path() : fs::path(".");
  // Compared as resolved paths: ./run, run/, a link to run and run/x/.. are all run.
  const bool branch = !checkpoint_dir.empty() &&
                      fs::weakly_canonical(checkpoint_dir) != fs::weakly_canonical(origin);
  if (branch) {
    check_writable_directory(checkpoint_dir, "--checkpoint-dir");
    const std::string advice = "pass --resume " + checkpoint_dir.string() +
                               " to continue the run there, or choose another --checkpoint-dir";
    check_unused(checkpoint_dir, advice);
    const bool run_directory = fs::exists(origin / "last.safetensors");
    return {.dir = checkpoint_dir,
            .in_place = false,
            .metrics_origin = run_directory ? origin / "metrics.jsonl" : fs::path(),
            .advice = advice};
  }
  DL_CHECK(file.filename() == "last.safetensors", resume,
           " is not a run directory's last.safetensors: continuing beside it could write over "
           "another run's checkpoint or metrics; pass --checkpoint-dir NEW_DIR to continue the run "
           "there");
  check_writable_directory(origin, "the resumed run's directory");
  return {.dir = origin, .in_place = true, .metrics_origin = {}, .advice = {}};
}

}  // namespace

void validate(const TrainConfig& cfg) {
  DL_CHECK(cfg.epochs > 0, "--epochs must be positive, got ", cfg.epochs);
  DL_CHECK(cfg.batch > 0, "--batch must be positive, got ", cfg.batch);
  DL_CHECK(cfg.eval_every > 0, "--eval-every must be positive, got ", cfg.eval_every);
  DL_CHECK(cfg.optimizer == "adamw" || cfg.optimizer == "sgd",
           "--optimizer must be adamw or sgd, got '", cfg.optimizer, "'");
  DL_CHECK(cfg.lr >= 0, "--lr must be non-negative, got ", cfg.lr);
  DL_CHECK(cfg.weight_decay >= 0, "--wd must be non-negative, got ", cfg.weight_decay);
  DL_CHECK(cfg.momentum >= 0, "--momentum must be non-negative, got ", cfg.momentum);
  DL_CHECK(cfg.warmup_epochs >= 0 && cfg.warmup_epochs <= cfg.epochs,
           "--warmup-epochs must lie in [0, --epochs = ", cfg.epochs, "], got ", cfg.warmup_epochs);
  DL_CHECK(cfg.schedule == "onecycle" || cfg.schedule == "cosine" || cfg.schedule == "constant",
           "--schedule must be onecycle, cosine or constant, got '", cfg.schedule, "'");
  DL_CHECK(cfg.label_smoothing >= 0 && cfg.label_smoothing <= 1,
           "--label-smoothing must be in [0, 1], got ", cfg.label_smoothing);
  DL_CHECK(cfg.clip_grad >= 0, "--clip-grad must be 0 (off) or positive, got ", cfg.clip_grad);
  DL_CHECK(cfg.precision == "fp32" || cfg.precision == "bf16",
           "--precision must be fp32 or bf16, got '", cfg.precision, "'");
  DL_CHECK(cfg.threads >= 0 && cfg.threads <= kMaxThreads,
           "--threads must be 0 (all cores) or in [1, ", kMaxThreads, "], got ", cfg.threads);
  DL_CHECK(cfg.workers >= 0 && cfg.workers <= kMaxThreads,
           "--workers must be 0 (automatic) or in [1, ", kMaxThreads, "], got ", cfg.workers);
  DL_CHECK(!cfg.data.empty(), "--data is empty: name the data set's folder");
  DL_CHECK(cfg.subset >= 0, "--subset must be 0 (all) or positive, got ", cfg.subset);
  DL_CHECK(cfg.test_subset >= 0, "--test-subset must be 0 (all) or positive, got ",
           cfg.test_subset);
  DL_CHECK(cfg.progress == "auto" || cfg.progress == "on" || cfg.progress == "off",
           "--progress must be auto, on or off, got '", cfg.progress, "'");
  DL_CHECK(cfg.stop_after_steps >= 0, "--stop-after-steps must be 0 (off) or positive, got ",
           cfg.stop_after_steps);
  DL_CHECK(cfg.save_every_minutes >= 0, "--save-every-minutes must be 0 (off) or positive, got ",
           cfg.save_every_minutes);
  models::ModelSpec spec = cfg.model;
  spec.classes = spec.in_channels = 1;  // stand-ins: both are taken from the data later
  models::validate(spec);
  const data::AugmentConfig& a = cfg.augmentation;
  DL_CHECK(a.crop == "none" || a.crop == "random" || a.crop == "resized",
           "--crop must be none, random or resized, got '", a.crop, "'");
  DL_CHECK(a.resized_scale_min > 0 && a.resized_scale_min <= a.resized_scale_max &&
               a.resized_scale_max <= 1,
           "--scale MIN,MAX must satisfy 0 < MIN <= MAX <= 1, got ", a.resized_scale_min, ",",
           a.resized_scale_max);
  DL_CHECK(a.randaugment_n >= 0, "--ra-n must be 0 (off) or positive, got ", a.randaugment_n);
  DL_CHECK(a.randaugment_m >= 0 && a.randaugment_m <= 30, "--ra-m must be in [0, 30], got ",
           a.randaugment_m);
  DL_CHECK(a.jitter >= 0, "--jitter must be 0 (off) or positive, got ", a.jitter);
  DL_CHECK(a.erasing_p >= 0 && a.erasing_p <= 1, "--reprob must be in [0, 1], got ", a.erasing_p);
  // The library's own checks: the schedule's, on a stand-in one-step epoch, and the
  // augmentation's settings that have no flag.
  optim::make_schedule(cfg.schedule, cfg.lr, cfg.epochs, 1, cfg.warmup_epochs);
  data::validate_options(cfg.augmentation);
}

std::string checkpoint_file(const std::string& resume) {
  if (!fs::is_directory(resume)) return resume;
  const fs::path last = fs::path(resume) / "last.safetensors";
  DL_CHECK(fs::exists(last), last.string(),
           ": no such file (not a run directory, or the run has saved no checkpoint yet)");
  return last.string();
}

void request_stop() {
  g_stop_requested = true;
}

int train(const TrainConfig& cfg) {
  validate(cfg);
  const Device device = resolve_device(cfg.device);
  DL_CHECK(cfg.precision == "fp32" || device.is_cuda(),
           "--precision bf16 needs the CUDA path; on the CPU use --precision fp32");
  DL_CHECK(!cfg.tf32 || device.is_cuda(), "--tf32 applies to the CUDA path only");
#ifdef DL_HAVE_CUDA
  if (device.is_cuda()) cuda::set_allow_tf32(cfg.tf32);
#endif
  // bf16 mixed precision: bf16 activations (the input batch is converted before the copy to the
  // GPU), fp32 parameters, gradients, statistics and optimizer state.
  const DType activations = cfg.precision == "bf16" ? DType::bf16 : DType::f32;
  cpu::set_num_threads(cfg.threads);
  if (cfg.schedule == "onecycle" && cfg.epochs < 3)
    std::cerr << "note: onecycle's breakpoints are whole epochs (2/5 and 4/5 of --epochs, rounded "
                 "down, as in the recipe): over "
              << cfg.epochs
              << (cfg.epochs == 1 ? " epoch the lr never reaches --lr"
                                  : " epochs it has no warm-up")
              << "; a short run may prefer --schedule cosine or constant\n";

  // --- where the run writes, checked before the data is read ---
  const std::string resume = cfg.resume.empty() ? "" : checkpoint_file(cfg.resume);
  if (!resume.empty()) {
    const io::TrainingPosition done = io::read_checkpoint_position(resume);
    if (done.epoch >= cfg.epochs) {
      std::cerr << resume << " has finished " << done.epoch << " epochs (--epochs " << cfg.epochs
                << "): nothing to train\n";
      return 0;
    }
  }
  const RunDirectory plan = plan_run_directory(cfg.checkpoint_dir, resume);
  fs::path dir = plan.dir;
  fs::path last = dir / "last.safetensors";
  // The run holds its directory, when it exists, from before it reads the data and the checkpoint:
  // no other process can write a newer checkpoint in between, and a directory in use is refused
  // at once.
  std::optional<RunLock> lock;
  if (!dir.empty() && fs::is_directory(dir)) lock.emplace(dir);

  // --- data ---
  const TrainingData loaded = load_training_data(cfg);
  const data::ImageDataset& train_set = loaded.train;
  const data::ImageDataset& test_set = loaded.test;
  const data::AugmentConfig& aug = loaded.augmentation;

  // --- model; a resumed checkpoint must describe the same model ---
  models::ModelSpec spec = cfg.model;
  spec.classes = static_cast<int64_t>(train_set.classes.size());
  spec.in_channels = train_set.channels;
  const std::map<std::string, std::string> metadata = checkpoint_metadata(cfg, spec, loaded);
  if (!resume.empty()) {
    const std::map<std::string, std::string> saved_metadata = io::read_checkpoint_metadata(resume);
    const models::ModelSpec saved = models::ModelSpec::from_metadata(saved_metadata, resume);
    DL_CHECK(saved.describe() == spec.describe(), resume, " is a checkpoint of '", saved.describe(),
             "', but these flags and data build '", spec.describe(),
             "': pass the same model flags and data set to resume");
    // The same data set: its image size, classes and normalisation as the run recorded them.
    for (const char* key : {"data.height", "data.width", "data.classes", "data.train_images",
                            "data.mean", "data.std"}) {
      const auto recorded = saved_metadata.find(key);
      DL_CHECK(recorded == saved_metadata.end() || recorded->second == metadata.at(key), resume,
               " was trained on other data: its ", key, " is ", recorded->second, ", but ",
               cfg.data, " gives ", metadata.at(key), "; resume with the run's data set");
    }
  }
  if (spec.name == "convmixer")
    DL_CHECK(train_set.height % spec.patch == 0 && train_set.width % spec.patch == 0, "--patch ",
             spec.patch, " does not divide the ", train_set.height, "x", train_set.width,
             " images of ", cfg.data);

  Generator gen(cfg.seed);
  std::shared_ptr<nn::Module> model = models::make_model(spec, gen);
  model->to(device);
  const std::unique_ptr<optim::Optimizer> opt = make_optimizer(cfg, model->parameters());

  data::LoaderOptions train_options{.batch_size = cfg.batch,
                                    .shuffle = true,
                                    .drop_last = cfg.drop_last,
                                    .augment = true,
                                    .augmentation = aug,
                                    .seed = cfg.seed,
                                    .workers = loader_workers(cfg.workers, device)};
  data::DataLoader train_loader(train_set, train_options);
  data::LoaderOptions test_options = train_options;
  test_options.shuffle = false, test_options.drop_last = false, test_options.augment = false;
  data::DataLoader test_loader(test_set, test_options);

  const int64_t steps_per_epoch = train_loader.batches_per_epoch();
  const auto schedule = optim::make_schedule(cfg.schedule, cfg.lr, cfg.epochs, steps_per_epoch,
                                             cfg.warmup_epochs * steps_per_epoch);

  io::TrainingPosition pos;
  if (!resume.empty()) {
    pos = io::load_checkpoint(resume, *model, opt.get());
    DL_CHECK(pos.batch < steps_per_epoch && pos.step == pos.epoch * steps_per_epoch + pos.batch,
             resume, " was trained with another number of batches per epoch (at epoch ",
             pos.epoch + 1, ", batch ", pos.batch, ", step ", pos.step, "; ", cfg.data,
             " and --batch ", cfg.batch, " give ", steps_per_epoch,
             "): resume with the run's data set");
    std::cerr << "resumed " << resume << " at epoch " << pos.epoch + 1 << ", batch " << pos.batch
              << ", step " << pos.step << "\n";
  }

  // A diverged state is never saved: it would replace the last good checkpoint.
  auto save = [&](const io::TrainingPosition& p) {
    const std::string bad = first_non_finite(*model, *opt);
    DL_CHECK(bad.empty(), "training diverged by step ", p.step, ": ", bad, " is not finite, so ",
             last.string(), " keeps the last finite state (try a lower --lr or --clip-grad 1)");
    io::save_checkpoint(last.string(), *model, opt.get(), p, metadata);
  };
  if (g_stop_requested) {
    std::cerr << "interrupted while loading: nothing trained, nothing saved\n";
    return 130;
  }

  if (!lock) {
    if (dir.empty()) {
      dir = claim_new_run_dir(spec.name);
      last = dir / "last.safetensors";
    }
    fs::create_directories(dir);
    lock.emplace(dir);
  }
  if (!plan.in_place) check_unused(dir, plan.advice);  // again, now that the run holds it
  remove_stale_temporaries(dir);
  const bool branch = !resume.empty() && !plan.in_place;
  // A branch starts from the metrics of the run it continues (trimmed to the checkpoint below).
  if (!plan.metrics_origin.empty() && fs::exists(plan.metrics_origin))
    fs::copy_file(plan.metrics_origin, dir / "metrics.jsonl", fs::copy_options::overwrite_existing);

  const bool live = cfg.progress == "on" || (cfg.progress == "auto" && isatty(STDERR_FILENO));
  const fs::path metrics_path = dir / "metrics.jsonl";
  if (!resume.empty()) keep_metrics_of_finished_epochs(metrics_path, pos.epoch);
  // A branch is a run directory from its first moment: its checkpoint is the one it continues,
  // so a crash before its first save leaves something --resume continues.
  if (branch) save(pos);
  std::ofstream metrics(metrics_path, std::ios::app);
  DL_CHECK(metrics, "cannot open ", metrics_path.string(), " for writing");

  std::cerr << "training " << spec.describe() << " on " << device.str() << " (" << cfg.precision
            << "), " << train_set.size() << " train / " << test_set.size() << " test images, "
            << steps_per_epoch << (steps_per_epoch == 1 ? " step" : " steps")
            << " per epoch; checkpoint and metrics in " << dir.string() << "\n";
  const std::vector<Tensor> params = model->parameters();
  int64_t steps_this_run = 0;
  const double save_every_seconds = cfg.save_every_minutes * 60.0;
  auto last_save = std::chrono::steady_clock::now();
  for (int64_t epoch = pos.epoch; epoch < cfg.epochs; ++epoch) {
    const int64_t first = epoch == pos.epoch ? pos.batch : 0;
    train_loader.start_epoch(epoch, first);
    model->train();
    const bool resumed_epoch = epoch == pos.epoch && first > 0;
    Progress progress(live, epoch, cfg.epochs, steps_per_epoch, resumed_epoch ? pos.seconds : 0.0);
    EpochStats stats;
    if (resumed_epoch) {
      stats.loss_sum = pos.loss_sum;
      stats.correct = pos.correct;
      stats.seen = pos.seen;
    }
    data::Batch batch;
    int64_t done = first;
    double lr = 0.0;
    auto last_read = std::chrono::steady_clock::now();
    while (train_loader.next(batch)) {
      lr = schedule->lr(pos.step);
      opt->set_lr(lr);
      // The labels stay in host memory: cross_entropy checks them there, so the GPU need not
      // report back.
      const Tensor logits = model->forward(batch.images.to(activations).to(device));
      const Tensor loss = cross_entropy(logits, batch.labels, cfg.label_smoothing);
      opt->zero_grad();
      loss.backward();
      if (cfg.clip_grad > 0) optim::clip_grad_norm(params, cfg.clip_grad);
      opt->step();
      ++pos.step, ++done, ++steps_this_run;
      stats.add(logits, batch.labels, loss);
      const bool stop =
          g_stop_requested || (cfg.stop_after_steps > 0 && steps_this_run >= cfg.stop_after_steps);
      const auto now = std::chrono::steady_clock::now();
      const bool save_due =
          save_every_seconds > 0 &&
          std::chrono::duration<double>(now - last_save).count() >= save_every_seconds;
      // The step's results are read every half second, at the epoch's end and before a save (on
      // a GPU the host otherwise runs ahead); a diverged loss is caught there.
      if (stop || save_due || done == steps_per_epoch ||
          now - last_read >= std::chrono::milliseconds(500)) {
        last_read = now;
        stats.flush();
        DL_CHECK(std::isfinite(stats.loss_sum),
                 "training diverged: the loss is not finite by step ", pos.step,
                 " (try a lower --lr or --clip-grad 1)");
        progress.update(done, first, stats.seen, stats.loss());
      }
      // Mid-epoch: the exact position, so that a stop or a crash loses no finished step.
      if ((stop || save_due) && done < steps_per_epoch) {
        save({.epoch = epoch,
              .batch = done,
              .step = pos.step,
              .loss_sum = stats.loss_sum,
              .seconds = progress.seconds(),
              .correct = stats.correct,
              .seen = stats.seen});
        last_save = now;
        if (stop) {
          progress.finish();
          std::cerr << "stopped at epoch " << epoch + 1 << ", batch " << done << ": checkpoint "
                    << last.string() << "; continue with --resume " << dir.string() << "\n";
          return 130;
        }
      }
    }
    stats.flush();
    progress.finish();
    const double epoch_seconds = progress.seconds();
    const bool evaluate_now = (epoch + 1) % cfg.eval_every == 0 || epoch + 1 == cfg.epochs;
    EpochStats test;
    if (evaluate_now) {
      test = evaluate(*model, test_loader, device, activations);
      DL_CHECK(std::isfinite(test.loss_sum),
               "training diverged: the test loss is not finite after ", "epoch ", epoch + 1,
               ", so ", last.string(),
               " keeps the last finite state (try a lower --lr or --clip-grad 1)");
    }
    report_epoch(metrics, epoch, pos.step, stats, evaluate_now ? &test : nullptr, lr, epoch_seconds,
                 device);
    save({.epoch = epoch + 1, .batch = 0, .step = pos.step});
    last_save = std::chrono::steady_clock::now();
    const bool stop =
        g_stop_requested || (cfg.stop_after_steps > 0 && steps_this_run >= cfg.stop_after_steps);
    if (stop && epoch + 1 < cfg.epochs) {
      std::cerr << "stopped after epoch " << epoch + 1 << ": checkpoint " << last.string()
                << "; continue with --resume " << dir.string() << "\n";
      return 130;
    }
  }
  std::cerr << "done: checkpoint " << last.string() << ", metrics " << metrics_path.string()
            << "\n";
  return 0;
}

}  // namespace dl::examples
