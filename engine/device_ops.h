// The compute behind the differentiable ops (engine/ops.cpp) and the optimizers (engine/optim.cpp)
// for one kind of device. ops.cpp validates arguments, makes inputs contiguous, allocates outputs
// on the inputs' device and records autograd; a DeviceOps only computes, queued on the device's
// stream. The CPU implementation (engine/cpu_ops.cpp) wraps kernels/cpu; the CUDA one
// (engine/cuda/cuda_ops.cpp) wraps kernels/cuda and is present with the CUDA DeviceBackend.
// The engine makes every call through run_op (engine/profile.h), where OpProfiler times them.
//
// Contract for every method: tensors are contiguous and on this device; outputs are allocated by
// the caller with the right shape and are overwritten (=), except axpy and BatchNorm's running
// statistics, which are updated in place. Activations (x, y, dy, dx, logits) share one dtype:
// f32, or bf16 where supports_bf16(); parameters, their gradients, BatchNorm statistics and
// optimizer state are f32. An undefined Tensor means "absent" where the comment says "may be
// undefined".
#pragma once
#include <cstdint>
#include <vector>

#include "engine/ops.h"
#include "engine/tensor.h"
#include "kernels/shapes.h"

namespace dl {

// One parameter's AdamW update (PyTorch's formulas; see engine/optim.h). `step` counts this update.
struct AdamWUpdate {
  Tensor param, grad, exp_avg, exp_avg_sq;
  double lr, weight_decay, beta1, beta2, eps;
  int64_t step;
};

// One parameter's SGD update. momentum_buffer is undefined without momentum; `first` is true on
// the parameter's first update (the buffer starts as the gradient).
struct SGDUpdate {
  Tensor param, grad, momentum_buffer;
  double lr, weight_decay, momentum, dampening;
  bool nesterov, first;
};

class DeviceOps {
 public:
  virtual ~DeviceOps() = default;
  virtual bool supports_bf16() const = 0;
  // Waits until all work queued on the device has finished (a no-op on the CPU, whose ops
  // finish before they return).
  virtual void synchronize() = 0;

