// The CUDA DeviceOps: each op of engine/device_ops.h as kernels/cuda launches (hand-written
// kernels, cuBLASLt GEMMs, cuDNN convolutions) queued on dl::cuda::stream(). Activations are fp32
// or bf16 (one template instance per type); parameters, their gradients, BatchNorm statistics and
// optimizer state are fp32.
//
// The ops registry (engine/cpu_ops.cpp) gets them through ops_if_available() on its first use,
// when the machine has a CUDA device, as the storage registry gets the DeviceBackend. Nothing
// touches the GPU until the first op: the cuBLASLt handle, its 32 MiB workspace and the GEMM and
// convolution plans are created on first use. Other workspaces come from the caching
// allocator per call and go back as soon as their kernels are queued (its reuse is stream-ordered,
// see cuda_backend.h), so a steady-state training step makes no cudaMalloc. Not thread-safe, like
// LtGemm and CudnnConv2d: the engine's ops run on one thread.
//
// Ops that wait for the GPU: squared_norms (returns host values), cross_entropy on labels that
// only the GPU holds (reads back the bad-label flag) and synchronize(). The rest only queue work.
#include "engine/cuda/cuda_ops.h"

#include <cublasLt.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/registry.h"
#include "engine/device_ops.h"
#include "engine/error.h"
#include "engine/storage.h"
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/cudnn_conv.cuh"
#include "kernels/cuda/depthwise_conv.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/gelu.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/loss.cuh"
#include "kernels/cuda/optimizer.cuh"
#include "kernels/cuda/pool.cuh"

namespace dl::cuda {

namespace {
std::atomic<bool> tf32_allowed{false};
}  // namespace

void set_allow_tf32(bool allow) {
  tf32_allowed = allow;
}

bool allow_tf32() {
  return tf32_allowed;
}

}  // namespace dl::cuda

