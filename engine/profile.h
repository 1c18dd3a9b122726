// Per-op time of training steps: where a step's time goes, op by op, on the CPU or the
// GPU, without hardware counters.
//
// Every DeviceOps call of the engine goes through run_op (below), the dispatch point. While an
// OpProfiler is alive for the device, run_op synchronizes the device, reads steady_clock, makes the
// call, synchronizes again and reads the clock. Each op's time so includes its launches, its
// library calls and its device work, but none of its neighbours' work; in exchange the
// synchronizations remove the overlap of host launches with device work that an unprofiled step
// has, so profiled steps run slower than timed ones and the per-op times add up to more than the
// device is busy in a normal step. That is the honest cost of per-op attribution this way. Work
// outside DeviceOps (autograd bookkeeping, allocation, contiguous() copies, host<->device copies)
// is not in the table: compare total_seconds() with the profiled steps' wall time to see it.
//
// Results are unchanged by profiling (the same calls in the same order; on the CPU bit for bit).
// Use from the thread that runs the steps; profilers may nest, each counting the calls made while
// it is alive.
#pragma once
#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/device_ops.h"

namespace dl {

// One row: a DeviceOps method at one shape.
struct OpTime {
  std::string op;     // the DeviceOps method, e.g. "conv2d_forward"
  std::string shape;  // e.g. "64x16x16x256 k5 p2 dw" (see op_shape below)
  int64_t calls = 0;
  double seconds = 0;  // summed over the calls
  double share = 0;    // of total_seconds(), in [0, 1]
};

class OpProfiler {
 public:
  // Starts timing the ops of device's kind; throws dl::Error (the message of device_ops) when the
  // device has no ops.
  explicit OpProfiler(Device device);
  ~OpProfiler();
  OpProfiler(const OpProfiler&) = delete;
  OpProfiler& operator=(const OpProfiler&) = delete;

  // Rows sorted by total time, largest first (ties by op, then shape).
  std::vector<OpTime> report() const;
  // The time of all profiled calls.
  double total_seconds() const;
  // A table of report(), per step over `steps` profiled steps: op, shape, calls per step, ms per
  // step, % of the profiled time; then a total row.
  void print(std::ostream& out, int steps) const;

  // Whether an OpProfiler is alive for kind.
  static bool active(DeviceKind kind);
  // Adds one call of `seconds` to (op, shape) in every OpProfiler alive for kind.
  static void add(DeviceKind kind, const char* op, const std::string& shape, double seconds);

 private:
  struct Stat {
    int64_t calls = 0;
    double seconds = 0;
  };
  DeviceKind kind_;
  std::map<std::pair<std::string, std::string>, Stat> stats_;
};

// Shape signatures of the profile's rows: the dimensions joined by 'x', then a dtype other than
// f32 in lower case.
namespace op_shape {
std::string dims(const Tensor& t);
std::string dims(const Shape& shape, const Tensor& dtype_of);
// The input n x h x w x c_in, the kernel, stride and padding when not 1 and 0, "dw" (depthwise) or
// the groups, and "->c_out" when it differs from c_in; e.g. "64x32x32x3 k2 s2 ->256",
// "64x16x16x256 k5 p2 dw", "64x16x16x256 k1". The same for the forward and both backwards.
std::string conv(const Conv2dShape& s, const Tensor& activation);
std::string pool(const Pool2dShape& s, const Tensor& activation);
// x [m, k] times weight [n, k]^T: "mxk ->n".
std::string linear(int64_t m, int64_t k, int64_t n, const Tensor& activation);
// How many tensors: "22 tensors".
std::string tensors(size_t count);
// An optimizer step: how many parameter tensors, how many values in all.
std::string params(const std::vector<AdamWUpdate>& updates);
std::string params(const std::vector<SGDUpdate>& updates);
}  // namespace op_shape

// Makes one DeviceOps call, call(ops) with the ops of `device`; while an OpProfiler is alive for
// the device, times it under op and shape() (called only then).
template <class ShapeOf, class Call>
void run_op(Device device, const char* op, ShapeOf&& shape, Call&& call) {
  DeviceOps& ops = device_ops(device);
  if (!OpProfiler::active(device.kind)) {
    call(ops);
    return;
  }
  using Clock = std::chrono::steady_clock;
  ops.synchronize();
  const Clock::time_point start = Clock::now();
  call(ops);  // a call that throws is not counted
  ops.synchronize();
  OpProfiler::add(device.kind, op, shape(),
                  std::chrono::duration<double>(Clock::now() - start).count());
}

// The same, its shape the dimensions and dtype of `on`, whose device it runs on.
template <class Call>
void run_op(const Tensor& on, const char* op, Call&& call) {
  run_op(
      on.device(), op, [&] { return op_shape::dims(on); }, call);
}

}  // namespace dl
