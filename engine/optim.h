// Optimizers with PyTorch's semantics (torch.optim.SGD and AdamW, foreach=False formulas),
// gradient-norm clipping, learning-rate schedules and an exponential moving average of a model.
// Parameters and gradients are f32.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/nn.h"
#include "engine/tensor.h"

namespace dl::optim {

// Parameters sharing a learning rate and weight decay. Unset values take the optimizer's options,
// e.g. ParamGroup{.params = norms, .weight_decay = 0.0}; the optimizer fills them in when the
// group is added, so they are always set in param_groups().
struct ParamGroup {
  std::vector<Tensor> params;
  std::optional<double> lr = std::nullopt;
  std::optional<double> weight_decay = std::nullopt;
  double base_lr = 0;  // set by the optimizer: the group's lr when it was added (see set_lr)
};

struct SGDOptions {
  double lr = 1e-3;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
};

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;

  // Updates every parameter that has a gradient; parameters whose grad is undefined are skipped.
  virtual void step();
  // Sets every parameter's gradient to undefined (PyTorch's set_to_none=True).
  void zero_grad();
  // Validates the group, fills unset values from the options and sets base_lr.
  void add_param_group(ParamGroup group);
  std::vector<ParamGroup>& param_groups() { return groups_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  // For schedules: sets each group's lr to lr * base_lr / options.lr, so groups without their own
  // lr get exactly `lr` and the others keep their ratio to it (with options.lr == 0 all get `lr`).
  void set_lr(double lr);
  // Number of step() calls.
  int64_t step_count() const { return step_count_; }

  // A copy of the state for a checkpoint: "optim.step" (i64), and per parameter that has been
  // updated "optim.group<g>.param<p>.step" (i64) and its buffers, e.g. "...param3.exp_avg".
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // Replaces the state with a copy of `state` (as written by state_tensors; names outside
  // "optim." are ignored). Missing, unknown or mis-shaped entries throw and leave it unchanged.
  void load_state_tensors(const std::vector<std::pair<std::string, Tensor>>& state);

 protected:
  struct ParamState {
    int64_t step = 0;             // updates applied to this parameter, the current one included
    std::vector<Tensor> buffers;  // named by buffer_names(); empty until the first update
  };
  // A parameter to update in this step: f32, contiguous, with its gradient (same shape and
  // device) and its state (whose step already counts this update).
  struct PendingUpdate {
    const ParamGroup* group;
    Tensor param, grad;
    ParamState* state;
  };

  Optimizer(double default_lr, double default_weight_decay)
      : default_lr_(default_lr), default_weight_decay_(default_weight_decay) {}
  void add_param_groups(std::vector<ParamGroup> groups);

 private:
  // Names of the per-parameter buffers, in ParamState::buffers order.
  virtual std::vector<std::string> buffer_names() const = 0;
  // Updates every pending parameter, all on one device: the device's ops do it in one call (one
  // launch on a GPU).
  virtual void update(const std::vector<PendingUpdate>& pending) = 0;

  std::vector<ParamGroup> groups_;
  std::vector<std::vector<ParamState>> state_;  // [group][param], grown as groups grow
  double default_lr_, default_weight_decay_;
  int64_t step_count_ = 0;
};

// g = grad + wd p; with momentum: buf = g (first update) or momentum buf + (1 - dampening) g,
// g = nesterov ? g + momentum buf : buf; then p -= lr g.
class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, const SGDOptions& options = {});
  SGD(std::vector<ParamGroup> groups, const SGDOptions& options = {});

 private:
  std::vector<std::string> buffer_names() const override;
  void update(const std::vector<PendingUpdate>& pending) override;

  SGDOptions options_;
};

// Decoupled weight decay: p *= 1 - lr wd, then Adam with bias correction, eps outside the sqrt.
class AdamW : public Optimizer {
 public:
  AdamW(std::vector<Tensor> params, const AdamWOptions& options = {});
  AdamW(std::vector<ParamGroup> groups, const AdamWOptions& options = {});

