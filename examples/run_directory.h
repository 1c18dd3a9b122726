// A training run's directory (its last.safetensors and metrics.jsonl) and the rules that keep
// every run's saved files safe: a new run never writes over another's, two processes never
// share a directory (a lock), only a run directory's own checkpoint continues in place, and a
// resumed run into another directory (a branch) leaves the original as it was.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace dl::examples {

// The checkpoint a --resume names: the file itself, or a run directory's last.safetensors (a
// directory without one is an error saying so).
std::string checkpoint_file(const std::string& resume);

class RunDirectory {
 public:
  // Decides where the run writes from the paths alone: a new run (`resume_file` empty) into
  // `checkpoint_dir`, or a new runs/<model>-<UTC date-time> when that is empty; a resumed run in
  // place when `checkpoint_dir` is empty or the checkpoint's own directory, into `checkpoint_dir`
  // otherwise (a branch). When the directory exists its lock is taken now, so that no other
  // process writes a newer checkpoint while this one reads it and the data.
  // `writes` false: the directory of a rank other than 0 of a data-parallel job, which plans the
  // same paths but never locks, checks, creates or writes anything (rank 0 does).
  RunDirectory(const std::string& checkpoint_dir, const std::string& resume_file,
               bool writes = true);
  ~RunDirectory();
  RunDirectory(const RunDirectory&) = delete;
  RunDirectory& operator=(const RunDirectory&) = delete;

  // The rules, before the data is read: the directory can be written; a new run or a branch
  // finds it unused (no checkpoint, no metrics of another run); only a run directory's own
  // last.safetensors continues in place (continuing beside any other checkpoint file could write
  // over another run's files: that needs a --checkpoint-dir).
  void check() const;

  // Makes the directory this run's, once it is about to train: creates (or claims a new
  // runs/<model>-...) and locks it, checks again that a new run or branch finds it unused, and
  // removes checkpoint temporaries a killed process left. A branch starts from the metrics of the
  // run it continues; a resumed run (`finished_epochs` given: its checkpoint's epoch) drops the
  // metrics lines of epochs after it.
  void open(const std::string& model, std::optional<int64_t> finished_epochs);

  bool writes() const { return writes_; }
  bool is_branch() const { return branch_; }
  // Empty before open() for a new run without a --checkpoint-dir.
  const std::filesystem::path& path() const { return dir_; }
  std::filesystem::path checkpoint() const { return dir_ / "last.safetensors"; }
  std::filesystem::path metrics() const { return dir_ / "metrics.jsonl"; }

 private:
  void lock();

  std::string resume_file_;
  std::filesystem::path dir_;
  bool writes_ = true, in_place_ = false, branch_ = false;
  std::filesystem::path metrics_origin_;  // a branch: the metrics of the run it continues
  std::string advice_;                    // what to do when the directory turns out to be in use
  int lock_fd_ = -1;
};

}  // namespace dl::examples
