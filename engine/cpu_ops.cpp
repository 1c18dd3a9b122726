// The CPU DeviceOps: calls into kernels/cpu, and the per-device registry. Activations are f32, or
// bf16 on a CPU with bf16 dot products (AVX512-BF16): the convolutions, GELU, BatchNorm and the
// residual sums read and write bf16 themselves; the rest (pooling, the classifier head, the loss:
// small tensors) compute in f32 on widened copies and round their outputs once.
#include <algorithm>
#include <cmath>

#include "engine/device_ops.h"
#include "engine/device_registry.h"
#include "engine/error.h"
#ifdef DL_HAVE_CUDA
#include "engine/cuda/registry.h"
#endif
#include "kernels/cpu/batchnorm.h"
#include "kernels/cpu/bf16.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/loss.h"
#include "kernels/cpu/optimizer.h"
#include "kernels/cpu/pool.h"

namespace dl {
namespace {

float* f32(Tensor& t) {
  return t.defined() ? t.data<float>() : nullptr;
}
const float* f32(const Tensor& t) {
  return t.defined() ? t.data<float>() : nullptr;
}

bool is_bf16(const Tensor& t) {
  return t.defined() && t.dtype() == DType::bf16;
}

// Calls f with the activation's elements: as float* or as bf16*.
template <class F>
void with_data(const Tensor& t, F&& f) {
  if (is_bf16(t)) {
    f(const_cast<Tensor&>(t).data<bf16>());
  } else {
    f(const_cast<Tensor&>(t).data<float>());
  }
}

// An f32 view of an activation: the tensor itself, or a widened copy of a bf16 one.
Tensor as_f32(const Tensor& t) {
  if (!is_bf16(t)) return t;
  Tensor out = Tensor::empty(t.shape());
  cpu::convert(t.data<bf16>(), out.data<float>(), t.numel());
  return out;
}

// Where to compute an output in f32: the output itself, or scratch that store_result rounds into
// the bf16 output.
Tensor f32_result(const Tensor& out) {
  return is_bf16(out) ? Tensor::empty(out.shape()) : out;
}
void store_result(const Tensor& result, Tensor& out) {
  if (is_bf16(out)) cpu::convert(result.data<float>(), out.data<bf16>(), out.numel());
}

// Evaluation-mode BatchNorm's saved statistics: save_mean = running_mean, save_invstd =
// 1 / sqrt(running_var + eps).
void eval_statistics(const Tensor& running_mean, const Tensor& running_var, float eps,
                     Tensor& save_mean, Tensor& save_invstd) {
  const float* rm = f32(running_mean);
  const float* rv = f32(running_var);
  float* m = f32(save_mean);
  float* is = f32(save_invstd);
  for (int64_t j = 0; j < running_mean.numel(); ++j) {
    m[j] = rm[j];
    is[j] = static_cast<float>(1.0 / std::sqrt(double(rv[j]) + eps));
  }
}

class CpuOps final : public DeviceOps {
 public:
  bool supports_bf16() const override { return cpu::has_bf16_gemm(); }
  void synchronize() override {}

