// Neural-network modules in the style of PyTorch's C++ frontend: named parameters and buffers
// registered in order, dotted state-dict keys, train()/eval(), PyTorch's default initialisation.
// Layers take NHWC activations.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/ops.h"
#include "engine/tensor.h"

namespace dl::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  virtual ~Module() = default;
  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }

  // Dotted names in registration order: own entries first, then each child's, depth first.
  NamedTensors named_parameters() const;
  std::vector<Tensor> parameters() const;
  NamedTensors named_buffers() const;
  // PyTorch's state_dict order: a module's parameters, then its buffers, then its children.
  NamedTensors state_dict() const;
  // Copies every entry into the module. Missing or unexpected keys, or a shape or dtype mismatch,
  // throw one dl::Error that lists them; `source` (a file name) is named in the message.
  void load_state_dict(const NamedTensors& state, const std::string& source = "state dict");

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  // Moves parameters and floating-point buffers to `device` in place: every handle to them (an
  // optimizer's too) sees the move. Integer buffers (counters) stay in host memory.
  void to(Device device);
  // Sets every parameter's gradient to undefined.
  void zero_grad();
  // Calls fn on this module and every module below it, depth first in registration order.
  void apply(const std::function<void(Module&)>& fn);

 protected:
  Tensor register_parameter(const std::string& name, Tensor t);
  Tensor register_buffer(const std::string& name, Tensor t);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }

 private:
  void collect(const std::string& prefix, bool params, bool buffers, NamedTensors& out) const;

  NamedTensors params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

struct Conv2dOptions {
  Conv2dOptions(int64_t in, int64_t out, int64_t kernel) : in(in), out(out), kernel(kernel) {}
  Conv2dOptions& stride(int64_t v) {
    stride_ = v;
    return *this;
  }
  Conv2dOptions& padding(int64_t v) {
    padding_ = v;
    return *this;
  }
  Conv2dOptions& groups(int64_t v) {
    groups_ = v;
    return *this;
  }
  Conv2dOptions& bias(bool v) {
    bias_ = v;
    return *this;
  }
  int64_t in, out, kernel, stride_ = 1, padding_ = 0, groups_ = 1;
  bool bias_ = true;
};

// Weight [out, in / groups, k, k] (PyTorch's layout), kaiming-uniform(a = sqrt 5); bias uniform
// in +-1/sqrt(fan_in), as torch.nn.Conv2d.
class Conv2d : public Module {
 public:
  explicit Conv2d(const Conv2dOptions& o, Generator& gen = default_generator());
  Tensor forward(const Tensor& x) override;
  Tensor weight, bias;

 private:
  Conv2dOptions options_;
};

class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int64_t channels, float eps = 1e-5f, float momentum = 0.1f);
  Tensor forward(const Tensor& x) override;
  // forward(gelu(h)) (+ residual, if defined) as one fused op (gelu_batch_norm in ops.h): the
  // separate ops' values and gradients (bf16: up to a rounding), fewer passes on the GPU.
  Tensor forward_gelu(const Tensor& h, const Tensor& residual = Tensor());
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;
  // Set (SyncBatchNorm: dist::sync_batch_norm), training normalises with the statistics of the
  // batch that several processes share (batch_norm in ops.h).
  SumOverRanks sum_over_ranks;

 private:
  float eps_, momentum_;
};

// Weight [out, in], bias [out], initialised as torch.nn.Linear.
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool with_bias = true, Generator& gen = default_generator());
  Tensor forward(const Tensor& x) override;
  Tensor weight, bias;
};

class GELU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
};

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
};

class MaxPool2d : public Module {
 public:
  MaxPool2d(int64_t kernel, int64_t stride, int64_t padding = 0)
      : kernel_(kernel), stride_(stride), padding_(padding) {}
  Tensor forward(const Tensor& x) override;

 private:
  int64_t kernel_, stride_, padding_;
};

// Output size 1 only: [N, H, W, C] -> [N, 1, 1, C].
class AdaptiveAvgPool2d : public Module {
 public:
  explicit AdaptiveAvgPool2d(int64_t output_size = 1);
  Tensor forward(const Tensor& x) override;
};

// [N, ...] -> [N, prod(...)]; an NHWC input is flattened in PyTorch's (C, H, W) order.
class Flatten : public Module {
 public:
  Tensor forward(const Tensor& x) override;
};

// Children named "0", "1", ... run in order.
class Sequential : public Module {
 public:
  Sequential() = default;
  explicit Sequential(std::vector<std::shared_ptr<Module>> modules);
  void push_back(std::shared_ptr<Module> m);
  Tensor forward(const Tensor& x) override;
  size_t size() const { return modules_.size(); }
  const std::shared_ptr<Module>& operator[](size_t i) const { return modules_[i]; }

 private:
  std::vector<std::shared_ptr<Module>> modules_;
};

// x + fn(x); the wrapped module is the child "fn".
class Residual : public Module {
 public:
  explicit Residual(std::shared_ptr<Module> fn);
  Tensor forward(const Tensor& x) override;

 private:
  std::shared_ptr<Module> fn_;
};

}  // namespace dl::nn
