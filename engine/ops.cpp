#include "engine/ops.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/error.h"
#include "kernels/cpu/batchnorm.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/loss.h"
#include "kernels/cpu/pool.h"

namespace dl {

namespace {

// The CPU kernels take contiguous f32 arrays; this is where a CUDA dispatch joins later.
void check_float_cpu(const char* op, const Tensor& t, const char* what) {
  DL_CHECK(t.defined(), op, ": ", what, " is undefined");
  DL_CHECK(t.dtype() == DType::f32, op, ": ", what, " has dtype ", dtype_name(t.dtype()),
           ", expected F32");
  DL_CHECK(t.device().is_cpu(), op, ": ", what, " is on ", t.device().str(),
           "; this op has no kernel for that device yet");
}

void check_same_shape(const char* op, const Tensor& a, const Tensor& b) {
  DL_CHECK(a.shape() == b.shape(), op, ": shapes ", shape_str(a.shape()), " and ",
           shape_str(b.shape()), " differ");
}

const float* cptr(const Tensor& t) {
  return t.defined() ? t.data<float>() : nullptr;
}

Tensor empty_like(const Tensor& t) {
  return Tensor::empty(t.shape(), t.dtype(), t.device());
}

}  // namespace

void require_op_support(Device device) {
  DL_CHECK(device.is_cpu(), "the differentiable ops have no ", device.str(),
           " path yet (the CUDA kernels are built but not wired into engine/ops.cpp): use "
           "--device cpu");
}

void add_(Tensor& dst, const Tensor& src, float alpha) {
  check_float_cpu("add_", dst, "destination");
  check_float_cpu("add_", src, "source");
  check_same_shape("add_", dst, src);
  DL_CHECK(dst.is_contiguous(), "add_: destination must be contiguous");
  const Tensor s = src.contiguous();
  cpu::axpy(alpha, s.data<float>(), dst.data<float>(), dst.numel());
}

void scale_(Tensor& dst, float factor) {
  check_float_cpu("scale_", dst, "tensor");
  DL_CHECK(dst.is_contiguous(), "scale_: tensor must be contiguous");
  cpu::scale(dst.data<float>(), factor, dst.data<float>(), dst.numel());
}

double squared_norm(const Tensor& x) {
  check_float_cpu("squared_norm", x, "tensor");
  const Tensor c = x.contiguous();
  const float* p = c.data<float>();
  double s = 0.0;
  for (int64_t i = 0; i < c.numel(); ++i) s += static_cast<double>(p[i]) * p[i];
  return s;
}

Tensor add(const Tensor& a, const Tensor& b) {
  check_float_cpu("add", a, "a");
  check_float_cpu("add", b, "b");
  check_same_shape("add", a, b);
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  Tensor out = empty_like(a);
  cpu::add(ac.data<float>(), bc.data<float>(), out.data<float>(), out.numel());
  record(out, "add", {a, b}, [](const Tensor& g) { return std::vector<Tensor>{g, g}; });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  check_float_cpu("mul", a, "a");
  check_float_cpu("mul", b, "b");
  check_same_shape("mul", a, b);
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  Tensor out = empty_like(a);
  cpu::mul(ac.data<float>(), bc.data<float>(), out.data<float>(), out.numel());
  const auto needs = needs_grad({a, b});
  record(out, "mul", {a, b}, [ac = ac.detach(), bc = bc.detach(), needs](const Tensor& g) {
    const Tensor gc = g.contiguous();
    std::vector<Tensor> grads(2);
    if (needs[0]) grads[0] = mul(gc, bc);
    if (needs[1]) grads[1] = mul(gc, ac);
    return grads;
  });
  return out;
}

Tensor scale(const Tensor& x, float factor) {
  check_float_cpu("scale", x, "x");
  const Tensor xc = x.contiguous();
  Tensor out = empty_like(x);
  cpu::scale(xc.data<float>(), factor, out.data<float>(), out.numel());
  record(out, "scale", {x},
         [factor](const Tensor& g) { return std::vector<Tensor>{scale(g, factor)}; });
  return out;
}

Tensor gelu(const Tensor& x) {
  check_float_cpu("gelu", x, "x");
  const Tensor xc = x.contiguous();
  Tensor out = empty_like(x);
  cpu::gelu_forward(xc.data<float>(), out.data<float>(), out.numel());
  record(out, "gelu", {x}, [xc = xc.detach()](const Tensor& g) {
    const Tensor gc = g.contiguous();
    Tensor dx = empty_like(xc);
    cpu::gelu_backward(xc.data<float>(), gc.data<float>(), dx.data<float>(), dx.numel());
    return std::vector<Tensor>{dx};
  });
  return out;
}

Tensor relu(const Tensor& x) {
  check_float_cpu("relu", x, "x");
  const Tensor xc = x.contiguous();
  Tensor out = empty_like(x);
  cpu::relu_forward(xc.data<float>(), out.data<float>(), out.numel());
  record(out, "relu", {x}, [xc = xc.detach()](const Tensor& g) {
    const Tensor gc = g.contiguous();
    Tensor dx = empty_like(xc);
    cpu::relu_backward(xc.data<float>(), gc.data<float>(), dx.data<float>(), dx.numel());
    return std::vector<Tensor>{dx};
  });
  return out;
}

Tensor sum(const Tensor& x) {
  check_float_cpu("sum", x, "x");
  const Tensor xc = x.contiguous();
  Tensor out = Tensor::full({}, cpu::sum(xc.data<float>(), xc.numel()));
  const Shape shape = x.shape();
  record(out, "sum", {x},
         [shape](const Tensor& g) { return std::vector<Tensor>{Tensor::full(shape, g.item())}; });
  return out;
}

Tensor mean(const Tensor& x) {
  DL_CHECK(x.numel() > 0, "mean of an empty tensor");
  return scale(sum(x), 1.0f / static_cast<float>(x.numel()));
}

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride,
              int64_t padding, int64_t groups) {
  check_float_cpu("conv2d", x, "input");
  check_float_cpu("conv2d", weight, "weight");
  DL_CHECK(x.dim() == 4, "conv2d: input must be NHWC [N, H, W, C], got ", shape_str(x.shape()));
  DL_CHECK(weight.dim() == 4, "conv2d: weight must be [C_out, C_in/groups, kh, kw], got ",
           shape_str(weight.shape()));
  DL_CHECK(groups >= 1 && stride >= 1 && padding >= 0, "conv2d: bad stride/padding/groups");
  cpu::Conv2dShape s;
  s.n = x.size(0), s.h = x.size(1), s.w = x.size(2), s.c_in = x.size(3);
  s.c_out = weight.size(0), s.kh = weight.size(2), s.kw = weight.size(3);
  s.stride = stride, s.pad = padding, s.groups = groups;
  DL_CHECK(s.c_in % groups == 0 && s.c_out % groups == 0 && weight.size(1) == s.c_in / groups,
           "conv2d: weight ", shape_str(weight.shape()), " does not fit input ",
           shape_str(x.shape()), " with groups=", groups);
  DL_CHECK(s.h + 2 * s.pad >= s.kh && s.w + 2 * s.pad >= s.kw, "conv2d: kernel ", s.kh, "x", s.kw,
           " is larger than the input ", shape_str(x.shape()), " padded by ", s.pad);
  if (bias.defined()) {
    check_float_cpu("conv2d", bias, "bias");
    DL_CHECK(bias.dim() == 1 && bias.size(0) == s.c_out, "conv2d: bias ", shape_str(bias.shape()),
             " for ", s.c_out, " output channels");
  }
  const Tensor xc = x.contiguous(), wc = weight.contiguous();
  Tensor out = Tensor::empty({s.n, s.h_out(), s.w_out(), s.c_out});
  cpu::conv2d_forward(s, xc.data<float>(), wc.data<float>(), cptr(bias), out.data<float>());
  const auto needs = needs_grad({x, weight, bias});
  record(
      out, "conv2d", {x, weight, bias},
      [s, needs, xc = xc.detach(), wc = wc.detach()](const Tensor& g) {
        const Tensor gc = g.contiguous();
        std::vector<Tensor> grads(3);
        if (needs[0]) {
          grads[0] = empty_like(xc);
          cpu::conv2d_backward_data(s, gc.data<float>(), wc.data<float>(), grads[0].data<float>());
        }
        if (needs[1] || needs[2]) {
          grads[1] = empty_like(wc);
          if (needs[2]) grads[2] = Tensor::empty({s.c_out});
          cpu::conv2d_backward_weight(s, gc.data<float>(), xc.data<float>(), grads[1].data<float>(),
                                      needs[2] ? grads[2].data<float>() : nullptr);
          if (!needs[1]) grads[1] = Tensor();
        }
        return grads;
      });
  return out;
}

Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                  const Tensor& weight, const Tensor& bias, bool training, float momentum,
                  float eps) {
  check_float_cpu("batch_norm", x, "input");
  DL_CHECK(x.dim() >= 2, "batch_norm: input needs a channel axis, got ", shape_str(x.shape()));
  const int64_t c = x.size(-1);
  DL_CHECK(c > 0, "batch_norm: input has no channels, shape ", shape_str(x.shape()));
  const int64_t rows = x.numel() / c;
  auto check_vec = [&](const Tensor& t, const char* what) {
    if (!t.defined()) return;
    check_float_cpu("batch_norm", t, what);
    DL_CHECK(t.dim() == 1 && t.size(0) == c, "batch_norm: ", what, " has shape ",
             shape_str(t.shape()), ", expected [", c, "]");
  };
  check_vec(running_mean, "running_mean");
  check_vec(running_var, "running_var");
  check_vec(weight, "weight");
  check_vec(bias, "bias");
  DL_CHECK(running_mean.defined() == running_var.defined(),
           "batch_norm: give both running_mean and running_var, or neither");
  DL_CHECK(training || running_mean.defined(),
           "batch_norm: evaluation mode needs running statistics");
  DL_CHECK(!training || rows > 1,
           "batch_norm: training needs more than one value per channel, "
           "got input ",
           shape_str(x.shape()));
  const Tensor gamma = weight.defined() ? weight.contiguous() : Tensor::ones({c});
  const Tensor beta = bias.defined() ? bias.contiguous() : Tensor::zeros({c});
  const Tensor xc = x.contiguous();
  Tensor out = empty_like(x);
  Tensor mean = Tensor::empty({c}), invstd = Tensor::empty({c});
  if (training) {
    const bool track = running_mean.defined() && running_var.defined();
    cpu::batchnorm_forward_train(xc.data<float>(), rows, c, gamma.data<float>(), beta.data<float>(),
                                 eps, momentum, track ? running_mean.data<float>() : nullptr,
                                 track ? running_var.data<float>() : nullptr, out.data<float>(),
                                 mean.data<float>(), invstd.data<float>());
  } else {
    cpu::batchnorm_forward_eval(xc.data<float>(), rows, c, gamma.data<float>(), beta.data<float>(),
                                running_mean.data<float>(), running_var.data<float>(), eps,
                                out.data<float>());
    mean = running_mean.detach().clone();
    const float* rv = running_var.data<float>();
    float* is = invstd.data<float>();
    for (int64_t j = 0; j < c; ++j)
      is[j] = static_cast<float>(1.0 / std::sqrt(double(rv[j]) + eps));
  }
  const auto needs = needs_grad({x, weight, bias});
  record(out, "batch_norm", {x, weight, bias},
         [=, xc = xc.detach(), gamma = gamma.detach()](const Tensor& g) {
           const Tensor gc = g.contiguous();
           Tensor dx = empty_like(xc), dgamma = Tensor::empty({c}), dbeta = Tensor::empty({c});
           cpu::batchnorm_backward(gc.data<float>(), xc.data<float>(), rows, c, gamma.data<float>(),
                                   mean.data<float>(), invstd.data<float>(), training,
                                   dx.data<float>(), dgamma.data<float>(), dbeta.data<float>());
           return std::vector<Tensor>{needs[0] ? dx : Tensor(), needs[1] ? dgamma : Tensor(),
                                      needs[2] ? dbeta : Tensor()};
         });
  return out;
}

