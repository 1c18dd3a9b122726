// cuDNN convolution wrapper: NHWC, KCRS <-> KRSC filter conversion kernels, cached algorithms.
#include "kernels/cuda/cudnn_conv.cuh"

#include <algorithm>
#include <climits>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.cuh"

namespace dl::cuda {

namespace {

constexpr int kBlock = 256;
constexpr size_t kAlign = 256;

size_t align_up(size_t bytes) {
  return (bytes + kAlign - 1) / kAlign * kAlign;
}

template <class T>
constexpr cudnnDataType_t cudnn_type() {
  return std::is_same_v<T, float> ? CUDNN_DATA_FLOAT : CUDNN_DATA_BFLOAT16;
}

// ----------------------------------------------------------------------------------------------
// CUDA kernels

// w_krsc[k, r, s, c] = w[k, c, r, s] rounded to T, one thread per output element (coalesced
// writes). Moves c_out c_in kh kw (4 + sizeof(T)) bytes; no FLOPs.
template <class T>
__global__ void kcrs_to_krsc_kernel(const float* w, int64_t c_in, int64_t kh, int64_t kw,
                                    int64_t total, T* w_krsc) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= total) return;
  const int64_t c = o % c_in, s = (o / c_in) % kw, r = (o / (c_in * kw)) % kh;
  const int64_t k = o / (c_in * kw * kh);
  w_krsc[o] = from_float<T>(w[((k * c_in + c) * kh + r) * kw + s]);
}

// dw[k, c, r, s] = dw_krsc[k, r, s, c] widened to fp32, one thread per output element.
// Moves c_out c_in kh kw (sizeof(T) + 4) bytes; no FLOPs.
template <class T>
__global__ void krsc_to_kcrs_kernel(const T* dw_krsc, int64_t c_in, int64_t kh, int64_t kw,
                                    int64_t total, float* dw) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= total) return;
  const int64_t s = o % kw, r = (o / kw) % kh, c = (o / (kw * kh)) % c_in;
  const int64_t k = o / (kw * kh * c_in);
  dw[o] = to_float(dw_krsc[((k * kh + r) * kw + s) * c_in + c]);
}

// ----------------------------------------------------------------------------------------------
// kernel launchers

template <class T>
void kcrs_to_krsc(const Conv2dShape& s, const float* w, T* w_krsc, cudaStream_t stream) {
  const int64_t total = s.c_out * s.c_in * s.kh * s.kw;
  kcrs_to_krsc_kernel<T><<<static_cast<unsigned>(ceil_div(total, kBlock)), kBlock, 0, stream>>>(
      w, s.c_in, s.kh, s.kw, total, w_krsc);
  DL_CUDA_CHECK_LAUNCH();
}

template <class T>
void krsc_to_kcrs(const Conv2dShape& s, const T* dw_krsc, float* dw, cudaStream_t stream) {
  const int64_t total = s.c_out * s.c_in * s.kh * s.kw;
  krsc_to_kcrs_kernel<T><<<static_cast<unsigned>(ceil_div(total, kBlock)), kBlock, 0, stream>>>(
      dw_krsc, s.c_in, s.kh, s.kw, total, dw);
  DL_CUDA_CHECK_LAUNCH();
}

void check_shape(const Conv2dShape& s) {
  DL_CUDA_REQUIRE(s.n > 0 && s.h > 0 && s.w > 0 && s.c_in > 0 && s.c_out > 0, "bad conv shape");
  DL_CUDA_REQUIRE(s.groups == 1, "cuDNN convolution: groups must be 1");
  DL_CUDA_REQUIRE(s.kh > 0 && s.kw > 0 && s.stride > 0 && s.pad >= 0,
                  "bad kernel size, stride or padding");
  DL_CUDA_REQUIRE(s.h + 2 * s.pad >= s.kh && s.w + 2 * s.pad >= s.kw,
                  "kernel larger than the padded input");
  DL_CUDA_REQUIRE(
      s.n * s.h * s.w * s.c_in <= INT_MAX && s.n * s.h_out() * s.w_out() * s.c_out <= INT_MAX,
      "cuDNN's 4-d descriptors take int sizes: tensors must hold < 2^31 elements");
}

