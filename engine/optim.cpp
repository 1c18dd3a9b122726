#include "engine/optim.h"

#include <cmath>
#include <map>
#include <numbers>
#include <unordered_set>

#include "engine/device_ops.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "engine/profile.h"

namespace dl::optim {
namespace {

void check_lr(double lr) {
  DL_CHECK(lr >= 0, "Invalid learning rate: ", lr);
}
void check_weight_decay(double wd) {
  DL_CHECK(wd >= 0, "Invalid weight_decay value: ", wd);
}

Tensor count_tensor(int64_t n) {
  return Tensor::from_vector(std::vector<int64_t>{n}, {});
}

int64_t read_count(const Tensor& t, const std::string& name) {
  DL_CHECK(t.dtype() == DType::i64 && t.numel() == 1, "optimizer state: '", name,
           "' must hold one i64 value, got ", dtype_name(t.dtype()), " ", shape_str(t.shape()));
  const int64_t n = t.to(Device::cpu()).contiguous().data<int64_t>()[0];
  DL_CHECK(n >= 0, "optimizer state: '", name, "' is negative (", n, ")");
  return n;
}

std::string param_prefix(size_t group, size_t param) {
  return detail::concat("optim.group", group, ".param", param, ".");
}

}  // namespace

// --- Optimizer ---

void Optimizer::add_param_group(ParamGroup group) {
  if (!group.lr) group.lr = default_lr_;
  if (!group.weight_decay) group.weight_decay = default_weight_decay_;
  check_lr(*group.lr);
  check_weight_decay(*group.weight_decay);
  std::unordered_set<const TensorImpl*> seen;
  for (const ParamGroup& g : groups_) {
    for (const Tensor& p : g.params) seen.insert(p.impl_ptr().get());
  }
  for (const Tensor& p : group.params) {
    DL_CHECK(p.defined(), "optimizer: parameter group ", groups_.size(),
             " holds an undefined tensor");
    DL_CHECK(seen.insert(p.impl_ptr().get()).second,
             "optimizer: some parameters appear in more than one parameter group");
  }
  group.base_lr = *group.lr;
  groups_.push_back(std::move(group));
}

void Optimizer::add_param_groups(std::vector<ParamGroup> groups) {
  size_t n = 0;
  for (const ParamGroup& g : groups) n += g.params.size();
  DL_CHECK(n > 0, "optimizer got an empty parameter list");
  for (ParamGroup& g : groups) add_param_group(std::move(g));
}

void Optimizer::step() {
  state_.resize(groups_.size());
  // Everything is checked before any state changes, so a refused step leaves no trace.
  std::vector<PendingUpdate> pending;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    ParamGroup& group = groups_[gi];
    state_[gi].resize(group.params.size());
    for (size_t pi = 0; pi < group.params.size(); ++pi) {
      Tensor& param = group.params[pi];
      const Tensor grad = param.grad();
      if (!grad.defined()) continue;
      DL_CHECK(param.dtype() == DType::f32 && grad.dtype() == DType::f32, "optimizer: parameter ",
               pi, " of group ", gi, " and its gradient must be f32");
      DL_CHECK(param.is_contiguous(), "optimizer: parameter ", pi, " of group ", gi,
               " must be contiguous");
      DL_CHECK(grad.device() == param.device(), "optimizer: parameter ", pi, " of group ", gi,
               " is on ", param.device().str(), " but its gradient on ", grad.device().str());
      DL_CHECK(pending.empty() || param.device() == pending.front().param.device(),
               "optimizer: parameters on ", pending.front().param.device().str(), " and ",
               param.device().str(), "; move the whole model to one device");
      pending.push_back({&group, param, grad.contiguous(), &state_[gi][pi]});
    }
  }
  ++step_count_;
  for (PendingUpdate& u : pending) {
    ++u.state->step;
    // The state follows its parameter when the model moved (Module::to) after earlier steps.
    for (Tensor& buffer : u.state->buffers)
      if (buffer.device() != u.param.device()) buffer = buffer.to(u.param.device());
  }
  if (pending.empty()) return;
  update(pending);
  for (const PendingUpdate& u : pending) u.param.mark_modified();
}

