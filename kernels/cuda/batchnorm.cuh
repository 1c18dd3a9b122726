// BatchNorm on the GPU over the channel axis of a [rows, c] matrix (rows = N*H*W of an NHWC
// activation), with the semantics of kernels/cpu/batchnorm.h (PyTorch's): training normalises with
// the biased batch variance and moves running_var toward the unbiased one; evaluation uses the
// running statistics. T (activations) is float or __nv_bfloat16; gamma, beta, the statistics and
// their gradients are fp32, and every sum is accumulated in fp32 or fp64.
// Gradient rule: outputs are overwritten (=). gamma/beta may be null (no affine: 1 and 0).
//
// Reductions are deterministic, with no atomics: per-block partials go to a caller-provided
// workspace (batchnorm_workspace_bytes), and a second kernel reduces them in a fixed order. The
// split depends only on the shape, so equal inputs give equal bits on every GPU.
//
// Fused forms for ConvMixer's  y = BatchNorm(GELU(h)) + r  (h = the depthwise conv's output,
// r = the layer input). With m = rows * c elements of s bytes, they move:
//   batchnorm_forward_train + residual        4 m s  (unfused BN then add: 6 m s)
//   gelu_batchnorm_forward_train + residual   4 m s  (GELU, BN, add: 8 m s); GELU(h) is recomputed
//                                                    in both passes and never stored
//   gelu_batchnorm_backward                   5 m s  (BN backward, GELU backward: 8 m s)
// How the engine composes them for a ConvMixer layer:
//   forward:  y = gelu_batchnorm_forward_train(h, residual r); keep h, save_mean, save_invstd.
//   backward: given dy, the residual branch's gradient is dy itself (autograd accumulates dy into
//             dr, no kernel); dh = gelu_batchnorm_backward(dy, h) with dgamma, dbeta. The BN
//             backward never sees the residual: its dy is the layer's output gradient unchanged.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace dl::cuda {

// Bytes of workspace that the training forward and the backward need (fp32 partials per channel
// per row block; at most 4 KiB per channel). Any contents; 16-byte aligned.
size_t batchnorm_workspace_bytes(int64_t rows, int64_t c);

// y = (x - mean) * invstd * gamma + beta (+ residual, if non-null) with batch statistics. Writes
// save_mean and save_invstd [c] for the backward and, if running_mean is non-null, updates
// running_mean and running_var with `momentum`. y may alias x or residual.
template <class T>
void batchnorm_forward_train(const T* x, int64_t rows, int64_t c, const float* gamma,
                             const float* beta, float eps, float momentum, float* running_mean,
                             float* running_var, const T* residual, T* y, float* save_mean,
                             float* save_invstd, void* workspace, cudaStream_t stream);
// y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta (+ residual, if non-null).
template <class T>
void batchnorm_forward_eval(const T* x, int64_t rows, int64_t c, const float* gamma,
                            const float* beta, const float* running_mean, const float* running_var,
                            float eps, const T* residual, T* y, cudaStream_t stream);
// dbeta = sum dy, dgamma = sum dy * xhat, dx = gamma * invstd * (dy - mean(dy) - xhat *
// mean(dy * xhat)); with batch_stats false (evaluation), dx = gamma * invstd * dy. dgamma and dbeta
// are required. dx may alias dy.
template <class T>
void batchnorm_backward(const T* dy, const T* x, int64_t rows, int64_t c, const float* gamma,
                        const float* mean, const float* invstd, bool batch_stats, T* dx,
                        float* dgamma, float* dbeta, void* workspace, cudaStream_t stream);
// The invstd that batchnorm_backward takes (with running_mean as its mean) after an evaluation
// forward: invstd[j] = 1 / sqrt(running_var[j] + eps), computed in fp64 and rounded once, as the
// CPU path computes it (bit-identical).
void batchnorm_eval_invstd(const float* running_var, int64_t c, float eps, float* invstd,
                           cudaStream_t stream);

// The same three with BatchNorm's input GELU(h), computed from the pre-activation h on the fly
// (rounded to T, as a stored GELU output would be); gelu_batchnorm_backward returns dh, the
// gradient with respect to h.
template <class T>
void gelu_batchnorm_forward_train(const T* h, int64_t rows, int64_t c, const float* gamma,
                                  const float* beta, float eps, float momentum, float* running_mean,
                                  float* running_var, const T* residual, T* y, float* save_mean,
                                  float* save_invstd, void* workspace, cudaStream_t stream);
template <class T>
void gelu_batchnorm_forward_eval(const T* h, int64_t rows, int64_t c, const float* gamma,
                                 const float* beta, const float* running_mean,
                                 const float* running_var, float eps, const T* residual, T* y,
                                 cudaStream_t stream);
template <class T>
void gelu_batchnorm_backward(const T* dy, const T* h, int64_t rows, int64_t c, const float* gamma,
                             const float* mean, const float* invstd, bool batch_stats, T* dh,
                             float* dgamma, float* dbeta, void* workspace, cudaStream_t stream);

}  // namespace dl::cuda
