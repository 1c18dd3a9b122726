#include "examples/report.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "engine/io/json.h"
#include "engine/ops.h"

namespace dl::examples {

void EpochStats::add(const Tensor& logits, const Tensor& labels, const Tensor& loss) {
  pending_.push_back({loss.detach(), count_correct(logits.detach(), labels), logits.size(0)});
}

void EpochStats::flush() {
  for (const Pending& p : pending_) {
    loss_sum += static_cast<double>(p.loss.item()) * p.n;
    correct += static_cast<int64_t>(p.correct.item());
    seen += p.n;
  }
  pending_.clear();
}

std::string format_duration(double seconds) {
  const int s = static_cast<int>(seconds + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60);
  return buf;
}

Progress::Progress(bool live, int64_t epoch, int64_t epochs, int64_t total, double prior_seconds)
    : live_(live),
      epoch_(epoch),
      epochs_(epochs),
      total_(total),
      prior_seconds_(prior_seconds),
      start_(std::chrono::steady_clock::now()),
      last_line_(start_) {}

namespace {

// printf to std::cerr (so that a program that silences std::cerr silences progress too), at once.
template <class... Args>
void say(const char* format, Args... args) {
  char line[512];
  std::snprintf(line, sizeof line, format, args...);
  std::cerr << line << std::flush;
}

}  // namespace

void Progress::update(int64_t done, int64_t first, int64_t images, double loss) {
  const auto now = std::chrono::steady_clock::now();
  const double rate = images / std::max(seconds(), 1e-9);
  const double per_step = this_run() / static_cast<double>(std::max<int64_t>(done - first, 1));
  const double epoch_eta = static_cast<double>(total_ - done) * per_step;
  const double run_eta =
      epoch_eta + static_cast<double>((epochs_ - epoch_ - 1) * total_) * per_step;
  if (live_) {
    const int width = 30, filled = static_cast<int>(width * done / std::max<int64_t>(total_, 1));
    say("\repoch %lld/%lld [%s%s] %lld/%lld  %.0f img/s  loss %.4f  ETA %s, run %s ",
        (long long)epoch_ + 1, (long long)epochs_, std::string(filled, '#').c_str(),
        std::string(width - filled, '.').c_str(), (long long)done, (long long)total_, rate, loss,
        format_duration(epoch_eta).c_str(), format_duration(run_eta).c_str());
  } else if (done == total_ ||
             std::chrono::duration<double>(now - last_line_).count() >= kLineSeconds) {
    say("epoch %lld/%lld batch %lld/%lld  %.0f img/s  loss %.4f  ETA %s, run %s\n",
        (long long)epoch_ + 1, (long long)epochs_, (long long)done, (long long)total_, rate, loss,
        format_duration(epoch_eta).c_str(), format_duration(run_eta).c_str());
    last_line_ = now;
  }
}

void Progress::evaluating(int64_t images) {
  say("%sepoch %lld/%lld: evaluating on %lld test images%s", live_ ? "\r\033[K" : "",
      (long long)epoch_ + 1, (long long)epochs_, (long long)images, live_ ? " " : "\n");
}

void Progress::finish() {
  if (live_) say("\r\033[K");
}

double Progress::this_run() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void report_epoch(std::ostream& metrics, int64_t epoch, int64_t step, const EpochStats& train,
                  const EpochStats* test, const EpochStats* ema_test, double lr, double seconds,
                  double peak_mem_mb) {
  const double img_per_s = train.seen / std::max(seconds, 1e-9);
  char test_text[128] = "test loss - acc -";
  if (test)
    std::snprintf(test_text, sizeof test_text, "test loss %.4f acc %.4f", test->loss(),
                  test->accuracy());
  if (ema_test)
    std::snprintf(test_text + std::strlen(test_text), sizeof test_text - std::strlen(test_text),
                  " | ema test loss %.4f acc %.4f", ema_test->loss(), ema_test->accuracy());
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
  if (ema_test) {
    line.emplace_back("ema_test_loss", io::JsonValue(ema_test->loss()));
    line.emplace_back("ema_test_acc", io::JsonValue(ema_test->accuracy()));
  }
  if (peak_mem_mb >= 0) line.emplace_back("peak_mem_mb", io::JsonValue(peak_mem_mb));
  metrics << io::to_json(io::JsonValue(line)) << "\n" << std::flush;
}

}  // namespace dl::examples
