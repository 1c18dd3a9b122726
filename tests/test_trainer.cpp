// The trainer end to end on a tiny CIFAR-format data set written here: an interrupted and
// resumed run ends bit-identical to an uninterrupted one (model, optimizer state, position), and
// the ways a user can misuse checkpoints are each one clear error.
#include <fcntl.h>
#include <stb_image_write.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>

#include "engine/data/dataset.h"
#include "engine/error.h"
#include "engine/io/checkpoint.h"
#include "engine/io/json.h"
#include "engine/io/safetensors.h"
#include "engine/ops.h"
#include "engine/runtime.h"
#include "examples/cli.h"
#include "examples/trainer.h"
#include "test_util.h"
#include "trainer_test_util.h"

using namespace dl;
using namespace dl::test;
namespace fs = std::filesystem;

namespace {

std::string text_of(const fs::path& file) {
  std::ifstream in(file);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// Starts the train binary with `args`, its stdout and stderr into `log`; `in_child` runs in the
// child before the binary (limits, signal dispositions). Returns the child's pid.
pid_t start_train(std::vector<std::string> args, const fs::path& log,
                  const std::function<void()>& in_child = {}) {
  args.insert(args.begin(), DL_TRAIN_BIN);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, STDOUT_FILENO), dup2(out, STDERR_FILENO);
    if (in_child) in_child();
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// Sends `signal` to the child once `ready()` holds (unless it has ended by then); returns its
// wait status.
int signal_when(pid_t pid, const std::function<bool()>& ready, int signal) {
  int status = 0;
  while (!ready()) {
    if (waitpid(pid, &status, WNOHANG) == pid) return status;
    usleep(1000);
  }
  kill(pid, signal);
  waitpid(pid, &status, 0);
  return status;
}

int wait_for(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

}  // namespace

TEST_CASE("An interrupted and resumed run ends bit-identical to an uninterrupted one") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  TempDir tmp;
  Generator gen(seed);
  write_cifar(tmp.path / "cifar", 16, gen);
  // With a moving average of the weights (saved and resumed too) and flips at test time.
  const auto tiny_config = [](const fs::path& data, const fs::path& run) {
    examples::TrainConfig c = test::tiny_config(data, run);
    c.ema = 0.9;
    c.tta = examples::Tta::flip;
    return c;
  };

  const fs::path straight = tmp.path / "straight";
  REQUIRE(examples::train(tiny_config(tmp.path / "cifar", straight)) == 0);
  const auto reference = last_checkpoint(straight);
  REQUIRE(reference.find("ema.classification.linear.weight"));
  for (const io::JsonValue& line : metrics_lines(straight))
    CHECK((line.find("ema_test_loss") && line.find("ema_test_acc")));

  // Stopped mid-epoch (step 7 = epoch 2, batch 2) and at an epoch boundary (step 5).
  for (int64_t stop_at : {7, 5}) {
    INFO("stopped after " << stop_at << " steps");
    const fs::path run = tmp.path / ("resumed" + std::to_string(stop_at));
    auto first = tiny_config(tmp.path / "cifar", run);
    first.stop_after_steps = stop_at;
    REQUIRE(examples::train(first) == 130);
    // What a process killed at the wrong moment leaves: the next epoch's metrics line (appended
    // before its checkpoint), a line cut short and a checkpoint temporary; a user's own file stays.
    std::ofstream(run / "metrics.jsonl", std::ios::app) << R"({"epoch":2,"step":10,"train_loss":9})"
                                                        << "\n"
                                                        << R"({"epoch":)";
    std::ofstream(run / "last.safetensors.tmp.4242") << "partial";
    std::ofstream(run / "mine.safetensors.tmp.keep") << "a user's file";
    auto second = tiny_config(tmp.path / "cifar", run);
    second.resume = run.string();
    second.threads = 1;  // another machine: results do not depend on the thread count
    second.workers = 3;
    REQUIRE(examples::train(second) == 0);
    require_identical(last_checkpoint(run), reference);
    // The resumed epoch's summary covers the whole epoch, as the uninterrupted run's does.
    REQUIRE(metrics_without_timing(run) == metrics_without_timing(straight));
    CHECK_FALSE(fs::exists(run / "last.safetensors.tmp.4242"));
    CHECK(fs::exists(run / "mine.safetensors.tmp.keep"));
  }
}

TEST_CASE("A run killed at any moment resumes from its last checkpoint and ends bit-identical") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  TempDir tmp;
  Generator gen(seed);
  write_cifar(tmp.path / "cifar", 16, gen);  // 80 training images: 5 steps per epoch, 100 in all
  const int64_t kill_after_step = 2 + static_cast<int64_t>(gen.below(50));
  INFO("killed once a checkpoint of step " << kill_after_step << " or later exists");
  const std::vector<std::string> common = {"--data",     (tmp.path / "cifar").string(),
                                           "--dim",      "8",
                                           "--depth",    "1",
                                           "--kernel",   "3",
                                           "--patch",    "4",
                                           "--epochs",   "20",
                                           "--batch",    "16",
                                           "--progress", "off",
                                           "--threads",  "1",
                                           "--device",   "cpu",
                                           "--seed",     std::to_string(seed % 100000)};
  // Runs train with `common` and `extra` and returns its wait status. With `watch`: kills it with
  // SIGKILL as soon as that checkpoint holds step kill_after_step or later.
  int64_t killed_at_step = -1, killed_at_batch = -1;
  const auto run = [&](std::vector<std::string> extra, const fs::path& watch = {}) {
    std::vector<std::string> args = common;
    args.insert(args.end(), extra.begin(), extra.end());
    const pid_t pid = start_train(args, tmp.path / "run.log");
    int status = 0;
    bool exited = false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (!watch.empty() && !exited && std::chrono::steady_clock::now() < deadline) {
      if (fs::exists(watch)) {
        const io::SafetensorsFile file = io::load_safetensors(watch.string());
        const int64_t* position = file.find("trainer.position")->data<int64_t>();
        if (position[2] >= kill_after_step) {
          kill(pid, SIGKILL);
          killed_at_step = position[2], killed_at_batch = position[1];
          break;
        }
      }
      exited = waitpid(pid, &status, WNOHANG) == pid;
      usleep(100);
    }
    if (!exited) {
      if (std::chrono::steady_clock::now() >= deadline) kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
    }
    return status;
  };
  const fs::path straight = tmp.path / "straight", killed = tmp.path / "killed";
  const int done = run({"--checkpoint-dir", straight.string()});
  REQUIRE((WIFEXITED(done) && WEXITSTATUS(done) == 0));
  // A checkpoint after every step: the kill lands between or inside any of them.
  const int crashed = run({"--checkpoint-dir", killed.string(), "--save-every-minutes", "1e-9"},
                          killed / "last.safetensors");
  INFO("the killed run's last checkpoint seen: step " << killed_at_step << ", batch "
                                                      << killed_at_batch);
  REQUIRE((WIFSIGNALED(crashed) && WTERMSIG(crashed) == SIGKILL));
  const int resumed = run({"--resume", killed.string()});
  REQUIRE((WIFEXITED(resumed) && WEXITSTATUS(resumed) == 0));
  require_identical(last_checkpoint(killed), last_checkpoint(straight));
  REQUIRE(metrics_without_timing(killed) == metrics_without_timing(straight));
  for (const auto& entry : fs::directory_iterator(killed))
    CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);
}