  // --- elementwise ---
  virtual void add(const Tensor& a, const Tensor& b, Tensor& out) = 0;
  virtual void mul(const Tensor& a, const Tensor& b, Tensor& out) = 0;
  virtual void scale(const Tensor& x, float factor, Tensor& out) = 0;
  // y += alpha x (y f32 or the activation dtype, like x).
  virtual void axpy(float alpha, const Tensor& x, Tensor& y) = 0;
  // out = x * factor[0]; factor is a one-element f32 tensor on this device (read on the device,
  // so a GPU step need not wait for it).
  virtual void scale_by(const Tensor& x, const Tensor& factor, Tensor& out) = 0;
  // Every element of out = value[0] (value: one-element f32 tensor on this device).
  virtual void fill_with(const Tensor& value, Tensor& out) = 0;
  virtual void gelu_forward(const Tensor& x, Tensor& y) = 0;
  virtual void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) = 0;
  virtual void relu_forward(const Tensor& x, Tensor& y) = 0;
  virtual void relu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) = 0;
  // out (a one-element f32 tensor) = the sum of x's elements.
  virtual void sum(const Tensor& x, Tensor& out) = 0;
  // For each f32 tensor, the sum of the squares of its elements, accumulated in double, returned
  // to the host (a GPU waits once for all of them).
  virtual std::vector<double> squared_norms(const std::vector<Tensor>& xs) = 0;
  // torch.nn.utils.clip_grad_norm_ over f32 gradients: total = sqrt of the sum of their squared
  // norms (fp64); when max_norm / (total + 1e-6) < 1 and total is finite, every gradient is
  // scaled by that coefficient (rounded to f32) in place. total_norm (one-element f32) receives
  // the total. Nothing is read back to the host.
  virtual void clip_grad_norm(const std::vector<Tensor>& grads, double max_norm,
                              Tensor& total_norm) = 0;
  // out[b, j, i] = in[b, i, j] for `batch` row-major [rows, cols] matrices.
  virtual void transpose_batched(const Tensor& in, int64_t batch, int64_t rows, int64_t cols,
                                 Tensor& out) = 0;

  // --- convolution (x NHWC, weight [c_out, c_in / groups, kh, kw], bias [c_out]) ---
  // bias may be undefined.
  virtual void conv2d_forward(const Conv2dShape& s, const Tensor& x, const Tensor& weight,
                              const Tensor& bias, Tensor& y) = 0;
  virtual void conv2d_backward_data(const Conv2dShape& s, const Tensor& dy, const Tensor& weight,
                                    Tensor& dx) = 0;
  // dweight and dbias may be undefined (not needed), not both.
  virtual void conv2d_backward_weight(const Conv2dShape& s, const Tensor& dy, const Tensor& x,
                                      Tensor& dweight, Tensor& dbias) = 0;

  // --- BatchNorm over the last axis of x, viewed as [rows, c] ---
  // running_mean / running_var may be undefined (not tracked). Writes save_mean and save_invstd.
  // sum_over_ranks (the training forward and backward): statistics of a batch shared by several
  // processes; a device without it throws dl::Error when given one.
  virtual void batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                       float eps, float momentum, Tensor& running_mean,
                                       Tensor& running_var, Tensor& y, Tensor& save_mean,
                                       Tensor& save_invstd, const SumOverRanks& sum_over_ranks) = 0;
  // Also writes save_mean (= running_mean) and save_invstd (= 1 / sqrt(running_var + eps)) for
  // the backward.
  virtual void batchnorm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                      const Tensor& running_mean, const Tensor& running_var,
                                      float eps, Tensor& y, Tensor& save_mean,
                                      Tensor& save_invstd) = 0;
  virtual void batchnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                  const Tensor& mean, const Tensor& invstd, bool batch_stats,
                                  Tensor& dx, Tensor& dgamma, Tensor& dbeta,
                                  const SumOverRanks& sum_over_ranks) = 0;

  // --- BatchNorm of GELU(h), plus a residual: y = BN(GELU(h)) (+ residual) ---
  // The same contracts as the three above, with BatchNorm's input GELU(h) recomputed from the
  // pre-activation h instead of stored (the GPU fuses the three ops into fewer passes over the
  // activation). residual may be undefined; the backward returns dh (the residual's gradient is
  // dy itself).
  virtual void gelu_batchnorm_forward_train(const Tensor& h, const Tensor& gamma,
                                            const Tensor& beta, float eps, float momentum,
                                            Tensor& running_mean, Tensor& running_var,
                                            const Tensor& residual, Tensor& y, Tensor& save_mean,
                                            Tensor& save_invstd,
                                            const SumOverRanks& sum_over_ranks) = 0;
  virtual void gelu_batchnorm_forward_eval(const Tensor& h, const Tensor& gamma, const Tensor& beta,
                                           const Tensor& running_mean, const Tensor& running_var,
                                           float eps, const Tensor& residual, Tensor& y,
                                           Tensor& save_mean, Tensor& save_invstd) = 0;
  virtual void gelu_batchnorm_backward(const Tensor& dy, const Tensor& h, const Tensor& gamma,
                                       const Tensor& mean, const Tensor& invstd, bool batch_stats,
                                       Tensor& dh, Tensor& dgamma, Tensor& dbeta,
                                       const SumOverRanks& sum_over_ranks) = 0;

  // --- pooling (NHWC) ---
  virtual void global_avg_pool_forward(const Tensor& x, Tensor& y) = 0;     // [n,h,w,c] -> [n,c]
  virtual void global_avg_pool_backward(const Tensor& dy, Tensor& dx) = 0;  // dx [n,h,w,c]
  // argmax: i32, the input pixel (ih * w + iw) within its image, -1 for an all-padding window.
  virtual void max_pool2d_forward(const Pool2dShape& s, const Tensor& x, Tensor& y,
                                  Tensor& argmax) = 0;
  virtual void max_pool2d_backward(const Pool2dShape& s, const Tensor& dy, const Tensor& argmax,
                                   Tensor& dx) = 0;

  // --- linear: x [m, k], weight [n, k], y [m, n] ---
  // bias may be undefined.
  virtual void linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              Tensor& y) = 0;
  virtual void linear_backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx) = 0;
  // dweight and dbias may be undefined (not needed), not both.
  virtual void linear_backward_weight(const Tensor& dy, const Tensor& x, Tensor& dweight,
                                      Tensor& dbias) = 0;

  // --- loss: logits [n, classes], labels i64 [n] with values in [0, classes) ---
  // loss (one-element f32) = mean softmax cross-entropy with label smoothing; dlogits = its
  // gradient for an upstream gradient of 1. labels_checked: the caller has checked the labels'
  // range (on the host); otherwise the device checks them and throws dl::Error for a bad one
  // (on a GPU that check waits for the result).
  virtual void cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing,
                             bool labels_checked, Tensor& loss, Tensor& dlogits) = 0;
  // count (one-element i32) += the number of rows whose first maximum is at the label.
  virtual void count_correct(const Tensor& logits, const Tensor& labels, Tensor& count) = 0;

  // --- optimizers: one call updates every listed parameter in place ---
  virtual void adamw_update(const std::vector<AdamWUpdate>& updates) = 0;
  virtual void sgd_update(const std::vector<SGDUpdate>& updates) = 0;
};

// Throws dl::Error when the device has no ops (e.g. CUDA in a CPU-only build, or no GPU).
DeviceOps& device_ops(Device device);

}  // namespace dl
