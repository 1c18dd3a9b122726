// Differentiable operations over tensors. Activations are NHWC; conv weights keep PyTorch's
// layout [c_out, c_in / groups, kh, kw] and linear weights [out, in]. Each op checks its inputs,
// dispatches to the kernel for the tensors' device, and records one autograd node.
#pragma once
#include <cstdint>
#include <functional>

#include "engine/tensor.h"

namespace dl {

// Each op below computes through device_ops(device) (engine/device_ops.h): the CPU's always, the
// GPU's when the build has the CUDA path and a GPU is present. Activations are f32, or bf16 on a
// device that supports it; parameters are f32. Throws a dl::Error when `device` has no ops.
void require_op_support(Device device);
// "cpu", "cuda", or "auto": the GPU when the build and the machine can run the ops there, else the
// CPU. Throws a dl::Error for an unknown name or a device that cannot run them.
Device resolve_device(const std::string& name);

// --- in place, not recorded (optimizers, gradient accumulation) ---
// dst += alpha * src
void add_(Tensor& dst, const Tensor& src, float alpha = 1.0f);
// dst *= factor
void scale_(Tensor& dst, float factor);
// Sum of squares of all elements, in double.
double squared_norm(const Tensor& x);
// The same for each tensor (all f32, on one device), with one wait for a GPU.
std::vector<double> squared_norms(const std::vector<Tensor>& xs);

// --- elementwise ---
Tensor add(const Tensor& a, const Tensor& b);  // same shapes
Tensor mul(const Tensor& a, const Tensor& b);  // same shapes
Tensor scale(const Tensor& x, float factor);
Tensor gelu(const Tensor& x);  // exact erf form
Tensor relu(const Tensor& x);

// --- reductions (to a 0-d tensor) ---
Tensor sum(const Tensor& x);
Tensor mean(const Tensor& x);

// --- layers ---
// x [N, H, W, C_in], weight [C_out, C_in / groups, kh, kw], bias [C_out] or undefined.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride = 1,
              int64_t padding = 0, int64_t groups = 1);
// Over the last (channel) axis of x. Training: batch statistics, running statistics updated in
// place with `momentum` (PyTorch's convention: new = (1 - m) * old + m * batch).
// Evaluation: running statistics. weight/bias may be undefined (no affine).
// sum_over_ranks (SyncBatchNorm, see engine/dist/data_parallel.h): in training, sums the
// per-channel partial sums over the processes that share the batch, forward and backward, so
// that the statistics are the whole batch's; empty: this batch's.
using SumOverRanks = std::function<void(double* values, int64_t count)>;
Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                  const Tensor& weight, const Tensor& bias, bool training, float momentum = 0.1f,
                  float eps = 1e-5f, const SumOverRanks& sum_over_ranks = {});
// batch_norm(gelu(h)) (+ residual, if defined; the shape and dtype of h) as one op: GELU(h) is
// recomputed in the backward instead of stored, and on the GPU the three run as fused kernels in
// fewer passes over the activation. The values and gradients are the separate ops': bit for bit on
// the CPU; on the GPU up to float rounding (in bf16 the fused kernels round once where the separate
// ops round two or three times).
Tensor gelu_batch_norm(const Tensor& h, const Tensor& running_mean, const Tensor& running_var,
                       const Tensor& weight, const Tensor& bias, bool training,
                       float momentum = 0.1f, float eps = 1e-5f, const Tensor& residual = Tensor(),
                       const SumOverRanks& sum_over_ranks = {});
// [N, H, W, C] -> [N, C, H, W] (a copy), for interop with PyTorch's flatten order.
Tensor nhwc_to_nchw(const Tensor& x);
// [N, H, W, C] -> [N, C]
Tensor global_avg_pool(const Tensor& x);
// [N, H, W, C] -> [N, Ho, Wo, C], square windows.
Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding = 0);
// x [N, in], weight [out, in], bias [out] or undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);
// logits [N, classes], labels [N] (i64): mean softmax cross-entropy, optional label smoothing.
// A label outside [0, classes) throws; labels in host memory are checked on the host, labels on
// a GPU by the GPU (which then waits for the result): pass host labels in a training step.
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing = 0.0f);
// The number of rows of logits [N, classes] whose first maximum is at the label (labels [N],
// i64), as a one-element i32 tensor on the logits' device (not differentiable; read it when
// convenient: on a GPU nothing waits until then).
Tensor count_correct(const Tensor& logits, const Tensor& labels);

}  // namespace dl
