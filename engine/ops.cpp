#include "engine/ops.h"

#include "engine/autograd.h"
#include "engine/device_ops.h"
#include "engine/error.h"
#include "engine/profile.h"
#include "engine/storage.h"

namespace dl {

namespace {

// An activation: f32, or bf16 on a device whose ops support it.
void check_activation(const char* op, const Tensor& t, const char* what) {
  DL_CHECK(t.defined(), op, ": ", what, " is undefined");
  const bool bf16_ok = t.dtype() == DType::bf16 && device_ops(t.device()).supports_bf16();
  DL_CHECK(t.dtype() == DType::f32 || bf16_ok, op, ": ", what, " has dtype ", dtype_name(t.dtype()),
           ", expected F32",
           t.device().is_cpu() ? " (BF16 activations need a GPU or a CPU with AVX512-BF16)"
                               : " or BF16");
}

// A parameter or statistic: f32, on the activation's device. Undefined passes (optional).
void check_param(const char* op, const Tensor& t, const char* what, Device device) {
  if (!t.defined()) return;
  DL_CHECK(t.dtype() == DType::f32, op, ": ", what, " has dtype ", dtype_name(t.dtype()),
           ", expected F32");
  DL_CHECK(t.device() == device, op, ": ", what, " is on ", t.device().str(), ", the input on ",
           device.str());
}

void check_same(const char* op, const Tensor& a, const Tensor& b) {
  DL_CHECK(b.defined(), op, ": the second operand is undefined");
  DL_CHECK(a.shape() == b.shape(), op, ": shapes ", shape_str(a.shape()), " and ",
           shape_str(b.shape()), " differ");
  DL_CHECK(a.dtype() == b.dtype(), op, ": dtypes ", dtype_name(a.dtype()), " and ",
           dtype_name(b.dtype()), " differ");
  DL_CHECK(a.device() == b.device(), op, ": tensors on ", a.device().str(), " and ",
           b.device().str());
}

Tensor empty_like(const Tensor& t) {
  return Tensor::empty(t.shape(), t.dtype(), t.device());
}

Tensor contiguous_or_undefined(const Tensor& t) {
  return t.defined() ? t.contiguous() : Tensor();
}

// A DeviceOps method and its name (the profile's row).
template <class Method>
struct NamedOp {
  const char* name;
  Method method;
};
using UnaryOp = NamedOp<void (DeviceOps::*)(const Tensor&, Tensor&)>;
using UnaryBackwardOp = NamedOp<void (DeviceOps::*)(const Tensor&, const Tensor&, Tensor&)>;

// y = f(x) elementwise; the backward computes dx from x and dy.
Tensor pointwise_activation(const char* name, const Tensor& x, UnaryOp forward,
                            UnaryBackwardOp backward) {
  check_activation(name, x, "x");
  const Tensor xc = x.contiguous();
  Tensor out = empty_like(x);
  run_op(xc, forward.name, [&](DeviceOps& ops) { (ops.*forward.method)(xc, out); });
  record(out, name, {x},
         [xc = xc.detach(), backward](const Tensor& g) {
           Tensor dx = empty_like(xc);
           const Tensor gc = g.contiguous();
           run_op(xc, backward.name, [&](DeviceOps& ops) { (ops.*backward.method)(xc, gc, dx); });
           return std::vector<Tensor>{dx};
         },
         {xc});
  return out;
}

}  // namespace

void require_op_support(Device device) {
  device_ops(device);
}

Device resolve_device(const std::string& name) {
  if (name != "auto") {
    const Device device = Device::parse(name);
    device_backend(device);
    require_op_support(device);
    return device;
  }
  try {
    device_backend(Device::cuda());
    require_op_support(Device::cuda());
    return Device::cuda();
  } catch (const Error&) {
    return Device::cpu();
  }
}

void add_(Tensor& dst, const Tensor& src, float alpha) {
  check_activation("add_", dst, "destination");
  check_same("add_", dst, src);
  DL_CHECK(dst.is_contiguous(), "add_: destination must be contiguous");
  const Tensor sc = src.contiguous();
  run_op(dst, "axpy", [&](DeviceOps& ops) { ops.axpy(alpha, sc, dst); });
  dst.mark_modified();
}

void scale_(Tensor& dst, float factor) {
  check_activation("scale_", dst, "tensor");
  DL_CHECK(dst.is_contiguous(), "scale_: tensor must be contiguous");
  run_op(dst, "scale", [&](DeviceOps& ops) { ops.scale(dst, factor, dst); });
  dst.mark_modified();
}

double squared_norm(const Tensor& x) {
  return squared_norms({x})[0];
}

std::vector<double> squared_norms(const std::vector<Tensor>& xs) {
  std::vector<Tensor> contiguous;
  for (const Tensor& x : xs) {
    DL_CHECK(x.defined() && x.dtype() == DType::f32, "squared_norm: expected F32 tensors");
    DL_CHECK(x.device() == xs.front().device(), "squared_norms: tensors on ",
             xs.front().device().str(), " and ", x.device().str());
    contiguous.push_back(x.contiguous());
  }
  if (xs.empty()) return {};
  std::vector<double> norms;
  run_op(
      xs.front().device(), "squared_norms", [&] { return op_shape::tensors(xs.size()); },
      [&](DeviceOps& ops) { norms = ops.squared_norms(contiguous); });
  return norms;
}

Tensor add(const Tensor& a, const Tensor& b) {
  check_activation("add", a, "a");
  check_same("add", a, b);
  Tensor out = empty_like(a);
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  run_op(out, "add", [&](DeviceOps& ops) { ops.add(ac, bc, out); });
  record(out, "add", {a, b}, [](const Tensor& g) { return std::vector<Tensor>{g, g}; });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  check_activation("mul", a, "a");
  check_same("mul", a, b);
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  Tensor out = empty_like(a);
  run_op(out, "mul", [&](DeviceOps& ops) { ops.mul(ac, bc, out); });
  const auto needs = needs_grad({a, b});
  record(out, "mul", {a, b},
         [ac = ac.detach(), bc = bc.detach(), needs](const Tensor& g) {
           const Tensor gc = g.contiguous();
           std::vector<Tensor> grads(2);
           if (needs[0]) grads[0] = mul(gc, bc);
           if (needs[1]) grads[1] = mul(gc, ac);
           return grads;
         },
         {ac, bc});
  return out;
}

Tensor scale(const Tensor& x, float factor) {
  check_activation("scale", x, "x");
  Tensor out = empty_like(x);
  const Tensor xc = x.contiguous();
  run_op(out, "scale", [&](DeviceOps& ops) { ops.scale(xc, factor, out); });
  record(out, "scale", {x},
         [factor](const Tensor& g) { return std::vector<Tensor>{scale(g, factor)}; });
  return out;
}

Tensor gelu(const Tensor& x) {
  return pointwise_activation("gelu", x, {"gelu_forward", &DeviceOps::gelu_forward},
                              {"gelu_backward", &DeviceOps::gelu_backward});
}

Tensor relu(const Tensor& x) {
  return pointwise_activation("relu", x, {"relu_forward", &DeviceOps::relu_forward},
                              {"relu_backward", &DeviceOps::relu_backward});
}

Tensor sum(const Tensor& x) {
  check_activation("sum", x, "x");
  Tensor out = Tensor::empty({}, DType::f32, x.device());
  const Tensor xc = x.contiguous();
  run_op(xc, "sum", [&](DeviceOps& ops) { ops.sum(xc, out); });
  const Shape shape = x.shape();
  const DType dtype = x.dtype();
  record(out, "sum", {x}, [shape, dtype](const Tensor& g) {
    Tensor dx = Tensor::empty(shape, dtype, g.device());
    const Tensor gc = g.contiguous();
    run_op(dx, "fill_with", [&](DeviceOps& ops) { ops.fill_with(gc, dx); });
    return std::vector<Tensor>{dx};
  });
  return out;
}

Tensor mean(const Tensor& x) {
  DL_CHECK(x.numel() > 0, "mean of an empty tensor");
  return scale(sum(x), 1.0f / static_cast<float>(x.numel()));
}

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride,
              int64_t padding, int64_t groups) {
  check_activation("conv2d", x, "input");
  DL_CHECK(weight.defined(), "conv2d: weight is undefined");
  check_param("conv2d", weight, "weight", x.device());
  check_param("conv2d", bias, "bias", x.device());
  DL_CHECK(x.dim() == 4, "conv2d: input must be NHWC [N, H, W, C], got ", shape_str(x.shape()));
  DL_CHECK(weight.dim() == 4, "conv2d: weight must be [C_out, C_in/groups, kh, kw], got ",
           shape_str(weight.shape()));
  DL_CHECK(groups >= 1 && stride >= 1 && padding >= 0, "conv2d: bad stride/padding/groups");
  Conv2dShape s;
  s.n = x.size(0), s.h = x.size(1), s.w = x.size(2), s.c_in = x.size(3);
  s.c_out = weight.size(0), s.kh = weight.size(2), s.kw = weight.size(3);
  s.stride = stride, s.pad = padding, s.groups = groups;
  DL_CHECK(s.c_in % groups == 0 && s.c_out % groups == 0 && weight.size(1) == s.c_in / groups,
           "conv2d: weight ", shape_str(weight.shape()), " does not fit input ",
           shape_str(x.shape()), " with groups=", groups,
           " (activations are NHWC: [N, H, W, C], the channels last)");
  DL_CHECK(s.h + 2 * s.pad >= s.kh && s.w + 2 * s.pad >= s.kw, "conv2d: kernel ", s.kh, "x", s.kw,
           " is larger than the input ", shape_str(x.shape()), " padded by ", s.pad);
  if (bias.defined())
    DL_CHECK(bias.dim() == 1 && bias.size(0) == s.c_out, "conv2d: bias ", shape_str(bias.shape()),
             " for ", s.c_out, " output channels");
  const Tensor xc = x.contiguous(), wc = weight.contiguous();
  Tensor out = Tensor::empty({s.n, s.h_out(), s.w_out(), s.c_out}, x.dtype(), x.device());
  const Tensor bc = contiguous_or_undefined(bias);
  run_op(
      x.device(), "conv2d_forward", [&] { return op_shape::conv(s, xc); },
      [&](DeviceOps& ops) { ops.conv2d_forward(s, xc, wc, bc, out); });
  const auto needs = needs_grad({x, weight, bias});
  record(
      out, "conv2d", {x, weight, bias},
      [s, needs, xc = xc.detach(), wc = wc.detach()](const Tensor& g) {
        const Tensor gc = g.contiguous();
        std::vector<Tensor> grads(3);
        if (needs[0]) {
          grads[0] = empty_like(xc);
          run_op(
              xc.device(), "conv2d_backward_data", [&] { return op_shape::conv(s, gc); },
              [&](DeviceOps& ops) { ops.conv2d_backward_data(s, gc, wc, grads[0]); });
        }
        if (needs[1]) grads[1] = empty_like(wc);
        if (needs[2]) grads[2] = Tensor::empty({s.c_out}, DType::f32, xc.device());
        if (needs[1] || needs[2])
          run_op(
              xc.device(), "conv2d_backward_weight", [&] { return op_shape::conv(s, gc); },
              [&](DeviceOps& ops) { ops.conv2d_backward_weight(s, gc, xc, grads[1], grads[2]); });
        return grads;
      },
      {xc, wc});
  return out;
}