namespace {
// out[n, j, i] = in[n, i, j] for each of `n` [rows, cols] matrices (f32).
void transpose_batched(const float* in, int64_t n, int64_t rows, int64_t cols, float* out) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < n; ++b)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j)
        out[(b * cols + j) * rows + i] = in[(b * rows + i) * cols + j];
}
}  // namespace

Tensor nhwc_to_nchw(const Tensor& x) {
  check_float_cpu("nhwc_to_nchw", x, "input");
  DL_CHECK(x.dim() == 4, "nhwc_to_nchw: input must be [N, H, W, C], got ", shape_str(x.shape()));
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  const Tensor xc = x.contiguous();
  Tensor out = Tensor::empty({n, c, h, w});
  transpose_batched(xc.data<float>(), n, h * w, c, out.data<float>());
  record(out, "nhwc_to_nchw", {x}, [=](const Tensor& g) {
    const Tensor gc = g.contiguous();
    Tensor dx = Tensor::empty({n, h, w, c});
    transpose_batched(gc.data<float>(), n, c, h * w, dx.data<float>());
    return std::vector<Tensor>{dx};
  });
  return out;
}

Tensor global_avg_pool(const Tensor& x) {
  check_float_cpu("global_avg_pool", x, "input");
  DL_CHECK(x.dim() == 4, "global_avg_pool: input must be NHWC, got ", shape_str(x.shape()));
  const int64_t n = x.size(0), hw = x.size(1) * x.size(2), c = x.size(3);
  const Tensor xc = x.contiguous();
  Tensor out = Tensor::empty({n, c});
  cpu::global_avg_pool_forward(xc.data<float>(), n, hw, c, out.data<float>());
  const Shape in_shape = x.shape();
  record(out, "global_avg_pool", {x}, [=](const Tensor& g) {
    const Tensor gc = g.contiguous();
    Tensor dx = Tensor::empty(in_shape);
    cpu::global_avg_pool_backward(gc.data<float>(), n, hw, c, dx.data<float>());
    return std::vector<Tensor>{dx};
  });
  return out;
}

Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding) {
  check_float_cpu("max_pool2d", x, "input");
  DL_CHECK(x.dim() == 4, "max_pool2d: input must be NHWC, got ", shape_str(x.shape()));
  DL_CHECK(kernel >= 1 && stride >= 1 && padding >= 0 && 2 * padding <= kernel,
           "max_pool2d: bad kernel/stride/padding (padding must be at most half the kernel)");
  cpu::Pool2dShape s;
  s.n = x.size(0), s.h = x.size(1), s.w = x.size(2), s.c = x.size(3);
  s.k = kernel, s.stride = stride, s.pad = padding;
  DL_CHECK(s.h + 2 * s.pad >= s.k && s.w + 2 * s.pad >= s.k, "max_pool2d: window ", s.k,
           " is larger than the input ", shape_str(x.shape()), " padded by ", s.pad);
  const Tensor xc = x.contiguous();
  Tensor out = Tensor::empty({s.n, s.h_out(), s.w_out(), s.c});
  Tensor argmax = Tensor::empty(out.shape(), DType::i32);
  cpu::max_pool2d_forward(s, xc.data<float>(), out.data<float>(), argmax.data<int32_t>());
  record(out, "max_pool2d", {x}, [s, argmax](const Tensor& g) {
    const Tensor gc = g.contiguous();
    Tensor dx = Tensor::empty({s.n, s.h, s.w, s.c});
    cpu::max_pool2d_backward(s, gc.data<float>(), argmax.data<int32_t>(), dx.data<float>());
    return std::vector<Tensor>{dx};
  });
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_float_cpu("linear", x, "input");
  check_float_cpu("linear", weight, "weight");
  DL_CHECK(x.dim() == 2 && weight.dim() == 2 && weight.size(1) == x.size(1), "linear: input ",
           shape_str(x.shape()), " does not fit weight ", shape_str(weight.shape()));
  const int64_t n = x.size(0), in = x.size(1), out_f = weight.size(0);
  if (bias.defined()) {
    check_float_cpu("linear", bias, "bias");
    DL_CHECK(bias.dim() == 1 && bias.size(0) == out_f, "linear: bias ", shape_str(bias.shape()),
             " for ", out_f, " outputs");
  }
  const Tensor xc = x.contiguous(), wc = weight.contiguous();
  Tensor out = Tensor::empty({n, out_f});
  float* y = out.data<float>();
  if (bias.defined()) {
    const Tensor bc = bias.contiguous();
    for (int64_t i = 0; i < n; ++i)
      std::copy(bc.data<float>(), bc.data<float>() + out_f, y + i * out_f);
  }
  cpu::gemm(false, true, n, out_f, in, 1.0f, xc.data<float>(), in, wc.data<float>(), in,
            bias.defined() ? 1.0f : 0.0f, y, out_f);
  const auto needs = needs_grad({x, weight, bias});
  record(out, "linear", {x, weight, bias},
         [=, xc = xc.detach(), wc = wc.detach()](const Tensor& g) {
           const Tensor gc = g.contiguous();
           std::vector<Tensor> grads(3);
           if (needs[0]) {
             grads[0] = Tensor::empty({n, in});
             cpu::gemm(false, false, n, in, out_f, 1.0f, gc.data<float>(), out_f, wc.data<float>(),
                       in, 0.0f, grads[0].data<float>(), in);
           }
           if (needs[1]) {
             grads[1] = Tensor::empty({out_f, in});
             cpu::gemm(true, false, out_f, in, n, 1.0f, gc.data<float>(), out_f, xc.data<float>(),
                       in, 0.0f, grads[1].data<float>(), in);
           }
           if (needs[2]) {
             grads[2] = Tensor::empty({out_f});
             cpu::sum_rows(gc.data<float>(), n, out_f, grads[2].data<float>());
           }
           return grads;
         });
  return out;
}

Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing) {
  check_float_cpu("cross_entropy", logits, "logits");
  DL_CHECK(logits.dim() == 2, "cross_entropy: logits must be [N, classes], got ",
           shape_str(logits.shape()));
  DL_CHECK(labels.defined() && labels.dtype() == DType::i64 && labels.dim() == 1 &&
               labels.size(0) == logits.size(0),
           "cross_entropy: labels must be I64 [", logits.size(0), "]");
  DL_CHECK(label_smoothing >= 0.0f && label_smoothing <= 1.0f,
           "cross_entropy: label_smoothing must be in [0, 1], got ", label_smoothing);
  const int64_t n = logits.size(0), classes = logits.size(1);
  DL_CHECK(n > 0 && classes > 0, "cross_entropy: empty logits ", shape_str(logits.shape()));
  const Tensor lc = logits.contiguous(), yc = labels.to(Device::cpu()).contiguous();
  const int64_t* y = yc.data<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    DL_CHECK(y[i] >= 0 && y[i] < classes, "cross_entropy: label ", y[i], " at index ", i,
             " is outside [0, ", classes, ")");
  Tensor probs = Tensor::empty({n, classes});
  const double loss = cpu::cross_entropy_forward(lc.data<float>(), y, n, classes, label_smoothing,
                                                 probs.data<float>());
  Tensor out = Tensor::full({}, loss);
  record(out, "cross_entropy", {logits}, [=, yc = yc.detach()](const Tensor& g) {
    Tensor dlogits = Tensor::empty({n, classes});
    cpu::cross_entropy_backward(probs.data<float>(), yc.data<int64_t>(), n, classes,
                                label_smoothing, g.item(), dlogits.data<float>());
    return std::vector<Tensor>{dlogits};
  });
  return out;
}

}  // namespace dl