[[noreturn]] void throw_no_algorithm(const char* op, const Conv2dShape& s) {
  throw std::runtime_error(std::string("cuDNN offers no usable ") + op +
                           " algorithm for the convolution n=" + std::to_string(s.n) +
                           " h=" + std::to_string(s.h) + " w=" + std::to_string(s.w) +
                           " c_in=" + std::to_string(s.c_in) + " c_out=" + std::to_string(s.c_out) +
                           " k=" + std::to_string(s.kh) + "x" + std::to_string(s.kw) +
                           " stride=" + std::to_string(s.stride) + " pad=" + std::to_string(s.pad) +
                           ". HINT: try the other precision, or allow TF32 for fp32 convolutions.");
}

// Picks from cuDNN's ranked heuristic results: the first supported, deterministic one with a
// workspace of at most kMaxAlgoWorkspace (and, for exact fp32, not a tensor-op entry); without a
// deterministic one, the first otherwise acceptable. Returns the index or -1.
template <class Perf>
int pick(const Perf* perf, int count, bool fma_only) {
  int fallback = -1;
  for (int i = 0; i < count; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
    if (perf[i].memory > CudnnConv2d::kMaxAlgoWorkspace) continue;
    if (fma_only && (perf[i].mathType == CUDNN_TENSOR_OP_MATH ||
                     perf[i].mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
      continue;
    if (perf[i].determinism == CUDNN_DETERMINISTIC) return i;
    if (fallback < 0) fallback = i;
  }
  return fallback;
}

}  // namespace

struct CudnnConv2d::Cache {
  struct Plan {
    cudnnTensorDescriptor_t x = nullptr, y = nullptr;
    cudnnFilterDescriptor_t w = nullptr;
    cudnnConvolutionDescriptor_t fwd = nullptr, bwd_data = nullptr, bwd_filter = nullptr;
    cudnnConvolutionFwdAlgo_t fwd_algo{};
    cudnnConvolutionBwdDataAlgo_t bwd_data_algo{};
    cudnnConvolutionBwdFilterAlgo_t bwd_filter_algo{};
    size_t weight_bytes = 0;   // the KRSC weight (or dW) region, 256-aligned
    size_t scratch_bytes = 0;  // cuDNN's workspace / sum_rows partials, 256-aligned

    Plan() = default;
    Plan(const Plan&) = delete;
    Plan& operator=(const Plan&) = delete;
    ~Plan() {
      for (cudnnConvolutionDescriptor_t c : {fwd, bwd_data, bwd_filter})
        if (c) cudnnDestroyConvolutionDescriptor(c);
      if (w) cudnnDestroyFilterDescriptor(w);
      if (y) cudnnDestroyTensorDescriptor(y);
      if (x) cudnnDestroyTensorDescriptor(x);
    }
    size_t total_bytes() const { return weight_bytes + scratch_bytes; }
  };
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int, bool>;

  std::map<Key, std::unique_ptr<Plan>> plans;

  template <class T>
  Plan& get(cudnnHandle_t handle, const Conv2dShape& s, bool allow_tf32) {
    check_shape(s);
    const bool tf32 = allow_tf32 && std::is_same_v<T, float>;
    const Key key{s.n,  s.h,  s.w,      s.c_in, s.c_out,
                  s.kh, s.kw, s.stride, s.pad,  static_cast<int>(cudnn_type<T>()),
                  tf32};
    auto it = plans.find(key);
    if (it == plans.end()) it = plans.emplace(key, build<T>(handle, s, tf32)).first;
    return *it->second;
  }

  template <class T>
  static std::unique_ptr<Plan> build(cudnnHandle_t handle, const Conv2dShape& s, bool tf32) {
    auto plan = std::make_unique<Plan>();
    const cudnnDataType_t type = cudnn_type<T>();
    const bool fma_only = std::is_same_v<T, float> && !tf32;
    const int n = static_cast<int>(s.n), h = static_cast<int>(s.h), w = static_cast<int>(s.w);
    const int c_in = static_cast<int>(s.c_in), c_out = static_cast<int>(s.c_out);
    const int ho = static_cast<int>(s.h_out()), wo = static_cast<int>(s.w_out());
    DL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan->x));
    DL_CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan->x, CUDNN_TENSOR_NHWC, type, n, c_in, h, w));
    DL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan->y));
    DL_CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan->y, CUDNN_TENSOR_NHWC, type, n, c_out, ho, wo));
    DL_CUDNN_CHECK(cudnnCreateFilterDescriptor(&plan->w));
    DL_CUDNN_CHECK(cudnnSetFilter4dDescriptor(plan->w, type, CUDNN_TENSOR_NHWC, c_out, c_in,
                                              static_cast<int>(s.kh), static_cast<int>(s.kw)));
    for (cudnnConvolutionDescriptor_t* c : {&plan->fwd, &plan->bwd_data, &plan->bwd_filter}) {
      DL_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(c));
      const int pad = static_cast<int>(s.pad), stride = static_cast<int>(s.stride);
      DL_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(*c, pad, pad, stride, stride, 1, 1,
                                                     CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
      DL_CUDNN_CHECK(
          cudnnSetConvolutionMathType(*c, fma_only ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH));
    }
    int dims[4];
    DL_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(plan->fwd, plan->x, plan->w, &dims[0],
                                                         &dims[1], &dims[2], &dims[3]));
    DL_CUDA_REQUIRE(dims[0] == n && dims[1] == c_out && dims[2] == ho && dims[3] == wo,
                    "cuDNN's output shape differs from Conv2dShape's");

    // The math type to run an entry with: its own, or FMA only for exact fp32 (as PyTorch does).
    const auto math = [fma_only](cudnnMathType_t m) { return fma_only ? CUDNN_FMA_MATH : m; };
    size_t scratch = 0, bytes = 0;
    int count = 0;
    {
      cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
      DL_CUDNN_CHECK(
          cudnnGetConvolutionForwardAlgorithm_v7(handle, plan->x, plan->w, plan->fwd, plan->y,
                                                 CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perf));
      const int i = pick(perf, count, fma_only);
      if (i < 0) throw_no_algorithm("forward", s);
      plan->fwd_algo = perf[i].algo;
      DL_CUDNN_CHECK(cudnnSetConvolutionMathType(plan->fwd, math(perf[i].mathType)));
      DL_CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(handle, plan->x, plan->w, plan->fwd,
                                                             plan->y, plan->fwd_algo, &bytes));
      scratch = std::max(scratch, bytes);
    }
    {
      cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
      DL_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
          handle, plan->w, plan->y, plan->bwd_data, plan->x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
          &count, perf));
      const int i = pick(perf, count, fma_only);
      if (i < 0) throw_no_algorithm("backward-data", s);
      plan->bwd_data_algo = perf[i].algo;
      DL_CUDNN_CHECK(cudnnSetConvolutionMathType(plan->bwd_data, math(perf[i].mathType)));
      DL_CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(
          handle, plan->w, plan->y, plan->bwd_data, plan->x, plan->bwd_data_algo, &bytes));
      scratch = std::max(scratch, bytes);
    }
    {
      cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
      DL_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
          handle, plan->x, plan->y, plan->bwd_filter, plan->w,
          CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, perf));
      const int i = pick(perf, count, fma_only);
      if (i < 0) throw_no_algorithm("backward-filter", s);
      plan->bwd_filter_algo = perf[i].algo;
      DL_CUDNN_CHECK(cudnnSetConvolutionMathType(plan->bwd_filter, math(perf[i].mathType)));
      DL_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(
          handle, plan->x, plan->y, plan->bwd_filter, plan->w, plan->bwd_filter_algo, &bytes));
      scratch = std::max(scratch, bytes);
    }
    scratch = std::max(scratch, sum_rows_workspace_bytes(s.n * s.h_out() * s.w_out(), s.c_out));
    plan->weight_bytes = align_up(static_cast<size_t>(s.c_out * s.c_in * s.kh * s.kw) * sizeof(T));
    plan->scratch_bytes = align_up(scratch);
    return plan;
  }
};

