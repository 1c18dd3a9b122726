#include "examples/run_directory.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>

#include "engine/error.h"
#include "engine/io/json.h"

namespace dl::examples {

namespace fs = std::filesystem;

namespace {

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

// A directory a new run (or a branch) may write into holds no checkpoint and no metrics of
// another run. `advice` says what to do about a checkpoint found there.
void check_unused(const fs::path& dir, const std::string& advice) {
  const fs::path last = dir / "last.safetensors", metrics = dir / "metrics.jsonl";
  DL_CHECK(!fs::exists(last), last.string(), " already exists: ", advice);
  DL_CHECK(!fs::exists(metrics) || fs::file_size(metrics) == 0, metrics.string(),
           " holds the metrics of a run that saved no checkpoint there: move it away, or choose "
           "another --checkpoint-dir");
}

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
// leaves that file behind. The caller holds the directory's lock, so no writer is using one.
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

}  // namespace

std::string checkpoint_file(const std::string& resume) {
  if (!fs::is_directory(resume)) return resume;
  const fs::path last = fs::path(resume) / "last.safetensors";
  DL_CHECK(fs::exists(last), last.string(),
           ": no such file (not a run directory, or the run has saved no checkpoint yet)");
  return last.string();
}

RunDirectory::RunDirectory(const std::string& checkpoint_dir, const std::string& resume_file,
                           bool writes)
    : resume_file_(resume_file), writes_(writes) {
  const fs::path requested(checkpoint_dir);
  if (resume_file.empty()) {
    dir_ = requested;
    advice_ = "pass --resume " + checkpoint_dir +
              " to continue that run, or choose another --checkpoint-dir";
  } else {
    const fs::path file(resume_file);
    const fs::path origin = file.has_parent_path() ? file.parent_path() : fs::path(".");
    // Compared as resolved paths: ./run, run/, a link to run and run/x/.. are all run.
    branch_ = !requested.empty() && fs::weakly_canonical(requested) != fs::weakly_canonical(origin);
    if (branch_) {
      dir_ = requested;
      advice_ = "pass --resume " + checkpoint_dir +
                " to continue the run there, or choose another --checkpoint-dir";
      if (fs::exists(origin / "last.safetensors")) metrics_origin_ = origin / "metrics.jsonl";
    } else {
      dir_ = origin;
      in_place_ = true;
    }
  }
  // A directory this process cannot write is refused by check(), unlocked.
  if (writes_ && !dir_.empty() && fs::is_directory(dir_) && access(dir_.c_str(), W_OK) == 0) lock();
}

void RunDirectory::check() const {
  if (!writes_) return;
  if (in_place_) {
    DL_CHECK(fs::path(resume_file_).filename() == "last.safetensors", resume_file_,
             " is not a run directory's last.safetensors: continuing beside it could write "
             "over another run's checkpoint or metrics; pass --checkpoint-dir NEW_DIR to "
             "continue the run there");
    check_writable_directory(dir_, "the resumed run's directory");
    return;
  }
  if (dir_.empty()) {
    check_writable_directory("runs", "the directory of new runs");
    return;
  }
  check_writable_directory(dir_, "--checkpoint-dir");
  check_unused(dir_, advice_);
}

RunDirectory::~RunDirectory() {
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

// An exclusive flock on <dir>/.lock for the run's lifetime. The kernel drops it when the process
// ends, even on a crash.
void RunDirectory::lock() {
  const fs::path path = dir_ / ".lock";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  DL_CHECK(fd >= 0, "cannot open ", path.string(), ": ", std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    throw Error("another train process is writing " + dir_.string() +
                " (it holds .lock): wait for it or choose another --checkpoint-dir");
  }
  lock_fd_ = fd;
}

void RunDirectory::open(const std::string& model, std::optional<int64_t> finished_epochs) {
  if (!writes_) return;
  if (lock_fd_ < 0) {
    if (dir_.empty()) dir_ = claim_new_run_dir(model);
    fs::create_directories(dir_);
    lock();
  }
  if (!in_place_) check_unused(dir_, advice_);  // again, now that the run holds it
  remove_stale_temporaries(dir_);
  if (!metrics_origin_.empty() && fs::exists(metrics_origin_))
    fs::copy_file(metrics_origin_, metrics(), fs::copy_options::overwrite_existing);
  if (finished_epochs) keep_metrics_of_finished_epochs(metrics(), *finished_epochs);
}

}  // namespace dl::examples