namespace {

// Checks BatchNorm's arguments (x's last axis is the channel axis) and gives the affine
// parameters, ones and zeros when absent.
struct BatchNormInputs {
  int64_t c;
  Tensor gamma, beta;
};
BatchNormInputs check_batch_norm(const char* op, const Tensor& x, const Tensor& running_mean,
                                 const Tensor& running_var, const Tensor& weight,
                                 const Tensor& bias, bool training) {
  check_activation(op, x, "input");
  DL_CHECK(x.dim() >= 2, op, ": input needs a channel axis, got ", shape_str(x.shape()));
  const int64_t c = x.size(-1);
  DL_CHECK(c > 0, op, ": input has no channels, shape ", shape_str(x.shape()));
  DL_CHECK(x.numel() > 0, op, ": input is empty, shape ", shape_str(x.shape()));
  const Device dev = x.device();
  auto check_vec = [&](const Tensor& t, const char* what) {
    if (!t.defined()) return;
    check_param(op, t, what, dev);
    DL_CHECK(t.dim() == 1 && t.size(0) == c, op, ": ", what, " has shape ", shape_str(t.shape()),
             ", expected [", c, "]");
  };
  check_vec(running_mean, "running_mean");
  check_vec(running_var, "running_var");
  check_vec(weight, "weight");
  check_vec(bias, "bias");
  DL_CHECK(running_mean.defined() == running_var.defined(), op,
           ": give both running_mean and running_var, or neither");
  DL_CHECK(training || running_mean.defined(), op, ": evaluation mode needs running statistics");
  DL_CHECK(!training || x.numel() / c > 1, op,
           ": training needs more than one value per channel, got input ", shape_str(x.shape()));
  DL_CHECK(!running_mean.defined() || (running_mean.is_contiguous() && running_var.is_contiguous()),
           op, ": running statistics must be contiguous (they are updated in place)");
  return {c, weight.defined() ? weight.contiguous() : Tensor::ones({c}, DType::f32, dev),
          bias.defined() ? bias.contiguous() : Tensor::zeros({c}, DType::f32, dev)};
}

void mark_running_stats_modified(const Tensor& running_mean, const Tensor& running_var) {
  if (!running_mean.defined()) return;
  running_mean.mark_modified();
  running_var.mark_modified();
}

}  // namespace

Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                  const Tensor& weight, const Tensor& bias, bool training, float momentum,
                  float eps, const SumOverRanks& sum_over_ranks) {
  const auto [c, gamma, beta] =
      check_batch_norm("batch_norm", x, running_mean, running_var, weight, bias, training);
  const Device dev = x.device();
  const Tensor xc = x.contiguous();
  Tensor out = empty_like(x);
  Tensor mean = Tensor::empty({c}, DType::f32, dev), invstd = Tensor::empty({c}, DType::f32, dev);
  Tensor rm = running_mean, rv = running_var;
  if (training) {
    run_op(xc, "batchnorm_forward_train", [&](DeviceOps& ops) {
      ops.batchnorm_forward_train(xc, gamma, beta, eps, momentum, rm, rv, out, mean, invstd,
                                  sum_over_ranks);
    });
    mark_running_stats_modified(rm, rv);
  } else {
    run_op(xc, "batchnorm_forward_eval", [&](DeviceOps& ops) {
      ops.batchnorm_forward_eval(xc, gamma, beta, rm, rv, eps, out, mean, invstd);
    });
  }
  const auto needs = needs_grad({x, weight, bias});
  record(out, "batch_norm", {x, weight, bias},
         [=, c = c, xc = xc.detach(), gamma = gamma.detach()](const Tensor& g) {
           Tensor dx = empty_like(xc), dgamma = Tensor::empty({c}, DType::f32, xc.device()),
                  dbeta = Tensor::empty({c}, DType::f32, xc.device());
           const Tensor gc = g.contiguous();
           run_op(xc, "batchnorm_backward", [&](DeviceOps& ops) {
             ops.batchnorm_backward(gc, xc, gamma, mean, invstd, training, dx, dgamma, dbeta,
                                    sum_over_ranks);
           });
           return std::vector<Tensor>{needs[0] ? dx : Tensor(), needs[1] ? dgamma : Tensor(),
                                      needs[2] ? dbeta : Tensor()};
         },
         {xc, gamma});
  return out;
}

