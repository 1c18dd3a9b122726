#include "engine/profile.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <map>
#include <ostream>
#include <utility>

#include "engine/device_ops.h"

namespace dl {
namespace {

// Shape signatures: the dimensions joined by 'x', then a dtype other than f32 in lower case.

// Appends prefix and value, e.g. " k" and 5. (Built with +=: GCC 12 warns, wrongly, about
// "literal" + std::to_string(...).)
void put(std::string& out, const char* prefix, int64_t value) {
  out += prefix;
  out += std::to_string(value);
}

std::string dtype_suffix(const Tensor& t) {
  if (!t.defined() || t.dtype() == DType::f32) return "";
  std::string name = " ";
  for (const char* c = dtype_name(t.dtype()); *c != '\0'; ++c)
    name += static_cast<char>(std::tolower(static_cast<unsigned char>(*c)));
  return name;
}

std::string dims(const Shape& shape) {
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) put(s, i ? "x" : "", shape[i]);
  return s.empty() ? "scalar" : s;
}

std::string dims(const Tensor& t) {
  return t.defined() ? dims(t.shape()) + dtype_suffix(t) : "-";
}

// The input n x h x w x c_in, the kernel, stride and padding when not 1 and 0, "dw" (depthwise) or
// the groups, and "->c_out" when it differs from c_in; e.g. "64x32x32x3 k2 s2 ->256",
// "64x16x16x256 k5 p2 dw", "64x16x16x256 k1". The same for the forward and both backwards.
std::string conv(const ConvArgs& s, const Tensor& activation) {
  std::string r = dims({s.n, s.h, s.w, s.c_in});
  put(r, " k", s.kh);
  if (s.kw != s.kh) put(r, "x", s.kw);
  if (s.stride != 1) put(r, " s", s.stride);
  if (s.pad != 0) put(r, " p", s.pad);
  if (s.depthwise() && s.groups > 1) {
    r += " dw";
  } else if (s.groups > 1) {
    put(r, " g", s.groups);
  }
  if (s.c_out != s.c_in) put(r, " ->", s.c_out);
  return r + dtype_suffix(activation);
}

std::string pool(const PoolArgs& s, const Tensor& activation) {
  std::string r = dims({s.n, s.h, s.w, s.c});
  put(r, " k", s.k);
  put(r, " s", s.stride);
  if (s.pad != 0) put(r, " p", s.pad);
  return r + dtype_suffix(activation);
}

// x [m, k] times weight [n, k]^T: "mxk ->n".
std::string linear(int64_t m, int64_t k, int64_t n, const Tensor& activation) {
  std::string r = dims({m, k});
  put(r, " ->", n);
  return r + dtype_suffix(activation);
}

// An optimizer step: how many parameter tensors, how many values in all.
template <class Update>
std::string params(const std::vector<Update>& updates) {
  int64_t values = 0;
  for (const Update& u : updates) values += u.param.numel();
  std::string r = std::to_string(updates.size());
  put(r, " tensors, ", values);
  return r + " values";
}

}  // namespace

// Forwards every call to `inner`, timing it with the device synchronized before and after (see
// profile.h: an op's time includes its own launches and device work but excludes any overlap
// with its neighbours, the price of attributing time to ops without hardware counters).
class OpProfiler::TimedOps final : public DeviceOps {
 public:
  struct Stat {
    int64_t calls = 0;
    double seconds = 0;
  };

  explicit TimedOps(DeviceOps& inner) : inner_(inner) {}

  const std::map<std::pair<std::string, std::string>, Stat>& stats() const { return stats_; }

  bool supports_bf16() const override { return inner_.supports_bf16(); }
  void synchronize() override { inner_.synchronize(); }

