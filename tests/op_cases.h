// One table of cases for every differentiable op of engine/ops.h, in the manner of ggml's
// test-backend-ops, and the code that runs a case on a device. Three tests read the table:
//   test_op_cases (CPU, f32): every gradient against central finite differences.
//   test_cpu_bf16: the CPU in bf16 against the CPU in f32, on the same bf16-rounded inputs.
//   test_cuda_ops: the GPU against the CPU, in f32 and in bf16.
// A new op adds its cases here and is checked by all three. Every run draws fresh inputs and
// fills new tensors with NaN (dl::set_fill_uninitialized_memory), so an output element that no
// kernel wrote fails the comparison. The upstream gradient is random, so backward checks every
// input's gradient with generic values.
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/ops.h"
#include "engine/tensor.h"
#include "test_util.h"

namespace dl::test {

// How a case's input is drawn and treated.
enum class InputKind {
  activation,    // N(0, 1), differentiable; bf16 in a bf16 run (NHWC images, linear's x, logits)
  parameter,     // N(0, 1), differentiable, always f32 (weights, biases, BatchNorm's affine)
  running_mean,  // N(0, 1), f32, not differentiable; the op may update it in place (compared after)
  running_var,   // U(0.5, 2), otherwise as running_mean
  labels,        // i64 in [0, classes), on the run's device
  host_labels,   // i64 in [0, classes), in host memory (the trainer's way)
};

struct OpInput {
  InputKind kind;
  Shape shape;
  int64_t classes = 0;  // labels only
};

struct OpCase {
  std::string name;
  std::vector<OpInput> inputs;
  std::function<Tensor(const std::vector<Tensor>&)> run;
  // Activations drawn as distinct values at least 0.05 apart and 0.025 or more away from 0, in a
  // random order: max pooling's and ReLU's kinks stay farther away than the finite-difference step
  // (in f32; rounded to bf16 some become ties, which every device breaks alike: first maximum).
  bool distinct_activations = false;
  // False where the CUDA path refuses the op with a dl::Error (a shape no GPU kernel takes).
  bool on_cuda = true;
  // The output is f32 whatever the activations' dtype (a sum, a mean, a loss).
  bool f32_output = false;
};

inline bool is_differentiable(InputKind kind) {
  return kind == InputKind::activation || kind == InputKind::parameter;
}

inline std::vector<OpCase> op_cases() {
  using K = InputKind;
  std::vector<OpCase> cases;
  const Shape image = {3, 5, 7, 11};
  const auto unary = [&](std::string name, std::function<Tensor(const Tensor&)> f,
                         bool distinct = false) {
    cases.push_back({std::move(name),
                     {{K::activation, image}},
                     [f](const std::vector<Tensor>& t) { return f(t[0]); },
                     distinct});
  };
  cases.push_back({"add",
                   {{K::activation, image}, {K::activation, image}},
                   [](const std::vector<Tensor>& t) { return dl::add(t[0], t[1]); }});
  cases.push_back({"mul",
                   {{K::activation, image}, {K::activation, image}},
                   [](const std::vector<Tensor>& t) { return dl::mul(t[0], t[1]); }});
  unary("scale", [](const Tensor& x) { return dl::scale(x, -1.75f); });
  unary("gelu", [](const Tensor& x) { return dl::gelu(x); });
  unary(
      "relu", [](const Tensor& x) { return dl::relu(x); }, true);
  unary("sum", [](const Tensor& x) { return dl::sum(x); });
  cases.back().f32_output = true;
  unary("mean", [](const Tensor& x) { return dl::mean(x); });
  cases.back().f32_output = true;
  unary("nhwc_to_nchw", [](const Tensor& x) { return dl::nhwc_to_nchw(x); });
  unary("global_avg_pool", [](const Tensor& x) { return dl::global_avg_pool(x); });

  struct Conv {
    std::string what;
    Shape x;
    int64_t c_out, k, stride, pad, groups;
    bool bias, on_cuda;
  };
  // The CPU's GEMM packs B once for 1088 pixels (17 row blocks of 64) and, in bf16, splits the
  // weight gradient's K in three for 4097 pixels; the depthwise k 9 case has whole channel
  // vectors.
  const std::vector<Conv> convs = {
      {"depthwise k3, odd sizes", {2, 9, 7, 13}, 13, 3, 1, 1, 13, true, true},
      {"depthwise k5, batch 1", {1, 8, 8, 24}, 24, 5, 1, 2, 24, true, true},
      {"depthwise k7 larger than the image, no bias", {2, 6, 5, 5}, 5, 7, 1, 3, 5, false, true},
      {"depthwise k9, 48 channels", {2, 11, 11, 48}, 48, 9, 1, 4, 48, true, true},
      {"depthwise k3 stride 2", {2, 9, 8, 6}, 6, 3, 2, 1, 6, true, false},
      {"depthwise k5 padding 1", {2, 7, 9, 4}, 4, 5, 1, 1, 4, false, false},
      {"pointwise", {3, 4, 5, 40}, 72, 1, 1, 0, 1, true, true},
      {"pointwise, odd channels, no bias", {2, 4, 4, 7}, 3, 1, 1, 0, 1, false, true},
      {"pointwise, 1088 pixels", {4, 16, 17, 40}, 48, 1, 1, 0, 1, true, true},
      {"pointwise, 4097 pixels", {1, 17, 241, 8}, 12, 1, 1, 0, 1, true, true},
      {"patch embedding k2 stride 2", {2, 32, 32, 3}, 16, 2, 2, 0, 1, true, true},
      {"dense 3x3", {2, 9, 9, 5}, 6, 3, 1, 1, 1, false, true},
      {"dense 3x3 stride 2", {2, 10, 10, 4}, 8, 3, 2, 1, 1, true, true},
      {"groups 2", {2, 6, 6, 4}, 6, 3, 1, 1, 2, true, false},
  };
  for (const Conv& c : convs) {
    std::vector<OpInput> in = {{K::activation, c.x},
                               {K::parameter, {c.c_out, c.x[3] / c.groups, c.k, c.k}}};
    if (c.bias) in.push_back({K::parameter, {c.c_out}});
    cases.push_back({"conv2d " + c.what, in,
                     [c](const std::vector<Tensor>& t) {
                       return dl::conv2d(t[0], t[1], c.bias ? t[2] : Tensor(), c.stride, c.pad,
                                         c.groups);
                     },
                     false, c.on_cuda});
  }

  // 252 rows and 37 channels (two whole 16-channel vectors of the CPU's and a tail).
  const Shape bn = {4, 9, 7, 37};
  const std::vector<OpInput> bn_inputs = {{K::activation, bn},
                                          {K::parameter, {37}},
                                          {K::parameter, {37}},
                                          {K::running_mean, {37}},
                                          {K::running_var, {37}}};
  for (const bool training : {true, false}) {
    const std::string mode = training ? " (training)" : " (evaluation)";
    cases.push_back({"batch_norm" + mode, bn_inputs, [training](const std::vector<Tensor>& t) {
                       return dl::batch_norm(t[0], t[3], t[4], t[1], t[2], training, 0.1f, 1e-5f);
                     }});
    cases.push_back({"batch_norm without affine parameters" + mode,
                     {{K::activation, bn}, {K::running_mean, {37}}, {K::running_var, {37}}},
                     [training](const std::vector<Tensor>& t) {
                       return dl::batch_norm(t[0], t[1], t[2], Tensor(), Tensor(), training);
                     }});
    std::vector<OpInput> with_residual = bn_inputs;
    with_residual.push_back({K::activation, bn});
    cases.push_back({"gelu_batch_norm with a residual" + mode, with_residual,
                     [training](const std::vector<Tensor>& t) {
                       return dl::gelu_batch_norm(t[0], t[3], t[4], t[1], t[2], training, 0.1f,
                                                  1e-5f, t[5]);
                     }});
    cases.push_back({"gelu_batch_norm without affine parameters or residual" + mode,
                     {{K::activation, bn}, {K::running_mean, {37}}, {K::running_var, {37}}},
                     [training](const std::vector<Tensor>& t) {
                       return dl::gelu_batch_norm(t[0], t[1], t[2], Tensor(), Tensor(), training);
                     }});
    // 561 rows (more than one block of the GPU's statistics kernel) and 45 channels (not a
    // multiple of its 32-channel tiles).
    const Shape wide = {3, 17, 11, 45};
    cases.push_back({"gelu_batch_norm over several row blocks, 45 channels" + mode,
                     {{K::activation, wide},
                      {K::parameter, {45}},
                      {K::parameter, {45}},
                      {K::running_mean, {45}},
                      {K::running_var, {45}},
                      {K::activation, wide}},
                     [training](const std::vector<Tensor>& t) {
                       return dl::gelu_batch_norm(t[0], t[3], t[4], t[1], t[2], training, 0.1f,
                                                  1e-5f, t[5]);
                     }});
  }

  struct Pool {
    Shape x;
    int64_t k, stride, pad;
  };
  for (const Pool& p : std::vector<Pool>{
           {{2, 8, 8, 6}, 2, 2, 0}, {{2, 9, 8, 6}, 3, 2, 1}, {{1, 7, 7, 5}, 3, 1, 1}}) {
    cases.push_back(
        {"max_pool2d k" + std::to_string(p.k) + " stride " + std::to_string(p.stride) +
             " padding " + std::to_string(p.pad),
         {{K::activation, p.x}},
         [p](const std::vector<Tensor>& t) { return dl::max_pool2d(t[0], p.k, p.stride, p.pad); },
         true});
  }

  cases.push_back({"linear",
                   {{K::activation, {33, 20}}, {K::parameter, {10, 20}}, {K::parameter, {10}}},
                   [](const std::vector<Tensor>& t) { return dl::linear(t[0], t[1], t[2]); }});
  cases.push_back({"linear without bias",
                   {{K::activation, {5, 7}}, {K::parameter, {3, 7}}},
                   [](const std::vector<Tensor>& t) { return dl::linear(t[0], t[1], Tensor()); }});
  for (const float smoothing : {0.0f, 0.1f}) {
    cases.push_back({std::string("cross_entropy, label smoothing ") + (smoothing > 0 ? "0.1" : "0"),
                     {{K::activation, {37, 10}}, {K::labels, {37}, 10}},
                     [smoothing](const std::vector<Tensor>& t) {
                       return dl::cross_entropy(t[0], t[1], smoothing);
                     }});
    cases.back().f32_output = true;
  }
  cases.push_back(
      {"cross_entropy with the labels in host memory",
       {{K::activation, {37, 10}}, {K::host_labels, {37}, 10}},
       [](const std::vector<Tensor>& t) { return dl::cross_entropy(t[0], t[1], 0.1f); }});
  cases.back().f32_output = true;
  return cases;
}

// A case's inputs drawn on the CPU in f32 (labels i64).
inline std::vector<Tensor> draw_inputs(const OpCase& c, Generator& gen) {
  std::vector<Tensor> out;
  for (const OpInput& in : c.inputs) {
    switch (in.kind) {
      case InputKind::activation:
        if (c.distinct_activations) {
          const int64_t n = shape_numel(in.shape);
          std::vector<float> values(static_cast<size_t>(n));
          for (int64_t i = 0; i < n; ++i)  // +-0.025, +-0.075, ...: 0.05 apart, none near 0
            values[i] = (i % 2 ? -1.0f : 1.0f) * (0.025f + 0.05f * static_cast<float>(i / 2));
          for (int64_t i = n - 1; i > 0; --i)
            std::swap(values[i], values[gen.next_u64() % static_cast<uint64_t>(i + 1)]);
          out.push_back(Tensor::from_vector(values, in.shape));
        } else {
          out.push_back(Tensor::randn(in.shape, gen));
        }
        break;
      case InputKind::parameter:
      case InputKind::running_mean:
        out.push_back(Tensor::randn(in.shape, gen));
        break;
      case InputKind::running_var:
        out.push_back(Tensor::uniform(in.shape, 0.5f, 2.0f, gen));
        break;
      case InputKind::labels:
      case InputKind::host_labels: {
        std::vector<int64_t> labels(static_cast<size_t>(shape_numel(in.shape)));
        for (int64_t& l : labels) l = static_cast<int64_t>(gen.next_u64() % in.classes);
        out.push_back(Tensor::from_vector(labels, in.shape));
        break;
      }
    }
  }
  return out;
}

// The shape of a case's output (run without autograd on copies of the inputs).
inline Shape output_shape(const OpCase& c, const std::vector<Tensor>& drawn) {
  NoGradGuard no_grad;
  std::vector<Tensor> copies;
  for (const Tensor& t : drawn) copies.push_back(t.clone());
  return c.run(copies).shape();
}

// The activations of drawn inputs rounded to bf16 and widened back: the f32 reference's inputs
// for a bf16 run.
inline std::vector<Tensor> round_activations_to_bf16(const OpCase& c,
                                                     const std::vector<Tensor>& drawn) {
  std::vector<Tensor> out = drawn;
  for (size_t i = 0; i < drawn.size(); ++i)
    if (c.inputs[i].kind == InputKind::activation) out[i] = drawn[i].to(DType::bf16).to(DType::f32);
  return out;
}

// While alive, new tensors are filled with NaN (see dl::set_fill_uninitialized_memory).
class PoisonNewTensors {
 public:
  PoisonNewTensors() : previous_(fill_uninitialized_memory()) {
    set_fill_uninitialized_memory(true);
  }
  ~PoisonNewTensors() { set_fill_uninitialized_memory(previous_); }
  PoisonNewTensors(const PoisonNewTensors&) = delete;
  PoisonNewTensors& operator=(const PoisonNewTensors&) = delete;