TEST_CASE("Checkpoint misuse gives one clear error") {
  TempDir tmp;
  Generator gen(1);
  write_cifar(tmp.path / "cifar", 4, gen);
  const fs::path run = tmp.path / "run";
  auto config = tiny_config(tmp.path / "cifar", run);
  config.epochs = 1;
  REQUIRE(examples::train(config) == 0);

  SECTION("a new run never overwrites a saved one") {
    REQUIRE_THROWS_WITH(
        examples::train(config),
        Catch::Contains("last.safetensors already exists") && Catch::Contains("--resume"));
  }
  SECTION("two trainers never share a checkpoint directory") {
    const int fd = ::open((run / ".lock").c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    REQUIRE(::flock(fd, LOCK_EX | LOCK_NB) == 0);  // as a running trainer holds it
    auto resume = config;
    resume.resume = run.string();
    REQUIRE_THROWS_WITH(examples::train(resume), Catch::Contains("another train process"));
    ::close(fd);
    REQUIRE(examples::train(resume) == 0);  // released: the run is found finished
  }
  SECTION("a checkpoint of another model") {
    auto other = config;
    other.model.dim = 16;
    other.resume = run.string();
    REQUIRE_THROWS_WITH(examples::train(other, {"dim"}),
                        Catch::Contains("--dim 16 (the run used 8)"));
  }
  SECTION("a damaged checkpoint") {
    const fs::path file = run / "last.safetensors";
    fs::resize_file(file, fs::file_size(file) / 2);
    auto resume = config;
    resume.resume = file.string();
    REQUIRE_THROWS_WITH(examples::train(resume), Catch::Contains(file.string()));
  }
  SECTION("a safetensors file that is not a checkpoint") {
    auto resume = config;
    resume.resume = DL_FIXTURE_DIR "/convmixer_reference.safetensors";
    resume.checkpoint_dir = (tmp.path / "branch").string();
    REQUIRE_THROWS_WITH(examples::train(resume),
                        Catch::Contains("not a checkpoint of this engine"));
  }
  SECTION("a bad setting fails before the checkpoint directory is touched") {
    auto bad = config;
    bad.checkpoint_dir = (tmp.path / "bad").string();
    bad.augmentation.randaugment_m = 31;
    REQUIRE_THROWS_WITH(examples::train(bad), Catch::Contains("--ra-m"));
    bad.augmentation.randaugment_m = 9;
    bad.model.patch = 3;
    REQUIRE_THROWS_WITH(examples::train(bad), Catch::Contains("--patch 3 does not divide"));
    REQUIRE(!fs::exists(tmp.path / "bad"));
  }
  SECTION("train and test splits with different classes") {
    const fs::path folder = tmp.path / "folder";
    std::vector<uint8_t> px(8 * 8 * 3, 7);
    for (auto [split, cls] :
         {std::pair{"train", "cat"}, {"train", "dog"}, {"test", "cat"}, {"test", "emu"}}) {
      fs::create_directories(folder / split / cls);
      const fs::path file = folder / split / cls / "a.png";
      REQUIRE(stbi_write_png(file.c_str(), 8, 8, 3, px.data(), 24) != 0);
    }
    auto mismatch = config;
    mismatch.data = folder.string();
    mismatch.checkpoint_dir = (tmp.path / "mismatch").string();
    REQUIRE_THROWS_WITH(examples::train(mismatch),
                        Catch::Contains("different classes") && Catch::Contains("emu"));
  }
  SECTION("bf16 on the CPU: trains where the CPU has AVX512-BF16, else says it lacks it") {
    auto bf16 = config;
    bf16.checkpoint_dir = (tmp.path / "bf16").string();
    bf16.device = "cpu";
    bf16.precision = examples::Precision::bf16;
    if (supports_bf16(Device::cpu())) {
      REQUIRE_NOTHROW(examples::train(bf16));
      CHECK(fs::exists(tmp.path / "bf16" / "last.safetensors"));
    } else {
      REQUIRE_THROWS_WITH(examples::train(bf16), Catch::Contains("AVX512-BF16"));
    }
  }
}

TEST_CASE("--eval-every evaluates every N epochs and after the last") {
  TempDir tmp;
  Generator gen(test::fresh_seed());
  write_cifar(tmp.path / "cifar", 4, gen);
  auto config = tiny_config(tmp.path / "cifar", tmp.path / "run");
  config.epochs = 5;
  config.eval_every = 2;
  REQUIRE(examples::train(config) == 0);
  std::vector<int64_t> evaluated;
  std::ifstream in(tmp.path / "run" / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const io::JsonValue entry = io::parse_json(line);
    bool has_loss = false, has_acc = false;
    int64_t epoch = 0;
    for (const auto& [key, value] : entry.as_object()) {
      has_loss |= key == "test_loss";
      has_acc |= key == "test_acc";
      if (key == "epoch") epoch = value.as_int();
    }
    REQUIRE(has_loss == has_acc);
    if (has_acc) evaluated.push_back(epoch);
  }
  CHECK(evaluated == std::vector<int64_t>{2, 4, 5});
}

TEST_CASE("A diverged state is never written over the last checkpoint") {
  TempDir tmp;
  Generator gen(test::fresh_seed());
  write_cifar(tmp.path / "cifar", 4, gen);
  auto config = tiny_config(tmp.path / "cifar", tmp.path / "run");
  require_diverged_state_not_saved(config);
  // An epoch of one step: its training loss is finite, the evaluation after the update is not.
  // The run stops there, before the epoch's metrics line and checkpoint.
  config.checkpoint_dir = (tmp.path / "one-step-epoch").string();
  config.lr = 1e39;
  config.schedule = optim::Schedule::constant;
  config.epochs = 1;
  config.batch = 80;
  REQUIRE_THROWS_WITH(examples::train(config),
                      Catch::Contains("the test loss is not finite after epoch 1"));
  CHECK_FALSE(fs::exists(tmp.path / "one-step-epoch" / "last.safetensors"));
  CHECK(metrics_lines(tmp.path / "one-step-epoch").empty());
}

TEST_CASE("SIGINT, SIGTERM and SIGHUP each stop a run with a checkpoint, acknowledged at once") {
  TempDir tmp;
  Generator gen(fresh_seed());
  write_cifar(tmp.path / "cifar", 16, gen);  // 80 training images: 5 steps per epoch
  for (const int signal : {SIGINT, SIGTERM, SIGHUP}) {
    INFO("signal " << signal);
    const fs::path run = tmp.path / ("run" + std::to_string(signal)), log = run.string() + ".log";
    const pid_t pid = start_train({"--data",
                                   (tmp.path / "cifar").string(),
                                   "--dim",
                                   "8",
                                   "--depth",
                                   "1",
                                   "--kernel",
                                   "3",
                                   "--patch",
                                   "4",
                                   "--batch",
                                   "16",
                                   "--epochs",
                                   "1000",
                                   "--threads",
                                   "1",
                                   "--progress",
                                   "off",
                                   "--checkpoint-dir",
                                   run.string()},
                                  log);
    // Signalled once the first epoch is done, so that the run is mid-training.
    const int status = signal_when(
        pid, [&] { return fs::exists(run / "last.safetensors"); }, signal);
    const std::string text = text_of(log);
    INFO(text);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 130);
    CHECK_THAT(text, Catch::Contains("stopping after this step") &&
                         Catch::Contains("continue with --resume " + run.string()));
    const io::SafetensorsFile saved = last_checkpoint(run);
    const int64_t* position = saved.find("trainer.position")->data<int64_t>();
    CHECK(position[2] >= 5);  // at least the first epoch's steps
  }
}