  // --- elementwise ---
  void add(const Tensor& a, const Tensor& b, Tensor& out) override {
    timed("add", dims(out), [&] { inner_.add(a, b, out); });
  }
  void mul(const Tensor& a, const Tensor& b, Tensor& out) override {
    timed("mul", dims(out), [&] { inner_.mul(a, b, out); });
  }
  void scale(const Tensor& x, float factor, Tensor& out) override {
    timed("scale", dims(out), [&] { inner_.scale(x, factor, out); });
  }
  void axpy(float alpha, const Tensor& x, Tensor& y) override {
    timed("axpy", dims(y), [&] { inner_.axpy(alpha, x, y); });
  }
  void scale_by(const Tensor& x, const Tensor& factor, Tensor& out) override {
    timed("scale_by", dims(out), [&] { inner_.scale_by(x, factor, out); });
  }
  void fill_with(const Tensor& value, Tensor& out) override {
    timed("fill_with", dims(out), [&] { inner_.fill_with(value, out); });
  }
  void gelu_forward(const Tensor& x, Tensor& y) override {
    timed("gelu_forward", dims(x), [&] { inner_.gelu_forward(x, y); });
  }
  void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) override {
    timed("gelu_backward", dims(x), [&] { inner_.gelu_backward(x, dy, dx); });
  }
  void relu_forward(const Tensor& x, Tensor& y) override {
    timed("relu_forward", dims(x), [&] { inner_.relu_forward(x, y); });
  }
  void relu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) override {
    timed("relu_backward", dims(x), [&] { inner_.relu_backward(x, dy, dx); });
  }
  void sum(const Tensor& x, Tensor& out) override {
    timed("sum", dims(x), [&] { inner_.sum(x, out); });
  }
  void clip_grad_norm(const std::vector<Tensor>& grads, double max_norm,
                      Tensor& total_norm) override {
    timed("clip_grad_norm", std::to_string(grads.size()) + " tensors",
          [&] { inner_.clip_grad_norm(grads, max_norm, total_norm); });
  }
  std::vector<double> squared_norms(const std::vector<Tensor>& xs) override {
    std::vector<double> result;
    timed("squared_norms", std::to_string(xs.size()) + " tensors",
          [&] { result = inner_.squared_norms(xs); });
    return result;
  }
  void transpose_batched(const Tensor& in, int64_t batch, int64_t rows, int64_t cols,
                         Tensor& out) override {
    timed("transpose_batched", dims({batch, rows, cols}) + dtype_suffix(in),
          [&] { inner_.transpose_batched(in, batch, rows, cols, out); });
  }

  // --- convolution ---
  void conv2d_forward(const ConvArgs& s, const Tensor& x, const Tensor& weight, const Tensor& bias,
                      Tensor& y) override {
    timed("conv2d_forward", conv(s, x), [&] { inner_.conv2d_forward(s, x, weight, bias, y); });
  }
  void conv2d_backward_data(const ConvArgs& s, const Tensor& dy, const Tensor& weight,
                            Tensor& dx) override {
    timed("conv2d_backward_data", conv(s, dy),
          [&] { inner_.conv2d_backward_data(s, dy, weight, dx); });
  }
  void conv2d_backward_weight(const ConvArgs& s, const Tensor& dy, const Tensor& x, Tensor& dweight,
                              Tensor& dbias) override {
    timed("conv2d_backward_weight", conv(s, dy),
          [&] { inner_.conv2d_backward_weight(s, dy, x, dweight, dbias); });
  }

  // --- BatchNorm ---
  void batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                               float momentum, Tensor& running_mean, Tensor& running_var, Tensor& y,
                               Tensor& save_mean, Tensor& save_invstd,
                               const SumOverRanks& sum_over_ranks) override {
    timed("batchnorm_forward_train", dims(x), [&] {
      inner_.batchnorm_forward_train(x, gamma, beta, eps, momentum, running_mean, running_var, y,
                                     save_mean, save_invstd, sum_over_ranks);
    });
  }
  void batchnorm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                              const Tensor& running_mean, const Tensor& running_var, float eps,
                              Tensor& y, Tensor& save_mean, Tensor& save_invstd) override {
    timed("batchnorm_forward_eval", dims(x), [&] {
      inner_.batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, y, save_mean,
                                    save_invstd);
    });
  }
  void batchnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                          const Tensor& mean, const Tensor& invstd, bool batch_stats, Tensor& dx,
                          Tensor& dgamma, Tensor& dbeta,
                          const SumOverRanks& sum_over_ranks) override {
    timed("batchnorm_backward", dims(x), [&] {
      inner_.batchnorm_backward(dy, x, gamma, mean, invstd, batch_stats, dx, dgamma, dbeta,
                                sum_over_ranks);
    });
  }

  void gelu_batchnorm_forward_train(const Tensor& h, const Tensor& gamma, const Tensor& beta,
                                    float eps, float momentum, Tensor& running_mean,
                                    Tensor& running_var, const Tensor& residual, Tensor& y,
                                    Tensor& save_mean, Tensor& save_invstd,
                                    const SumOverRanks& sum_over_ranks) override {
    timed("gelu_batchnorm_forward_train", dims(h) + (residual.defined() ? " +res" : ""), [&] {
      inner_.gelu_batchnorm_forward_train(h, gamma, beta, eps, momentum, running_mean, running_var,
                                          residual, y, save_mean, save_invstd, sum_over_ranks);
    });
  }
  void gelu_batchnorm_forward_eval(const Tensor& h, const Tensor& gamma, const Tensor& beta,
                                   const Tensor& running_mean, const Tensor& running_var, float eps,
                                   const Tensor& residual, Tensor& y, Tensor& save_mean,
                                   Tensor& save_invstd) override {
    timed("gelu_batchnorm_forward_eval", dims(h) + (residual.defined() ? " +res" : ""), [&] {
      inner_.gelu_batchnorm_forward_eval(h, gamma, beta, running_mean, running_var, eps, residual,
                                         y, save_mean, save_invstd);
    });
  }
  void gelu_batchnorm_backward(const Tensor& dy, const Tensor& h, const Tensor& gamma,
                               const Tensor& mean, const Tensor& invstd, bool batch_stats,
                               Tensor& dh, Tensor& dgamma, Tensor& dbeta,
                               const SumOverRanks& sum_over_ranks) override {
    timed("gelu_batchnorm_backward", dims(h), [&] {
      inner_.gelu_batchnorm_backward(dy, h, gamma, mean, invstd, batch_stats, dh, dgamma, dbeta,
                                     sum_over_ranks);
    });
  }

  void count_correct(const Tensor& logits, const Tensor& labels, Tensor& count) override {
    timed("count_correct", dims(logits), [&] { inner_.count_correct(logits, labels, count); });
  }

  // --- pooling ---
  void global_avg_pool_forward(const Tensor& x, Tensor& y) override {
    timed("global_avg_pool_forward", dims(x), [&] { inner_.global_avg_pool_forward(x, y); });
  }
  void global_avg_pool_backward(const Tensor& dy, Tensor& dx) override {
    timed("global_avg_pool_backward", dims(dx), [&] { inner_.global_avg_pool_backward(dy, dx); });
  }
  void max_pool2d_forward(const PoolArgs& s, const Tensor& x, Tensor& y, Tensor& argmax) override {
    timed("max_pool2d_forward", pool(s, x), [&] { inner_.max_pool2d_forward(s, x, y, argmax); });
  }
  void max_pool2d_backward(const PoolArgs& s, const Tensor& dy, const Tensor& argmax,
                           Tensor& dx) override {
    timed("max_pool2d_backward", pool(s, dy),
          [&] { inner_.max_pool2d_backward(s, dy, argmax, dx); });
  }

  // --- linear: x [m, k], weight [n, k], y [m, n] ---
  void linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                      Tensor& y) override {
    timed("linear_forward", linear(x.size(0), x.size(1), weight.size(0), x),
          [&] { inner_.linear_forward(x, weight, bias, y); });
  }
  void linear_backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx) override {
    timed("linear_backward_data", linear(dy.size(0), weight.size(1), weight.size(0), dy),
          [&] { inner_.linear_backward_data(dy, weight, dx); });
  }
  void linear_backward_weight(const Tensor& dy, const Tensor& x, Tensor& dweight,
                              Tensor& dbias) override {
    timed("linear_backward_weight", linear(x.size(0), x.size(1), dy.size(1), dy),
          [&] { inner_.linear_backward_weight(dy, x, dweight, dbias); });
  }

  // --- loss ---
  void cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing,
                     bool labels_checked, Tensor& loss, Tensor& dlogits) override {
    timed("cross_entropy", dims(logits), [&] {
      inner_.cross_entropy(logits, labels, label_smoothing, labels_checked, loss, dlogits);
    });
  }

  // --- optimizers ---
  void adamw_update(const std::vector<AdamWUpdate>& updates) override {
    timed("adamw_update", params(updates), [&] { inner_.adamw_update(updates); });
  }
  void sgd_update(const std::vector<SGDUpdate>& updates) override {
    timed("sgd_update", params(updates), [&] { inner_.sgd_update(updates); });
  }

 private:
  using Clock = std::chrono::steady_clock;

  // Runs call() alone on the device and adds its time to (op, shape). A call that throws is not
  // counted.
  template <class Call>
  void timed(const char* op, std::string shape, Call&& call) {
    inner_.synchronize();
    const Clock::time_point start = Clock::now();
    call();
    inner_.synchronize();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    Stat& stat = stats_[{op, std::move(shape)}];
    ++stat.calls;
    stat.seconds += seconds;
  }

  DeviceOps& inner_;
  std::map<std::pair<std::string, std::string>, Stat> stats_;
};