namespace dl {
namespace {

using nv_bf16 = __nv_bfloat16;

// SyncBatchNorm's partial sums would have to leave the fused kernels between their passes.
void require_no_sync(const SumOverRanks& sum_over_ranks) {
  DL_CHECK(!sum_over_ranks,
           "BatchNorm with statistics over several processes (SyncBatchNorm) runs on the CPU "
           "only so far");
}
static_assert(sizeof(bf16) == sizeof(nv_bf16), "dl::bf16 and __nv_bfloat16 share one layout");

// The tensor's data as T on the device (checking the dtype); null for an undefined tensor.
// bf16 tensors hold dl::bf16, which the kernels see as __nv_bfloat16 (the same 16 bits).
template <class T>
T* ptr(const Tensor& t) {
  if (!t.defined()) return nullptr;
  if constexpr (std::is_same_v<T, nv_bf16>) {
    return reinterpret_cast<nv_bf16*>(t.data<bf16>());
  } else {
    return t.data<T>();
  }
}

// Calls f.template operator()<T>() with T = float or __nv_bfloat16 for an F32 or BF16 activation
// dtype; throws for any other.
template <class F>
void dispatch_float(const char* op, DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32:
      f.template operator()<float>();
      return;
    case DType::bf16:
      f.template operator()<nv_bf16>();
      return;
    default:
      throw Error(detail::concat(op, ": the CUDA ops take F32 or BF16 activations, got ",
                                 dtype_name(dtype)));
  }
}

// Device memory from the caching allocator, given back when the object is destroyed. Per-call
// workspaces are freed right after their kernels are queued, which the allocator's stream-ordered
// reuse makes safe. reserve() grows memory kept across calls.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(size_t bytes) { reserve(bytes); }
  ~DeviceMemory() { cuda::deallocate(ptr_, bytes_); }
  DeviceMemory(DeviceMemory&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  // At least `bytes` bytes; the contents are lost when it grows.
  void reserve(size_t bytes) {
    if (bytes <= bytes_) return;
    cuda::deallocate(ptr_, bytes_);
    ptr_ = nullptr;
    bytes_ = 0;
    ptr_ = cuda::allocate(bytes);
    bytes_ = bytes;
  }
  void* get() const { return ptr_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

template <class T>
constexpr cuda::GemmType gemm_type() {
  return std::is_same_v<T, float> ? cuda::GemmType::f32 : cuda::GemmType::bf16;
}

// An fp32 parameter (a weight or a bias; may be undefined) as a GEMM operand next to activations
// of type T: the tensor itself for fp32; for bf16 a copy rounded to bf16 in per-call scratch,
// since cuBLASLt multiplies operands of one type and a bf16 output takes a bf16 bias.
template <class T>
class GemmParam {
 public:
  explicit GemmParam(const Tensor& p) {
    if constexpr (std::is_same_v<T, float>) {
      ptr_ = ptr<float>(p);
    } else if (p.defined()) {
      copy_.reserve(static_cast<size_t>(p.numel()) * sizeof(nv_bf16));
      cuda::convert(ptr<float>(p), copy_.as<nv_bf16>(), p.numel(), cuda::stream());
      ptr_ = copy_.get();
    }
  }
  const void* get() const { return ptr_; }

 private:
  DeviceMemory copy_;
  const void* ptr_ = nullptr;
};

// dbias[c] = the sum of dy's rows, for a backward_weight asked for the bias gradient only.
template <class T>
void bias_grad(const T* dy, int64_t rows, int64_t cols, Tensor& dbias) {
  DeviceMemory workspace(cuda::sum_rows_workspace_bytes(rows, cols));
  cuda::sum_rows(dy, rows, cols, ptr<float>(dbias), workspace.get(), cuda::stream());
}

void check_weight_grads(const char* op, const Tensor& dweight, const Tensor& dbias) {
  DL_CHECK(dweight.defined() || dbias.defined(), op,
           ": neither the weight nor the bias gradient is wanted");
}

// Which kernel runs a convolution.
enum class ConvPath { depthwise, pointwise, cudnn };

ConvPath conv_path(const Conv2dShape& s) {
  if (s.depthwise() && s.stride == 1 && s.kh == s.kw && s.kh % 2 == 1 && s.kh >= 3 && s.kh <= 9 &&
      s.pad == s.kh / 2)
    return ConvPath::depthwise;
  if (s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0 && s.groups == 1)
    return ConvPath::pointwise;
  DL_CHECK(s.groups == 1, "conv2d: no CUDA kernel for groups = ", s.groups, " (c_in ", s.c_in,
           ", c_out ", s.c_out, ", kernel ", s.kh, "x", s.kw, ", stride ", s.stride, ", padding ",
           s.pad,
           "). The CUDA path runs depthwise convolutions (groups = c_in = c_out) with "
           "stride 1, an odd square kernel of 3 to 9 and padding kernel / 2, and groups = 1 "
           "convolutions; run others on the CPU device");
  return ConvPath::cudnn;
}

bool same_tensors(const std::vector<cuda::OptimTensor>& a,
                  const std::vector<cuda::OptimTensor>& b) {
  const auto same = [](const cuda::OptimTensor& x, const cuda::OptimTensor& y) {
    return x.param == y.param && x.grad == y.grad && x.state0 == y.state0 && x.state1 == y.state1 &&
           x.param_bf16 == y.param_bf16 && x.numel == y.numel && x.hyper == y.hyper;
  };
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), same);
}

// h's index in `hyper`, appended when new. Compared bit for bit (the kernels see bits); neither
// hyper struct has padding.
template <class Hyper>
int32_t hyper_index(std::vector<Hyper>& hyper, const Hyper& h) {
  static_assert(sizeof(cuda::AdamWHyper) == 8 * sizeof(float) &&
                sizeof(cuda::SGDHyper) == 6 * sizeof(float));
  for (size_t i = 0; i < hyper.size(); ++i)
    if (std::memcmp(&hyper[i], &h, sizeof h) == 0) return static_cast<int32_t>(i);
  hyper.push_back(h);
  return static_cast<int32_t>(hyper.size() - 1);
}

// One multi-tensor optimizer step (kernels/cuda/optimizer.cuh). The device chunk array is rebuilt
// only when the tensors (every pointer, size and hyper index) differ from the previous call's;
// otherwise a call copies just its hyper-parameter array. Both are host-to-device copies through
// the backend (cuda_backend.cpp), which stages them in pinned memory: nothing waits.
template <class Hyper>
class MultiTensorStep {
 public:
  using Launch = void (*)(const cuda::OptimChunk*, int64_t, const Hyper*, cudaStream_t);