void Optimizer::zero_grad() {
  for (const ParamGroup& g : groups_) {
    for (const Tensor& p : g.params) p.set_grad(Tensor());
  }
}

void Optimizer::set_lr(double lr) {
  check_lr(lr);
  for (ParamGroup& g : groups_) {
    g.lr = default_lr_ > 0 && g.base_lr != default_lr_ ? lr * (g.base_lr / default_lr_) : lr;
  }
}

std::vector<std::pair<std::string, Tensor>> Optimizer::state_tensors() const {
  const std::vector<std::string> names = buffer_names();
  std::vector<std::pair<std::string, Tensor>> out{{"optim.step", count_tensor(step_count_)}};
  for (size_t gi = 0; gi < state_.size(); ++gi) {
    for (size_t pi = 0; pi < state_[gi].size(); ++pi) {
      const ParamState& s = state_[gi][pi];
      if (s.step == 0) continue;
      const std::string prefix = param_prefix(gi, pi);
      out.emplace_back(prefix + "step", count_tensor(s.step));
      for (size_t k = 0; k < names.size(); ++k) {
        out.emplace_back(prefix + names[k], s.buffers[k].clone());
      }
    }
  }
  return out;
}

void Optimizer::load_state_tensors(const std::vector<std::pair<std::string, Tensor>>& state) {
  std::map<std::string, Tensor> entries;
  for (const auto& [name, t] : state) {
    if (!name.starts_with("optim.")) continue;
    DL_CHECK(entries.emplace(name, t).second, "optimizer state: '", name, "' appears twice");
  }
  // Removes and returns the entry, or an undefined tensor.
  auto take = [&entries](const std::string& name) {
    const auto it = entries.find(name);
    if (it == entries.end()) return Tensor();
    const Tensor t = it->second;
    entries.erase(it);
    return t;
  };

  const Tensor step = take("optim.step");
  DL_CHECK(step.defined(), "optimizer state: missing 'optim.step'");
  const int64_t step_count = read_count(step, "optim.step");
  const std::vector<std::string> names = buffer_names();
  std::vector<std::vector<ParamState>> loaded(groups_.size());
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    loaded[gi].resize(groups_[gi].params.size());
    for (size_t pi = 0; pi < groups_[gi].params.size(); ++pi) {
      const std::string prefix = param_prefix(gi, pi);
      const Tensor param_step = take(prefix + "step");
      if (!param_step.defined()) continue;  // never updated
      const Tensor& param = groups_[gi].params[pi];
      ParamState& s = loaded[gi][pi];
      s.step = read_count(param_step, prefix + "step");
      for (const std::string& name : names) {
        const Tensor b = take(prefix + name);
        DL_CHECK(b.defined(), "optimizer state: missing '", prefix, name, "'");
        DL_CHECK(b.dtype() == DType::f32 && b.shape() == param.shape(), "optimizer state: '",
                 prefix, name, "' is ", dtype_name(b.dtype()), " ", shape_str(b.shape()),
                 " but the parameter is F32 ", shape_str(param.shape()));
        Tensor copy = Tensor::empty(param.shape(), DType::f32, param.device());
        copy.copy_(b);
        s.buffers.push_back(copy);
      }
    }
  }
  DL_CHECK(entries.empty(), "optimizer state: unexpected '", entries.begin()->first, "' (",
           entries.size(), " unknown entries: the parameter groups or the optimizer differ)");
  state_ = std::move(loaded);
  step_count_ = step_count;
}

// --- SGD ---

SGD::SGD(std::vector<Tensor> params, const SGDOptions& options)
    : SGD(std::vector<ParamGroup>{ParamGroup{.params = std::move(params)}}, options) {}