Tensor gelu_batch_norm(const Tensor& h, const Tensor& running_mean, const Tensor& running_var,
                       const Tensor& weight, const Tensor& bias, bool training, float momentum,
                       float eps, const Tensor& residual, const SumOverRanks& sum_over_ranks) {
  const auto [c, gamma, beta] =
      check_batch_norm("gelu_batch_norm", h, running_mean, running_var, weight, bias, training);
  if (residual.defined()) check_same("gelu_batch_norm", h, residual);
  const Device dev = h.device();
  const Tensor hc = h.contiguous();
  const Tensor rc = contiguous_or_undefined(residual);
  Tensor out = empty_like(h);
  Tensor mean = Tensor::empty({c}, DType::f32, dev), invstd = Tensor::empty({c}, DType::f32, dev);
  Tensor rm = running_mean, rv = running_var;
  // The profile's shape: h's, and "+res" with a residual.
  const auto fused_shape = [&] { return op_shape::dims(hc) + (rc.defined() ? " +res" : ""); };
  if (training) {
    run_op(dev, "gelu_batchnorm_forward_train", fused_shape, [&](DeviceOps& ops) {
      ops.gelu_batchnorm_forward_train(hc, gamma, beta, eps, momentum, rm, rv, rc, out, mean,
                                       invstd, sum_over_ranks);
    });
    mark_running_stats_modified(rm, rv);
  } else {
    run_op(dev, "gelu_batchnorm_forward_eval", fused_shape, [&](DeviceOps& ops) {
      ops.gelu_batchnorm_forward_eval(hc, gamma, beta, rm, rv, eps, rc, out, mean, invstd);
    });
  }
  const auto needs = needs_grad({h, weight, bias, residual});
  record(out, "gelu_batch_norm", {h, weight, bias, residual},
         [=, c = c, hc = hc.detach(), gamma = gamma.detach()](const Tensor& g) {
           const Tensor gc = g.contiguous();
           Tensor dh = empty_like(hc), dgamma = Tensor::empty({c}, DType::f32, hc.device()),
                  dbeta = Tensor::empty({c}, DType::f32, hc.device());
           run_op(hc, "gelu_batchnorm_backward", [&](DeviceOps& ops) {
             ops.gelu_batchnorm_backward(gc, hc, gamma, mean, invstd, training, dh, dgamma, dbeta,
                                         sum_over_ranks);
           });
           return std::vector<Tensor>{needs[0] ? dh : Tensor(), needs[1] ? dgamma : Tensor(),
                                      needs[2] ? dbeta : Tensor(), needs[3] ? g : Tensor()};
         },
         {hc, gamma});
  return out;
}