 private:
  bool previous_;
};

// What one run of a case produced, copied to the host in f32: the output, the gradient of each
// differentiable input (undefined for the others) and each input after the run (running
// statistics are updated in place).
struct OpResult {
  Tensor output;
  std::vector<Tensor> gradients;
  std::vector<Tensor> inputs_after;
};

inline Tensor host_f32(const Tensor& t) {
  const Tensor host = t.to(Device::cpu());
  return host.dtype() == DType::f32 ? host.clone() : host.to(DType::f32);
}

// Runs case c on `device` with activations in `activation_dtype`, from copies of `drawn`, and
// backpropagates `upstream` (f32, the output's shape; converted to the output's dtype).
inline OpResult run_case(const OpCase& c, const std::vector<Tensor>& drawn, Device device,
                         DType activation_dtype, const Tensor& upstream) {
  PoisonNewTensors poison;
  std::vector<Tensor> inputs;
  for (size_t i = 0; i < drawn.size(); ++i) {
    const InputKind kind = c.inputs[i].kind;
    Tensor t = (kind == InputKind::activation ? drawn[i].to(activation_dtype) : drawn[i]).clone();
    if (kind != InputKind::host_labels) t = t.to(device);
    if (is_differentiable(kind)) t.requires_grad_();
    inputs.push_back(t);
  }
  const Tensor out = c.run(inputs);
  REQUIRE(out.device() == device);
  REQUIRE(out.dtype() == (c.f32_output ? DType::f32 : activation_dtype));
  out.backward(upstream.to(out.dtype()).to(device));
  OpResult result;
  result.output = host_f32(out);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const bool differentiable = is_differentiable(c.inputs[i].kind);
    if (differentiable) {  // a gradient has its input's dtype (PyTorch's rule)
      REQUIRE(inputs[i].grad().defined());
      CHECK(inputs[i].grad().dtype() == inputs[i].dtype());
    }
    result.gradients.push_back(differentiable ? host_f32(inputs[i].grad()) : Tensor());
    result.inputs_after.push_back(host_f32(inputs[i]));
  }
  return result;
}