TEST_CASE("A stop during an evaluation abandons it; the resumed run evaluates the epoch again") {
  TempDir tmp;
  Generator gen(fresh_seed());
  const fs::path cifar = tmp.path / "cifar";
  write_cifar(cifar, 4, gen);  // 20 training images
  {
    // 2000 test images, evaluated 10 at a time: a window of 200 batches for the signal to land
    // inside the evaluation.
    std::ofstream test(cifar / "test_batch.bin", std::ios::binary | std::ios::trunc);
    for (int r = 0; r < 2000; ++r) {
      test.put(static_cast<char>(gen.below(10)));
      for (int i = 0; i < 3072; ++i) test.put(static_cast<char>(gen.below(256)));
    }
  }
  const std::vector<std::string> common = {
      "--data",  cifar.string(), "--dim",    "16",         "--depth",
      "2",       "--kernel",     "3",        "--patch",    "2",
      "--batch", "10",           "--epochs", "1",          "--ra-n",
      "0",       "--threads",    "2",        "--progress", "off"};
  const auto start = [&](const fs::path& run, const fs::path& log) {
    std::vector<std::string> args = common;
    args.insert(args.end(), {"--checkpoint-dir", run.string()});
    return start_train(args, log);
  };
  const fs::path straight = tmp.path / "straight", stopped = tmp.path / "stopped";
  int status = wait_for(start(straight, tmp.path / "straight.log"));
  REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));

  const fs::path log = tmp.path / "stopped.log";
  status = signal_when(
      start(stopped, log),
      [&] { return text_of(log).find("evaluating on 2000 test images") != std::string::npos; },
      SIGINT);
  INFO(text_of(log));
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 130);
  CHECK_THAT(text_of(log), Catch::Contains("stopped during epoch 1's evaluation"));
  const io::SafetensorsFile saved = last_checkpoint(stopped);
  const int64_t* position = saved.find("trainer.position")->data<int64_t>();
  CHECK((position[0] == 0 && position[1] == 2 && position[2] == 2));  // epoch 1 trained
  CHECK(metrics_lines(stopped).empty());

  const std::string resume = std::string(DL_TRAIN_BIN) + " --resume " + stopped.string() +
                             " --progress off > " + log.string() + " 2>&1";
  status = std::system(resume.c_str());
  INFO(text_of(log));
  REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  require_identical(last_checkpoint(stopped), last_checkpoint(straight));
  CHECK(metrics_without_timing(stopped) == metrics_without_timing(straight));
}

TEST_CASE("A finished run continues for more epochs over a schedule recomputed for the total") {
  TempDir tmp;
  Generator gen(fresh_seed());
  write_cifar(tmp.path / "cifar", 4, gen);  // 20 training images: 2 steps per epoch
  // With a constant learning rate the recomputed schedule is the same: one epoch extended to two
  // ends bit-identical to two epochs straight.
  auto straight = tiny_config(tmp.path / "cifar", tmp.path / "straight");
  straight.schedule = optim::Schedule::constant;
  REQUIRE(examples::train(straight) == 0);
  auto extended = straight;
  extended.checkpoint_dir = (tmp.path / "extended").string();
  extended.epochs = 1;
  REQUIRE(examples::train(extended) == 0);
  auto more = extended;
  more.resume = extended.checkpoint_dir;
  more.epochs = 2;
  REQUIRE(examples::train(more, {"epochs"}) == 0);
  require_identical(last_checkpoint(tmp.path / "extended"), last_checkpoint(tmp.path / "straight"));
  CHECK(metrics_without_timing(tmp.path / "extended").size() == 2);
  const auto flags = io::parse_json(
      io::read_checkpoint_metadata((tmp.path / "extended" / "last.safetensors").string())
          .at("flags"));
  CHECK(flags.find("epochs")->as_string() == "2");
  // Fewer epochs than the run's is refused.
  more.epochs = 1;
  REQUIRE_THROWS_WITH(examples::train(more, {"epochs"}), Catch::Contains("can only grow"));
}

TEST_CASE("A new run starts from a checkpoint's weights, the classifier afresh for new classes") {
  TempDir tmp;
  Generator gen(fresh_seed());
  write_cifar(tmp.path / "cifar", 4, gen);
  auto source = tiny_config(tmp.path / "cifar", tmp.path / "source");
  source.epochs = 1;
  REQUIRE(examples::train(source) == 0);

  // Another data set: two classes of 32x32 PNGs.
  const fs::path folder = tmp.path / "two-classes";
  for (const char* split : {"train", "test"})
    for (const char* cls : {"cat", "dog"})
      for (int k = 0; k < 4; ++k) {
        fs::create_directories(folder / split / cls);
        std::vector<uint8_t> px(32 * 32 * 3);
        for (auto& p : px) p = static_cast<uint8_t>(gen.below(256));
        const fs::path png = folder / split / cls / (std::to_string(k) + ".png");
        REQUIRE(stbi_write_png(png.c_str(), 32, 32, 3, px.data(), 96) != 0);
      }
  // lr 0: the parameters stay as loaded (BatchNorm's running statistics still move).
  auto tuned = tiny_config(folder, tmp.path / "tuned");
  tuned.epochs = 1;
  tuned.lr = 0;
  tuned.init_from = (tmp.path / "source").string();
  REQUIRE(examples::train(tuned, {"init-from"}) == 0);
  const io::SafetensorsFile before = last_checkpoint(tmp.path / "source");
  const io::SafetensorsFile after = last_checkpoint(tmp.path / "tuned");
  int compared = 0;
  for (const auto& [name, t] : after.tensors) {
    if (name.rfind("model.", 0) != 0 || name.find("running_") != std::string::npos ||
        name.find("num_batches") != std::string::npos)
      continue;
    INFO(name);
    const Tensor* original = before.find(name);
    REQUIRE(original);
    if (name.rfind("model.classification.", 0) == 0) {
      CHECK(t.shape()[0] == 2);  // two classes now, ten before
      CHECK(original->shape()[0] == 10);
    } else {
      REQUIRE(t.shape() == original->shape());
      CHECK(std::memcmp(t.raw_data(), original->raw_data(), t.nbytes()) == 0);
      ++compared;
    }
  }
  CHECK(compared > 4);
  const auto flags = io::parse_json(
      io::read_checkpoint_metadata((tmp.path / "tuned" / "last.safetensors").string()).at("flags"));
  CHECK(flags.find("init-from")->as_string() == (tmp.path / "source").string());

  auto other_model = tuned;
  other_model.checkpoint_dir = (tmp.path / "other").string();
  other_model.model.dim = 16;
  REQUIRE_THROWS_WITH(examples::train(other_model, {"init-from"}),
                      Catch::Contains("only the number of classes may differ"));
  other_model.init_from = (tmp.path / "nothing-here").string();
  REQUIRE_THROWS_WITH(examples::train(other_model, {"init-from"}),
                      Catch::Contains("no such checkpoint file"));
  other_model.init_from = (tmp.path / "source" / "metrics.jsonl").string();
  REQUIRE_THROWS_WITH(examples::train(other_model, {"init-from"}),
                      Catch::StartsWith("--init-from " + other_model.init_from + ": "));
  auto resumed = tuned;
  resumed.resume = resumed.checkpoint_dir;
  REQUIRE_THROWS_WITH(examples::train(resumed, {"init-from"}),
                      Catch::Contains("does not combine with --resume"));
}