Tensor nhwc_to_nchw(const Tensor& x) {
  check_activation("nhwc_to_nchw", x, "input");
  DL_CHECK(x.dim() == 4, "nhwc_to_nchw: input must be [N, H, W, C], got ", shape_str(x.shape()));
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  Tensor out = Tensor::empty({n, c, h, w}, x.dtype(), x.device());
  const Tensor xc = x.contiguous();
  run_op(
      xc.device(), "transpose_batched",
      [&] {
        return op_shape::dims({n, h * w, c}, xc);
      },
      [&](DeviceOps& ops) { ops.transpose_batched(xc, n, h * w, c, out); });
  record(out, "nhwc_to_nchw", {x}, [=](const Tensor& g) {
    Tensor dx = Tensor::empty({n, h, w, c}, g.dtype(), g.device());
    const Tensor gc = g.contiguous();
    run_op(
        gc.device(), "transpose_batched",
        [&] {
          return op_shape::dims({n, c, h * w}, gc);
        },
        [&](DeviceOps& ops) { ops.transpose_batched(gc, n, c, h * w, dx); });
    return std::vector<Tensor>{dx};
  });
  return out;
}

Tensor global_avg_pool(const Tensor& x) {
  check_activation("global_avg_pool", x, "input");
  DL_CHECK(x.dim() == 4, "global_avg_pool: input must be NHWC, got ", shape_str(x.shape()));
  Tensor out = Tensor::empty({x.size(0), x.size(3)}, x.dtype(), x.device());
  const Tensor xc = x.contiguous();
  run_op(xc, "global_avg_pool_forward",
         [&](DeviceOps& ops) { ops.global_avg_pool_forward(xc, out); });
  const Shape in_shape = x.shape();
  record(out, "global_avg_pool", {x}, [=](const Tensor& g) {
    Tensor dx = Tensor::empty(in_shape, g.dtype(), g.device());
    const Tensor gc = g.contiguous();
    run_op(dx, "global_avg_pool_backward",
           [&](DeviceOps& ops) { ops.global_avg_pool_backward(gc, dx); });
    return std::vector<Tensor>{dx};
  });
  return out;
}

Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding) {
  check_activation("max_pool2d", x, "input");
  DL_CHECK(x.dim() == 4, "max_pool2d: input must be NHWC, got ", shape_str(x.shape()));
  DL_CHECK(kernel >= 1 && stride >= 1 && padding >= 0 && 2 * padding <= kernel,
           "max_pool2d: bad kernel/stride/padding (padding must be at most half the kernel)");
  Pool2dShape s;
  s.n = x.size(0), s.h = x.size(1), s.w = x.size(2), s.c = x.size(3);
  s.k = kernel, s.stride = stride, s.pad = padding;
  DL_CHECK(s.h + 2 * s.pad >= s.k && s.w + 2 * s.pad >= s.k, "max_pool2d: window ", s.k,
           " is larger than the input ", shape_str(x.shape()), " padded by ", s.pad);
  Tensor out = Tensor::empty({s.n, s.h_out(), s.w_out(), s.c}, x.dtype(), x.device());
  Tensor argmax = Tensor::empty(out.shape(), DType::i32, x.device());
  const Tensor xc = x.contiguous();
  run_op(
      xc.device(), "max_pool2d_forward", [&] { return op_shape::pool(s, xc); },
      [&](DeviceOps& ops) { ops.max_pool2d_forward(s, xc, out, argmax); });
  record(out, "max_pool2d", {x}, [s, argmax](const Tensor& g) {
    Tensor dx = Tensor::empty({s.n, s.h, s.w, s.c}, g.dtype(), g.device());
    const Tensor gc = g.contiguous();
    run_op(
        gc.device(), "max_pool2d_backward", [&] { return op_shape::pool(s, gc); },
        [&](DeviceOps& ops) { ops.max_pool2d_backward(s, gc, argmax, dx); });
    return std::vector<Tensor>{dx};
  });
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_activation("linear", x, "input");
  DL_CHECK(weight.defined(), "linear: weight is undefined");
  check_param("linear", weight, "weight", x.device());
  check_param("linear", bias, "bias", x.device());
  DL_CHECK(x.dim() == 2 && weight.dim() == 2 && weight.size(1) == x.size(1), "linear: input ",
           shape_str(x.shape()), " does not fit weight ", shape_str(weight.shape()));
  const int64_t n = x.size(0), out_f = weight.size(0);
  if (bias.defined())
    DL_CHECK(bias.dim() == 1 && bias.size(0) == out_f, "linear: bias ", shape_str(bias.shape()),
             " for ", out_f, " outputs");
  const Tensor xc = x.contiguous(), wc = weight.contiguous();
  Tensor out = Tensor::empty({n, out_f}, x.dtype(), x.device());
  const Tensor bc = contiguous_or_undefined(bias);
  run_op(
      xc.device(), "linear_forward", [&] { return op_shape::linear(n, xc.size(1), out_f, xc); },
      [&](DeviceOps& ops) { ops.linear_forward(xc, wc, bc, out); });
  const auto needs = needs_grad({x, weight, bias});
  record(out, "linear", {x, weight, bias},
         [=, xc = xc.detach(), wc = wc.detach()](const Tensor& g) {
           const Tensor gc = g.contiguous();
           std::vector<Tensor> grads(3);
           if (needs[0]) {
             grads[0] = empty_like(xc);
             run_op(
                 xc.device(), "linear_backward_data",
                 [&] { return op_shape::linear(n, wc.size(1), out_f, gc); },
                 [&](DeviceOps& ops) { ops.linear_backward_data(gc, wc, grads[0]); });
           }
           if (needs[1]) grads[1] = empty_like(wc);
           if (needs[2]) grads[2] = Tensor::empty({out_f}, DType::f32, xc.device());
           if (needs[1] || needs[2])
             run_op(
                 xc.device(), "linear_backward_weight",
                 [&] { return op_shape::linear(n, xc.size(1), out_f, gc); },
                 [&](DeviceOps& ops) { ops.linear_backward_weight(gc, xc, grads[1], grads[2]); });
           return grads;
         },
         {xc, wc});
  return out;
}

