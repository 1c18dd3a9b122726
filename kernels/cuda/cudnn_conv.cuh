// Dense 2-D convolution on the GPU through cuDNN's legacy convolution API (cudnnConvolutionForward
// and the two backward calls, still shipped by cuDNN 9 in libcudnn_cnn), for the patch embedding
// (k = stride = patch) and any other groups = 1 convolution. Activations are NHWC; T is float or
// __nv_bfloat16 (cuDNN computes in fp32 either way). The semantics of kernels/cpu/conv2d.h:
// weights stay in PyTorch's layout [c_out, c_in, kh, kw] (KCRS) and fp32 (the master weights),
// with the bias and both weight gradients. Gradient rule: outputs are overwritten (=).
//
// Filter layout: cuDNN's NHWC convolutions take the filter as KRSC ([c_out, kh, kw, c_in], its
// CUDNN_TENSOR_NHWC filter format). The wrapper converts: forward and backward_data first write
// the weight as KRSC in T into the workspace (a tiny kernel: c_out c_in kh kw elements, 3 KiB for
// ConvMixer's patch embedding), backward_filter lets cuDNN write dW as KRSC in T into the workspace
// and converts it back to KCRS fp32. The caller keeps one weight tensor in one layout.
// The bias is added by add_bias and its gradient reduced by sum_rows
// (kernels/cuda/elementwise.cuh) rather than cudnnAddTensor / cudnnConvolutionBackwardBias, so
// that it stays fp32 with bf16 activations and its reduction is deterministic.
//
// Algorithms: chosen once per (shape, T, TF32) with the cudnnGet*Algorithm_v7 heuristics (host
// work only: no allocation, nothing run), taking the first one that cuDNN reports as supported,
// deterministic, with the requested math (exact fp32 uses CUDNN_FMA_MATH, so no TF32) and a
// workspace of at most kMaxAlgoWorkspace; cached with their descriptors. A CudnnConv2d is not
// thread-safe: one per thread (or guard it).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "kernels/shapes.h"

namespace dl::cuda {

class CudnnConv2d {
 public:
  // Largest cuDNN workspace an algorithm may ask for.
  static constexpr size_t kMaxAlgoWorkspace = size_t{256} << 20;

  // handle: the caller's cuDNN handle (it outlives this object; its stream is set on every call).
  // allow_tf32: fp32 convolutions may use TF32 tensor cores.
  CudnnConv2d(cudnnHandle_t handle, bool allow_tf32);
  ~CudnnConv2d();
  CudnnConv2d(const CudnnConv2d&) = delete;
  CudnnConv2d& operator=(const CudnnConv2d&) = delete;

  // Bytes of workspace that each of forward, backward_data and backward_filter needs for shape s
  // (the largest of the three; 256-byte aligned regions inside). Builds and caches the plan.
  template <class T>
  size_t workspace_bytes(const Conv2dShape& s);

  // y[n, ho, wo, c_out] = bias + sum x * weight. bias may be null (e.g. fused into a later
  // kernel).
  template <class T>
  void forward(const Conv2dShape& s, const T* x, const float* weight, const float* bias, T* y,
               void* workspace, size_t workspace_bytes, cudaStream_t stream);
  // dx[n, h, w, c_in] from dy[n, ho, wo, c_out].
  template <class T>
  void backward_data(const Conv2dShape& s, const T* dy, const float* weight, T* dx, void* workspace,
                     size_t workspace_bytes, cudaStream_t stream);
  // dweight[c_out, c_in, kh, kw] (fp32, KCRS) and, if non-null, dbias[c_out] = sum of dy over
  // n, ho, wo. With bf16 activations cuDNN's dW is bf16 before the conversion to fp32.
  template <class T>
  void backward_filter(const Conv2dShape& s, const T* x, const T* dy, float* dweight, float* dbias,
                       void* workspace, size_t workspace_bytes, cudaStream_t stream);

 private:
  struct Cache;

  cudnnHandle_t handle_;
  bool allow_tf32_;
  std::unique_ptr<Cache> cache_;
};

}  // namespace dl::cuda