TEST_CASE("A metrics line that cannot be written stops the run once its checkpoint is safe") {
  TempDir tmp;
  Generator gen(fresh_seed());
  write_cifar(tmp.path / "cifar", 4, gen);  // 20 training images: 2 steps per epoch
  const fs::path run = tmp.path / "run";
  auto first = tiny_config(tmp.path / "cifar", run);
  first.stop_after_steps = 2;  // stops after epoch 1
  REQUIRE(examples::train(first) == 130);
  // Epoch 1's line made larger than the checkpoint, then a file size limit just above it: the
  // checkpoint of epoch 2 fits, its metrics line does not (as on a full disk).
  const fs::path metrics = run / "metrics.jsonl";
  std::string line;
  {
    std::ifstream in(metrics);
    std::getline(in, line);
  }
  line.insert(line.size() - 1, ",\"padding\":\"" + std::string(200000, 'x') + "\"");
  std::ofstream(metrics, std::ios::trunc) << line << "\n";
  const auto limit = static_cast<rlim_t>(fs::file_size(metrics) + 16);
  REQUIRE(fs::file_size(run / "last.safetensors") < limit);
  const fs::path log = tmp.path / "log.txt";
  const int status = wait_for(start_train({"--resume", run.string(), "--threads", "1"}, log, [&] {
    const rlimit size_limit{limit, limit};
    setrlimit(RLIMIT_FSIZE, &size_limit);
    std::signal(SIGXFSZ, SIG_IGN);  // a write past the limit fails with EFBIG instead
  }));
  const std::string text = text_of(log);
  INFO(text);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);
  CHECK_THAT(text, Catch::Contains("cannot append to " + metrics.string()) &&
                       Catch::Contains("epoch 2's metrics line is missing") &&
                       Catch::Contains("--resume " + run.string()));
  const io::SafetensorsFile saved = last_checkpoint(run);
  CHECK(saved.find("trainer.position")->data<int64_t>()[0] == 2);  // epoch 2 saved
}

TEST_CASE("Bad settings are refused, naming the flag, before any data is read") {
  TempDir tmp;
  auto config = tiny_config(tmp.path / "no-such-data", tmp.path / "run");
  const auto refused = [&](auto change, const std::string& message) {
    auto bad = config;
    change(bad);
    REQUIRE_THROWS_WITH(examples::train(bad), Catch::Contains(message));
  };
  refused([](auto& c) { c.subset = -5; }, "--subset must be 0 (all) or positive");
  refused([](auto& c) { c.test_subset = -1; }, "--test-subset must be 0 (all) or positive");
  refused([](auto& c) { c.clip_grad = -1; }, "--clip-grad must be 0 (off) or positive");
  refused([](auto& c) { c.threads = -3; }, "--threads must be 0 (all cores) or in [1, 1024]");
  refused([](auto& c) { c.batch = 0; }, "--batch must be in [1, 1048576]");
  refused([](auto& c) { c.epochs = int64_t{1} << 62; }, "--epochs must be in [1, 1000000]");
  refused([](auto& c) { c.model.name = "vgg"; }, "unknown model 'vgg'");
  refused([](auto& c) { c.model.kernel = 4; }, "ConvMixer kernel must be odd");
  refused([](auto& c) { c.model.dim = 20000; }, "--dim must be in [1, 16384], got 20000");
  refused([](auto& c) { c.model.depth = 2000; }, "--depth must be in [1, 1024], got 2000");
  refused([](auto& c) { c.model.kernel = 65; }, "--kernel must be in [1, 63], got 65");
  refused([](auto& c) { c.model.patch = 4096; }, "--patch must be in [1, 1024], got 4096");
  refused([](auto& c) { c.augmentation.randaugment_m = 31; }, "--ra-m must be in [0, 30]");
  refused([](auto& c) { c.augmentation.erasing_p = 2; }, "--reprob must be in [0, 1]");
  refused([](auto& c) { c.augmentation.resized_scale_min = 0; }, "--scale MIN,MAX must satisfy");
  refused([](auto& c) { c.workers = 100000; }, "--workers must be 0 (automatic) or in [1, 1024]");
  refused([](auto& c) { c.data = ""; }, "--data is empty");
  refused([](auto& c) { c.ema = 1.5; }, "--ema must be 0 (off) or in (0, 1), got 1.5");
  refused([](auto& c) { c.ema = 1; }, "--ema must be 0 (off) or in (0, 1), got 1");
  std::ofstream(tmp.path / "a-file") << "not a directory";
  refused([&](auto& c) { c.checkpoint_dir = (tmp.path / "a-file" / "run").string(); },
          "a-file is not a directory");
  refused(
      [](auto& c) {
        c.schedule = optim::Schedule::cosine;
        c.warmup_epochs = 3;
      },
      "--warmup-epochs must lie in [0, --epochs = 2]");
  // With good settings the same call gets as far as the data, which does not exist.
  REQUIRE_THROWS_WITH(examples::train(config), Catch::Contains("no-such-data"));
  CHECK_FALSE(fs::exists(tmp.path / "run"));
}

namespace {

// The train_settings() row of `name`.
const examples::Setting& setting(const std::string& name) {
  for (const examples::Setting& s : examples::train_settings())
    if (s.name == name) return s;
  FAIL("no setting " << name);
  throw std::logic_error("unreachable");
}

examples::TrainConfig with_flag(examples::TrainConfig config, const std::string& name,
                                const std::string& text) {
  setting(name).parse(config, text);
  return config;
}

}  // namespace

TEST_CASE("Every setting reads back as it writes itself, and a bad value names its flag") {
  const examples::TrainConfig defaults;
  for (const examples::Setting& s : examples::train_settings()) {
    INFO("--" << s.name);
    examples::TrainConfig other = defaults;
    s.parse(other, s.text(defaults));  // a relative path becomes absolute
    const std::string once = s.text(other);
    s.parse(other, once);
    CHECK(s.text(other) == once);
  }
  const auto refused = [&](const std::string& name, const std::string& text,
                           const std::string& message) {
    REQUIRE_THROWS_WITH(with_flag(defaults, name, text), Catch::Contains(message));
  };
  refused("progress", "sometimes", "--progress must be auto, on or off, got 'sometimes'");
  refused("optimizer", "adam", "--optimizer must be adamw or sgd");
  refused("schedule", "step", "--schedule must be onecycle, cosine, linear or constant");
  refused("crop", "center", "--crop must be none, random or resized");
  refused("precision", "fp16", "--precision must be fp32 or bf16");
  refused("tta", "foo", "--tta must be none or flip, got 'foo'");
  refused("threads", "4294967296", "--threads must be 0 (all cores) or in [1, 1024]");
  refused("batch", "9223372036854775808", "--batch: 9223372036854775808 is out of range");
  refused("seed", "-1", "--seed must be non-negative");
  refused("lr", "nan", "--lr: 'nan' is not a finite number");
  refused("hflip", "maybe", "--hflip: 'maybe' is not a boolean");
  refused("scale", "0.2,", "--scale: '0.2,' is not MIN or MIN,MAX");

  CHECK(setting("lr").text(with_flag(defaults, "lr", "0.050")) == "0.05");
  CHECK(setting("scale").text(with_flag(defaults, "scale", "0.35")) == "0.35,1");
  const examples::TrainConfig relative = with_flag(defaults, "data", "data/../cifar");
  CHECK(relative.data == (fs::current_path() / "cifar").string());

  REQUIRE_THROWS_WITH(examples::check_applicable(defaults, {"momentum"}),
                      Catch::Contains("--momentum only applies with --optimizer sgd"));
  examples::check_applicable(with_flag(defaults, "optimizer", "sgd"), {"momentum", "nesterov"});
  REQUIRE_THROWS_WITH(examples::check_applicable(defaults, {"scale"}),
                      Catch::Contains("--scale only applies with --crop resized"));
}