SGD::SGD(std::vector<ParamGroup> groups, const SGDOptions& options)
    : Optimizer(options.lr, options.weight_decay), options_(options) {
  check_lr(options.lr);
  DL_CHECK(options.momentum >= 0, "Invalid momentum value: ", options.momentum);
  check_weight_decay(options.weight_decay);
  DL_CHECK(!options.nesterov || (options.momentum > 0 && options.dampening == 0),
           "Nesterov momentum requires a momentum and zero dampening (momentum ", options.momentum,
           ", dampening ", options.dampening, ")");
  add_param_groups(std::move(groups));
}

std::vector<std::string> SGD::buffer_names() const {
  if (options_.momentum == 0) return {};
  return {"momentum_buffer"};
}

void SGD::update(const std::vector<PendingUpdate>& pending) {
  const bool momentum = options_.momentum != 0;
  std::vector<SGDUpdate> updates;
  for (const PendingUpdate& u : pending) {
    const bool first = u.state->buffers.empty();
    if (momentum && first)
      u.state->buffers.push_back(Tensor::empty(u.param.shape(), DType::f32, u.param.device()));
    updates.push_back({.param = u.param,
                       .grad = u.grad,
                       .momentum_buffer = momentum ? u.state->buffers[0] : Tensor(),
                       .lr = *u.group->lr,
                       .weight_decay = *u.group->weight_decay,
                       .momentum = options_.momentum,
                       .dampening = options_.dampening,
                       .nesterov = options_.nesterov,
                       .first = first});
  }
  run_op(
      pending.front().param.device(), "sgd_update", [&] { return op_shape::params(updates); },
      [&](DeviceOps& ops) { ops.sgd_update(updates); });
}

// --- AdamW ---

AdamW::AdamW(std::vector<Tensor> params, const AdamWOptions& options)
    : AdamW(std::vector<ParamGroup>{ParamGroup{.params = std::move(params)}}, options) {}

AdamW::AdamW(std::vector<ParamGroup> groups, const AdamWOptions& options)
    : Optimizer(options.lr, options.weight_decay), options_(options) {
  check_lr(options.lr);
  DL_CHECK(options.eps >= 0, "Invalid epsilon value: ", options.eps);
  DL_CHECK(options.beta1 >= 0 && options.beta1 < 1,
           "Invalid beta parameter at index 0: ", options.beta1);
  DL_CHECK(options.beta2 >= 0 && options.beta2 < 1,
           "Invalid beta parameter at index 1: ", options.beta2);
  check_weight_decay(options.weight_decay);
  add_param_groups(std::move(groups));
}

std::vector<std::string> AdamW::buffer_names() const {
  return {"exp_avg", "exp_avg_sq"};
}

void AdamW::update(const std::vector<PendingUpdate>& pending) {
  std::vector<AdamWUpdate> updates;
  for (const PendingUpdate& u : pending) {
    if (u.state->buffers.empty()) {
      const Device dev = u.param.device();
      u.state->buffers = {Tensor::zeros(u.param.shape(), DType::f32, dev),
                          Tensor::zeros(u.param.shape(), DType::f32, dev)};
    }
    updates.push_back({.param = u.param,
                       .grad = u.grad,
                       .exp_avg = u.state->buffers[0],
                       .exp_avg_sq = u.state->buffers[1],
                       .lr = *u.group->lr,
                       .weight_decay = *u.group->weight_decay,
                       .beta1 = options_.beta1,
                       .beta2 = options_.beta2,
                       .eps = options_.eps,
                       .step = u.state->step});
  }
  run_op(
      pending.front().param.device(), "adamw_update", [&] { return op_shape::params(updates); },
      [&](DeviceOps& ops) { ops.adamw_update(updates); });
}

// --- gradient clipping ---

