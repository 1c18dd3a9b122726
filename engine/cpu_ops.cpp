// The CPU DeviceOps (f32 only): calls into kernels/cpu, and the per-device registry.
#include <cmath>

#include "engine/device_ops.h"
#include "engine/device_registry.h"
#include "engine/error.h"
#ifdef DL_HAVE_CUDA
#include "engine/cuda/registry.h"
#endif
#include "kernels/cpu/batchnorm.h"
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

class CpuOps final : public DeviceOps {
 public:
  bool supports_bf16() const override { return false; }
  void synchronize() override {}

  void add(const Tensor& a, const Tensor& b, Tensor& out) override {
    cpu::add(f32(a), f32(b), f32(out), out.numel());
  }
  void mul(const Tensor& a, const Tensor& b, Tensor& out) override {
    cpu::mul(f32(a), f32(b), f32(out), out.numel());
  }
  void scale(const Tensor& x, float factor, Tensor& out) override {
    cpu::scale(f32(x), factor, f32(out), out.numel());
  }
  void axpy(float alpha, const Tensor& x, Tensor& y) override {
    cpu::axpy(alpha, f32(x), f32(y), y.numel());
  }
  void scale_by(const Tensor& x, const Tensor& factor, Tensor& out) override {
    cpu::scale(f32(x), f32(factor)[0], f32(out), out.numel());
  }
  void fill_with(const Tensor& value, Tensor& out) override {
    std::fill_n(f32(out), out.numel(), f32(value)[0]);
  }
  void gelu_forward(const Tensor& x, Tensor& y) override {
    cpu::gelu_forward(f32(x), f32(y), y.numel());
  }
  void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) override {
    cpu::gelu_backward(f32(x), f32(dy), f32(dx), dx.numel());
  }
  void relu_forward(const Tensor& x, Tensor& y) override {
    cpu::relu_forward(f32(x), f32(y), y.numel());
  }
  void relu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) override {
    cpu::relu_backward(f32(x), f32(dy), f32(dx), dx.numel());
  }
  void sum(const Tensor& x, Tensor& out) override {
    f32(out)[0] = static_cast<float>(cpu::sum(f32(x), x.numel()));
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
    cpu::transpose_batched(f32(in), batch, rows, cols, f32(out));
  }

  void conv2d_forward(const ConvArgs& s, const Tensor& x, const Tensor& weight, const Tensor& bias,
                      Tensor& y) override {
    cpu::conv2d_forward(s, f32(x), f32(weight), f32(bias), f32(y));
  }
  void conv2d_backward_data(const ConvArgs& s, const Tensor& dy, const Tensor& weight,
                            Tensor& dx) override {
    cpu::conv2d_backward_data(s, f32(dy), f32(weight), f32(dx));
  }
  void conv2d_backward_weight(const ConvArgs& s, const Tensor& dy, const Tensor& x, Tensor& dweight,
                              Tensor& dbias) override {
    if (dweight.defined()) {
      cpu::conv2d_backward_weight(s, f32(dy), f32(x), f32(dweight), f32(dbias));
    } else {
      cpu::sum_rows(f32(dy), dy.numel() / s.c_out, s.c_out, f32(dbias));
    }
  }

  void batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                               float momentum, Tensor& running_mean, Tensor& running_var, Tensor& y,
                               Tensor& save_mean, Tensor& save_invstd,
                               const SumOverRanks& sum_over_ranks) override {
    const int64_t c = x.size(-1);
    cpu::batchnorm_forward_train(f32(x), x.numel() / c, c, f32(gamma), f32(beta), eps, momentum,
                                 f32(running_mean), f32(running_var), f32(y), f32(save_mean),
                                 f32(save_invstd), sum_over_ranks);
  }
  void batchnorm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                              const Tensor& running_mean, const Tensor& running_var, float eps,
                              Tensor& y, Tensor& save_mean, Tensor& save_invstd) override {
    const int64_t c = x.size(-1);
    cpu::batchnorm_forward_eval(f32(x), x.numel() / c, c, f32(gamma), f32(beta), f32(running_mean),
                                f32(running_var), eps, f32(y));
    const float* rm = f32(running_mean);
    const float* rv = f32(running_var);
    float* m = f32(save_mean);
    float* is = f32(save_invstd);
    for (int64_t j = 0; j < c; ++j) {
      m[j] = rm[j];
      is[j] = static_cast<float>(1.0 / std::sqrt(double(rv[j]) + eps));
    }
  }
  void batchnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                          const Tensor& mean, const Tensor& invstd, bool batch_stats, Tensor& dx,
                          Tensor& dgamma, Tensor& dbeta,
                          const SumOverRanks& sum_over_ranks) override {
    const int64_t c = x.size(-1);
    cpu::batchnorm_backward(f32(dy), f32(x), x.numel() / c, c, f32(gamma), f32(mean), f32(invstd),
                            batch_stats, f32(dx), f32(dgamma), f32(dbeta), sum_over_ranks);
  }

  // The unfused sequence (GELU, BatchNorm, add), so the result is bit-identical to the three
  // separate ops; GELU(h) is recomputed in the backward.
  void gelu_batchnorm_forward_train(const Tensor& h, const Tensor& gamma, const Tensor& beta,
                                    float eps, float momentum, Tensor& running_mean,
                                    Tensor& running_var, const Tensor& residual, Tensor& y,
                                    Tensor& save_mean, Tensor& save_invstd,
                                    const SumOverRanks& sum_over_ranks) override {
    Tensor g = Tensor::empty(h.shape());
    gelu_forward(h, g);
    batchnorm_forward_train(g, gamma, beta, eps, momentum, running_mean, running_var, y, save_mean,
                            save_invstd, sum_over_ranks);
    if (residual.defined()) add(y, residual, y);
  }
  void gelu_batchnorm_forward_eval(const Tensor& h, const Tensor& gamma, const Tensor& beta,
                                   const Tensor& running_mean, const Tensor& running_var, float eps,
                                   const Tensor& residual, Tensor& y, Tensor& save_mean,
                                   Tensor& save_invstd) override {
    Tensor g = Tensor::empty(h.shape());
    gelu_forward(h, g);
    batchnorm_forward_eval(g, gamma, beta, running_mean, running_var, eps, y, save_mean,
                           save_invstd);
    if (residual.defined()) add(y, residual, y);
  }
  void gelu_batchnorm_backward(const Tensor& dy, const Tensor& h, const Tensor& gamma,
                               const Tensor& mean, const Tensor& invstd, bool batch_stats,
                               Tensor& dh, Tensor& dgamma, Tensor& dbeta,
                               const SumOverRanks& sum_over_ranks) override {
    Tensor g = Tensor::empty(h.shape()), dg = Tensor::empty(h.shape());
    gelu_forward(h, g);
    batchnorm_backward(dy, g, gamma, mean, invstd, batch_stats, dg, dgamma, dbeta, sum_over_ranks);
    gelu_backward(h, dg, dh);
  }

  void global_avg_pool_forward(const Tensor& x, Tensor& y) override {
    cpu::global_avg_pool_forward(f32(x), x.size(0), x.size(1) * x.size(2), x.size(3), f32(y));
  }
  void global_avg_pool_backward(const Tensor& dy, Tensor& dx) override {
    cpu::global_avg_pool_backward(f32(dy), dx.size(0), dx.size(1) * dx.size(2), dx.size(3),
                                  f32(dx));
  }
  void max_pool2d_forward(const PoolArgs& s, const Tensor& x, Tensor& y, Tensor& argmax) override {
    cpu::max_pool2d_forward(s, f32(x), f32(y), argmax.data<int32_t>());
  }
  void max_pool2d_backward(const PoolArgs& s, const Tensor& dy, const Tensor& argmax,
                           Tensor& dx) override {
    cpu::max_pool2d_backward(s, f32(dy), argmax.data<int32_t>(), f32(dx));
  }

  void linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                      Tensor& y) override {
    const int64_t m = x.size(0), k = x.size(1), n = weight.size(0);
    float* out = f32(y);
    if (bias.defined()) {
      for (int64_t i = 0; i < m; ++i) std::copy(f32(bias), f32(bias) + n, out + i * n);
    }
    cpu::gemm(false, true, m, n, k, 1.0f, f32(x), k, f32(weight), k, bias.defined() ? 1.0f : 0.0f,
              out, n);
  }
  void linear_backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx) override {
    const int64_t m = dy.size(0), n = dy.size(1), k = weight.size(1);
    cpu::gemm(false, false, m, k, n, 1.0f, f32(dy), n, f32(weight), k, 0.0f, f32(dx), k);
  }
  void linear_backward_weight(const Tensor& dy, const Tensor& x, Tensor& dweight,
                              Tensor& dbias) override {
    const int64_t m = dy.size(0), n = dy.size(1), k = x.size(1);
    if (dweight.defined())
      cpu::gemm(true, false, n, k, m, 1.0f, f32(dy), n, f32(x), k, 0.0f, f32(dweight), k);
    if (dbias.defined()) cpu::sum_rows(f32(dy), m, n, f32(dbias));
  }

  // Labels on the CPU are always checked by the caller (ops.cpp), so labels_checked holds.
  void cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing, bool,
                     Tensor& loss, Tensor& dlogits) override {
    const int64_t n = logits.size(0), classes = logits.size(1);
    const int64_t* y = labels.data<int64_t>();
    // The softmax goes into dlogits, which the backward then overwrites in place.
    f32(loss)[0] = static_cast<float>(
        cpu::cross_entropy_forward(f32(logits), y, n, classes, label_smoothing, f32(dlogits)));
    cpu::cross_entropy_backward(f32(dlogits), y, n, classes, label_smoothing, 1.0f, f32(dlogits));
  }

  void count_correct(const Tensor& logits, const Tensor& labels, Tensor& count) override {
    const int64_t n = logits.size(0), classes = logits.size(1);
    const float* z = f32(logits);
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

void set_device_ops(DeviceKind kind, DeviceOps* ops) {
  ops_registry().set(kind, ops);
}

DeviceOps& device_ops(Device device) {
  return ops_registry().get(device);
}

}  // namespace dl
