#include "engine/profile.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <ostream>

namespace dl {
namespace {

// The OpProfilers alive, per device kind, oldest first.
std::vector<OpProfiler*>& alive(DeviceKind kind) {
  static std::array<std::vector<OpProfiler*>, 2> profilers;
  return profilers[static_cast<size_t>(kind)];
}

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

std::string joined(const Shape& shape) {
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) put(s, i ? "x" : "", shape[i]);
  return s.empty() ? "scalar" : s;
}

template <class Update>
std::string parameter_count(const std::vector<Update>& updates) {
  int64_t values = 0;
  for (const Update& u : updates) values += u.param.numel();
  std::string r = std::to_string(updates.size());
  put(r, " tensors, ", values);
  return r + " values";
}

}  // namespace

namespace op_shape {

std::string dims(const Tensor& t) {
  return t.defined() ? joined(t.shape()) + dtype_suffix(t) : "-";
}

std::string dims(const Shape& shape, const Tensor& dtype_of) {
  return joined(shape) + dtype_suffix(dtype_of);
}

std::string conv(const Conv2dShape& s, const Tensor& activation) {
  std::string r = joined({s.n, s.h, s.w, s.c_in});
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

std::string pool(const Pool2dShape& s, const Tensor& activation) {
  std::string r = joined({s.n, s.h, s.w, s.c});
  put(r, " k", s.k);
  put(r, " s", s.stride);
  if (s.pad != 0) put(r, " p", s.pad);
  return r + dtype_suffix(activation);
}

std::string linear(int64_t m, int64_t k, int64_t n, const Tensor& activation) {
  std::string r = joined({m, k});
  put(r, " ->", n);
  return r + dtype_suffix(activation);
}

std::string tensors(size_t count) {
  return std::to_string(count) + " tensors";
}

std::string params(const std::vector<AdamWUpdate>& updates) {
  return parameter_count(updates);
}

std::string params(const std::vector<SGDUpdate>& updates) {
  return parameter_count(updates);
}

}  // namespace op_shape

OpProfiler::OpProfiler(Device device) : kind_(device.kind) {
  device_ops(device);  // throws when the device has no ops
  alive(kind_).push_back(this);
}

OpProfiler::~OpProfiler() {
  std::vector<OpProfiler*>& profilers = alive(kind_);
  profilers.erase(std::find(profilers.begin(), profilers.end(), this));
}

bool OpProfiler::active(DeviceKind kind) {
  return !alive(kind).empty();
}

void OpProfiler::add(DeviceKind kind, const char* op, const std::string& shape, double seconds) {
  for (OpProfiler* profiler : alive(kind)) {
    Stat& stat = profiler->stats_[{op, shape}];
    ++stat.calls;
    stat.seconds += seconds;
  }
}

double OpProfiler::total_seconds() const {
  double total = 0;
  for (const auto& [key, stat] : stats_) total += stat.seconds;
  return total;
}

std::vector<OpTime> OpProfiler::report() const {
  const double total = total_seconds();
  std::vector<OpTime> rows;
  for (const auto& [key, stat] : stats_) {
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
