// Softmax cross-entropy on the GPU with the semantics of kernels/cpu/loss.h (PyTorch's): mean over
// the batch; with label smoothing eps the target is (1 - eps) one_hot + eps / classes. Forward and
// backward are one kernel, since dlogits needs only the softmax that the loss computes. Plus the
// accuracy count of a batch. Logits are row-major [n, classes], T float or __nv_bfloat16 (storage;
// arithmetic in fp32); labels are int64 (the engine's label dtype). Deterministic: no float
// atomics. Gradient rule: dlogits is overwritten (=). All work is queued on `stream`.
//
// Bad labels: a label outside [0, classes) sets *bad_label to 1 (the kernel never clears it:
// zero it once, check it when convenient, e.g. after the step), gives its row a NaN loss (so the
// mean is NaN) and a zero gradient. No device-side assert, so a CUDA Graph replay stays valid.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace dl::cuda {

// row_loss[i] = (1 - eps) (log sum_j e^{z_ij} - z_i,label) + eps (log sum_j e^{z_ij} - mean_j z_ij)
// and, if mean_loss is non-null, mean_loss[0] = the mean of row_loss over the n rows, reduced in
// a fixed order by a second single-block kernel.
// If dlogits is non-null: dlogits[i, j] = (dloss / n) (softmax(z_i)_j - target_ij), with the
// CPU's float operations for the scale and the target (dloss is the upstream gradient of the
// mean loss, e.g. 1, or a loss-scaling factor).
template <class T>
void cross_entropy_forward_backward(const T* logits, const int64_t* labels, int64_t n,
                                    int64_t classes, float label_smoothing, float dloss,
                                    float* row_loss, float* mean_loss, T* dlogits,
                                    int32_t* bad_label, cudaStream_t stream);

// *correct += the number of rows whose argmax (first maximum; the trainer's scan
// `if (z[c] > z[best]) best = c`, so a NaN never wins past column 0) equals the label. An integer
// atomic per warp: deterministic. The caller zeroes *correct.
template <class T>
void count_correct(const T* logits, const int64_t* labels, int64_t n, int64_t classes,
                   int32_t* correct, cudaStream_t stream);

}  // namespace dl::cuda