namespace {

// The plan's two workspace regions, after checking the caller's workspace.
template <class Plan>
std::pair<void*, void*> regions(const Plan& plan, void* workspace, size_t workspace_bytes) {
  DL_CUDA_REQUIRE(workspace != nullptr && workspace_bytes >= plan.total_bytes(),
                  "workspace smaller than CudnnConv2d::workspace_bytes() for this shape");
  DL_CUDA_REQUIRE(reinterpret_cast<uintptr_t>(workspace) % kAlign == 0,
                  "workspace must be 256-byte aligned");
  return {workspace, static_cast<char*>(workspace) + plan.weight_bytes};
}

}  // namespace

CudnnConv2d::CudnnConv2d(cudnnHandle_t handle, bool allow_tf32)
    : handle_(handle), allow_tf32_(allow_tf32), cache_(std::make_unique<Cache>()) {
  DL_CUDA_REQUIRE(handle != nullptr, "cuDNN handle is null");
}

CudnnConv2d::~CudnnConv2d() = default;

template <class T>
size_t CudnnConv2d::workspace_bytes(const Conv2dShape& s) {
  return cache_->get<T>(handle_, s, allow_tf32_).total_bytes();
}

template <class T>
void CudnnConv2d::forward(const Conv2dShape& s, const T* x, const float* weight, const float* bias,
                          T* y, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const Cache::Plan& plan = cache_->get<T>(handle_, s, allow_tf32_);
  const auto [w_krsc, scratch] = regions(plan, workspace, workspace_bytes);
  kcrs_to_krsc(s, weight, static_cast<T*>(w_krsc), stream);
  DL_CUDNN_CHECK(cudnnSetStream(handle_, stream));
  const float alpha = 1.0f, beta = 0.0f;
  DL_CUDNN_CHECK(cudnnConvolutionForward(handle_, &alpha, plan.x, x, plan.w, w_krsc, plan.fwd,
                                         plan.fwd_algo, scratch, plan.scratch_bytes, &beta, plan.y,
                                         y));
  if (bias) add_bias(y, bias, s.n * s.h_out() * s.w_out(), s.c_out, stream);
}