OpProfiler::OpProfiler(Device device)
    : kind_(device.kind),
      original_(&device_ops(device)),
      timed_(std::make_unique<TimedOps>(*original_)) {
  set_device_ops(kind_, timed_.get());
}

OpProfiler::~OpProfiler() {
  set_device_ops(kind_, original_);
}

double OpProfiler::total_seconds() const {
  double total = 0;
  for (const auto& [key, stat] : timed_->stats()) total += stat.seconds;
  return total;
}

std::vector<OpTime> OpProfiler::report() const {
  const double total = total_seconds();
  std::vector<OpTime> rows;
  for (const auto& [key, stat] : timed_->stats()) {
    rows.push_back({.op = key.first,
                    .shape = key.second,
                    .calls = stat.calls,
                    .seconds = stat.seconds,
                    .share = total > 0 ? stat.seconds / total : 0.0});
  }
  // The map iterates by (op, shape), and stable_sort keeps that order among equal times.
  std::stable_sort(rows.begin(), rows.end(),
                   [](const OpTime& a, const OpTime& b) { return a.seconds > b.seconds; });
  return rows;
}

void OpProfiler::print(std::ostream& out, int steps) const {
  const std::vector<OpTime> rows = report();
  const double per_step = 1.0 / std::max(steps, 1);
  size_t op_width = 5, shape_width = 5;  // at least "total"
  for (const OpTime& r : rows) {
    op_width = std::max(op_width, r.op.size());
    shape_width = std::max(shape_width, r.shape.size());
  }
  const int ow = static_cast<int>(op_width), sw = static_cast<int>(shape_width);
  char line[512];
  auto emit = [&](const char* op, const char* shape, const std::string& calls, double ms,
                  double percent) {
    std::snprintf(line, sizeof line, "%-*s  %-*s  %10s  %10.3f  %6.1f%%\n", ow, op, sw, shape,
                  calls.c_str(), ms, percent);
    out << line;
  };
  auto calls_per_step = [&](int64_t calls) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", static_cast<double>(calls) * per_step);
    return std::string(buf);
  };
  std::snprintf(line, sizeof line, "%-*s  %-*s  %10s  %10s  %7s\n", ow, "op", sw, "shape",
                "calls/step", "ms/step", "%");
  out << line;
  int64_t calls = 0;
  for (const OpTime& r : rows) {
    emit(r.op.c_str(), r.shape.c_str(), calls_per_step(r.calls), 1e3 * r.seconds * per_step,
         100.0 * r.share);
    calls += r.calls;
  }
  emit("total", "", calls_per_step(calls), 1e3 * total_seconds() * per_step,
       rows.empty() ? 0.0 : 100.0);
}

}  // namespace dl
