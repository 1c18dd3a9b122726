// Per-op time of training steps: where a step's time goes, op by op, on the CPU or the
// GPU, without hardware counters.
//
// While an OpProfiler is alive, device_ops(device) is a wrapper that forwards every DeviceOps call
// to the device's own ops and times it: it synchronizes the device, reads steady_clock, makes the
// call, synchronizes again and reads the clock. Each op's time so includes its launches, its
// library calls and its device work, but none of its neighbours' work; in exchange the
// synchronizations remove the overlap of host launches with device work that an unprofiled step
// has, so profiled steps run slower than timed ones and the per-op times add up to more than the
// device is busy in a normal step. That is the honest cost of per-op attribution this way. Work
// outside DeviceOps (autograd bookkeeping, allocation, contiguous() copies, host<->device copies)
// is not in the table: compare total_seconds() with the profiled steps' wall time to see it.
//
// Results are unchanged by profiling (the same calls in the same order; on the CPU bit for bit).
// Use from the thread that runs the steps; profilers may nest (destroy them in reverse order).
#pragma once
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "engine/dtype.h"

namespace dl {

class DeviceOps;

// One row: a DeviceOps method at one shape.
struct OpTime {
  std::string op;     // the DeviceOps method, e.g. "conv2d_forward"
  std::string shape;  // e.g. "64x16x16x256 k5 p2 dw" (see profile.cpp for each op's signature)
  int64_t calls = 0;
  double seconds = 0;  // summed over the calls
  double share = 0;    // of total_seconds(), in [0, 1]
};

class OpProfiler {
 public:
  // Replaces the ops of device's kind with the timing wrapper; throws dl::Error (the message of
  // device_ops) when the device has no ops.
  explicit OpProfiler(Device device);
  // Puts the original ops back.
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

 private:
  class TimedOps;
  DeviceKind kind_;
  DeviceOps* original_;
  std::unique_ptr<TimedOps> timed_;
};

}  // namespace dl