Tensor clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  DL_CHECK(max_norm >= 0, "Invalid max_norm: ", max_norm);
  std::vector<Tensor> grads;
  for (const Tensor& p : params) {
    const Tensor g = p.grad();
    if (!g.defined()) continue;
    DL_CHECK(g.dtype() == DType::f32 && g.is_contiguous(),
             "clip_grad_norm: gradients must be contiguous F32 tensors");
    DL_CHECK(grads.empty() || g.device() == grads.front().device(), "clip_grad_norm: gradients on ",
             grads.front().device().str(), " and ", g.device().str());
    grads.push_back(g);
  }
  if (grads.empty()) return Tensor::zeros({});
  Tensor total = Tensor::empty({}, DType::f32, grads.front().device());
  run_op(
      total.device(), "clip_grad_norm", [&] { return op_shape::tensors(grads.size()); },
      [&](DeviceOps& ops) { ops.clip_grad_norm(grads, max_norm, total); });
  for (const Tensor& g : grads) g.mark_modified();
  return total;
}

// --- schedules ---

namespace {

void check_step(int64_t step) {
  DL_CHECK(step >= 0, "LR schedule: negative step ", step);
}

// np.interp over increasing (possibly repeated) xp.
double interp(double x, const double* xp, const double* fp, int n) {
  if (x >= xp[n - 1]) return fp[n - 1];
  if (x < xp[0]) return fp[0];
  int j = n - 2;
  while (xp[j] > x) --j;
  if (xp[j] == x) return fp[j];
  const double slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
  return slope * (x - xp[j]) + fp[j];
}

}  // namespace

ConstantLR::ConstantLR(double lr) : lr_(lr) {
  check_lr(lr);
}

double ConstantLR::lr(int64_t step) const {
  check_step(step);
  return lr_;
}

OneCycleLinear::OneCycleLinear(double lr_max, int64_t epochs, int64_t steps_per_epoch)
    : xp_{0, static_cast<double>(epochs * 2 / 5), static_cast<double>(epochs * 4 / 5),
          static_cast<double>(epochs)},
      fp_{0, lr_max, lr_max / 20, 0},
      steps_per_epoch_(steps_per_epoch) {
  check_lr(lr_max);
  DL_CHECK(epochs > 0, "onecycle: epochs must be positive, got ", epochs);
  DL_CHECK(steps_per_epoch > 0, "onecycle: steps_per_epoch must be positive, got ",
           steps_per_epoch);
}

double OneCycleLinear::lr(int64_t step) const {
  check_step(step);
  // As the recipe computes it: t = epoch + (i + 1) / iters_per_epoch.
  const double t = static_cast<double>(step / steps_per_epoch_) +
                   static_cast<double>(step % steps_per_epoch_ + 1) / steps_per_epoch_;
  return interp(t, xp_, fp_, 4);
}

CosineWithWarmup::CosineWithWarmup(double lr, int64_t total_steps, int64_t warmup_steps,
                                   double min_lr)
    : lr_(lr), min_lr_(min_lr), total_steps_(total_steps), warmup_steps_(warmup_steps) {
  check_lr(lr);
  DL_CHECK(min_lr >= 0, "Invalid min_lr: ", min_lr);
  DL_CHECK(total_steps > 0, "cosine: total_steps must be positive, got ", total_steps);
  DL_CHECK(warmup_steps >= 0 && warmup_steps <= total_steps, "cosine: warmup_steps ", warmup_steps,
           " must lie in [0, total_steps = ", total_steps, "]");
}

double CosineWithWarmup::lr(int64_t step) const {
  check_step(step);
  const int64_t pos = step + 1;
  if (pos <= warmup_steps_) return lr_ * static_cast<double>(pos) / warmup_steps_;
  if (pos >= total_steps_) return min_lr_;
  const double progress =
      static_cast<double>(pos - warmup_steps_) / static_cast<double>(total_steps_ - warmup_steps_);
  return min_lr_ + (lr_ - min_lr_) * 0.5 * (1 + std::cos(std::numbers::pi * progress));
}