  void run(const std::vector<cuda::OptimTensor>& tensors, const std::vector<Hyper>& hyper,
           Launch launch) {
    const size_t hyper_bytes = hyper.size() * sizeof(Hyper);
    hyper_.reserve(hyper_bytes);
    copy_bytes(hyper_.get(), Device::cuda(), hyper.data(), Device::cpu(), hyper_bytes);
    if (!same_tensors(tensors, tensors_)) {
      const std::vector<cuda::OptimChunk> chunks = cuda::make_optim_chunks(tensors);
      const size_t chunk_bytes = chunks.size() * sizeof(cuda::OptimChunk);
      chunks_.reserve(chunk_bytes);
      copy_bytes(chunks_.get(), Device::cuda(), chunks.data(), Device::cpu(), chunk_bytes);
      tensors_ = tensors;
      num_chunks_ = static_cast<int64_t>(chunks.size());
    }
    launch(chunks_.as<cuda::OptimChunk>(), num_chunks_, hyper_.as<Hyper>(), cuda::stream());
  }

 private:
  std::vector<cuda::OptimTensor> tensors_;  // the tensors that chunks_ describes
  DeviceMemory chunks_;
  int64_t num_chunks_ = 0;
  DeviceMemory hyper_;
};

class CudaOps final : public DeviceOps {
 public:
  bool supports_bf16() const override { return true; }
  void synchronize() override { cuda::synchronize(); }

  // --- elementwise ---