TEST_CASE("A resumed config is the run's, with this invocation's own settings and no conflicts") {
  TempDir tmp;
  examples::TrainConfig run = tiny_config(tmp.path / "cifar", tmp.path / "run");
  run.lr = 0.003;
  run.optimizer = examples::OptimizerKind::sgd;
  run.momentum = 0.8;
  io::Checkpoint checkpoint{.path = "run/last.safetensors",
                            .metadata = {{"flags", io::to_json(examples::recorded_settings(run))}},
                            .position = {},
                            .model_state = {},
                            .optimizer_state = {},
                            .ema_state = {}};
  // A later invocation: another machine, flags left out.
  examples::TrainConfig later;
  later.threads = 1;
  later.device = "cpu";
  later.resume = "run";
  const examples::TrainConfig resumed = examples::resumed_config({later, {}}, checkpoint);
  for (const examples::Setting& s : examples::train_settings()) {
    INFO("--" << s.name);
    CHECK(s.text(resumed) == s.text(s.scope == examples::Scope::invocation ? later : run));
  }

  // Where the data is may change; what the run computes may not.
  const auto resumed_with = [&](const std::string& name, const std::string& text) {
    return examples::resumed_config({with_flag(later, name, text), {name}}, checkpoint);
  };
  CHECK(resumed_with("data", "/elsewhere/cifar").data == "/elsewhere/cifar");
  CHECK(resumed_with("lr", "0.0030").lr == 0.003);
  REQUIRE_THROWS_WITH(resumed_with("batch", "32"), Catch::Contains("--batch 32 (the run used 16)"));
  REQUIRE_THROWS_WITH(resumed_with("epochs", "1"), Catch::Contains("--epochs 1 (the run used 2)") &&
                                                       Catch::Contains("--epochs can only grow"));
  CHECK(resumed_with("epochs", "3").epochs == 3);  // extends the run
  REQUIRE_THROWS_WITH(resumed_with("ema", "0.999"),
                      Catch::Contains("--ema 0.999 (the run used 0)"));
  REQUIRE_THROWS_WITH(resumed_with("ra-m", "3").augmentation.randaugment_m,
                      Catch::Contains("--ra-m 3 (the run used 12)"));

  // A checkpoint written before the settings table recorded every flag's raw text, invocation
  // ones included, and knew neither --recipe nor --normalize.
  io::Checkpoint old = checkpoint;
  io::JsonValue::Object old_flags;
  const io::JsonValue recorded = examples::recorded_settings(run);
  for (const auto& [name, value] : recorded.as_object())
    if (name != "recipe" && name != "normalize") old_flags.emplace_back(name, value);
  for (const auto& [name, value] :
       std::vector<std::pair<std::string, std::string>>{{"device", "cuda"},
                                                        {"threads", "16"},
                                                        {"resume", "elsewhere"},
                                                        {"stop-after-steps", "3"},
                                                        {"checkpoint-dir", "/gone"},
                                                        {"progress", "on"}})
    old_flags.emplace_back(name, io::JsonValue(value));
  for (auto& [name, value] : old_flags)
    if (name == "batch") value = io::JsonValue(std::string("+16"));
  old.metadata["flags"] = io::to_json(io::JsonValue(old_flags));
  examples::TrainConfig labml_request = examples::recipe_config("labml");
  labml_request.threads = 1, labml_request.device = "cpu";
  const examples::TrainConfig from_old = examples::resumed_config({labml_request, {}}, old);
  for (const examples::Setting& s : examples::train_settings()) {
    INFO("--" << s.name);
    CHECK(s.text(from_old) == s.text(s.scope == examples::Scope::invocation ? labml_request : run));
  }
  REQUIRE_THROWS_WITH(examples::resumed_config({labml_request, {"recipe"}}, old),
                      Catch::Contains("--recipe labml (the run used convmixer-cifar10)"));

  io::Checkpoint damaged = checkpoint;
  damaged.metadata["flags"] = R"({"batch":"sixteen"})";
  REQUIRE_THROWS_WITH(examples::resumed_config({later, {}}, damaged),
                      Catch::Contains("run/last.safetensors: its recorded settings are damaged") &&
                          Catch::Contains("--batch"));
  damaged.metadata.clear();
  REQUIRE_THROWS_WITH(examples::resumed_config({later, {}}, damaged),
                      Catch::Contains("the checkpoint's metadata has no 'flags'"));
}

namespace {

// What the train command line `args` asks for.
examples::TrainRequest request_of(std::vector<std::string> args) {
  cli::Flags flags("train", "");
  examples::declare_flags(flags);
  args.insert(args.begin(), "train");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  REQUIRE(flags.parse(static_cast<int>(argv.size()), argv.data()));
  return examples::request_from(flags);
}

}  // namespace

TEST_CASE("Each recipe sets what it lists, over the defaults, and a flag beside it wins") {
  // The recipes as their sources state them (locuslab/convmixer-cifar10's README command;
  // labml_nn's conv_mixer/experiment.py and CIFAR-10 configs).
  const std::map<std::string, std::map<std::string, std::string>> expected = {
      {"convmixer-cifar10",
       {{"dim", "256"},
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
        {"normalize", "auto"}}},
      {"labml",
       {{"dim", "256"},
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
        {"normalize", "symmetric"}}}};
  REQUIRE(examples::recipes().size() == expected.size());
  const examples::TrainConfig defaults;
  for (const examples::Recipe& recipe : examples::recipes()) {
    INFO("recipe " << recipe.name);
    REQUIRE(expected.count(recipe.name));
    const examples::TrainConfig config = examples::recipe_config(recipe.name);
    const examples::TrainConfig from_flags = request_of({"--recipe", recipe.name}).config;
    for (const examples::Setting& s : examples::train_settings()) {
      INFO("--" << s.name);
      const auto& listed = expected.at(recipe.name);
      const std::string want = s.name == "recipe"     ? recipe.name
                               : listed.count(s.name) ? listed.at(s.name)
                                                      : s.text(defaults);
      CHECK(s.text(config) == want);
      if (s.name != "data") CHECK(s.text(from_flags) == want);
    }
  }
  // The default recipe is TrainConfig's defaults.
  for (const examples::Setting& s : examples::train_settings())
    CHECK(s.text(examples::recipe_config(defaults.recipe)) == s.text(defaults));

  const examples::TrainRequest request =
      request_of({"--recipe", "labml", "--lr", "0.001", "--batch", "32"});
  CHECK(request.config.lr == 0.001);
  CHECK(request.config.batch == 32);
  CHECK(request.config.model.kernel == 7);
  CHECK(request.config.schedule == optim::Schedule::constant);
  CHECK(request.given == std::set<std::string>{"recipe", "lr", "batch"});
  const io::JsonValue recorded = examples::recorded_settings(request.config);
  CHECK(recorded.find("recipe")->as_string() == "labml");
  CHECK(recorded.find("lr")->as_string() == "0.001");
  REQUIRE_THROWS_WITH(request_of({"--recipe", "timm"}),
                      Catch::Contains("--recipe must be convmixer-cifar10 or labml, got 'timm'"));
}

TEST_CASE("A run of a named recipe resumes bit for bit without naming the recipe again") {
  TempDir tmp;
  Generator gen(fresh_seed());
  write_cifar(tmp.path / "cifar", 16, gen);  // 80 training images: 5 steps of 16 per epoch
  const auto train = [&](const std::string& args) {
    const std::string cmd = std::string(DL_TRAIN_BIN) + " --progress off --threads 2 " + args +
                            " > " + (tmp.path / "log.txt").string() + " 2>&1";
    const int status = std::system(cmd.c_str());
    REQUIRE(WIFEXITED(status));
    return WEXITSTATUS(status);
  };
  const std::string labml = " --recipe labml --data " + (tmp.path / "cifar").string() +
                            " --dim 8 --depth 1 --kernel 3 --patch 4 --epochs 2 --batch 16";
  const fs::path straight = tmp.path / "straight", resumed = tmp.path / "resumed";
  REQUIRE(train(labml + " --checkpoint-dir " + straight.string()) == 0);
  REQUIRE(train(labml + " --checkpoint-dir " + resumed.string() + " --stop-after-steps 7") == 130);
  REQUIRE(train("--resume " + resumed.string()) == 0);
  require_identical(last_checkpoint(resumed), last_checkpoint(straight));
  CHECK(metrics_without_timing(resumed) == metrics_without_timing(straight));
  const auto metadata = io::read_checkpoint_metadata((resumed / "last.safetensors").string());
  CHECK(metadata.at("data.mean") == "0.5,0.5,0.5");
  const io::JsonValue flags = io::parse_json(metadata.at("flags"));
  CHECK(flags.find("recipe")->as_string() == "labml");
  CHECK(flags.find("schedule")->as_string() == "constant");
}