LinearWarmupDecay::LinearWarmupDecay(double lr, int64_t total_steps, int64_t warmup_steps)
    : lr_(lr), total_steps_(total_steps), warmup_steps_(warmup_steps) {
  check_lr(lr);
  DL_CHECK(total_steps > 0, "linear: total_steps must be positive, got ", total_steps);
  DL_CHECK(warmup_steps >= 0 && warmup_steps < total_steps, "linear: warmup_steps ", warmup_steps,
           " must lie in [0, total_steps = ", total_steps, ")");
}

double LinearWarmupDecay::lr(int64_t step) const {
  check_step(step);
  const int64_t pos = step + 1;
  if (pos <= warmup_steps_) return lr_ * static_cast<double>(pos) / warmup_steps_;
  if (pos >= total_steps_) return 0.0;
  return lr_ * static_cast<double>(total_steps_ - pos) /
         static_cast<double>(total_steps_ - warmup_steps_);
}

// --- ExponentialMovingAverage ---

ExponentialMovingAverage::ExponentialMovingAverage(const nn::Module& source, nn::Module& average,
                                                   double decay)
    : source_(source.state_dict()), average_(average.state_dict()), decay_(decay) {
  DL_CHECK(decay >= 0 && decay <= 1, "exponential moving average: decay must lie in [0, 1], got ",
           decay);
  DL_CHECK(source_.size() == average_.size(),
           "exponential moving average: the average is not a module of the source's architecture");
  for (size_t i = 0; i < source_.size(); ++i) {
    const auto& [name, s] = source_[i];
    const Tensor& a = average_[i].second;
    DL_CHECK(average_[i].first == name && a.shape() == s.shape() && a.dtype() == s.dtype(),
             "exponential moving average: the average's '", average_[i].first,
             "' does not match the source's '", name, "'");
    DL_CHECK(a.impl_ptr() != s.impl_ptr(), "exponential moving average: '", name,
             "' is shared by the average and its source");
  }
  for (size_t i = 0; i < source_.size(); ++i) average_[i].second.copy_(source_[i].second);
}

void ExponentialMovingAverage::update() {
  for (size_t i = 0; i < source_.size(); ++i) {
    const auto& [name, s] = source_[i];
    Tensor& a = average_[i].second;
    DL_CHECK(a.device() == s.device(), "exponential moving average: '", name, "' is on ",
             s.device().str(), " but its average on ", a.device().str(),
             "; move the average with its source");
    if (s.dtype() == DType::f32 || s.dtype() == DType::bf16) {
      scale_(a, static_cast<float>(decay_));
      add_(a, s, static_cast<float>(1 - decay_));
    } else {
      a.copy_(s);
    }
  }
}

std::unique_ptr<LRSchedule> make_schedule(Schedule kind, double lr, int64_t epochs,
                                          int64_t steps_per_epoch, int64_t warmup_steps,
                                          double min_lr) {
  if (kind == Schedule::onecycle)
    return std::make_unique<OneCycleLinear>(lr, epochs, steps_per_epoch);
  if (kind == Schedule::cosine) {
    DL_CHECK(epochs > 0 && steps_per_epoch > 0, "cosine: epochs (", epochs,
             ") and steps_per_epoch (", steps_per_epoch, ") must be positive");
    return std::make_unique<CosineWithWarmup>(lr, epochs * steps_per_epoch, warmup_steps, min_lr);
  }
  if (kind == Schedule::linear) {
    DL_CHECK(epochs > 0 && steps_per_epoch > 0, "linear: epochs (", epochs,
             ") and steps_per_epoch (", steps_per_epoch, ") must be positive");
    return std::make_unique<LinearWarmupDecay>(lr, epochs * steps_per_epoch, warmup_steps);
  }
  DL_CHECK(kind == Schedule::constant, "unknown LR schedule ", static_cast<int>(kind));
  return std::make_unique<ConstantLR>(lr);
}

}  // namespace dl::optim