namespace {
void check_labels(const char* op, const Tensor& logits, const Tensor& labels) {
  DL_CHECK(labels.defined() && labels.dtype() == DType::i64 && labels.dim() == 1 &&
               labels.size(0) == logits.size(0),
           op, ": labels must be I64 [", logits.size(0), "], got ",
           labels.defined()
               ? dtype_name(labels.dtype()) + std::string(" ") + shape_str(labels.shape())
               : std::string("an undefined tensor"));
}
}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing) {
  check_activation("cross_entropy", logits, "logits");
  DL_CHECK(logits.dim() == 2, "cross_entropy: logits must be [N, classes], got ",
           shape_str(logits.shape()));
  check_labels("cross_entropy", logits, labels);
  DL_CHECK(label_smoothing >= 0.0f && label_smoothing <= 1.0f,
           "cross_entropy: label_smoothing must be in [0, 1], got ", label_smoothing);
  const int64_t n = logits.size(0), classes = logits.size(1);
  DL_CHECK(n > 0 && classes > 0, "cross_entropy: empty logits ", shape_str(logits.shape()));
  // Labels in host memory (given there, or moved there for CPU logits) are checked here, so the
  // device need not report back.
  const Tensor device_labels = labels.to(logits.device()).contiguous();
  const Tensor host_labels = labels.device().is_cpu()   ? labels.contiguous()
                             : logits.device().is_cpu() ? device_labels
                                                        : Tensor();
  if (host_labels.defined()) {
    const int64_t* y = host_labels.data<int64_t>();
    for (int64_t i = 0; i < n; ++i)
      DL_CHECK(y[i] >= 0 && y[i] < classes, "cross_entropy: label ", y[i], " at index ", i,
               " is outside [0, ", classes, ")");
  }
  Tensor loss = Tensor::empty({}, DType::f32, logits.device());
  Tensor dlogits = empty_like(logits);
  const Tensor lc = logits.contiguous();
  run_op(lc, "cross_entropy", [&](DeviceOps& ops) {
    ops.cross_entropy(lc, device_labels, label_smoothing, host_labels.defined(), loss, dlogits);
  });
  record(loss, "cross_entropy", {logits}, [dlogits](const Tensor& g) {
    Tensor scaled = empty_like(dlogits);
    const Tensor gc = g.contiguous();
    run_op(scaled, "scale_by", [&](DeviceOps& ops) { ops.scale_by(dlogits, gc, scaled); });
    return std::vector<Tensor>{scaled};
  });
  return loss;
}

Tensor count_correct(const Tensor& logits, const Tensor& labels) {
  check_activation("count_correct", logits, "logits");
  DL_CHECK(logits.dim() == 2 && logits.size(1) > 0,
           "count_correct: logits must be [N, classes], got ", shape_str(logits.shape()));
  check_labels("count_correct", logits, labels);
  Tensor count = Tensor::zeros({}, DType::i32, logits.device());
  const Tensor lc = logits.contiguous(), device_labels = labels.to(logits.device()).contiguous();
  run_op(lc, "count_correct", [&](DeviceOps& ops) { ops.count_correct(lc, device_labels, count); });
  return count;
}

}  // namespace dl
