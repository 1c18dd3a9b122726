#include "engine/nn.h"

#include <cmath>
#include <sstream>

#include "engine/error.h"
#include "engine/ops.h"

namespace dl::nn {

void Module::collect(const std::string& prefix, bool params, bool buffers,
                     NamedTensors& out) const {
  if (params)
    for (const auto& [name, t] : params_) out.emplace_back(prefix + name, t);
  if (buffers)
    for (const auto& [name, t] : buffers_) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_)
    child->collect(prefix + name + ".", params, buffers, out);
}

NamedTensors Module::named_parameters() const {
  NamedTensors out;
  collect("", true, false, out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

NamedTensors Module::named_buffers() const {
  NamedTensors out;
  collect("", false, true, out);
  return out;
}

NamedTensors Module::state_dict() const {
  NamedTensors out;
  collect("", true, true, out);
  return out;
}

void Module::load_state_dict(const NamedTensors& state, const std::string& source) {
  NamedTensors own = state_dict();
  std::vector<std::string> missing, unexpected, mismatched;
  std::vector<std::pair<Tensor, Tensor>> copies;
  for (auto& [name, dst] : own) {
    const Tensor* src = nullptr;
    for (const auto& [key, t] : state)
      if (key == name) src = &t;
    if (!src) {
      missing.push_back(name);
    } else if (src->shape() != dst.shape() || src->dtype() != dst.dtype()) {
      mismatched.push_back(name + " (" + dtype_name(src->dtype()) + shape_str(src->shape()) +
                           " in the file, model expects " + dtype_name(dst.dtype()) +
                           shape_str(dst.shape()) + ")");
    } else {
      copies.emplace_back(dst, *src);
    }
  }
  for (const auto& [key, t] : state) {
    bool known = false;
    for (const auto& [name, dst] : own) known = known || name == key;
    if (!known) unexpected.push_back(key);
  }
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::ostringstream msg;
    msg << source << " does not match this model (is it a checkpoint of another model?)";
    auto list = [&](const char* what, const std::vector<std::string>& names) {
      if (names.empty()) return;
      msg << "\n  " << what << ":";
      for (size_t i = 0; i < names.size() && i < 8; ++i) msg << (i ? ", " : " ") << names[i];
      if (names.size() > 8) msg << ", ... (" << names.size() << " in all)";
    };
    list("missing", missing);
    list("unexpected", unexpected);
    list("mismatched", mismatched);
    throw Error(msg.str());
  }
  NoGradGuard no_grad;
  for (auto& [dst, src] : copies) dst.copy_(src);
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::to(Device device) {
  for (auto& [name, t] : state_dict()) {
    // Integer buffers are the host's bookkeeping (BatchNorm's num_batches_tracked): they stay in
    // host memory, so counting a batch never waits for the GPU.
    if (t.device() == device || t.dtype() == DType::i64) continue;
    const Tensor moved = t.to(device);
    TensorImpl& impl = t.impl();
    impl.storage = moved.impl().storage;
    impl.offset = moved.impl().offset;
    impl.strides = moved.impl().strides;
    if (impl.autograd && impl.autograd->grad) impl.autograd->grad.reset();
  }
}

void Module::zero_grad() {
  for (auto& t : parameters()) t.set_grad(Tensor());
}

void Module::apply(const std::function<void(Module&)>& fn) {
  fn(*this);
  for (auto& [name, child] : children_) child->apply(fn);
}

Tensor Module::register_parameter(const std::string& name, Tensor t) {
  t.requires_grad_(true);
  params_.emplace_back(name, t);
  return t;
}

Tensor Module::register_buffer(const std::string& name, Tensor t) {
  buffers_.emplace_back(name, t);
  return t;
}

namespace {
// kaiming_uniform_(a = sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)); so does the bias.
Tensor fan_in_uniform(const Shape& shape, int64_t fan_in, Generator& gen) {
  const float bound = fan_in > 0 ? 1.0f / std::sqrt(static_cast<float>(fan_in)) : 0.0f;
  return Tensor::uniform(shape, -bound, bound, gen);
}
}  // namespace

Conv2d::Conv2d(const Conv2dOptions& o, Generator& gen) : options_(o) {
  DL_CHECK(o.in > 0 && o.out > 0 && o.kernel > 0 && o.groups_ > 0 && o.in % o.groups_ == 0 &&
               o.out % o.groups_ == 0,
           "Conv2d: invalid options (in ", o.in, ", out ", o.out, ", kernel ", o.kernel,
           ", groups ", o.groups_, ")");
  const int64_t fan_in = o.in / o.groups_ * o.kernel * o.kernel;
  weight = register_parameter(
      "weight", fan_in_uniform({o.out, o.in / o.groups_, o.kernel, o.kernel}, fan_in, gen));
  if (o.bias_) bias = register_parameter("bias", fan_in_uniform({o.out}, fan_in, gen));
}

Tensor Conv2d::forward(const Tensor& x) {
  return conv2d(x, weight, bias, options_.stride_, options_.padding_, options_.groups_);
}

BatchNorm2d::BatchNorm2d(int64_t channels, float eps, float momentum)
    : eps_(eps), momentum_(momentum) {
  DL_CHECK(channels > 0, "BatchNorm2d: channels must be positive, got ", channels);
  weight = register_parameter("weight", Tensor::ones({channels}));
  bias = register_parameter("bias", Tensor::zeros({channels}));
  running_mean = register_buffer("running_mean", Tensor::zeros({channels}));
  running_var = register_buffer("running_var", Tensor::ones({channels}));
  num_batches_tracked = register_buffer("num_batches_tracked", Tensor::zeros({}, DType::i64));
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  Tensor y = batch_norm(x, running_mean, running_var, weight, bias, is_training(), momentum_, eps_,
                        sum_over_ranks);
  // Counted once the batch was accepted; the counter is in host memory (see Module::to).
  if (is_training()) ++*num_batches_tracked.data<int64_t>();
  return y;
}

Tensor BatchNorm2d::forward_gelu(const Tensor& h, const Tensor& residual) {
  Tensor y = gelu_batch_norm(h, running_mean, running_var, weight, bias, is_training(), momentum_,
                             eps_, residual, sum_over_ranks);
  if (is_training()) ++*num_batches_tracked.data<int64_t>();
  return y;
}

Linear::Linear(int64_t in, int64_t out, bool with_bias, Generator& gen) {
  DL_CHECK(in > 0 && out > 0, "Linear: sizes must be positive, got ", in, " -> ", out);
  weight = register_parameter("weight", fan_in_uniform({out, in}, in, gen));
  if (with_bias) bias = register_parameter("bias", fan_in_uniform({out}, in, gen));
}

Tensor Linear::forward(const Tensor& x) {
  return linear(x, weight, bias);
}

Tensor GELU::forward(const Tensor& x) {
  return gelu(x);
}

Tensor ReLU::forward(const Tensor& x) {
  return relu(x);
}

Tensor MaxPool2d::forward(const Tensor& x) {
  return max_pool2d(x, kernel_, stride_, padding_);
}

AdaptiveAvgPool2d::AdaptiveAvgPool2d(int64_t output_size) {
  DL_CHECK(output_size == 1, "AdaptiveAvgPool2d: only output size 1 is supported, got ",
           output_size);
}

Tensor AdaptiveAvgPool2d::forward(const Tensor& x) {
  const Tensor pooled = global_avg_pool(x);
  return pooled.reshape({x.size(0), 1, 1, x.size(3)});
}

Tensor Flatten::forward(const Tensor& x) {
  // PyTorch flattens NCHW as (C, H, W); an NHWC map larger than 1x1 is reordered to match, so a
  // Linear after it takes PyTorch's weights unchanged.
  if (x.dim() == 4 && x.size(1) * x.size(2) > 1) return nhwc_to_nchw(x).reshape({x.size(0), -1});
  return x.reshape({x.size(0), -1});
}

Sequential::Sequential(std::vector<std::shared_ptr<Module>> modules) {
  for (auto& m : modules) push_back(std::move(m));
}

void Sequential::push_back(std::shared_ptr<Module> m) {
  register_module(std::to_string(modules_.size()), m);
  modules_.push_back(std::move(m));
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor y = x;
  for (auto& m : modules_) y = m->forward(y);
  return y;
}

Residual::Residual(std::shared_ptr<Module> fn) : fn_(register_module("fn", std::move(fn))) {}

Tensor Residual::forward(const Tensor& x) {
  return add(fn_->forward(x), x);
}

}  // namespace dl::nn