  void add(const Tensor& a, const Tensor& b, Tensor& out) override {
    with_data(out, [&]<class T>(T* o) { cpu::add(a.data<T>(), b.data<T>(), o, out.numel()); });
  }
  void mul(const Tensor& a, const Tensor& b, Tensor& out) override {
    Tensor result = f32_result(out);
    cpu::mul(f32(as_f32(a)), f32(as_f32(b)), f32(result), out.numel());
    store_result(result, out);
  }
  void scale(const Tensor& x, float factor, Tensor& out) override {
    with_data(out, [&]<class T>(T* o) { cpu::scale(x.data<T>(), factor, o, out.numel()); });
  }
  void axpy(float alpha, const Tensor& x, Tensor& y) override {
    with_data(y, [&]<class T>(T* o) { cpu::axpy(alpha, x.data<T>(), o, y.numel()); });
  }
  void scale_by(const Tensor& x, const Tensor& factor, Tensor& out) override {
    scale(x, f32(factor)[0], out);
  }
  void fill_with(const Tensor& value, Tensor& out) override {
    if (is_bf16(out)) {
      std::fill_n(out.data<bf16>(), out.numel(), bf16::from_float(f32(value)[0]));
    } else {
      std::fill_n(f32(out), out.numel(), f32(value)[0]);
    }
  }
  void gelu_forward(const Tensor& x, Tensor& y) override {
    with_data(y, [&]<class T>(T* o) { cpu::gelu_forward(x.data<T>(), o, y.numel()); });
  }
  void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) override {
    with_data(dx,
              [&]<class T>(T* o) { cpu::gelu_backward(x.data<T>(), dy.data<T>(), o, dx.numel()); });
  }
  void relu_forward(const Tensor& x, Tensor& y) override {
    Tensor result = f32_result(y);
    cpu::relu_forward(f32(as_f32(x)), f32(result), y.numel());
    store_result(result, y);
  }
  void relu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) override {
    Tensor result = f32_result(dx);
    cpu::relu_backward(f32(as_f32(x)), f32(as_f32(dy)), f32(result), dx.numel());
    store_result(result, dx);
  }
  void sum(const Tensor& x, Tensor& out) override {
    f32(out)[0] = static_cast<float>(cpu::sum(f32(as_f32(x)), x.numel()));
  }
  std::vector<double> squared_norms(const std::vector<Tensor>& xs) override {
    std::vector<double> out;
    for (const Tensor& x : xs) out.push_back(cpu::sum_squares(f32(x), x.numel()));
    return out;
  }
  void clip_grad_norm(const std::vector<Tensor>& grads, double max_norm,
                      Tensor& total_norm) override {
    double sum_sq = 0;
    for (const Tensor& g : grads) sum_sq += cpu::sum_squares(f32(g), g.numel());
    const double total = std::sqrt(sum_sq);
    f32(total_norm)[0] = static_cast<float>(total);
    const double coef = max_norm / (total + 1e-6);
    if (!std::isfinite(total) || coef >= 1) return;
    for (const Tensor& g : grads) {
      Tensor t = g;
      cpu::scale(f32(t), static_cast<float>(coef), f32(t), t.numel());
    }
  }
  void transpose_batched(const Tensor& in, int64_t batch, int64_t rows, int64_t cols,
                         Tensor& out) override {
    Tensor result = f32_result(out);
    cpu::transpose_batched(f32(as_f32(in)), batch, rows, cols, f32(result));
    store_result(result, out);
  }

  void conv2d_forward(const Conv2dShape& s, const Tensor& x, const Tensor& weight,
                      const Tensor& bias, Tensor& y) override {
    with_data(
        y, [&]<class T>(T* o) { cpu::conv2d_forward(s, x.data<T>(), f32(weight), f32(bias), o); });
  }
  void conv2d_backward_data(const Conv2dShape& s, const Tensor& dy, const Tensor& weight,
                            Tensor& dx) override {
    with_data(dx,
              [&]<class T>(T* o) { cpu::conv2d_backward_data(s, dy.data<T>(), f32(weight), o); });
  }
  void conv2d_backward_weight(const Conv2dShape& s, const Tensor& dy, const Tensor& x,
                              Tensor& dweight, Tensor& dbias) override {
    with_data(dy, [&]<class T>(T* g) {
      if (dweight.defined()) {
        cpu::conv2d_backward_weight(s, g, x.data<T>(), f32(dweight), f32(dbias));
      } else {
        cpu::sum_rows(g, dy.numel() / s.c_out, s.c_out, f32(dbias));
      }
    });
  }