  void add(const Tensor& a, const Tensor& b, Tensor& out) override {
    dispatch_float("add", out.dtype(), [&]<class T>() {
      cuda::add(ptr<T>(a), ptr<T>(b), ptr<T>(out), out.numel(), cuda::stream());
    });
  }
  void mul(const Tensor& a, const Tensor& b, Tensor& out) override {
    dispatch_float("mul", out.dtype(), [&]<class T>() {
      cuda::mul(ptr<T>(a), ptr<T>(b), ptr<T>(out), out.numel(), cuda::stream());
    });
  }
  void scale(const Tensor& x, float factor, Tensor& out) override {
    dispatch_float("scale", out.dtype(), [&]<class T>() {
      cuda::scale(ptr<T>(x), factor, ptr<T>(out), out.numel(), cuda::stream());
    });
  }
  void axpy(float alpha, const Tensor& x, Tensor& y) override {
    dispatch_float("axpy", y.dtype(), [&]<class T>() {
      cuda::axpy(alpha, ptr<T>(x), ptr<T>(y), y.numel(), cuda::stream());
    });
  }
  void scale_by(const Tensor& x, const Tensor& factor, Tensor& out) override {
    dispatch_float("scale_by", out.dtype(), [&]<class T>() {
      cuda::scale_by(ptr<T>(x), ptr<float>(factor), ptr<T>(out), out.numel(), cuda::stream());
    });
  }
  void fill_with(const Tensor& value, Tensor& out) override {
    dispatch_float("fill_with", out.dtype(), [&]<class T>() {
      cuda::fill_with(ptr<T>(out), ptr<float>(value), out.numel(), cuda::stream());
    });
  }
  void gelu_forward(const Tensor& x, Tensor& y) override {
    dispatch_float("gelu", y.dtype(), [&]<class T>() {
      cuda::gelu_forward(ptr<T>(x), ptr<T>(y), y.numel(), cuda::stream());
    });
  }
  void gelu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) override {
    dispatch_float("gelu backward", dx.dtype(), [&]<class T>() {
      cuda::gelu_backward(ptr<T>(x), ptr<T>(dy), ptr<T>(dx), dx.numel(), cuda::stream());
    });
  }
  void relu_forward(const Tensor& x, Tensor& y) override {
    dispatch_float("relu", y.dtype(), [&]<class T>() {
      cuda::relu_forward(ptr<T>(x), ptr<T>(y), y.numel(), cuda::stream());
    });
  }
  void relu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) override {
    dispatch_float("relu backward", dx.dtype(), [&]<class T>() {
      cuda::relu_backward(ptr<T>(x), ptr<T>(dy), ptr<T>(dx), dx.numel(), cuda::stream());
    });
  }
  void sum(const Tensor& x, Tensor& out) override {
    dispatch_float("sum", x.dtype(), [&]<class T>() {
      DeviceMemory workspace(cuda::reduce_workspace_bytes(x.numel()));
      cuda::sum(ptr<T>(x), x.numel(), ptr<float>(out), workspace.get(), cuda::stream());
    });
  }
  // One reduction per tensor into its own slot of a device array, then one copy back.
  std::vector<double> squared_norms(const std::vector<Tensor>& xs) override {
    std::vector<double> norms(xs.size(), 0.0);
    if (xs.empty()) return norms;
    const DeviceMemory squares = squares_on_device(xs);
    DL_CUDA_CHECK(cudaMemcpyAsync(norms.data(), squares.get(), xs.size() * sizeof(double),
                                  cudaMemcpyDeviceToHost, cuda::stream()));
    cuda::synchronize();
    return norms;
  }
  void clip_grad_norm(const std::vector<Tensor>& grads, double max_norm,
                      Tensor& total_norm) override {
    const DeviceMemory squares = squares_on_device(grads);
    DeviceMemory coefficient(sizeof(float));
    cuda::clip_coefficient(squares.as<double>(), static_cast<int64_t>(grads.size()), max_norm,
                           ptr<float>(total_norm), coefficient.as<float>(), cuda::stream());
    for (const Tensor& g : grads)
      cuda::clip_scale(ptr<float>(g), coefficient.as<float>(), g.numel(), cuda::stream());
  }
  void transpose_batched(const Tensor& in, int64_t batch, int64_t rows, int64_t cols,
                         Tensor& out) override {
    dispatch_float("transpose", in.dtype(), [&]<class T>() {
      cuda::transpose_batched(ptr<T>(in), batch, rows, cols, ptr<T>(out), cuda::stream());
    });
  }

  // --- convolution: our depthwise kernels, a cuBLASLt GEMM for 1x1, cuDNN for the rest ---

  void conv2d_forward(const Conv2dShape& s, const Tensor& x, const Tensor& weight,
                      const Tensor& bias, Tensor& y) override {
    dispatch_float("conv2d", x.dtype(), [&]<class T>() {
      switch (conv_path(s)) {
        case ConvPath::depthwise:
          cuda::depthwise_conv_forward(s, ptr<T>(x), ptr<float>(weight), ptr<float>(bias),
                                       ptr<T>(y), cuda::stream());
          return;
        case ConvPath::pointwise:
          gemm_forward<T>(x, weight, bias, y, s.n * s.h * s.w, s.c_out, s.c_in);
          return;
        case ConvPath::cudnn: {
          cuda::CudnnConv2d& conv = cudnn_conv();
          DeviceMemory workspace(conv.workspace_bytes<T>(s));
          conv.forward(s, ptr<T>(x), ptr<float>(weight), ptr<float>(bias), ptr<T>(y),
                       workspace.get(), workspace.bytes(), cuda::stream());
          return;
        }
      }
    });
  }
  void conv2d_backward_data(const Conv2dShape& s, const Tensor& dy, const Tensor& weight,
                            Tensor& dx) override {
    dispatch_float("conv2d backward", dy.dtype(), [&]<class T>() {
      switch (conv_path(s)) {
        case ConvPath::depthwise:
          cuda::depthwise_conv_backward_data(s, ptr<T>(dy), ptr<float>(weight), ptr<T>(dx),
                                             cuda::stream());
          return;
        case ConvPath::pointwise:
          gemm_backward_data<T>(dy, weight, dx, s.n * s.h * s.w, s.c_out, s.c_in);
          return;
        case ConvPath::cudnn: {
          cuda::CudnnConv2d& conv = cudnn_conv();
          DeviceMemory workspace(conv.workspace_bytes<T>(s));
          conv.backward_data(s, ptr<T>(dy), ptr<float>(weight), ptr<T>(dx), workspace.get(),
                             workspace.bytes(), cuda::stream());
          return;
        }
      }
    });
  }
  void conv2d_backward_weight(const Conv2dShape& s, const Tensor& dy, const Tensor& x,
                              Tensor& dweight, Tensor& dbias) override {
    check_weight_grads("conv2d backward", dweight, dbias);
    dispatch_float("conv2d backward", dy.dtype(), [&]<class T>() {
      const ConvPath path = conv_path(s);
      if (!dweight.defined()) {
        bias_grad(ptr<T>(dy), dy.numel() / s.c_out, s.c_out, dbias);
        return;
      }
      switch (path) {
        case ConvPath::depthwise: {
          DeviceMemory workspace(cuda::depthwise_conv_backward_weight_workspace_bytes(s));
          cuda::depthwise_conv_backward_weight(s, ptr<T>(x), ptr<T>(dy), ptr<float>(dweight),
                                               ptr<float>(dbias), workspace.get(), cuda::stream());
          return;
        }
        case ConvPath::pointwise:
          gemm_backward_weight<T>(dy, x, dweight, dbias, s.n * s.h * s.w, s.c_out, s.c_in);
          return;
        case ConvPath::cudnn: {
          cuda::CudnnConv2d& conv = cudnn_conv();
          DeviceMemory workspace(conv.workspace_bytes<T>(s));
          conv.backward_filter(s, ptr<T>(x), ptr<T>(dy), ptr<float>(dweight), ptr<float>(dbias),
                               workspace.get(), workspace.bytes(), cuda::stream());
          return;
        }
      }
    });
  }

  // --- BatchNorm (the unfused kernels: no residual) ---

  void batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps,
                               float momentum, Tensor& running_mean, Tensor& running_var, Tensor& y,
                               Tensor& save_mean, Tensor& save_invstd,
                               const SumOverRanks& sum_over_ranks) override {
    require_no_sync(sum_over_ranks);
    const int64_t c = x.size(-1), rows = x.numel() / c;
    dispatch_float("batch_norm", x.dtype(), [&]<class T>() {
      DeviceMemory workspace(cuda::batchnorm_workspace_bytes(rows, c));
      cuda::batchnorm_forward_train(ptr<T>(x), rows, c, ptr<float>(gamma), ptr<float>(beta), eps,
                                    momentum, ptr<float>(running_mean), ptr<float>(running_var),
                                    static_cast<const T*>(nullptr), ptr<T>(y),
                                    ptr<float>(save_mean), ptr<float>(save_invstd), workspace.get(),
                                    cuda::stream());
    });
  }
  void batchnorm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                              const Tensor& running_mean, const Tensor& running_var, float eps,
                              Tensor& y, Tensor& save_mean, Tensor& save_invstd) override {
    const int64_t c = x.size(-1), rows = x.numel() / c;
    dispatch_float("batch_norm", x.dtype(), [&]<class T>() {
      cuda::batchnorm_forward_eval(ptr<T>(x), rows, c, ptr<float>(gamma), ptr<float>(beta),
                                   ptr<float>(running_mean), ptr<float>(running_var), eps,
                                   static_cast<const T*>(nullptr), ptr<T>(y), cuda::stream());
    });
    DL_CUDA_CHECK(cudaMemcpyAsync(ptr<float>(save_mean), ptr<float>(running_mean),
                                  static_cast<size_t>(c) * sizeof(float), cudaMemcpyDeviceToDevice,
                                  cuda::stream()));
    cuda::batchnorm_eval_invstd(ptr<float>(running_var), c, eps, ptr<float>(save_invstd),
                                cuda::stream());
  }
  void batchnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                          const Tensor& mean, const Tensor& invstd, bool batch_stats, Tensor& dx,
                          Tensor& dgamma, Tensor& dbeta,
                          const SumOverRanks& sum_over_ranks) override {
    require_no_sync(sum_over_ranks);
    const int64_t c = x.size(-1), rows = x.numel() / c;
    dispatch_float("batch_norm backward", x.dtype(), [&]<class T>() {
      DeviceMemory workspace(cuda::batchnorm_workspace_bytes(rows, c));
      cuda::batchnorm_backward(ptr<T>(dy), ptr<T>(x), rows, c, ptr<float>(gamma), ptr<float>(mean),
                               ptr<float>(invstd), batch_stats, ptr<T>(dx), ptr<float>(dgamma),
                               ptr<float>(dbeta), workspace.get(), cuda::stream());
    });
  }

  // --- fused GELU + BatchNorm (+ residual) ---

  void gelu_batchnorm_forward_train(const Tensor& h, const Tensor& gamma, const Tensor& beta,
                                    float eps, float momentum, Tensor& running_mean,
                                    Tensor& running_var, const Tensor& residual, Tensor& y,
                                    Tensor& save_mean, Tensor& save_invstd,
                                    const SumOverRanks& sum_over_ranks) override {
    require_no_sync(sum_over_ranks);
    const int64_t c = h.size(-1), rows = h.numel() / c;
    dispatch_float("gelu_batch_norm", h.dtype(), [&]<class T>() {
      DeviceMemory workspace(cuda::batchnorm_workspace_bytes(rows, c));
      cuda::gelu_batchnorm_forward_train(
          ptr<T>(h), rows, c, ptr<float>(gamma), ptr<float>(beta), eps, momentum,
          ptr<float>(running_mean), ptr<float>(running_var), ptr<T>(residual), ptr<T>(y),
          ptr<float>(save_mean), ptr<float>(save_invstd), workspace.get(), cuda::stream());
    });
  }
  void gelu_batchnorm_forward_eval(const Tensor& h, const Tensor& gamma, const Tensor& beta,
                                   const Tensor& running_mean, const Tensor& running_var, float eps,
                                   const Tensor& residual, Tensor& y, Tensor& save_mean,
                                   Tensor& save_invstd) override {
    const int64_t c = h.size(-1), rows = h.numel() / c;
    dispatch_float("gelu_batch_norm", h.dtype(), [&]<class T>() {
      cuda::gelu_batchnorm_forward_eval(ptr<T>(h), rows, c, ptr<float>(gamma), ptr<float>(beta),
                                        ptr<float>(running_mean), ptr<float>(running_var), eps,
                                        ptr<T>(residual), ptr<T>(y), cuda::stream());
    });
    DL_CUDA_CHECK(cudaMemcpyAsync(ptr<float>(save_mean), ptr<float>(running_mean),
                                  static_cast<size_t>(c) * sizeof(float), cudaMemcpyDeviceToDevice,
                                  cuda::stream()));
    cuda::batchnorm_eval_invstd(ptr<float>(running_var), c, eps, ptr<float>(save_invstd),
                                cuda::stream());
  }
  void gelu_batchnorm_backward(const Tensor& dy, const Tensor& h, const Tensor& gamma,
                               const Tensor& mean, const Tensor& invstd, bool batch_stats,
                               Tensor& dh, Tensor& dgamma, Tensor& dbeta,
                               const SumOverRanks& sum_over_ranks) override {
    require_no_sync(sum_over_ranks);
    const int64_t c = h.size(-1), rows = h.numel() / c;
    dispatch_float("gelu_batch_norm backward", h.dtype(), [&]<class T>() {
      DeviceMemory workspace(cuda::batchnorm_workspace_bytes(rows, c));
      cuda::gelu_batchnorm_backward(ptr<T>(dy), ptr<T>(h), rows, c, ptr<float>(gamma),
                                    ptr<float>(mean), ptr<float>(invstd), batch_stats, ptr<T>(dh),
                                    ptr<float>(dgamma), ptr<float>(dbeta), workspace.get(),
                                    cuda::stream());
    });
  }

  // --- pooling ---

  void global_avg_pool_forward(const Tensor& x, Tensor& y) override {
    dispatch_float("global_avg_pool", x.dtype(), [&]<class T>() {
      cuda::global_avg_pool_forward(ptr<T>(x), x.size(0), x.size(1) * x.size(2), x.size(3),
                                    ptr<T>(y), cuda::stream());
    });
  }
  void global_avg_pool_backward(const Tensor& dy, Tensor& dx) override {
    dispatch_float("global_avg_pool backward", dx.dtype(), [&]<class T>() {
      cuda::global_avg_pool_backward(ptr<T>(dy), dx.size(0), dx.size(1) * dx.size(2), dx.size(3),
                                     ptr<T>(dx), cuda::stream());
    });
  }
  void max_pool2d_forward(const Pool2dShape& s, const Tensor& x, Tensor& y,
                          Tensor& argmax) override {
    dispatch_float("max_pool2d", x.dtype(), [&]<class T>() {
      cuda::max_pool2d_forward(s, ptr<T>(x), ptr<T>(y), ptr<int32_t>(argmax), cuda::stream());
    });
  }
  void max_pool2d_backward(const Pool2dShape& s, const Tensor& dy, const Tensor& argmax,
                           Tensor& dx) override {
    dispatch_float("max_pool2d backward", dx.dtype(), [&]<class T>() {
      cuda::max_pool2d_backward(s, ptr<T>(dy), ptr<int32_t>(argmax), ptr<T>(dx), cuda::stream());
    });
  }

  // --- linear (cuBLASLt) ---

  void linear_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                      Tensor& y) override {
    dispatch_float("linear", x.dtype(), [&]<class T>() {
      gemm_forward<T>(x, weight, bias, y, x.size(0), weight.size(0), x.size(1));
    });
  }
  void linear_backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx) override {
    dispatch_float("linear backward", dy.dtype(), [&]<class T>() {
      gemm_backward_data<T>(dy, weight, dx, dy.size(0), dy.size(1), weight.size(1));
    });
  }
  void linear_backward_weight(const Tensor& dy, const Tensor& x, Tensor& dweight,
                              Tensor& dbias) override {
    check_weight_grads("linear backward", dweight, dbias);
    dispatch_float("linear backward", dy.dtype(), [&]<class T>() {
      gemm_backward_weight<T>(dy, x, dweight, dbias, dy.size(0), dy.size(1), x.size(1));
    });
  }

  // --- loss ---

  void cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing,
                     bool labels_checked, Tensor& loss, Tensor& dlogits) override {
    const int64_t n = logits.size(0), classes = logits.size(1);
    const cudaStream_t stream = cuda::stream();
    DeviceMemory row_loss(static_cast<size_t>(n) * sizeof(float)), flag(sizeof(int32_t));
    DL_CUDA_CHECK(cudaMemsetAsync(flag.get(), 0, sizeof(int32_t), stream));
    dispatch_float("cross_entropy", logits.dtype(), [&]<class T>() {
      cuda::cross_entropy_forward_backward(
          ptr<T>(logits), ptr<int64_t>(labels), n, classes, label_smoothing, 1.0f,
          row_loss.as<float>(), ptr<float>(loss), ptr<T>(dlogits), flag.as<int32_t>(), stream);
    });
    if (labels_checked) return;
    // Labels that only the GPU has seen: reading the bad-label flag back makes the call wait for
    // the GPU, the price of an error at the call that caused it.
    int32_t bad_label = 0;
    DL_CUDA_CHECK(
        cudaMemcpyAsync(&bad_label, flag.get(), sizeof bad_label, cudaMemcpyDeviceToHost, stream));
    cuda::synchronize();
    DL_CHECK(bad_label == 0, "cross_entropy: a label is outside [0, ", classes, ")");
  }

  void count_correct(const Tensor& logits, const Tensor& labels, Tensor& count) override {
    dispatch_float("count_correct", logits.dtype(), [&]<class T>() {
      cuda::count_correct(ptr<T>(logits), ptr<int64_t>(labels), logits.size(0), logits.size(1),
                          ptr<int32_t>(count), cuda::stream());
    });
  }

  // --- optimizers ---

  void adamw_update(const std::vector<AdamWUpdate>& updates) override {
    if (updates.empty()) return;
    std::vector<cuda::OptimTensor> tensors;
    std::vector<cuda::AdamWHyper> hyper;
    for (const AdamWUpdate& u : updates) {
      DL_CHECK(u.exp_avg.defined() && u.exp_avg_sq.defined(),
               "adamw: the optimizer state (exp_avg, exp_avg_sq) must be allocated");
      const int32_t index = hyper_index(
          hyper, cuda::adamw_hyper(u.lr, u.weight_decay, u.beta1, u.beta2, u.eps, u.step));
      tensors.push_back({.param = ptr<float>(u.param),
                         .grad = ptr<float>(u.grad),
                         .state0 = ptr<float>(u.exp_avg),
                         .state1 = ptr<float>(u.exp_avg_sq),
                         .numel = u.param.numel(),
                         .hyper = index});
    }
    adamw_.run(tensors, hyper, cuda::adamw_step);
  }
  void sgd_update(const std::vector<SGDUpdate>& updates) override {
    if (updates.empty()) return;
    std::vector<cuda::OptimTensor> tensors;
    std::vector<cuda::SGDHyper> hyper;
    for (const SGDUpdate& u : updates) {
      DL_CHECK(u.momentum == 0 || u.momentum_buffer.defined(),
               "sgd: momentum needs an allocated momentum buffer");
      const int32_t index = hyper_index(hyper, cuda::sgd_hyper(u.lr, u.weight_decay, u.momentum,
                                                               u.dampening, u.nesterov, u.first));
      tensors.push_back({.param = ptr<float>(u.param),
                         .grad = ptr<float>(u.grad),
                         .state0 = ptr<float>(u.momentum_buffer),
                         .numel = u.param.numel(),
                         .hyper = index});
    }
    sgd_.run(tensors, hyper, cuda::sgd_step);
  }

 private:
  // The GEMM object, its cuBLASLt handle and workspace, created on first use (never destroyed,
  // like the backend's handles: the driver releases them at exit).
  cuda::LtGemm& gemm() {
    if (gemm_ == nullptr) {
      void* workspace = cuda::allocate(cuda::LtGemm::kRecommendedWorkspace);
      cublasLtHandle_t handle = nullptr;
      DL_CUBLAS_CHECK(cublasLtCreate(&handle));
      gemm_ = std::make_unique<cuda::LtGemm>(handle, workspace, cuda::LtGemm::kRecommendedWorkspace,
                                             false);
    }
    gemm_->set_allow_tf32(cuda::allow_tf32());
    return *gemm_;
  }

  // One CudnnConv2d per TF32 setting (its plans depend on it), created on first use.
  cuda::CudnnConv2d& cudnn_conv() {
    const bool tf32 = cuda::allow_tf32();
    std::unique_ptr<cuda::CudnnConv2d>& conv = conv_[tf32 ? 1 : 0];
    if (conv == nullptr) conv = std::make_unique<cuda::CudnnConv2d>(cuda::cudnn_handle(), tf32);
    return *conv;
  }

  // y[m, n] = x[m, k] weight[n, k]^T (+ bias): Linear, and the 1x1 conv over m = N*H*W pixels.
  template <class T>
  void gemm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& y, int64_t m,
                    int64_t n, int64_t k) {
    const GemmParam<T> w(weight), b(bias);
    gemm().forward(ptr<T>(x), w.get(), b.get(), ptr<T>(y), m, n, k, gemm_type<T>(), gemm_type<T>(),
                   cuda::stream());
  }
  // dx[m, k] = dy[m, n] weight[n, k].
  template <class T>
  void gemm_backward_data(const Tensor& dy, const Tensor& weight, Tensor& dx, int64_t m, int64_t n,
                          int64_t k) {
    const GemmParam<T> w(weight);
    gemm().backward_data(ptr<T>(dy), w.get(), ptr<T>(dx), m, n, k, gemm_type<T>(), gemm_type<T>(),
                         cuda::stream());
  }
  // dweight[n, k] = dy[m, n]^T x[m, k] and dbias[n] = the sum of dy's rows; either may be
  // undefined.
  template <class T>
  void gemm_backward_weight(const Tensor& dy, const Tensor& x, Tensor& dweight, Tensor& dbias,
                            int64_t m, int64_t n, int64_t k) {
    if (!dweight.defined()) {
      bias_grad(ptr<T>(dy), m, n, dbias);
      return;
    }
    gemm().backward_weight(ptr<T>(dy), ptr<T>(x), ptr<float>(dweight), ptr<float>(dbias), m, n, k,
                           gemm_type<T>(), cuda::stream());
  }

  std::unique_ptr<cuda::LtGemm> gemm_;
  std::unique_ptr<cuda::CudnnConv2d> conv_[2];
  MultiTensorStep<cuda::AdamWHyper> adamw_;
  MultiTensorStep<cuda::SGDHyper> sgd_;

  // Each f32 tensor's sum of squares (fp64) in its own slot of a device array, one reduction
  // after another over one workspace.
  static DeviceMemory squares_on_device(const std::vector<Tensor>& xs) {
    int64_t largest = 0;
    for (const Tensor& x : xs) largest = std::max(largest, x.numel());
    DeviceMemory workspace(cuda::reduce_workspace_bytes(largest));
    DeviceMemory squares(std::max<size_t>(xs.size(), 1) * sizeof(double));
    for (size_t i = 0; i < xs.size(); ++i)
      cuda::squared_norm(ptr<float>(xs[i]), xs[i].numel(), squares.as<double>() + i,
                         workspace.get(), cuda::stream());
    return squares;
  }
};

}  // namespace

DeviceOps* cuda::ops_if_available() {
  // Leaked on purpose, like the backend.
  static DeviceOps* const ops = cuda::device_present() ? new CudaOps : nullptr;
  return ops;
}

}  // namespace dl