TEST_CASE("predict classifies images like the model in process, and names unreadable files") {
  TempDir tmp;
  Generator gen(test::fresh_seed());
  write_cifar(tmp.path / "cifar", 4, gen);
  const fs::path run = tmp.path / "run";
  auto config = tiny_config(tmp.path / "cifar", run);
  config.epochs = 1;
  REQUIRE(examples::train(config) == 0);

  // A 32x32 RGB PNG (the model's size, so no resizing), and a file that is not an image.
  std::vector<uint8_t> pixels(32 * 32 * 3);
  for (auto& p : pixels) p = static_cast<uint8_t>(gen.below(256));
  const fs::path png = tmp.path / "img.png", bad = tmp.path / "notes.txt";
  REQUIRE(stbi_write_png(png.c_str(), 32, 32, 3, pixels.data(), 32 * 3) != 0);
  std::ofstream(bad) << "not an image";
  const fs::path out = tmp.path / "out.jsonl", err = tmp.path / "err.txt";
  const fs::path ckpt = run / "last.safetensors";
  // --json right before the first image, as the README writes it: a flag, not the image's name.
  const std::string cmd = std::string(DL_PREDICT_BIN) + " --checkpoint " + ckpt.string() +
                          " --json " + png.string() + " " + bad.string() + " " + png.string() +
                          " > " + out.string() + " 2> " + err.string();
  const int status = std::system(cmd.c_str());
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 1);  // one unreadable image
  std::ifstream err_in(err);
  const std::string err_text((std::istreambuf_iterator<char>(err_in)), {});
  REQUIRE_THAT(err_text, Catch::Contains(bad.string()));

  // The model in process: the checkpoint's weights, CIFAR-10 normalisation, eval mode.
  auto model = models::make_model(config.model, gen);  // 10 classes, 3 channels, as the data
  io::load_checkpoint(ckpt.string(), *model, nullptr);
  model->eval();
  NoGradGuard no_grad;
  const auto mean = data::cifar10_mean(), std_dev = data::cifar10_std();
  Tensor x = Tensor::empty({1, 32, 32, 3});
  for (size_t i = 0; i < pixels.size(); ++i)
    x.data<float>()[i] = (pixels[i] / 255.0f - mean[i % 3]) / std_dev[i % 3];
  const std::vector<float> expected = model->forward(x).to_vector();

  std::ifstream lines(out);
  int count = 0;
  for (std::string line; std::getline(lines, line); ++count) {
    const io::JsonValue v = io::parse_json(line);
    REQUIRE(v.find("image")->as_string() == png.string());
    const auto& logits = v.find("logits")->as_array();
    REQUIRE(logits.size() == expected.size());
    for (size_t c = 0; c < expected.size(); ++c)
      REQUIRE(std::abs(logits[c].as_double() - expected[c]) <= 1e-6 + 1e-6 * std::abs(expected[c]));
    REQUIRE(v.find("top")->as_array().size() == 3);
  }
  REQUIRE(count == 2);
}

TEST_CASE("evaluate measures a checkpoint as the model in process does, class by class") {
  TempDir tmp;
  Generator gen(test::fresh_seed());
  write_cifar(tmp.path / "cifar", 12, gen);  // 12 test images
  const fs::path run = tmp.path / "run";
  auto config = tiny_config(tmp.path / "cifar", run);
  config.epochs = 1;
  REQUIRE(examples::train(config) == 0);
  const fs::path json = tmp.path / "evaluation.json", log = tmp.path / "log.txt";
  const auto evaluate = [&](const std::string& args) {
    const std::string cmd =
        std::string(DL_EVALUATE_BIN) + " " + args + " > " + log.string() + " 2>&1";
    const int status = std::system(cmd.c_str());
    REQUIRE(WIFEXITED(status));
    std::ifstream in(log);
    return std::pair{WEXITSTATUS(status), std::string((std::istreambuf_iterator<char>(in)), {})};
  };
  const auto [status, out] = evaluate("--checkpoint " + run.string() + " --json " + json.string());
  INFO(out);
  REQUIRE(status == 0);

  // The model in process, one image at a time, normalised by hand.
  auto model = models::make_model(config.model, gen);
  io::load_checkpoint((run / "last.safetensors").string(), *model, nullptr);
  model->eval();
  NoGradGuard no_grad;
  const data::ImageDataset test = data::load_dataset(config.data, data::Split::test);
  const auto mean = data::cifar10_mean(), std_dev = data::cifar10_std();
  std::vector<std::vector<int64_t>> confusion(10, std::vector<int64_t>(10, 0));
  double loss_sum = 0;
  for (int64_t i = 0; i < test.size(); ++i) {
    Tensor x = Tensor::empty({1, 32, 32, 3});
    for (int64_t k = 0; k < 32 * 32 * 3; ++k)
      x.data<float>()[k] = (test.image(i)[k] / 255.0f - mean[k % 3]) / std_dev[k % 3];
    const Tensor logits = model->forward(x);
    const std::vector<float> v = logits.to_vector();
    loss_sum +=
        cross_entropy(logits, Tensor::from_vector(std::vector<int64_t>{test.labels[i]}, {1}))
            .item();
    ++confusion[test.labels[i]][std::max_element(v.begin(), v.end()) - v.begin()];
  }
  std::ifstream in(json);
  const io::JsonValue result =
      io::parse_json(std::string((std::istreambuf_iterator<char>(in)), {}));
  int64_t correct = 0;
  const auto& rows = result.find("confusion")->as_array();
  REQUIRE(rows.size() == 10);
  for (size_t c = 0; c < 10; ++c) {
    correct += confusion[c][c];
    for (size_t p = 0; p < 10; ++p) CHECK(rows[c].as_array()[p].as_int() == confusion[c][p]);
    const int64_t total = std::accumulate(confusion[c].begin(), confusion[c].end(), int64_t{0});
    CHECK(result.find("class_accuracy")->as_array()[c].as_double() ==
          Approx(total ? static_cast<double>(confusion[c][c]) / total : 0.0));
  }
  CHECK(result.find("accuracy")->as_double() == Approx(correct / 12.0));
  CHECK(result.find("loss")->as_double() == Approx(loss_sum / 12).epsilon(1e-5));
  CHECK_THAT(out, Catch::Contains("confusion matrix"));

  // The wrong data set, a bad split.
  const fs::path folder = tmp.path / "folder";
  std::vector<uint8_t> px(32 * 32 * 3, 5);
  for (const char* cls : {"cat", "dog"}) {
    fs::create_directories(folder / "test" / cls);
    REQUIRE(stbi_write_png((folder / "test" / cls / "a.png").c_str(), 32, 32, 3, px.data(), 96));
  }
  const auto [other_status, other_out] =
      evaluate("--checkpoint " + run.string() + " --data " + folder.string());
  CHECK(other_status == 1);
  CHECK_THAT(other_out, Catch::Contains("has other classes (cat,dog) than the checkpoint"));
  CHECK_THAT(evaluate("--checkpoint " + run.string() + " --split valid").second,
             Catch::Contains("--split must be test or train"));
}