// Two runs of case c agree: max |got - want| / max |want| <= rtol for the output and every
// gradient, <= state_rtol for the running statistics after the run (f32 in every run, updated in
// place), and every other input is unchanged and equal in both (an op must not write its inputs).
inline void check_results_close(const OpCase& c, const OpResult& got, const OpResult& want,
                                double rtol, double state_rtol) {
  const auto check = [](const Tensor& g, const Tensor& w, double tolerance,
                        const std::string& what) {
    const double e = max_rel_error(g, w);
    INFO(what << ": max error " << e << " of the largest |value| (tolerance " << tolerance << ")");
    CHECK(e <= tolerance);
  };
  check(got.output, want.output, rtol, "output");
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    const std::string input = "input " + std::to_string(i);
    if (want.gradients[i].defined())
      check(got.gradients[i], want.gradients[i], rtol, "gradient of " + input);
    const InputKind kind = c.inputs[i].kind;
    if (kind == InputKind::running_mean || kind == InputKind::running_var) {
      check(got.inputs_after[i], want.inputs_after[i], state_rtol, input + " after the run");
    } else {
      INFO(input << " after the run");
      CHECK(got.inputs_after[i].to_vector() == want.inputs_after[i].to_vector());
    }
  }
}

}  // namespace dl::test
