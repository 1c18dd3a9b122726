// What a training run tells its user: loss and accuracy over an epoch, the progress of an epoch
// (a bar on a terminal, plain lines elsewhere) and each epoch's summary line and metrics entry.
#pragma once
#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace dl::examples {

// Loss and accuracy over the batches of an epoch. A batch's loss and correct count stay on the
// model's device until flush() reads them, so a GPU step does not wait for its own results; the
// sums are the same double additions in the same order whenever flush() runs.
class EpochStats {
 public:
  double loss_sum = 0.0;
  int64_t correct = 0, seen = 0;

  void add(const Tensor& logits, const Tensor& labels, const Tensor& loss);
  void flush();
  double loss() const { return seen ? loss_sum / seen : 0.0; }
  double accuracy() const { return seen ? static_cast<double>(correct) / seen : 0.0; }

 private:
  struct Pending {
    Tensor loss, correct;
    int64_t n;
  };
  std::vector<Pending> pending_;
};

// "H:MM:SS".
std::string format_duration(double seconds);

// Progress of one epoch of `total` steps: a bar redrawn in place on a terminal (`live`), else a
// line every kLineSeconds and at the epoch's end; both with the time left in the epoch and in the
// run's training (evaluations aside). `prior_seconds` is the time the epoch ran before a resume.
class Progress {
 public:
  static constexpr double kLineSeconds = 30;

  Progress(bool live, int64_t epoch, int64_t epochs, int64_t total, double prior_seconds);
  // `done` steps of the epoch, `first` of them before this run; `images` and `loss` so far.
  void update(int64_t done, int64_t first, int64_t images, double loss);
  // The epoch's evaluation on `images` test images begins; finish() ends it.
  void evaluating(int64_t images);
  void finish();
  double seconds() const { return prior_seconds_ + this_run(); }

 private:
  double this_run() const;
  bool live_;
  int64_t epoch_, epochs_, total_;
  double prior_seconds_;
  std::chrono::steady_clock::time_point start_, last_line_;
};

// One epoch's summary: a line on stdout and a JSON line appended to `metrics` (flushed: a failed
// write shows in the stream's state), with the test figures when the epoch was evaluated (`test`
// not null), the moving average's when it was evaluated too (`ema_test`, keys "ema_test_loss" and
// "ema_test_acc") and `peak_mem_mb` when given (>= 0).
void report_epoch(std::ostream& metrics, int64_t epoch, int64_t step, const EpochStats& train,
                  const EpochStats* test, const EpochStats* ema_test, double lr, double seconds,
                  double peak_mem_mb);

}  // namespace dl::examples