template <class T>
void CudnnConv2d::backward_data(const Conv2dShape& s, const T* dy, const float* weight, T* dx,
                                void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const Cache::Plan& plan = cache_->get<T>(handle_, s, allow_tf32_);
  const auto [w_krsc, scratch] = regions(plan, workspace, workspace_bytes);
  kcrs_to_krsc(s, weight, static_cast<T*>(w_krsc), stream);
  DL_CUDNN_CHECK(cudnnSetStream(handle_, stream));
  const float alpha = 1.0f, beta = 0.0f;
  DL_CUDNN_CHECK(cudnnConvolutionBackwardData(handle_, &alpha, plan.w, w_krsc, plan.y, dy,
                                              plan.bwd_data, plan.bwd_data_algo, scratch,
                                              plan.scratch_bytes, &beta, plan.x, dx));
}

template <class T>
void CudnnConv2d::backward_filter(const Conv2dShape& s, const T* x, const T* dy, float* dweight,
                                  float* dbias, void* workspace, size_t workspace_bytes,
                                  cudaStream_t stream) {
  const Cache::Plan& plan = cache_->get<T>(handle_, s, allow_tf32_);
  const auto [dw_krsc, scratch] = regions(plan, workspace, workspace_bytes);
  DL_CUDNN_CHECK(cudnnSetStream(handle_, stream));
  const float alpha = 1.0f, beta = 0.0f;
  DL_CUDNN_CHECK(cudnnConvolutionBackwardFilter(handle_, &alpha, plan.x, x, plan.y, dy,
                                                plan.bwd_filter, plan.bwd_filter_algo, scratch,
                                                plan.scratch_bytes, &beta, plan.w, dw_krsc));
  krsc_to_kcrs(s, static_cast<const T*>(dw_krsc), dweight, stream);
  if (dbias) sum_rows(dy, s.n * s.h_out() * s.w_out(), s.c_out, dbias, scratch, stream);
}

#define DL_INSTANTIATE_CONV(T)                                                                    \
  template size_t CudnnConv2d::workspace_bytes<T>(const Conv2dShape&);                            \
  template void CudnnConv2d::forward<T>(const Conv2dShape&, const T*, const float*, const float*, \
                                        T*, void*, size_t, cudaStream_t);                         \
  template void CudnnConv2d::backward_data<T>(const Conv2dShape&, const T*, const float*, T*,     \
                                              void*, size_t, cudaStream_t);                       \
  template void CudnnConv2d::backward_filter<T>(const Conv2dShape&, const T*, const T*, float*,   \
                                                float*, void*, size_t, cudaStream_t);
DL_INSTANTIATE_CONV(float)
DL_INSTANTIATE_CONV(__nv_bfloat16)
#undef DL_INSTANTIATE_CONV

}  // namespace dl::cuda