 private:
  std::vector<std::string> buffer_names() const override;
  void update(const std::vector<PendingUpdate>& pending) override;

  AdamWOptions options_;
};

// PyTorch's clip_grad_norm_: the L2 norm over all defined gradients (accumulated in double);
// when it exceeds max_norm the gradients are scaled in place by max_norm / (norm + 1e-6). A
// non-finite norm scales nothing. Returns the norm as a one-element F32 tensor on the gradients'
// device, as PyTorch returns it in the gradients' dtype: on a GPU nothing waits until it is read.
Tensor clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

// Learning rate per optimizer step. Position convention of the ConvMixer recipe: the update at
// 0-based step s uses the curve at s + 1 steps, so the first update has a nonzero lr and the last
// of total_steps reaches the curve's end.
class LRSchedule {
 public:
  virtual ~LRSchedule() = default;
  virtual double lr(int64_t step) const = 0;
};

class ConstantLR : public LRSchedule {
 public:
  explicit ConstantLR(double lr);
  double lr(int64_t step) const override;

 private:
  double lr_;
};

// The ConvMixer CIFAR-10 recipe: at fractional epoch t = (step + 1) / steps_per_epoch,
// np.interp(t, [0, E*2//5, E*4//5, E], [0, lr_max, lr_max/20, 0]) with integer divisions;
// 0 after E epochs.
class OneCycleLinear : public LRSchedule {
 public:
  OneCycleLinear(double lr_max, int64_t epochs, int64_t steps_per_epoch);
  double lr(int64_t step) const override;

 private:
  double xp_[4], fp_[4];
  int64_t steps_per_epoch_;
};

// Linear warm-up from 0 to lr over warmup_steps, then half a cosine down to min_lr at
// total_steps; min_lr afterwards.
class CosineWithWarmup : public LRSchedule {
 public:
  CosineWithWarmup(double lr, int64_t total_steps, int64_t warmup_steps = 0, double min_lr = 0);
  double lr(int64_t step) const override;

 private:
  double lr_, min_lr_;
  int64_t total_steps_, warmup_steps_;
};

// Linear warm-up from 0 to lr over warmup_steps, then a straight line down to 0 at total_steps
// (the triangle of fast short-run recipes such as airbench, per step rather than per epoch); 0
// afterwards.
class LinearWarmupDecay : public LRSchedule {
 public:
  LinearWarmupDecay(double lr, int64_t total_steps, int64_t warmup_steps = 0);
  double lr(int64_t step) const override;

 private:
  double lr_;
  int64_t total_steps_, warmup_steps_;
};

// An exponential moving average of a module's state, as timm's ModelEmaV2 and PyTorch's
// AveragedModel(use_buffers=True) with get_ema_multi_avg_fn: `average`, a module of the same
// architecture, starts as a copy of `source`; each update() sets every floating entry of its state
// (parameters and buffers such as BatchNorm's running statistics) to
// decay * average + (1 - decay) * source, and copies the integer ones (num_batches_tracked).
// Evaluate and save `average` as any module; it shares nothing with `source`. Both stay on one
// device: move them together (Module::to).
class ExponentialMovingAverage {
 public:
  ExponentialMovingAverage(const nn::Module& source, nn::Module& average, double decay);
  // After each optimizer step.
  void update();

 private:
  nn::NamedTensors source_, average_;  // handles to the modules' state, in state_dict order
  double decay_;
};

// onecycle: OneCycleLinear (lr is lr_max); cosine: CosineWithWarmup and linear: LinearWarmupDecay
// over epochs * steps_per_epoch steps; constant: ConstantLR.
enum class Schedule { onecycle, cosine, linear, constant };

std::unique_ptr<LRSchedule> make_schedule(Schedule kind, double lr, int64_t epochs,
                                          int64_t steps_per_epoch, int64_t warmup_steps = 0,
                                          double min_lr = 0);

}  // namespace dl::optim