TEST_CASE(
    "The moving average and flip TTA: train, evaluate and predict use the weights asked for") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  TempDir tmp;
  Generator gen(seed);
  write_cifar(tmp.path / "cifar", 12, gen);  // 12 test images
  const fs::path run = tmp.path / "run";
  auto config = tiny_config(tmp.path / "cifar", run);
  config.epochs = 1;
  config.ema = 0.5;
  config.tta = examples::Tta::flip;
  REQUIRE(examples::train(config) == 0);
  const io::JsonValue metrics = metrics_lines(run).back();
  CHECK(metrics.find("test_loss")->as_double() != metrics.find("ema_test_loss")->as_double());
  const std::string checkpoint_path = (run / "last.safetensors").string();
  const io::Checkpoint checkpoint = io::read_checkpoint(checkpoint_path);
  const fs::path log = tmp.path / "log.txt", json = tmp.path / "evaluation.json";
  const auto command = [&](const std::string& cmd) {
    const int status = std::system((cmd + " > " + log.string() + " 2>&1").c_str());
    REQUIRE(WIFEXITED(status));
    return std::pair{WEXITSTATUS(status), text_of(log)};
  };
  // Test image 0 as a PNG for predict.
  const data::ImageDataset test = data::load_dataset(config.data, data::Split::test);
  const fs::path png = tmp.path / "image0.png";
  REQUIRE(stbi_write_png(png.c_str(), 32, 32, 3, test.image(0), 32 * 3) != 0);

  // The reference: each image and its mirror (flipped here by index) through the model in
  // process, the mean of their logits, cross-entropy and accuracy in double.
  const auto mean = data::cifar10_mean(), std_dev = data::cifar10_std();
  bool flip_changes = false;
  for (const bool ema : {false, true}) {
    INFO((ema ? "the moving average" : "the trained weights"));
    auto model = models::make_model(config.model, gen);
    io::load_weights(checkpoint, *model, ema);
    model->eval();
    NoGradGuard no_grad;
    double loss_sum = 0;
    int64_t correct = 0;
    std::vector<float> first_logits;
    for (int64_t i = 0; i < test.size(); ++i) {
      Tensor x = Tensor::empty({1, 32, 32, 3}), mirrored = Tensor::empty({1, 32, 32, 3});
      for (int64_t y = 0; y < 32; ++y)
        for (int64_t col = 0; col < 32; ++col)
          for (int64_t c = 0; c < 3; ++c) {
            const float v = (test.image(i)[(y * 32 + col) * 3 + c] / 255.0f - mean[c]) / std_dev[c];
            x.data<float>()[(y * 32 + col) * 3 + c] = v;
            mirrored.data<float>()[(y * 32 + 31 - col) * 3 + c] = v;
          }
      const std::vector<float> a = model->forward(x).to_vector();
      const std::vector<float> b = model->forward(mirrored).to_vector();
      if (i == 0) first_logits = a;
      std::vector<double> z(a.size());
      for (size_t c = 0; c < z.size(); ++c) {
        z[c] = (static_cast<double>(a[c]) + b[c]) / 2;
        flip_changes = flip_changes || std::abs(a[c] - b[c]) > 1e-4f;
      }
      const double zmax = *std::max_element(z.begin(), z.end());
      double sum_exp = 0;
      for (double v : z) sum_exp += std::exp(v - zmax);
      loss_sum += zmax + std::log(sum_exp) - z[test.labels[i]];
      correct += std::max_element(z.begin(), z.end()) - z.begin() == test.labels[i];
    }
    const double loss = loss_sum / 12, accuracy = correct / 12.0;
    const std::string prefix = ema ? "ema_" : "";
    CHECK(metrics.find(prefix + "test_loss")->as_double() == Approx(loss).epsilon(1e-5));
    CHECK(metrics.find(prefix + "test_acc")->as_double() == Approx(accuracy));

    const auto [status, out] =
        command(std::string(DL_EVALUATE_BIN) + " --checkpoint " + run.string() + " --tta flip" +
                (ema ? " --ema" : "") + " --json " + json.string());
    INFO(out);
    REQUIRE(status == 0);
    const io::JsonValue result = io::parse_json(text_of(json));
    CHECK(result.find("loss")->as_double() == Approx(loss).epsilon(1e-5));
    CHECK(result.find("accuracy")->as_double() == Approx(accuracy));
    CHECK(result.find("ema")->as_bool() == ema);
    CHECK(result.find("tta")->as_string() == "flip");

    // predict classifies with the same weights (no test-time augmentation).
    const auto [predicted, lines] =
        command(std::string(DL_PREDICT_BIN) + " --checkpoint " + run.string() +
                (ema ? " --ema" : "") + " --json " + png.string());
    INFO(lines);
    REQUIRE(predicted == 0);
    const io::JsonValue prediction = io::parse_json(lines);
    const auto& logits = prediction.find("logits")->as_array();
    REQUIRE(logits.size() == first_logits.size());
    for (size_t c = 0; c < logits.size(); ++c)
      CHECK(std::abs(logits[c].as_double() - first_logits[c]) <=
            1e-6 + 1e-6 * std::abs(first_logits[c]));
  }
  CHECK(flip_changes);  // the images are not symmetric: a missing flip would show

  // A checkpoint without the moving average: evaluate --ema and a resume of a run that kept one
  // are refused, naming the file.
  io::SafetensorsFile file = io::load_safetensors(checkpoint_path);
  std::erase_if(file.tensors, [](const auto& entry) { return entry.first.starts_with("ema."); });
  const fs::path stripped = tmp.path / "no-ema.safetensors";
  io::save_safetensors(stripped.string(), file.tensors, file.metadata);
  const auto [refused, message] =
      command(std::string(DL_EVALUATE_BIN) + " --checkpoint " + stripped.string() + " --ema");
  CHECK(refused == 1);
  CHECK_THAT(message, Catch::Contains(stripped.string()) &&
                          Catch::Contains("holds no moving average of the model"));
  CHECK_THAT(
      command(std::string(DL_EVALUATE_BIN) + " --checkpoint " + run.string() + " --tta mirror")
          .second,
      Catch::Contains("--tta must be none or flip, got 'mirror'"));
  auto resume = tiny_config(tmp.path / "cifar", tmp.path / "branch");
  resume.resume = stripped.string();
  resume.epochs = 2;
  REQUIRE_THROWS_WITH(examples::train(resume, {"epochs"}),
                      Catch::Contains("records --ema 0.5 but holds no moving average"));
}

