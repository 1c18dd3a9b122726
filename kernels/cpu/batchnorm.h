// BatchNorm over the channel axis of a [rows, c] matrix (rows = N*H*W of an NHWC activation),
// with PyTorch's semantics: training normalises with the biased batch variance and moves the
// running variance toward the unbiased one; evaluation uses the running statistics.
// Activations (x, y, dy, dx) are T: float or bf16 (computed in float, rounded once when stored);
// parameters and statistics are float. Gradient rule: outputs are overwritten (=).
#pragma once
#include <cstdint>
#include <functional>

#include "kernels/cpu/bf16.h"

namespace dl::cpu {

// Sums `count` doubles in place over the processes that share a batch (SyncBatchNorm). When one
// is given, the training forward and backward call it on their per-channel partial sums (and the
// row count) before using them, so that the statistics are the whole batch's; empty: this batch.
using SumOverRanks = std::function<void(double* values, int64_t count)>;

// y = (x - mean) * invstd * gamma + beta with batch statistics. Writes save_mean/save_invstd [c]
// for the backward and updates running_mean/running_var (if non-null) with `momentum`.
template <class T>
void batchnorm_forward_train(const T* x, int64_t rows, int64_t c, const float* gamma,
                             const float* beta, float eps, float momentum, float* running_mean,
                             float* running_var, T* y, float* save_mean, float* save_invstd,
                             const SumOverRanks& sum_over_ranks = {});
// y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta.
template <class T>
void batchnorm_forward_eval(const T* x, int64_t rows, int64_t c, const float* gamma,
                            const float* beta, const float* running_mean, const float* running_var,
                            float eps, T* y);
// Backward of the training forward: dbeta = sum dy, dgamma = sum dy * xhat,
// dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)).
// With batch_stats false (evaluation mode), mean/invstd are constants: dx = gamma * invstd * dy.
// With sum_over_ranks, dx uses the whole batch's sums; dgamma and dbeta stay this rank's part
// (the gradient all-reduce sums them, as for every other parameter).
template <class T>
void batchnorm_backward(const T* dy, const T* x, int64_t rows, int64_t c, const float* gamma,
                        const float* mean, const float* invstd, bool batch_stats, T* dx,
                        float* dgamma, float* dbeta, const SumOverRanks& sum_over_ranks = {});

// BatchNorm of GELU(h), plus a residual when it is not null: y = BN(GELU(h)) (+ residual), and
// its backward to dh (the residual's gradient is dy itself). GELU(h) is computed in BatchNorm's
// first pass and kept in the output tensor until its last pass overwrites it: the training forward
// moves 5 tensors' bytes (6 with the residual) and the backward 7, against the separate ops' 7 (10)
// and 10. Every value is the separate ops' bit for bit: GELU(h) and BatchNorm's result are rounded
// to T as the separate ops' stored tensors would be.
template <class T>
void gelu_batchnorm_forward_train(const T* h, int64_t rows, int64_t c, const float* gamma,
                                  const float* beta, float eps, float momentum, float* running_mean,
                                  float* running_var, const T* residual, T* y, float* save_mean,
                                  float* save_invstd, const SumOverRanks& sum_over_ranks = {});
template <class T>
void gelu_batchnorm_forward_eval(const T* h, int64_t rows, int64_t c, const float* gamma,
                                 const float* beta, const float* running_mean,
                                 const float* running_var, float eps, const T* residual, T* y);
template <class T>
void gelu_batchnorm_backward(const T* dy, const T* h, int64_t rows, int64_t c, const float* gamma,
                             const float* mean, const float* invstd, bool batch_stats, T* dh,
                             float* dgamma, float* dbeta, const SumOverRanks& sum_over_ranks = {});

}  // namespace dl::cpu
