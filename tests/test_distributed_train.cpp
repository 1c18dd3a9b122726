// The train binary data-parallel on two ranks (mpirun -np 2 on this machine, one thread each),
// against the same run in one process: the same weights up to float rounding with --sync-bn, a
// 2-rank checkpoint resumed on 1 and on 2 ranks, a 2-rank run killed with SIGKILL and resumed,
// and ranks that fail or disagree ending the job with one message naming the rank.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "engine/io/safetensors.h"
#include "examples/trainer.h"
#include "test_util.h"
#include "trainer_test_util.h"

using namespace dl;
using namespace dl::test;
namespace fs = std::filesystem;

namespace {

// tiny_config's run as flags, with SGD (whose update is proportional to the gradient, so float
// rounding in the sums over the ranks stays at rounding size) and SyncBatchNorm.
std::string run_flags(const fs::path& data, const fs::path& run) {
  return "--data " + data.string() +
         " --model convmixer --dim 8 --depth 1 --kernel 3 --patch 4 --epochs 2 --batch 16 "
         "--optimizer sgd --lr 0.05 --ra-n 2 --crop random --reprob 0.5 --sync-bn --device cpu "
         "--threads 1 --workers 1 --seed 7 --progress off --checkpoint-dir " +
         run.string();
}

examples::TrainConfig one_process_config(const fs::path& data, const fs::path& run) {
  examples::TrainConfig c = tiny_config(data, run);
  c.optimizer = examples::OptimizerKind::sgd;
  c.lr = 0.05;
  c.sync_bn = true;
  c.threads = 1;
  return c;
}

std::string text_of(const fs::path& file) {
  std::ifstream in(file);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// `mpirun --oversubscribe <programs>` (one or more "-np N train args", ':'-separated), its
// output into `log`, in the background; the pid returned is mpirun's. OpenMPI as root wants its
// two confirmations.
pid_t start_mpirun(const std::string& programs, const fs::path& log) {
  std::vector<std::string> args = {DL_MPIEXEC, "--oversubscribe"};
  std::istringstream words(programs);
  for (std::string word; words >> word;) args.push_back(word);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("OMP_NUM_THREADS", "1", 1);
    const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, STDOUT_FILENO), dup2(out, STDERR_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// The job's train processes: mpirun's children named train, from /proc (each rank has a
// process group of its own).
std::vector<pid_t> ranks_of(pid_t job) {
  std::vector<pid_t> ranks;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string pid, comm, state;
    long parent = 0;
    if (stat >> pid >> comm >> state >> parent && comm == "(train)" && parent == job)
      ranks.push_back(static_cast<pid_t>(std::stol(pid)));
  }
  return ranks;
}

// Whether `pid` is a live process (not gone, not a zombie waiting to be reaped).
bool running(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string pid_field, name, state;
  return stat >> pid_field >> name >> state && state != "Z";
}

// SIGKILL to the ranks and mpirun at once, as a machine that goes down ends them.
void kill_job(pid_t job) {
  for (pid_t rank : ranks_of(job)) kill(rank, SIGKILL);
  kill(job, SIGKILL);
}

std::string train_on(int ranks, const std::string& args) {
  return "-np " + std::to_string(ranks) + " " + DL_TRAIN_BIN + " " + args;
}

// Waits at most `seconds` for the job; kills it and fails when it hangs. Returns the exit code.
int wait_bounded(pid_t pid, double seconds, const fs::path& log) {
  const auto start = std::chrono::steady_clock::now();
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() - start > std::chrono::duration<double>(seconds)) {
      kill_job(pid);
      waitpid(pid, &status, 0);
      FAIL("the job did not end within " << seconds << " s; its output:\n" << text_of(log));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int run_job(const std::string& programs, const fs::path& log) {
  return wait_bounded(start_mpirun(programs, log), 120, log);
}

// Every tensor of two checkpoints within float rounding of each other (relative to the larger of
// 1 and the tensor's largest value).
void require_close_checkpoints(const fs::path& a, const fs::path& b) {
  const io::SafetensorsFile x = last_checkpoint(a), y = last_checkpoint(b);
  REQUIRE(x.tensors.size() == y.tensors.size());
  for (size_t i = 0; i < x.tensors.size(); ++i) {
    INFO("tensor " << x.tensors[i].first);
    REQUIRE(x.tensors[i].first == y.tensors[i].first);
    const Tensor& p = x.tensors[i].second;
    const Tensor& q = y.tensors[i].second;
    REQUIRE(p.shape() == q.shape());
    REQUIRE(p.dtype() == q.dtype());
    if (p.dtype() != DType::f32) {
      REQUIRE(std::memcmp(p.raw_data(), q.raw_data(), p.nbytes()) == 0);
      continue;
    }
    double worst = 0.0, scale = 1.0;
    const float* u = p.data<float>();
    const float* v = q.data<float>();
    for (int64_t k = 0; k < p.numel(); ++k) {
      worst = std::max(worst, std::abs(static_cast<double>(u[k]) - v[k]));
      scale = std::max(scale, std::abs(static_cast<double>(v[k])));
    }
    CHECK(worst <= 1e-5 * scale);
  }
}

struct Fixture {
  uint64_t seed = test::fresh_seed();
  TempDir tmp;
  fs::path data = tmp.path / "cifar";
  Fixture() {
    Generator gen(seed);
    write_cifar(data, 16, gen);
  }
};

}  // namespace

TEST_CASE(
    "Two ranks with --sync-bn train as one process does, and their checkpoint resumes "
    "on one rank and on two") {
  Fixture f;
  INFO("seed " << f.seed);
  const fs::path one = f.tmp.path / "one", two = f.tmp.path / "two";
  REQUIRE(examples::train(one_process_config(f.data, one)) == 0);
  REQUIRE(run_job(train_on(2, run_flags(f.data, two)), f.tmp.path / "two.log") == 0);
  const std::string log = text_of(f.tmp.path / "two.log");
  INFO(log);
  CHECK_THAT(log, Catch::Contains("on 2 ranks of 8 images (SyncBatchNorm)"));
  // Rank 0 alone speaks: one summary line per epoch.
  CHECK(log.find("epoch   1 |") == log.rfind("epoch   1 |"));
  require_close_checkpoints(two, one);
  REQUIRE(metrics_lines(two).size() == 2);

  // Stopped after 7 steps (epoch 2, batch 2), then resumed on one rank and on two.
  const fs::path stopped = f.tmp.path / "stopped";
  REQUIRE(run_job(train_on(2, run_flags(f.data, stopped) + " --stop-after-steps 7"),
                  f.tmp.path / "stopped.log") == 130);
  const fs::path on_one = f.tmp.path / "on_one", on_two = f.tmp.path / "on_two";
  fs::copy(stopped, on_one);
  fs::copy(stopped, on_two);
  examples::TrainConfig resume_one;
  resume_one.resume = on_one.string();
  resume_one.threads = 1;
  resume_one.device = "cpu";
  resume_one.progress = examples::ProgressMode::off;
  REQUIRE(examples::train(resume_one, {"threads", "device", "progress"}) == 0);
  require_close_checkpoints(on_one, two);
  REQUIRE(run_job(train_on(2, "--resume " + on_two.string() + " --threads 1 --progress off"),
                  f.tmp.path / "on_two.log") == 0);
  require_close_checkpoints(on_two, two);
  // The resumed epoch's summary covers the whole epoch, on either number of ranks.
  const std::vector<io::JsonValue> a = metrics_lines(on_two), b = metrics_lines(two);
  REQUIRE(a.size() == 2);
  auto number = [](const io::JsonValue& line, const char* key) {
    const io::JsonValue* value = line.find(key);
    REQUIRE(value != nullptr);
    return value->as_double();
  };
  CHECK(number(a[1], "train_loss") == Approx(number(b[1], "train_loss")).epsilon(1e-5));
  CHECK(number(a[1], "test_acc") == number(b[1], "test_acc"));
}

TEST_CASE("A two-rank run killed with SIGKILL at a random step resumes and ends as it would have") {
  Fixture f;
  INFO("seed " << f.seed);
  const fs::path reference = f.tmp.path / "reference", run = f.tmp.path / "run";
  REQUIRE(run_job(train_on(2, run_flags(f.data, reference) + " --epochs 3"),
                  f.tmp.path / "reference.log") == 0);
  // Killed (job and ranks at once) some time after its first checkpoint.
  const pid_t job =
      start_mpirun(train_on(2, run_flags(f.data, run) + " --epochs 3"), f.tmp.path / "run.log");
  while (!fs::exists(run / "last.safetensors")) {
    int status = 0;
    if (waitpid(job, &status, WNOHANG) == job) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(std::mt19937(f.seed)() % 200));
  kill_job(job);
  wait_bounded(job, 30, f.tmp.path / "run.log");
  // Whatever was left (a finished run included) continues to the reference's end.
  const int resumed =
      run_job(train_on(2, "--resume " + run.string() + " --threads 1"), f.tmp.path / "resumed.log");
  INFO(text_of(f.tmp.path / "resumed.log"));
  REQUIRE(resumed == 0);
  require_close_checkpoints(run, reference);
}

TEST_CASE("A rank that fails or was started differently ends every rank with one message") {
  Fixture f;
  INFO("seed " << f.seed);
  const std::string good = run_flags(f.data, f.tmp.path / "run");
  SECTION("rank 1 cannot read its data while rank 0 waits for it: the job ends within 60 s") {
    const fs::path log = f.tmp.path / "failed.log";
    const auto start = std::chrono::steady_clock::now();
    const int code = wait_bounded(
        start_mpirun(train_on(1, good) + " : " + train_on(1, good + " --data /no/such/data"), log),
        60, log);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    INFO(text_of(log));
    CHECK(code != 0);
    CHECK(seconds < 60);
    CHECK_THAT(text_of(log), Catch::Contains("train: error (rank 1 of 2, ending every rank): "
                                             "/no/such/data"));
    CHECK_FALSE(fs::exists(f.tmp.path / "run" / "last.safetensors"));
  }
  SECTION("rank processes killed mid-run: the job ends within 60 s, naming what happened") {
    const fs::path log = f.tmp.path / "killed.log", run = f.tmp.path / "run";
    const pid_t job = start_mpirun(train_on(2, good + " --epochs 50"), log);
    while (!fs::exists(run / "last.safetensors")) {
      int status = 0;
      REQUIRE(waitpid(job, &status, WNOHANG) == 0);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    // One rank's process, as a crash would end it; mpirun ends the other.
    const std::vector<pid_t> ranks = ranks_of(job);
    REQUIRE(ranks.size() == 2);
    const auto start = std::chrono::steady_clock::now();
    REQUIRE(kill(ranks.back(), SIGKILL) == 0);
    const int code = wait_bounded(job, 60, log);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    INFO(text_of(log));
    CHECK(code != 0);
    CHECK(seconds < 60);
    CHECK_THAT(text_of(log), Catch::Contains("exited on signal 9"));
    // None left behind: mpirun's SIGTERM lets the other rank stop after its step (a sanitizer
    // build takes seconds), then it ends on its own.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (pid_t rank : ranks)
      while (running(rank) && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (pid_t rank : ranks) CHECK_FALSE(running(rank));
  }
  SECTION("a stop signal that reaches one rank stops both after the same step, with a checkpoint") {
    const fs::path log = f.tmp.path / "signal.log", run = f.tmp.path / "run";
    // --eval-every 2: epochs that end without an evaluation, where a stop decided by one rank
    // alone would leave the other training.
    const pid_t job = start_mpirun(train_on(2, good + " --epochs 500 --eval-every 2"), log);
    while (!fs::exists(run / "last.safetensors")) {
      int status = 0;
      REQUIRE(waitpid(job, &status, WNOHANG) == 0);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(std::mt19937(f.seed)() % 300));
    const std::vector<pid_t> ranks = ranks_of(job);
    REQUIRE(ranks.size() == 2);
    REQUIRE(kill(ranks[std::mt19937(f.seed + 1)() % 2], SIGTERM) == 0);
    const int code = wait_bounded(job, 60, log);
    INFO(text_of(log));
    CHECK(code == 130);
    CHECK_THAT(text_of(log), Catch::Contains("; continue with --resume"));
    // The checkpoint it left continues (for three steps).
    CHECK(run_job(train_on(2, "--resume " + run.string() + " --stop-after-steps 3 --threads 1"),
                  f.tmp.path / "resumed.log") == 130);
    CHECK_THAT(text_of(f.tmp.path / "resumed.log"), Catch::Contains("resumed "));
  }
  SECTION("Ctrl-C to mpirun, given time to stop, ends both ranks with a checkpoint that resumes") {
    // OpenMPI passes no SIGINT on: it sends the ranks SIGTERM after odls_base_sigkill_timeout
    // seconds and SIGKILL as long after that (scripts/train.sh gives it 10). Once interrupted,
    // mpirun no longer reads the ranks' output: these tiny epochs (a line each, every few ms)
    // would fill the pipe and block rank 0 before its stop, so each rank writes to a file of its
    // own (the shell execs the trainer: the signals reach it).
    const fs::path log = f.tmp.path / "ctrl-c.log", run = f.tmp.path / "run";
    const fs::path to_file = f.tmp.path / "stderr-to-file.sh";
    const std::string rank_log = (f.tmp.path / "rank").string();
    std::ofstream(to_file) << "#!/bin/sh\nexec \"$@\" >" << rank_log
                           << ".$OMPI_COMM_WORLD_RANK.log 2>&1\n";
    fs::permissions(to_file, fs::perms::owner_all);
    const pid_t job = start_mpirun("--mca odls_base_sigkill_timeout 5 -np 2 " + to_file.string() +
                                       " " + DL_TRAIN_BIN + " " + good + " --epochs 5000",
                                   log);
    while (!fs::exists(run / "last.safetensors")) {
      int status = 0;
      REQUIRE(waitpid(job, &status, WNOHANG) == 0);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    REQUIRE(kill(job, SIGINT) == 0);
    wait_bounded(job, 60, log);  // mpirun's own exit code: it was interrupted
    const std::string rank0 = text_of(rank_log + ".0.log");
    INFO(text_of(log) << "\nrank 0:\n" << rank0);
    // Written after the stop's checkpoint, by the rank that writes it.
    CHECK_THAT(rank0, Catch::Contains("; continue with --resume"));
    CHECK_THAT(text_of(log), !Catch::Contains("signal 9"));
    CHECK(run_job(train_on(2, "--resume " + run.string() + " --stop-after-steps 3 --threads 1"),
                  f.tmp.path / "resumed.log") == 130);
    CHECK_THAT(text_of(f.tmp.path / "resumed.log"), Catch::Contains("resumed "));
  }
  SECTION("ranks started with different settings are refused before the first step") {
    const fs::path log = f.tmp.path / "differ.log";
    const int code = run_job(train_on(1, good) + " : " + train_on(1, good + " --lr 0.1"), log);
    INFO(text_of(log));
    CHECK(code != 0);
    CHECK_THAT(text_of(log), Catch::Contains("rank 1 was started with other settings or data "
                                             "than rank 0"));
    CHECK_FALSE(fs::exists(f.tmp.path / "run" / "last.safetensors"));
  }
  SECTION("a global batch that does not split evenly is refused") {
    const fs::path log = f.tmp.path / "batch.log";
    const int code = run_job(train_on(2, good + " --batch 15"), log);
    INFO(text_of(log));
    CHECK(code != 0);
    CHECK_THAT(text_of(log), Catch::Contains("--batch 15 (the global batch) does not split evenly "
                                             "over 2 ranks"));
  }
}