TEST_CASE("train --resume restores the run's flags and rejects conflicting ones") {
  TempDir tmp;
  Generator gen(3);
  write_cifar(tmp.path / "cifar", 16, gen);
  const fs::path run = tmp.path / "run", log = tmp.path / "log.txt";
  auto train = [&](const std::string& args, const fs::path& cwd = {}) {
    const std::string cmd = (cwd.empty() ? "" : "cd " + cwd.string() + " && ") +
                            std::string(DL_TRAIN_BIN) + " --progress off " + args + " > " +
                            log.string() + " 2>&1";
    const int status = std::system(cmd.c_str());
    REQUIRE(WIFEXITED(status));
    std::ifstream in(log);
    return std::pair{WEXITSTATUS(status), std::string((std::istreambuf_iterator<char>(in)), {})};
  };
  const std::string data = " --data " + (tmp.path / "cifar").string();
  const auto [started, out1] =
      train(data +
            " --dim 8 --depth 1 --kernel 3 --patch 4 --epochs 2 --batch 16 --ra-n 0"
            " --checkpoint-dir " +
            run.string() + " --stop-after-steps 3 --workers 1");
  INFO(out1);
  REQUIRE(started == 130);
  const auto [conflict, out2] = train(data + " --resume " + run.string() + " --batch 32");
  INFO(out2);
  REQUIRE(conflict == 1);
  REQUIRE_THAT(out2, Catch::Contains("--batch 32 (the run used 16)"));
  REQUIRE_THAT(train(" --momentum 0.5" + data).second,
               Catch::Contains("--momentum only applies with --optimizer sgd"));
  // The machine's settings (--workers here) are this invocation's: not taken from the checkpoint.
  const auto [paused, out_paused] = train(" --resume " + run.string() + " --stop-after-steps 2");
  INFO(out_paused);
  REQUIRE(paused == 130);
  const io::JsonValue recorded =
      io::parse_json(io::read_checkpoint_metadata((run / "last.safetensors").string()).at("flags"));
  CHECK(recorded.find("workers") == nullptr);  // this invocation's own: not recorded
  CHECK(recorded.find("dim")->as_string() == "8");

  const auto [resumed, out3] = train(data + " --resume " + run.string() + " --threads 1");
  INFO(out3);
  REQUIRE(resumed == 0);
  REQUIRE_THAT(out3, Catch::Contains("convmixer dim=8 depth=1 kernel=3 patch=4"));
  REQUIRE(metrics_without_timing(run).size() == 2);
  fs::create_directories(tmp.path / "no-checkpoint");
  CHECK_THAT(train(" --resume " + (tmp.path / "no-checkpoint").string()).second,
             Catch::Contains("no such file (not a run directory, or the run has saved no "
                             "checkpoint yet)"));
  const auto [finished, out_finished] = train(" --resume " + run.string());
  CHECK(finished == 0);
  CHECK_THAT(out_finished,
             Catch::Contains("has finished 2 epochs (--epochs 2): nothing to train") &&
                 !Catch::Contains("loading"));

  // Without --checkpoint-dir each run gets a directory of its own under runs/.
  const std::string tiny = data + " --dim 8 --depth 1 --kernel 3 --patch 4 --epochs 1 --ra-n 0";
  const fs::path work = tmp.path / "work";
  fs::create_directories(work);
  const auto [fresh, out4] = train(tiny + " --seed 1", work);
  const auto [another, out5] = train(tiny + " --seed 2", work);
  INFO(out4 << out5);
  REQUIRE((fresh == 0 && another == 0));
  std::vector<fs::path> runs;
  for (const auto& entry : fs::directory_iterator(work / "runs")) runs.push_back(entry.path());
  REQUIRE(runs.size() == 2);
  for (const auto& dir : runs) {
    CHECK(dir.filename().string().rfind("convmixer-20", 0) == 0);
    CHECK(fs::exists(dir / "last.safetensors"));
  }
}

TEST_CASE(
    "Resuming an older checkpoint never writes over the run's last one; a finished run "
    "trains nothing") {
  TempDir tmp;
  Generator gen(fresh_seed());
  write_cifar(tmp.path / "cifar", 4, gen);  // 20 training images: 2 steps per epoch
  const fs::path run = tmp.path / "run", branch = tmp.path / "branch";
  auto read = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  };
  auto first = tiny_config(tmp.path / "cifar", run);
  first.stop_after_steps = 2;  // stops after epoch 1
  REQUIRE(examples::train(first) == 130);
  fs::copy_file(run / "last.safetensors", run / "epoch1.safetensors");
  auto finish = tiny_config(tmp.path / "cifar", run);
  finish.resume = run.string();
  REQUIRE(examples::train(finish) == 0);
  const std::string last = read(run / "last.safetensors"), metrics = read(run / "metrics.jsonl");

  auto older = tiny_config(tmp.path / "cifar", run);
  older.resume = (run / "epoch1.safetensors").string();
  REQUIRE_THROWS_WITH(examples::train(older),
                      Catch::Contains("is not a run directory's last.safetensors") &&
                          Catch::Contains("--checkpoint-dir"));
  // Into a new directory: the original run stays as it was, and the branch, which trained
  // epoch 2 again from the same state, ends as the original did (metrics of epoch 1 included).
  older.checkpoint_dir = branch.string();
  REQUIRE(examples::train(older) == 0);
  CHECK(read(run / "last.safetensors") == last);
  CHECK(read(run / "metrics.jsonl") == metrics);
  require_identical(last_checkpoint(branch), last_checkpoint(run));
  CHECK(metrics_without_timing(branch) == metrics_without_timing(run));

  // A branch never writes into a directory that holds another run's metrics.
  const fs::path used = tmp.path / "used";
  fs::create_directories(used);
  std::ofstream(used / "metrics.jsonl") << R"({"epoch":1,"step":2,"train_loss":2.5})"
                                        << "\n";
  older.checkpoint_dir = used.string();
  REQUIRE_THROWS_WITH(examples::train(older),
                      Catch::Contains("holds the metrics of a run that saved no checkpoint"));
  CHECK(read(used / "metrics.jsonl") == "{\"epoch\":1,\"step\":2,\"train_loss\":2.5}\n");
  CHECK_FALSE(fs::exists(used / "last.safetensors"));

  // Resuming on other data (here 8x8 images of ten other classes) is refused.
  const fs::path folder = tmp.path / "folder";
  std::vector<uint8_t> px(8 * 8 * 3, 9);
  for (const char* split : {"train", "test"})
    for (int k = 0; k < 10; ++k) {
      fs::create_directories(folder / split / ("class" + std::to_string(k)));
      const fs::path png = folder / split / ("class" + std::to_string(k)) / "a.png";
      REQUIRE(stbi_write_png(png.c_str(), 8, 8, 3, px.data(), 24) != 0);
    }
  auto other_data = tiny_config(folder, tmp.path / "other-data");
  other_data.resume = (run / "epoch1.safetensors").string();
  REQUIRE_THROWS_WITH(examples::train(other_data, {"data"}),
                      Catch::Contains("was trained on other data"));

  // ... also CIFAR-format data of another size.
  write_cifar(tmp.path / "cifar-40", 8, gen);
  auto other_size = tiny_config(tmp.path / "cifar-40", branch);
  other_size.resume = (run / "epoch1.safetensors").string();
  other_size.checkpoint_dir = (tmp.path / "other-size").string();
  REQUIRE_THROWS_WITH(examples::train(other_size, {"data"}), Catch::Contains("data.train_images"));

  // A branch killed before its first save of its own still holds the checkpoint it continues, so
  // --resume picks it up: killed as soon as its directory holds a checkpoint.
  const fs::path crashed = tmp.path / "crashed";
  signal_when(
      start_train({"--resume", (run / "epoch1.safetensors").string(), "--checkpoint-dir",
                   crashed.string(), "--threads", "1"},
                  tmp.path / "crashed.log"),
      [&] { return fs::exists(crashed / "last.safetensors"); }, SIGKILL);
  auto recover = tiny_config(tmp.path / "cifar", crashed);
  recover.resume = crashed.string();
  REQUIRE(examples::train(recover) == 0);
  require_identical(last_checkpoint(crashed), last_checkpoint(run));
  CHECK(metrics_without_timing(crashed) == metrics_without_timing(run));

  // A finished run: nothing to train, and the data is not even read.
  auto again = finish;
  again.data = (tmp.path / "moved-away").string();
  REQUIRE(examples::train(again) == 0);
  CHECK(read(run / "last.safetensors") == last);
  // ... also from a copy of its checkpoint, which could not continue in place.
  fs::copy_file(run / "last.safetensors", tmp.path / "finished-copy.safetensors");
  again.resume = (tmp.path / "finished-copy.safetensors").string();
  REQUIRE(examples::train(again) == 0);
}