  void batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                               float momentum, Tensor& running_mean, Tensor& running_var, Tensor& y,
                               Tensor& save_mean, Tensor& save_invstd,
                               const SumOverRanks& sum_over_ranks) override {
    const int64_t c = x.size(-1);
    with_data(y, [&]<class T>(T* o) {
      cpu::batchnorm_forward_train(x.data<T>(), x.numel() / c, c, f32(gamma), f32(beta), eps,
                                   momentum, f32(running_mean), f32(running_var), o, f32(save_mean),
                                   f32(save_invstd), sum_over_ranks);
    });
  }
  void batchnorm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                              const Tensor& running_mean, const Tensor& running_var, float eps,
                              Tensor& y, Tensor& save_mean, Tensor& save_invstd) override {
    const int64_t c = x.size(-1);
    with_data(y, [&]<class T>(T* o) {
      cpu::batchnorm_forward_eval(x.data<T>(), x.numel() / c, c, f32(gamma), f32(beta),
                                  f32(running_mean), f32(running_var), eps, o);
    });
    eval_statistics(running_mean, running_var, eps, save_mean, save_invstd);
  }
  void batchnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                          const Tensor& mean, const Tensor& invstd, bool batch_stats, Tensor& dx,
                          Tensor& dgamma, Tensor& dbeta,
                          const SumOverRanks& sum_over_ranks) override {
    const int64_t c = x.size(-1);
    with_data(dx, [&]<class T>(T* o) {
      cpu::batchnorm_backward(dy.data<T>(), x.data<T>(), x.numel() / c, c, f32(gamma), f32(mean),
                              f32(invstd), batch_stats, o, f32(dgamma), f32(dbeta), sum_over_ranks);
    });
  }

  void gelu_batchnorm_forward_train(const Tensor& h, const Tensor& gamma, const Tensor& beta,
                                    float eps, float momentum, Tensor& running_mean,
                                    Tensor& running_var, const Tensor& residual, Tensor& y,
                                    Tensor& save_mean, Tensor& save_invstd,
                                    const SumOverRanks& sum_over_ranks) override {
    const int64_t c = h.size(-1);
    with_data(y, [&]<class T>(T* o) {
      cpu::gelu_batchnorm_forward_train(h.data<T>(), h.numel() / c, c, f32(gamma), f32(beta), eps,
                                        momentum, f32(running_mean), f32(running_var),
                                        residual.defined() ? residual.data<T>() : nullptr, o,
                                        f32(save_mean), f32(save_invstd), sum_over_ranks);
    });
  }
  void gelu_batchnorm_forward_eval(const Tensor& h, const Tensor& gamma, const Tensor& beta,
                                   const Tensor& running_mean, const Tensor& running_var, float eps,
                                   const Tensor& residual, Tensor& y, Tensor& save_mean,
                                   Tensor& save_invstd) override {
    const int64_t c = h.size(-1);
    with_data(y, [&]<class T>(T* o) {
      cpu::gelu_batchnorm_forward_eval(h.data<T>(), h.numel() / c, c, f32(gamma), f32(beta),
                                       f32(running_mean), f32(running_var), eps,
                                       residual.defined() ? residual.data<T>() : nullptr, o);
    });
    eval_statistics(running_mean, running_var, eps, save_mean, save_invstd);
  }
  void gelu_batchnorm_backward(const Tensor& dy, const Tensor& h, const Tensor& gamma,
                               const Tensor& mean, const Tensor& invstd, bool batch_stats,
                               Tensor& dh, Tensor& dgamma, Tensor& dbeta,
                               const SumOverRanks& sum_over_ranks) override {
    const int64_t c = h.size(-1);
    with_data(dh, [&]<class T>(T* o) {
      cpu::gelu_batchnorm_backward(dy.data<T>(), h.data<T>(), h.numel() / c, c, f32(gamma),
                                   f32(mean), f32(invstd), batch_stats, o, f32(dgamma), f32(dbeta),
                                   sum_over_ranks);
    });
  }

  void global_avg_pool_forward(const Tensor& x, Tensor& y) override {
    Tensor result = f32_result(y);
    cpu::global_avg_pool_forward(f32(as_f32(x)), x.size(0), x.size(1) * x.size(2), x.size(3),
                                 f32(result));
    store_result(result, y);
  }
  void global_avg_pool_backward(const Tensor& dy, Tensor& dx) override {
    Tensor result = f32_result(dx);
    cpu::global_avg_pool_backward(f32(as_f32(dy)), dx.size(0), dx.size(1) * dx.size(2), dx.size(3),
                                  f32(result));
    store_result(result, dx);
  }
  void max_pool2d_forward(const Pool2dShape& s, const Tensor& x, Tensor& y,
                          Tensor& argmax) override {
    Tensor result = f32_result(y);
    cpu::max_pool2d_forward(s, f32(as_f32(x)), f32(result), argmax.data<int32_t>());
    store_result(result, y);
  }
  void max_pool2d_backward(const Pool2dShape& s, const Tensor& dy, const Tensor& argmax,
                           Tensor& dx) override {
    Tensor result = f32_result(dx);
    cpu::max_pool2d_backward(s, f32(as_f32(dy)), argmax.data<int32_t>(), f32(result));
    store_result(result, dx);
  }

  void linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                      Tensor& y) override {
    const int64_t m = x.size(0), k = x.size(1), n = weight.size(0);
    Tensor result = f32_result(y);
    cpu::gemm(false, true, m, n, k, f32(as_f32(x)), k, f32(weight), k, f32(bias), f32(result), n);
    store_result(result, y);
  }
  void linear_backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx) override {
    const int64_t m = dy.size(0), n = dy.size(1), k = weight.size(1);
    Tensor result = f32_result(dx);
    cpu::gemm(false, false, m, k, n, f32(as_f32(dy)), n, f32(weight), k, nullptr, f32(result), k);
    store_result(result, dx);
  }
  void linear_backward_weight(const Tensor& dy, const Tensor& x, Tensor& dweight,
                              Tensor& dbias) override {
    const int64_t m = dy.size(0), n = dy.size(1), k = x.size(1);
    const Tensor dyf = as_f32(dy);
    if (dweight.defined())
      cpu::gemm(true, false, n, k, m, f32(dyf), n, f32(as_f32(x)), k, nullptr, f32(dweight), k);
    if (dbias.defined()) cpu::sum_rows(f32(dyf), m, n, f32(dbias));
  }

  // Labels on the CPU are always checked by the caller (ops.cpp), so labels_checked holds.
  void cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing, bool,
                     Tensor& loss, Tensor& dlogits) override {
    const int64_t n = logits.size(0), classes = logits.size(1);
    const int64_t* y = labels.data<int64_t>();
    // The softmax goes into dlogits, which the backward then overwrites in place.
    Tensor result = f32_result(dlogits);
    f32(loss)[0] = static_cast<float>(cpu::cross_entropy_forward(f32(as_f32(logits)), y, n, classes,
                                                                 label_smoothing, f32(result)));
    cpu::cross_entropy_backward(f32(result), y, n, classes, label_smoothing, 1.0f, f32(result));
    store_result(result, dlogits);
  }

  void count_correct(const Tensor& logits, const Tensor& labels, Tensor& count) override {
    const int64_t n = logits.size(0), classes = logits.size(1);
    const Tensor logits_f32 = as_f32(logits);
    const float* z = f32(logits_f32);
    const int64_t* y = labels.data<int64_t>();
    int32_t correct = 0;
    for (int64_t i = 0; i < n; ++i) {
      int64_t best = 0;
      for (int64_t c = 1; c < classes; ++c)
        if (z[i * classes + c] > z[i * classes + best]) best = c;
      correct += best == y[i];
    }
    count.data<int32_t>()[0] += correct;
  }

  void adamw_update(const std::vector<AdamWUpdate>& updates) override {
    for (const AdamWUpdate& u : updates) {
      const double t = static_cast<double>(u.step);
      const double bias_correction1 = 1 - std::pow(u.beta1, t);
      const double bias_correction2 = 1 - std::pow(u.beta2, t);
      Tensor p = u.param, m = u.exp_avg, v = u.exp_avg_sq;
      cpu::adamw_update(f32(p), f32(u.grad), f32(m), f32(v), p.numel(),
                        static_cast<float>(1 - u.lr * u.weight_decay), static_cast<float>(u.beta1),
                        static_cast<float>(1 - u.beta1), static_cast<float>(u.beta2),
                        static_cast<float>(1 - u.beta2),
                        static_cast<float>(u.lr / bias_correction1),
                        static_cast<float>(std::sqrt(bias_correction2)), static_cast<float>(u.eps));
    }
  }
  void sgd_update(const std::vector<SGDUpdate>& updates) override {
    for (const SGDUpdate& u : updates) {
      Tensor p = u.param, buf = u.momentum_buffer;
      cpu::sgd_update(f32(p), f32(u.grad), f32(buf), p.numel(), static_cast<float>(u.lr),
                      static_cast<float>(u.weight_decay), static_cast<float>(u.momentum),
                      static_cast<float>(1 - u.dampening), u.nesterov, u.first);
    }
  }
};

DeviceRegistry<DeviceOps>& ops_registry() {
  static CpuOps cpu;
#ifdef DL_HAVE_CUDA
  static DeviceRegistry<DeviceOps> registry(&cpu, cuda::ops_if_available());
#else
  static DeviceRegistry<DeviceOps> registry(&cpu, nullptr);
#endif
  return registry;
}

}  // namespace

DeviceOps& device_ops(Device device) {
  return ops_registry().get(device);
}

}  // namespace dl
