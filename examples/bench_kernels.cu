// Kernel benchmark: our hand-written CUDA kernels against cuDNN on the same inputs, at
// ConvMixer's shapes, in fp32 and bf16.
//
// What it measures, per activation shape [N, H, W, C] (NHWC; ours always run NHWC):
//   dwconv_fwd / dwconv_bwd_data / dwconv_bwd_weight (k = 5, 7, 9): ours against cuDNN's grouped
//     convolution (groups = C, legacy cudnnConvolution* API), once with cuDNN on NHWC tensors and
//     once on NCHW copies of the same data ("/NHWC", "/NCHW" in the op name). cuDNN runs the
//     fastest algorithm that its own search (cudnnFind*AlgorithmEx, 1 GiB of workspace) ran
//     successfully; fp32 is restricted to FMA math (no TF32), as ours computes.
//   bn_fwd_train / bn_bwd: ours against cudnnBatchNormalizationForwardTrainingEx /
//     BackwardEx (NHWC, CUDNN_BATCHNORM_OPS_BN, SPATIAL_PERSISTENT, else SPATIAL; fp32 scale, bias
//     and statistics), the calls PyTorch makes for channels-last BatchNorm.
//   gelu_fwd / gelu_bwd: ours only; cuDNN's legacy API has no GELU, so these rows are judged by the
//     device-to-device copy bandwidth alone.
//   gelu_bn_res_fwd: our fused gelu_batchnorm_forward_train with a residual against the sequence
//     it replaces (our gelu_forward, cuDNN's BN forward training, our add).
//   gelu_bn_bwd: our fused gelu_batchnorm_backward against (cuDNN's BN backward, our
//     gelu_backward), which reads the GELU output that the unfused forward stored.
//
// How: inputs are random normal (never zeros). Before any
// timing, ours is checked against the CPU reference kernels (kernels/cpu, fp32) on a batch of 4 of
// the same shape, and against cuDNN (or the unfused sequence) at the full shape; outputs are
// poisoned with NaN first, so an unwritten element fails. Each check prints max|a - b| / max|b|
// (tolerance 1e-4 in fp32, 2e-2 in bf16). Timing: warm-up runs, then `--reps` runs, each between
// its own pair of CUDA events, median reported. The runs are queued behind a kernel that holds the
// GPU for a moment, so they execute back to back without host launch gaps. Successive runs rotate
// over several buffer sets that together are far larger than the L2 cache (>= 3 sets and >= 256 MB
// touched by the smallest op), so every run reads device memory. The device-to-device copy
// bandwidth (cudaMemcpyAsync of 1 GiB, bytes read + written) is measured in the same run.
//
// Bytes: each row's floor counts every input read once and every output written once (m elements
// of the activation type, s bytes each): dwconv_fwd and dwconv_bwd_data 2 m s, dwconv_bwd_weight
// 2 m s, plus the fp32 weights [C, k, k] in every conv; bn_fwd_train 2 m s (a two-pass kernel
// reads x twice); bn_bwd 3 m s; gelu_fwd 2 m s; gelu_bwd 3 m s; gelu_bn_res_fwd 3 m s; gelu_bn_bwd
// 3 m s. "ours GB/s" is that floor over our time and "% copy" compares it with the copy bandwidth.
// The table is printed last and, with --csv, written with the same columns (plus the floor in
// bytes and what the cuDNN column ran).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cpu/batchnorm.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/depthwise_conv.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/gelu.cuh"

namespace {

using bf16 = __nv_bfloat16;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr float kEps = 1e-5f;  // BatchNorm epsilon (PyTorch's default, cuDNN's minimum)
constexpr float kMomentum = 0.1f;
constexpr int64_t kCheckBatch = 4;                  // batch of the CPU reference check
constexpr size_t kConvWorkspace = size_t{1} << 30;  // cuDNN convolution workspace
constexpr size_t kCopyBytes = size_t{1} << 30;      // the copy-bandwidth buffer
constexpr size_t kRotateBytes = size_t{256} << 20;  // bytes the smallest op touches per timing
constexpr int kMinSets = 3;
constexpr int kMaxSets = 64;
constexpr int kWarmup = 3;

// ---- small utilities ----------------------------------------------------------------------------

// Destructors cannot throw: a failed release is reported on stderr.
void warn_if_failed(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    std::fprintf(stderr, "bench_kernels: warning: %s failed: %s\n", what, cudaGetErrorString(e));
}
void warn_if_failed(cudnnStatus_t s, const char* what) {
  if (s != CUDNN_STATUS_SUCCESS)
    std::fprintf(stderr, "bench_kernels: warning: %s failed: %s\n", what, cudnnGetErrorString(s));
}

template <class T>
constexpr bool is_bf16() {
  return std::is_same_v<T, bf16>;
}
template <class T>
const char* dtype_name() {
  return is_bf16<T>() ? "bf16" : "fp32";
}
template <class T>
double tolerance() {
  return is_bf16<T>() ? 2e-2 : 1e-4;
}
template <class T>
cudnnDataType_t cudnn_type() {
  return is_bf16<T>() ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
}

float to_float(float v) {
  return v;
}
float to_float(bf16 v) {
  return __bfloat162float(v);
}
template <class T>
T from_float(float v) {
  if constexpr (is_bf16<T>())
    return __float2bfloat16(v);
  else
    return v;
}

// max |got - ref| / max |ref| (the absolute difference when ref is all zeros); infinity when
// either side holds a NaN or an infinity (e.g. an element the kernel never wrote).
double max_rel_diff(const std::vector<float>& got, const std::vector<float>& ref) {
  if (got.size() != ref.size()) return std::numeric_limits<double>::infinity();
  double max_ref = 0.0, max_diff = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i]) || !std::isfinite(ref[i]))
      return std::numeric_limits<double>::infinity();
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref[i])));
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(got[i]) - ref[i]));
  }
  return max_ref > 0.0 ? max_diff / max_ref : max_diff;
}

std::vector<float> random_normal(size_t n, uint32_t seed, float scale) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& f : v) f = dist(gen);
  return v;
}

// ---- device memory ------------------------------------------------------------------------------

template <class E>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t count) : count_(count) {
    DL_CUDA_CHECK(cudaMalloc(&ptr_, std::max<size_t>(count, 1) * sizeof(E)));
  }
  ~DeviceArray() { release(); }
  DeviceArray(DeviceArray&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  E* get() const { return ptr_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(E); }

 private:
  void release() noexcept {
    if (ptr_) warn_if_failed(cudaFree(ptr_), "cudaFree");
    ptr_ = nullptr;
  }
  E* ptr_ = nullptr;
  size_t count_ = 0;
};

template <class E>
DeviceArray<E> upload(const std::vector<float>& values) {
  std::vector<E> converted(values.size());
  for (size_t i = 0; i < values.size(); ++i) converted[i] = from_float<E>(values[i]);
  DeviceArray<E> d(values.size());
  DL_CUDA_CHECK(cudaMemcpy(d.get(), converted.data(), d.bytes(), cudaMemcpyHostToDevice));
  return d;
}

template <class E>
std::vector<float> download(const E* d, size_t n) {
  std::vector<E> raw(n);
  DL_CUDA_CHECK(cudaMemcpy(raw.data(), d, n * sizeof(E), cudaMemcpyDeviceToHost));
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = to_float(raw[i]);
  return out;
}

// All bits set: NaN in fp32 and in bf16.
void poison(void* p, size_t bytes, cudaStream_t stream) {
  DL_CUDA_CHECK(cudaMemsetAsync(p, 0xFF, bytes, stream));
}

// ---- helper kernels -----------------------------------------------------------------------------

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__device__ __forceinline__ void store(float v, float* p) {
  *p = v;
}
__device__ __forceinline__ void store(float v, bf16* p) {
  *p = __float2bfloat16(v);
}

// out[i] = a standard normal sample (Box-Muller over a counter-based hash of seed and i).
template <class T>
__global__ void fill_normal_kernel(T* out, int64_t n, uint64_t seed) {
  const uint64_t key = splitmix64(seed);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const uint64_t bits = splitmix64(key + static_cast<uint64_t>(i));
    const float u1 = (static_cast<float>(bits >> 40) + 1.0f) * 0x1p-24f;  // (0, 1]
    const float u2 = static_cast<float>(bits & 0xFFFFFFu) * 0x1p-24f;     // [0, 1)
    store(sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2), out + i);
  }
}

// Holds the GPU for `ns` nanoseconds, so that the runs queued behind it start back to back.
__global__ void hold_kernel(uint64_t ns) {
  uint64_t start, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < ns);
}

int grid_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + 255) / 256, 16384));
}

template <class T>
void fill_normal(T* out, int64_t n, uint64_t seed, cudaStream_t stream) {
  fill_normal_kernel<T><<<grid_for(n), 256, 0, stream>>>(out, n, seed);
  DL_CUDA_CHECK_LAUNCH();
}

// ---- options, results, context ------------------------------------------------------------------

struct Options {
  bool quick = false;
  int reps = 30;
  int64_t wide_batch = 64;
  std::string csv;
  std::string dtype = "all";
  std::string filter;
};

const char* kUsage =
    "usage: bench_kernels [--quick] [--reps N] [--csv PATH] [--dtype fp32|bf16|all]\n"
    "                     [--filter SUBSTRING] [--wide-batch N]\n"
    "  --quick         only N=512, 16x16, C=256, k=5 (default: every ConvMixer shape)\n"
    "  --reps N        timed runs per measurement, median reported (default 30)\n"
    "  --csv PATH      also write the result table as CSV\n"
    "  --dtype D       fp32, bf16 or all (default all)\n"
    "  --filter S      only ops whose name contains S (dwconv, bn, gelu, bwd, ...)\n"
    "  --wide-batch N  batch of the C=768 and C=1024 shapes (default 64)\n";

Options parse_options(int argc, char** argv) {
  Options o;
  auto value = [&](int& i) -> std::string {
    if (i + 1 >= argc) throw std::invalid_argument(std::string(argv[i]) + " needs a value");
    return argv[++i];
  };
  auto positive = [](const std::string& flag, const std::string& v) {
    char* end = nullptr;
    const long long n = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || n < 1 || n > 100000)
      throw std::invalid_argument(flag + " takes a positive integer, got '" + v + "'");
    return n;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      o.quick = true;
    } else if (a == "--reps") {
      o.reps = static_cast<int>(positive(a, value(i)));
    } else if (a == "--csv") {
      o.csv = value(i);
    } else if (a == "--dtype") {
      o.dtype = value(i);
      if (o.dtype != "fp32" && o.dtype != "bf16" && o.dtype != "all")
        throw std::invalid_argument("--dtype takes fp32, bf16 or all, got '" + o.dtype + "'");
    } else if (a == "--filter") {
      o.filter = value(i);
    } else if (a == "--wide-batch") {
      o.wide_batch = positive(a, value(i));
    } else if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown flag '" + a + "'");
    }
  }
  return o;
}

struct ActShape {
  int64_t n, h, w, c;
  std::vector<int> ks;
  int64_t rows() const { return n * h * w; }
  int64_t elements() const { return n * h * w * c; }
  std::string label() const {
    return std::to_string(n) + "x" + std::to_string(h) + "x" + std::to_string(w) + "x" +
           std::to_string(c);
  }
};

struct Row {
  std::string op, shape, dtype;
  double ours_ms = kNaN, cudnn_ms = kNaN;
  double floor_bytes = 0.0;
  std::string baseline;
};

class Context {
 public:
  explicit Context(Options o) : opt(std::move(o)), conv_ws(kConvWorkspace) {
    // A blocking stream: upload() and download() use cudaMemcpy on the legacy default stream,
    // which then waits for the work queued here (a non-blocking stream would race them).
    DL_CUDA_CHECK(cudaStreamCreate(&stream));
    DL_CUDNN_CHECK(cudnnCreate(&cudnn));
    DL_CUDNN_CHECK(cudnnSetStream(cudnn, stream));
    start_.resize(opt.reps);
    stop_.resize(opt.reps);
    for (int i = 0; i < opt.reps; ++i) {
      DL_CUDA_CHECK(cudaEventCreate(&start_[i]));
      DL_CUDA_CHECK(cudaEventCreate(&stop_[i]));
    }
  }
  ~Context() {
    for (size_t i = 0; i < start_.size(); ++i) {
      warn_if_failed(cudaEventDestroy(start_[i]), "cudaEventDestroy");
      warn_if_failed(cudaEventDestroy(stop_[i]), "cudaEventDestroy");
    }
    warn_if_failed(cudnnDestroy(cudnn), "cudnnDestroy");
    warn_if_failed(cudaStreamDestroy(stream), "cudaStreamDestroy");
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  bool want(const std::string& op) const {
    return opt.filter.empty() || op.find(opt.filter) != std::string::npos;
  }
  uint64_t next_seed() { return seed_++; }
  void sync() { DL_CUDA_CHECK(cudaStreamSynchronize(stream)); }

  // Median milliseconds of run(set) over opt.reps timed runs, rotating set over nsets.
  double time_ms(int nsets, const std::function<void(int)>& run) {
    for (int i = 0; i < kWarmup; ++i) run(i % nsets);
    sync();
    // Long enough for the host to queue every run (well under a millisecond each), at most 1 s.
    hold_kernel<<<1, 1, 0, stream>>>(
        std::min<uint64_t>(uint64_t{1000000} * (2 + opt.reps), uint64_t{1000000000}));
    DL_CUDA_CHECK_LAUNCH();
    for (int i = 0; i < opt.reps; ++i) {
      DL_CUDA_CHECK(cudaEventRecord(start_[i], stream));
      run((kWarmup + i) % nsets);
      DL_CUDA_CHECK(cudaEventRecord(stop_[i], stream));
    }
    DL_CUDA_CHECK(cudaEventSynchronize(stop_.back()));
    std::vector<float> ms(opt.reps);
    for (int i = 0; i < opt.reps; ++i)
      DL_CUDA_CHECK(cudaEventElapsedTime(&ms[i], start_[i], stop_[i]));
    std::nth_element(ms.begin(), ms.begin() + opt.reps / 2, ms.end());
    return ms[opt.reps / 2];
  }

  // Prints one check line; a difference over the tolerance (or NaN) counts as a failure.
  void report(const std::string& what, double diff, double tol) {
    const bool ok = diff <= tol;
    std::printf("  check %-62s max rel diff %9.2e (tol %.0e) %s\n", what.c_str(), diff, tol,
                ok ? "ok" : "FAILED");
    if (!ok) ++failures;
  }

  void add_row(Row r) { rows.push_back(std::move(r)); }

  Options opt;
  cudaStream_t stream = nullptr;
  cudnnHandle_t cudnn = nullptr;
  DeviceArray<unsigned char> conv_ws;
  double copy_gbps = 0.0;
  int failures = 0;
  std::vector<Row> rows;
  std::vector<std::string> bn_modes;  // the cuDNN BatchNorm mode used per shape, for the notes

 private:
  uint64_t seed_ = 1;
  std::vector<cudaEvent_t> start_, stop_;
};

// One rotation set of activation-sized buffers (T) and per-set cuDNN BatchNorm state.
template <class T>
struct BufferSet {
  DeviceArray<T> x, dy, r, g, y, y2, x_nchw, dy_nchw, y_nchw;
  DeviceArray<float> mean, invstd;     // statistics of the last BatchNorm forward on this set
  DeviceArray<unsigned char> reserve;  // cuDNN's BatchNorm reserve space for this set
};
constexpr int kTensorsPerSet = 9;

template <class T>
std::vector<BufferSet<T>> make_sets(Context& ctx, const ActShape& a, int nsets) {
  const int64_t m = a.elements();
  std::vector<BufferSet<T>> sets(nsets);
  for (BufferSet<T>& s : sets) {
    for (DeviceArray<T>* t :
         {&s.x, &s.dy, &s.r, &s.g, &s.y, &s.y2, &s.x_nchw, &s.dy_nchw, &s.y_nchw})
      *t = DeviceArray<T>(m);
    for (DeviceArray<T>* t : {&s.x, &s.dy, &s.r})
      fill_normal(t->get(), m, ctx.next_seed(), ctx.stream);
    dl::cuda::gelu_forward<T>(s.x.get(), s.g.get(), m, ctx.stream);
    dl::cuda::transpose_batched(s.x.get(), a.n, a.h * a.w, a.c, s.x_nchw.get(), ctx.stream);
    dl::cuda::transpose_batched(s.dy.get(), a.n, a.h * a.w, a.c, s.dy_nchw.get(), ctx.stream);
    s.mean = DeviceArray<float>(a.c);
    s.invstd = DeviceArray<float>(a.c);
  }
  ctx.sync();
  return sets;
}

// ---- cuDNN descriptors --------------------------------------------------------------------------

struct TensorDesc {
  TensorDesc() { DL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d)); }
  ~TensorDesc() { warn_if_failed(cudnnDestroyTensorDescriptor(d), "cudnnDestroyTensorDescriptor"); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
  cudnnTensorDescriptor_t d = nullptr;
};

// A depthwise convolution (groups = C, stride 1, "same" padding) in one layout.
struct ConvDescs {
  ConvDescs(const ActShape& a, int k, cudnnTensorFormat_t format, cudnnDataType_t type) {
    const int n = static_cast<int>(a.n), c = static_cast<int>(a.c);
    const int h = static_cast<int>(a.h), w = static_cast<int>(a.w);
    DL_CUDNN_CHECK(cudnnSetTensor4dDescriptor(act.d, format, type, n, c, h, w));
    DL_CUDNN_CHECK(cudnnCreateFilterDescriptor(&filter));
    // [C, 1, k, k]: with one input channel per group, KCRS and KRSC are the same bytes.
    DL_CUDNN_CHECK(cudnnSetFilter4dDescriptor(filter, type, format, c, 1, k, k));
    DL_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
    DL_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv, k / 2, k / 2, 1, 1, 1, 1,
                                                   CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    DL_CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv, c));
    fp32 = type == CUDNN_DATA_FLOAT;
    DL_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, fp32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH));
  }
  ~ConvDescs() {
    warn_if_failed(cudnnDestroyConvolutionDescriptor(conv), "cudnnDestroyConvolutionDescriptor");
    warn_if_failed(cudnnDestroyFilterDescriptor(filter), "cudnnDestroyFilterDescriptor");
  }
  ConvDescs(const ConvDescs&) = delete;
  ConvDescs& operator=(const ConvDescs&) = delete;

  TensorDesc act;  // x, y, dx and dy: same dims ("same" padding)
  cudnnFilterDescriptor_t filter = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  bool fp32 = true;
};

enum class ConvDir { kForward, kBackwardData, kBackwardFilter };

// kForward: a = x, b = w, out = y. kBackwardData: a = w, b = dy, out = dx.
// kBackwardFilter: a = x, b = dy, out = dw.
struct ConvArgs {
  const void* a;
  const void* b;
  void* out;
};

struct AlgoChoice {
  bool found = false;
  int algo = 0;
  size_t workspace = 0;
  std::string name;  // e.g. "IMPLICIT_PRECOMP_GEMM tensor-op", or why nothing was found
};

struct AlgoPerf {
  int algo;
  cudnnStatus_t status;
  float time;
  size_t memory;
  cudnnMathType_t math;
};

template <class P>
std::vector<AlgoPerf> collect(const P* perf, int count) {
  std::vector<AlgoPerf> out;
  for (int i = 0; i < count; ++i)
    out.push_back({static_cast<int>(perf[i].algo), perf[i].status, perf[i].time, perf[i].memory,
                   perf[i].mathType});
  return out;
}

const char* algo_name(ConvDir dir, int algo) {
  static const char* const fwd[] = {
      "IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM", "DIRECT", "FFT", "FFT_TILING",
      "WINOGRAD",      "WINOGRAD_NONFUSED"};
  static const char* const data[] = {"ALGO_0",     "ALGO_1",   "FFT",
                                     "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
  static const char* const filter[] = {
      "ALGO_0", "ALGO_1", "FFT", "ALGO_3", "WINOGRAD", "WINOGRAD_NONFUSED", "FFT_TILING"};
  switch (dir) {
    case ConvDir::kForward:
      return algo >= 0 && algo < 8 ? fwd[algo] : "?";
    case ConvDir::kBackwardData:
      return algo >= 0 && algo < 6 ? data[algo] : "?";
    case ConvDir::kBackwardFilter:
      return algo >= 0 && algo < 7 ? filter[algo] : "?";
  }
  return "?";
}

const char* math_name(cudnnMathType_t math) {
  switch (math) {
    case CUDNN_DEFAULT_MATH:
      return "default-math";
    case CUDNN_TENSOR_OP_MATH:
      return "tensor-op";
    case CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION:
      return "tensor-op-conv";
    case CUDNN_FMA_MATH:
      return "fma";
  }
  return "?";
}

// cuDNN's own search over every algorithm, on real buffers (it overwrites args.out); keeps the
// fastest one that ran successfully and sets its math type on the descriptor (fp32 stays FMA).
AlgoChoice find_algo(Context& ctx, const ConvDescs& d, ConvDir dir, const ConvArgs& args) {
  void* ws = ctx.conv_ws.get();
  const size_t ws_bytes = ctx.conv_ws.bytes();
  int count = 0;
  cudnnStatus_t status = CUDNN_STATUS_SUCCESS;
  std::vector<AlgoPerf> perf;
  switch (dir) {
    case ConvDir::kForward: {
      cudnnConvolutionFwdAlgoPerf_t p[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
      status = cudnnFindConvolutionForwardAlgorithmEx(
          ctx.cudnn, d.act.d, args.a, d.filter, args.b, d.conv, d.act.d, args.out,
          CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, p, ws, ws_bytes);
      if (status == CUDNN_STATUS_SUCCESS) perf = collect(p, count);
      break;
    }
    case ConvDir::kBackwardData: {
      cudnnConvolutionBwdDataAlgoPerf_t p[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
      status = cudnnFindConvolutionBackwardDataAlgorithmEx(
          ctx.cudnn, d.filter, args.a, d.act.d, args.b, d.conv, d.act.d, args.out,
          CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, p, ws, ws_bytes);
      if (status == CUDNN_STATUS_SUCCESS) perf = collect(p, count);
      break;
    }
    case ConvDir::kBackwardFilter: {
      cudnnConvolutionBwdFilterAlgoPerf_t p[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
      status = cudnnFindConvolutionBackwardFilterAlgorithmEx(
          ctx.cudnn, d.act.d, args.a, d.act.d, args.b, d.conv, d.filter, args.out,
          CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, p, ws, ws_bytes);
      if (status == CUDNN_STATUS_SUCCESS) perf = collect(p, count);
      break;
    }
  }
  AlgoChoice choice;
  if (status != CUDNN_STATUS_SUCCESS) {
    choice.name = std::string("search failed: ") + cudnnGetErrorString(status);
    return choice;
  }
  const AlgoPerf* best = nullptr;
  for (const AlgoPerf& p : perf)
    if (p.status == CUDNN_STATUS_SUCCESS && p.memory <= ws_bytes && p.time >= 0.0f &&
        (!best || p.time < best->time))
      best = &p;
  if (!best) {
    choice.name = "no algorithm ran (" + std::to_string(perf.size()) + " tried)";
    return choice;
  }
  const cudnnMathType_t math = d.fp32 ? CUDNN_FMA_MATH : best->math;
  DL_CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv, math));
  choice.found = true;
  choice.algo = best->algo;
  choice.workspace = best->memory;
  choice.name = std::string(algo_name(dir, best->algo)) + " " + math_name(math);
  return choice;
}

void run_conv(Context& ctx, const ConvDescs& d, ConvDir dir, const AlgoChoice& c,
              const ConvArgs& args) {
  const float one = 1.0f, zero = 0.0f;
  void* ws = ctx.conv_ws.get();
  switch (dir) {
    case ConvDir::kForward:
      DL_CUDNN_CHECK(cudnnConvolutionForward(ctx.cudnn, &one, d.act.d, args.a, d.filter, args.b,
                                             d.conv, static_cast<cudnnConvolutionFwdAlgo_t>(c.algo),
                                             ws, c.workspace, &zero, d.act.d, args.out));
      break;
    case ConvDir::kBackwardData:
      DL_CUDNN_CHECK(
          cudnnConvolutionBackwardData(ctx.cudnn, &one, d.filter, args.a, d.act.d, args.b, d.conv,
                                       static_cast<cudnnConvolutionBwdDataAlgo_t>(c.algo), ws,
                                       c.workspace, &zero, d.act.d, args.out));
      break;
    case ConvDir::kBackwardFilter:
      DL_CUDNN_CHECK(
          cudnnConvolutionBackwardFilter(ctx.cudnn, &one, d.act.d, args.a, d.act.d, args.b, d.conv,
                                         static_cast<cudnnConvolutionBwdFilterAlgo_t>(c.algo), ws,
                                         c.workspace, &zero, d.filter, args.out));
      break;
  }
}

// cuDNN's BatchNorm training forward and backward (Ex API, CUDNN_BATCHNORM_OPS_BN) on an NHWC
// activation; the mode is SPATIAL_PERSISTENT if cuDNN runs it at this shape, else SPATIAL.
class CudnnBatchNorm {
 public:
  CudnnBatchNorm(cudnnHandle_t handle, const ActShape& a, cudnnDataType_t type) : handle_(handle) {
    DL_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x_.d, CUDNN_TENSOR_NHWC, type, static_cast<int>(a.n),
                                              static_cast<int>(a.c), static_cast<int>(a.h),
                                              static_cast<int>(a.w)));
  }

  // Tries each mode with one forward and one backward on real buffers; false if neither runs
  // (why() says what cuDNN answered).
  bool select(const void* x, void* y, const void* dy, void* dx, const float* gamma,
              const float* beta, float* running_mean, float* running_var, float* mean,
              float* invstd, float* dgamma, float* dbeta, cudaStream_t stream) {
    for (cudnnBatchNormMode_t mode :
         {CUDNN_BATCHNORM_SPATIAL_PERSISTENT, CUDNN_BATCHNORM_SPATIAL}) {
      mode_ = mode;
      cudnnStatus_t st = cudnnDeriveBNTensorDescriptor(param_.d, x_.d, mode);
      size_t fwd_ws = 0, bwd_ws = 0;
      if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize(
            handle_, mode, CUDNN_BATCHNORM_OPS_BN, x_.d, nullptr, x_.d, param_.d, nullptr, &fwd_ws);
      if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnGetBatchNormalizationBackwardExWorkspaceSize(
            handle_, mode, CUDNN_BATCHNORM_OPS_BN, x_.d, nullptr, x_.d, nullptr, x_.d, param_.d,
            nullptr, &bwd_ws);
      if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnGetBatchNormalizationTrainingExReserveSpaceSize(
            handle_, mode, CUDNN_BATCHNORM_OPS_BN, nullptr, x_.d, &reserve_bytes_);
      if (st == CUDNN_STATUS_SUCCESS) {
        workspace_ = DeviceArray<unsigned char>(std::max(fwd_ws, bwd_ws));
        DeviceArray<unsigned char> reserve(reserve_bytes_);
        st = forward(x, y, gamma, beta, running_mean, running_var, mean, invstd, reserve.get());
        if (st == CUDNN_STATUS_SUCCESS)
          st = backward(x, dy, dx, gamma, dgamma, dbeta, mean, invstd, reserve.get());
        DL_CUDA_CHECK(cudaStreamSynchronize(stream));
      }
      if (st == CUDNN_STATUS_SUCCESS) return true;
      why_ += std::string(why_.empty() ? "" : "; ") + mode_name() + ": " + cudnnGetErrorString(st);
    }
    return false;
  }

  cudnnStatus_t forward(const void* x, void* y, const float* gamma, const float* beta,
                        float* running_mean, float* running_var, float* mean, float* invstd,
                        void* reserve) const {
    const float one = 1.0f, zero = 0.0f;
    return cudnnBatchNormalizationForwardTrainingEx(
        handle_, mode_, CUDNN_BATCHNORM_OPS_BN, &one, &zero, x_.d, x, nullptr, nullptr, x_.d, y,
        param_.d, gamma, beta, kMomentum, running_mean, running_var, kEps, mean, invstd, nullptr,
        workspace_.get(), workspace_.bytes(), reserve, reserve_bytes_);
  }
  cudnnStatus_t backward(const void* x, const void* dy, void* dx, const float* gamma, float* dgamma,
                         float* dbeta, const float* mean, const float* invstd,
                         void* reserve) const {
    const float one = 1.0f, zero = 0.0f;
    return cudnnBatchNormalizationBackwardEx(
        handle_, mode_, CUDNN_BATCHNORM_OPS_BN, &one, &zero, &one, &zero, x_.d, x, nullptr, nullptr,
        x_.d, dy, nullptr, nullptr, x_.d, dx, param_.d, gamma, nullptr, dgamma, dbeta, kEps, mean,
        invstd, nullptr, workspace_.get(), workspace_.bytes(), reserve, reserve_bytes_);
  }

  size_t reserve_bytes() const { return reserve_bytes_; }
  const std::string& why() const { return why_; }
  const char* mode_name() const {
    return mode_ == CUDNN_BATCHNORM_SPATIAL_PERSISTENT ? "SPATIAL_PERSISTENT" : "SPATIAL";
  }

 private:
  cudnnHandle_t handle_ = nullptr;
  TensorDesc x_, param_;
  cudnnBatchNormMode_t mode_ = CUDNN_BATCHNORM_SPATIAL_PERSISTENT;
  size_t reserve_bytes_ = 0;
  DeviceArray<unsigned char> workspace_;
  std::string why_;
};

// ---- checks against the CPU reference (batch kCheckBatch) ---------------------------------------

template <class T>
std::string check_label(const std::string& op, const ActShape& a, int k, const char* against) {
  ActShape s = a;
  s.n = kCheckBatch;
  return op + " " + s.label() + (k ? " k" + std::to_string(k) : "") + " " + dtype_name<T>() +
         " vs " + against;
}

template <class T>
void check_conv_cpu(Context& ctx, const ActShape& a, int k) {
  const dl::Conv2dShape s = dl::Conv2dShape::depthwise_same(kCheckBatch, a.h, a.w, a.c, k);
  const int64_t m = kCheckBatch * a.h * a.w * a.c, wn = a.c * k * k;
  DeviceArray<T> x(m), dy(m), out(m);
  fill_normal(x.get(), m, ctx.next_seed(), ctx.stream);
  fill_normal(dy.get(), m, ctx.next_seed(), ctx.stream);
  const std::vector<float> w = random_normal(wn, static_cast<uint32_t>(ctx.next_seed()), 1.0f / k);
  DeviceArray<float> w_d = upload<float>(w), dw(wn);
  DeviceArray<unsigned char> ws(dl::cuda::depthwise_conv_backward_weight_workspace_bytes(s));
  const std::vector<float> xh = download(x.get(), m), dyh = download(dy.get(), m);
  std::vector<float> ref(m), dw_ref(wn);
  const double tol = tolerance<T>();

  if (ctx.want("dwconv_fwd")) {
    poison(out.get(), out.bytes(), ctx.stream);
    dl::cuda::depthwise_conv_forward<T>(s, x.get(), w_d.get(), nullptr, out.get(), ctx.stream);
    dl::cpu::conv2d_forward(s, xh.data(), w.data(), nullptr, ref.data());
    ctx.report(check_label<T>("dwconv_fwd", a, k, "CPU"), max_rel_diff(download(out.get(), m), ref),
               tol);
  }
  if (ctx.want("dwconv_bwd_data")) {
    poison(out.get(), out.bytes(), ctx.stream);
    dl::cuda::depthwise_conv_backward_data<T>(s, dy.get(), w_d.get(), out.get(), ctx.stream);
    dl::cpu::conv2d_backward_data(s, dyh.data(), w.data(), ref.data());
    ctx.report(check_label<T>("dwconv_bwd_data", a, k, "CPU"),
               max_rel_diff(download(out.get(), m), ref), tol);
  }
  if (ctx.want("dwconv_bwd_weight")) {
    poison(dw.get(), dw.bytes(), ctx.stream);
    dl::cuda::depthwise_conv_backward_weight<T>(s, x.get(), dy.get(), dw.get(), nullptr, ws.get(),
                                                ctx.stream);
    dl::cpu::conv2d_backward_weight(s, dyh.data(), xh.data(), dw_ref.data(), nullptr);
    ctx.report(check_label<T>("dwconv_bwd_weight", a, k, "CPU"),
               max_rel_diff(download(dw.get(), wn), dw_ref), tol);
  }
}

template <class T>
void check_norm_cpu(Context& ctx, const ActShape& a) {
  const int64_t rows = kCheckBatch * a.h * a.w, c = a.c, m = rows * c;
  DeviceArray<T> x(m), dy(m), r(m), out(m);
  for (DeviceArray<T>* t : {&x, &dy, &r}) fill_normal(t->get(), m, ctx.next_seed(), ctx.stream);
  const std::vector<float> gamma = random_normal(c, static_cast<uint32_t>(ctx.next_seed()), 1.0f);
  const std::vector<float> beta = random_normal(c, static_cast<uint32_t>(ctx.next_seed()), 1.0f);
  DeviceArray<float> gamma_d = upload<float>(gamma), beta_d = upload<float>(beta);
  DeviceArray<float> mean(c), invstd(c), dgamma(c), dbeta(c);
  DeviceArray<unsigned char> ws(dl::cuda::batchnorm_workspace_bytes(rows, c));
  const std::vector<float> xh = download(x.get(), m), dyh = download(dy.get(), m),
                           rh = download(r.get(), m);
  std::vector<float> ref(m), g(m), t(m), mean_ref(c), invstd_ref(c), dgamma_ref(c), dbeta_ref(c);
  const double tol = tolerance<T>();
  auto run = [&](void* output, size_t bytes, const std::function<void()>& launch) {
    poison(output, bytes, ctx.stream);
    launch();
  };
  // Worst relative difference over a kernel's outputs.
  auto worst = [](std::initializer_list<double> diffs) {
    double w = 0.0;
    for (double d : diffs)
      w = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(w, d);
    return w;
  };

  // Plain BatchNorm forward and backward (the backward uses each side's own statistics).
  dl::cpu::batchnorm_forward_train(xh.data(), rows, c, gamma.data(), beta.data(), kEps, kMomentum,
                                   nullptr, nullptr, ref.data(), mean_ref.data(),
                                   invstd_ref.data());
  run(out.get(), out.bytes(), [&] {
    dl::cuda::batchnorm_forward_train<T>(x.get(), rows, c, gamma_d.get(), beta_d.get(), kEps,
                                         kMomentum, nullptr, nullptr, nullptr, out.get(),
                                         mean.get(), invstd.get(), ws.get(), ctx.stream);
  });
  if (ctx.want("bn_fwd_train"))
    ctx.report(check_label<T>("bn_fwd_train", a, 0, "CPU"),
               worst({max_rel_diff(download(out.get(), m), ref),
                      max_rel_diff(download(mean.get(), c), mean_ref),
                      max_rel_diff(download(invstd.get(), c), invstd_ref)}),
               tol);
  if (ctx.want("bn_bwd")) {
    run(out.get(), out.bytes(), [&] {
      dl::cuda::batchnorm_backward<T>(dy.get(), x.get(), rows, c, gamma_d.get(), mean.get(),
                                      invstd.get(), true, out.get(), dgamma.get(), dbeta.get(),
                                      ws.get(), ctx.stream);
    });
    dl::cpu::batchnorm_backward(dyh.data(), xh.data(), rows, c, gamma.data(), mean_ref.data(),
                                invstd_ref.data(), true, ref.data(), dgamma_ref.data(),
                                dbeta_ref.data());
    ctx.report(check_label<T>("bn_bwd", a, 0, "CPU"),
               worst({max_rel_diff(download(out.get(), m), ref),
                      max_rel_diff(download(dgamma.get(), c), dgamma_ref),
                      max_rel_diff(download(dbeta.get(), c), dbeta_ref)}),
               tol);
  }
  if (ctx.want("gelu_fwd")) {
    run(out.get(), out.bytes(),
        [&] { dl::cuda::gelu_forward<T>(x.get(), out.get(), m, ctx.stream); });
    dl::cpu::gelu_forward(xh.data(), ref.data(), m);
    ctx.report(check_label<T>("gelu_fwd", a, 0, "CPU"), max_rel_diff(download(out.get(), m), ref),
               tol);
  }
  if (ctx.want("gelu_bwd")) {
    run(out.get(), out.bytes(),
        [&] { dl::cuda::gelu_backward<T>(x.get(), dy.get(), out.get(), m, ctx.stream); });
    dl::cpu::gelu_backward(xh.data(), dyh.data(), ref.data(), m);
    ctx.report(check_label<T>("gelu_bwd", a, 0, "CPU"), max_rel_diff(download(out.get(), m), ref),
               tol);
  }

  // Fused: y = BN(GELU(h)) + r with h = x; then dh from dy.
  dl::cpu::gelu_forward(xh.data(), g.data(), m);
  dl::cpu::batchnorm_forward_train(g.data(), rows, c, gamma.data(), beta.data(), kEps, kMomentum,
                                   nullptr, nullptr, t.data(), mean_ref.data(), invstd_ref.data());
  dl::cpu::add(t.data(), rh.data(), ref.data(), m);
  run(out.get(), out.bytes(), [&] {
    dl::cuda::gelu_batchnorm_forward_train<T>(x.get(), rows, c, gamma_d.get(), beta_d.get(), kEps,
                                              kMomentum, nullptr, nullptr, r.get(), out.get(),
                                              mean.get(), invstd.get(), ws.get(), ctx.stream);
  });
  if (ctx.want("gelu_bn_res_fwd"))
    ctx.report(check_label<T>("gelu_bn_res_fwd", a, 0, "CPU"),
               worst({max_rel_diff(download(out.get(), m), ref),
                      max_rel_diff(download(mean.get(), c), mean_ref),
                      max_rel_diff(download(invstd.get(), c), invstd_ref)}),
               tol);
  if (ctx.want("gelu_bn_bwd")) {
    run(out.get(), out.bytes(), [&] {
      dl::cuda::gelu_batchnorm_backward<T>(dy.get(), x.get(), rows, c, gamma_d.get(), mean.get(),
                                           invstd.get(), true, out.get(), dgamma.get(), dbeta.get(),
                                           ws.get(), ctx.stream);
    });
    dl::cpu::batchnorm_backward(dyh.data(), g.data(), rows, c, gamma.data(), mean_ref.data(),
                                invstd_ref.data(), true, t.data(), dgamma_ref.data(),
                                dbeta_ref.data());
    dl::cpu::gelu_backward(xh.data(), t.data(), ref.data(), m);
    ctx.report(check_label<T>("gelu_bn_bwd", a, 0, "CPU"),
               worst({max_rel_diff(download(out.get(), m), ref),
                      max_rel_diff(download(dgamma.get(), c), dgamma_ref),
                      max_rel_diff(download(dbeta.get(), c), dbeta_ref)}),
               tol);
  }
}

// Runs launch(0) into a NaN-poisoned output and returns that output (n elements of E).
template <class E>
std::vector<float> run_and_fetch(Context& ctx, E* out, size_t n,
                                 const std::function<void(int)>& launch) {
  poison(out, n * sizeof(E), ctx.stream);
  launch(0);
  ctx.sync();
  return download(out, n);
}

// ---- depthwise convolution ----------------------------------------------------------------------

template <class T>
void bench_conv(Context& ctx, const ActShape& a, int k, std::vector<BufferSet<T>>& sets) {
  const char* const ops[] = {"dwconv_fwd", "dwconv_bwd_data", "dwconv_bwd_weight"};
  const ConvDir dirs[] = {ConvDir::kForward, ConvDir::kBackwardData, ConvDir::kBackwardFilter};
  if (!ctx.want(ops[0]) && !ctx.want(ops[1]) && !ctx.want(ops[2])) return;
  check_conv_cpu<T>(ctx, a, k);

  const dl::Conv2dShape s = dl::Conv2dShape::depthwise_same(a.n, a.h, a.w, a.c, k);
  const int64_t m = a.elements(), wn = a.c * k * k;
  const int nsets = static_cast<int>(sets.size());
  std::vector<float> w = random_normal(wn, static_cast<uint32_t>(ctx.next_seed()), 1.0f / k);
  if (is_bf16<T>())  // cuDNN takes bf16 weights: make ours (fp32) the same values
    for (float& v : w) v = to_float(from_float<bf16>(v));
  const DeviceArray<float> w32 = upload<float>(w);
  const DeviceArray<T> w_t = upload<T>(w);
  DeviceArray<float> dw32(wn);
  DeviceArray<T> dw_t(wn);
  DeviceArray<unsigned char> ws(dl::cuda::depthwise_conv_backward_weight_workspace_bytes(s));
  const std::string shape = a.label() + " k" + std::to_string(k);
  const double bytes = 2.0 * m * sizeof(T) + 4.0 * wn;
  const double tol = tolerance<T>();

  for (int d = 0; d < 3; ++d) {
    if (!ctx.want(ops[d])) continue;
    const ConvDir dir = dirs[d];
    std::function<void(int)> ours;
    if (dir == ConvDir::kForward)
      ours = [&](int i) {
        dl::cuda::depthwise_conv_forward<T>(s, sets[i].x.get(), w32.get(), nullptr, sets[i].y.get(),
                                            ctx.stream);
      };
    else if (dir == ConvDir::kBackwardData)
      ours = [&](int i) {
        dl::cuda::depthwise_conv_backward_data<T>(s, sets[i].dy.get(), w32.get(), sets[i].y.get(),
                                                  ctx.stream);
      };
    else
      ours = [&](int i) {
        dl::cuda::depthwise_conv_backward_weight<T>(s, sets[i].x.get(), sets[i].dy.get(),
                                                    dw32.get(), nullptr, ws.get(), ctx.stream);
      };
    const std::vector<float> ours_out = dir == ConvDir::kBackwardFilter
                                            ? run_and_fetch(ctx, dw32.get(), wn, ours)
                                            : run_and_fetch(ctx, sets[0].y.get(), m, ours);
    const double ours_ms = ctx.time_ms(nsets, ours);

    for (const bool nhwc : {true, false}) {
      const char* layout = nhwc ? "NHWC" : "NCHW";
      Row row{std::string(ops[d]) + "/" + layout, shape, dtype_name<T>(), ours_ms, kNaN, bytes, ""};
      // The cuDNN side's arguments for set i; activation outputs go to y2 (NHWC) or y_nchw.
      auto args = [&](int i) -> ConvArgs {
        BufferSet<T>& b = sets[i];
        const T* x = nhwc ? b.x.get() : b.x_nchw.get();
        const T* dy = nhwc ? b.dy.get() : b.dy_nchw.get();
        T* y = nhwc ? b.y2.get() : b.y_nchw.get();
        switch (dir) {
          case ConvDir::kForward:
            return {x, w_t.get(), y};
          case ConvDir::kBackwardData:
            return {w_t.get(), dy, y};
          case ConvDir::kBackwardFilter:
            break;
        }
        return {x, dy, dw_t.get()};
      };
      try {
        ConvDescs desc(a, k, nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW, cudnn_type<T>());
        const AlgoChoice algo = find_algo(ctx, desc, dir, args(0));
        if (!algo.found) {
          row.baseline = std::string("cuDNN ") + layout + ": " + algo.name;
          std::printf("  n/a   %s %s %s: cuDNN %s\n", row.op.c_str(), shape.c_str(),
                      dtype_name<T>(), algo.name.c_str());
        } else {
          row.baseline = std::string("cuDNN ") + layout + " " + algo.name;
          const std::function<void(int)> theirs = [&](int i) {
            run_conv(ctx, desc, dir, algo, args(i));
          };
          std::vector<float> their_out;
          if (dir == ConvDir::kBackwardFilter) {
            their_out = run_and_fetch(ctx, dw_t.get(), wn, theirs);
          } else if (nhwc) {
            their_out = run_and_fetch(ctx, sets[0].y2.get(), m, theirs);
          } else {  // back to NHWC before comparing
            poison(sets[0].y_nchw.get(), sets[0].y_nchw.bytes(), ctx.stream);
            theirs(0);
            dl::cuda::transpose_batched(sets[0].y_nchw.get(), a.n, a.c, a.h * a.w, sets[0].y2.get(),
                                        ctx.stream);
            ctx.sync();
            their_out = download(sets[0].y2.get(), m);
          }
          ctx.report(row.op + " " + shape + " " + dtype_name<T>() + " vs cuDNN (" + algo.name + ")",
                     max_rel_diff(ours_out, their_out), tol);
          row.cudnn_ms = ctx.time_ms(nsets, theirs);
        }
      } catch (const std::exception& e) {
        row.baseline = std::string("cuDNN ") + layout + " failed";
        std::printf("  n/a   %s %s %s: %s\n", row.op.c_str(), shape.c_str(), dtype_name<T>(),
                    e.what());
        ++ctx.failures;
      }
      ctx.add_row(row);
    }
  }
}

// ---- BatchNorm, GELU and the fused kernels ------------------------------------------------------

template <class T>
void bench_norm(Context& ctx, const ActShape& a, std::vector<BufferSet<T>>& sets) {
  const char* const ops[] = {"bn_fwd_train", "bn_bwd",          "gelu_fwd",
                             "gelu_bwd",     "gelu_bn_res_fwd", "gelu_bn_bwd"};
  bool any = false;
  for (const char* op : ops) any = any || ctx.want(op);
  if (!any) return;
  check_norm_cpu<T>(ctx, a);

  const int64_t rows = a.rows(), c = a.c, m = a.elements();
  const int nsets = static_cast<int>(sets.size());
  const std::string shape = a.label();
  const double act = static_cast<double>(m) * sizeof(T), tol = tolerance<T>();
  const DeviceArray<float> gamma =
      upload<float>(random_normal(c, static_cast<uint32_t>(ctx.next_seed()), 1.0f));
  const DeviceArray<float> beta =
      upload<float>(random_normal(c, static_cast<uint32_t>(ctx.next_seed()), 1.0f));
  const DeviceArray<float> running_mean = upload<float>(std::vector<float>(c, 0.0f));
  const DeviceArray<float> running_var = upload<float>(std::vector<float>(c, 1.0f));
  DeviceArray<float> mean(c), invstd(c), dgamma(c), dbeta(c), dgamma2(c), dbeta2(c);
  DeviceArray<unsigned char> ws(dl::cuda::batchnorm_workspace_bytes(rows, c));
  BufferSet<T>& s0 = sets[0];

  CudnnBatchNorm bn(ctx.cudnn, a, cudnn_type<T>());
  const bool have_bn = bn.select(s0.x.get(), s0.y2.get(), s0.dy.get(), s0.y.get(), gamma.get(),
                                 beta.get(), running_mean.get(), running_var.get(), s0.mean.get(),
                                 s0.invstd.get(), dgamma2.get(), dbeta2.get(), ctx.stream);
  const std::string bn_name = std::string("cuDNN BN ") + (have_bn ? bn.mode_name() : "n/a");
  if (have_bn) {
    ctx.bn_modes.push_back(shape + " " + dtype_name<T>() + ": " + bn.mode_name());
    for (BufferSet<T>& b : sets) b.reserve = DeviceArray<unsigned char>(bn.reserve_bytes());
  } else {
    std::printf("  n/a   cuDNN BatchNorm %s %s: %s\n", shape.c_str(), dtype_name<T>(),
                bn.why().c_str());
    ctx.bn_modes.push_back(shape + " " + dtype_name<T>() + ": none (" + bn.why() + ")");
  }
  auto bn_forward = [&](const T* x, T* y, BufferSet<T>& b) {
    DL_CUDNN_CHECK(bn.forward(x, y, gamma.get(), beta.get(), running_mean.get(), running_var.get(),
                              b.mean.get(), b.invstd.get(), b.reserve.get()));
  };
  // Fills each set's statistics (and cuDNN's reserve) from a BatchNorm forward over x, or over
  // g = GELU(x) when `fused`; ours computes them where cuDNN's BatchNorm is not available.
  auto prepare_stats = [&](bool fused) {
    for (BufferSet<T>& b : sets) {
      if (have_bn)
        bn_forward(fused ? b.g.get() : b.x.get(), b.y2.get(), b);
      else if (fused)
        dl::cuda::gelu_batchnorm_forward_train<T>(
            b.x.get(), rows, c, gamma.get(), beta.get(), kEps, kMomentum, nullptr, nullptr, nullptr,
            b.y2.get(), b.mean.get(), b.invstd.get(), ws.get(), ctx.stream);
      else
        dl::cuda::batchnorm_forward_train<T>(b.x.get(), rows, c, gamma.get(), beta.get(), kEps,
                                             kMomentum, nullptr, nullptr, nullptr, b.y2.get(),
                                             b.mean.get(), b.invstd.get(), ws.get(), ctx.stream);
    }
    ctx.sync();
  };
  // Checks ours against the baseline on set 0 (both write y), then times both; an empty `theirs`
  // leaves the cuDNN column n/a.
  auto measure = [&](const char* op, double bytes, const std::string& baseline,
                     const std::function<void(int)>& ours, const std::function<void(int)>& theirs) {
    Row row{op, shape, dtype_name<T>(), kNaN, kNaN, bytes, baseline};
    const std::vector<float> ours_out = run_and_fetch(ctx, s0.y.get(), m, ours);
    if (theirs) {
      try {
        const std::vector<float> their_out = run_and_fetch(ctx, s0.y.get(), m, theirs);
        ctx.report(std::string(op) + " " + shape + " " + dtype_name<T>() + " vs " + baseline,
                   max_rel_diff(ours_out, their_out), tol);
        row.cudnn_ms = ctx.time_ms(nsets, theirs);
      } catch (const std::exception& e) {
        std::printf("  n/a   %s %s %s: %s\n", op, shape.c_str(), dtype_name<T>(), e.what());
        row.baseline += " (failed)";
        ++ctx.failures;
      }
    }
    row.ours_ms = ctx.time_ms(nsets, ours);
    ctx.add_row(row);
  };

  if (ctx.want("bn_fwd_train")) {
    const auto ours = [&](int i) {
      BufferSet<T>& b = sets[i];
      dl::cuda::batchnorm_forward_train<T>(
          b.x.get(), rows, c, gamma.get(), beta.get(), kEps, kMomentum, running_mean.get(),
          running_var.get(), nullptr, b.y.get(), mean.get(), invstd.get(), ws.get(), ctx.stream);
    };
    std::function<void(int)> theirs;
    if (have_bn) theirs = [&](int i) { bn_forward(sets[i].x.get(), sets[i].y.get(), sets[i]); };
    measure("bn_fwd_train", 2 * act, bn_name, ours, theirs);
  }

  if (ctx.want("bn_bwd")) {
    prepare_stats(false);
    const auto ours = [&](int i) {
      BufferSet<T>& b = sets[i];
      dl::cuda::batchnorm_backward<T>(b.dy.get(), b.x.get(), rows, c, gamma.get(), b.mean.get(),
                                      b.invstd.get(), true, b.y.get(), dgamma.get(), dbeta.get(),
                                      ws.get(), ctx.stream);
    };
    std::function<void(int)> theirs;
    if (have_bn)
      theirs = [&](int i) {
        BufferSet<T>& b = sets[i];
        DL_CUDNN_CHECK(bn.backward(b.x.get(), b.dy.get(), b.y.get(), gamma.get(), dgamma2.get(),
                                   dbeta2.get(), b.mean.get(), b.invstd.get(), b.reserve.get()));
      };
    measure("bn_bwd", 3 * act, bn_name, ours, theirs);
  }

  const std::string copy_only = "none (cuDNN has no GELU): copy bandwidth only";
  if (ctx.want("gelu_fwd"))
    measure(
        "gelu_fwd", 2 * act, copy_only,
        [&](int i) { dl::cuda::gelu_forward<T>(sets[i].x.get(), sets[i].y.get(), m, ctx.stream); },
        nullptr);
  if (ctx.want("gelu_bwd"))
    measure(
        "gelu_bwd", 3 * act, copy_only,
        [&](int i) {
          dl::cuda::gelu_backward<T>(sets[i].x.get(), sets[i].dy.get(), sets[i].y.get(), m,
                                     ctx.stream);
        },
        nullptr);

  if (ctx.want("gelu_bn_res_fwd")) {
    const auto ours = [&](int i) {
      BufferSet<T>& b = sets[i];
      dl::cuda::gelu_batchnorm_forward_train<T>(
          b.x.get(), rows, c, gamma.get(), beta.get(), kEps, kMomentum, running_mean.get(),
          running_var.get(), b.r.get(), b.y.get(), mean.get(), invstd.get(), ws.get(), ctx.stream);
    };
    std::function<void(int)> theirs;
    if (have_bn)
      theirs = [&](int i) {
        BufferSet<T>& b = sets[i];
        dl::cuda::gelu_forward<T>(b.x.get(), b.y2.get(), m, ctx.stream);
        bn_forward(b.y2.get(), b.y.get(), b);
        dl::cuda::add<T>(b.y.get(), b.r.get(), b.y.get(), m, ctx.stream);
      };
    measure("gelu_bn_res_fwd", 3 * act, "our gelu_fwd + " + bn_name + " fwd + our add", ours,
            theirs);
  }

  if (ctx.want("gelu_bn_bwd")) {
    prepare_stats(true);  // the unfused backward reads the stored g = GELU(x)
    const auto ours = [&](int i) {
      BufferSet<T>& b = sets[i];
      dl::cuda::gelu_batchnorm_backward<T>(b.dy.get(), b.x.get(), rows, c, gamma.get(),
                                           b.mean.get(), b.invstd.get(), true, b.y.get(),
                                           dgamma.get(), dbeta.get(), ws.get(), ctx.stream);
    };
    std::function<void(int)> theirs;
    if (have_bn)
      theirs = [&](int i) {
        BufferSet<T>& b = sets[i];
        DL_CUDNN_CHECK(bn.backward(b.g.get(), b.dy.get(), b.y2.get(), gamma.get(), dgamma2.get(),
                                   dbeta2.get(), b.mean.get(), b.invstd.get(), b.reserve.get()));
        dl::cuda::gelu_backward<T>(b.x.get(), b.y2.get(), b.y.get(), m, ctx.stream);
      };
    measure("gelu_bn_bwd", 3 * act, bn_name + " bwd + our gelu_bwd", ours, theirs);
  }
}

// ---- driver -------------------------------------------------------------------------------------

template <class T>
void bench_dtype(Context& ctx, const std::vector<ActShape>& shapes) {
  for (const ActShape& a : shapes) {
    const size_t tensor_bytes = static_cast<size_t>(a.elements()) * sizeof(T);
    const int nsets = static_cast<int>(std::clamp<size_t>(
        (kRotateBytes + 2 * tensor_bytes - 1) / (2 * tensor_bytes), kMinSets, kMaxSets));
    std::printf("== %s %s: %d buffer sets, %.2f GB on the device\n", dtype_name<T>(),
                a.label().c_str(), nsets, 1e-9 * nsets * kTensorsPerSet * tensor_bytes);
    std::fflush(stdout);
    std::vector<BufferSet<T>> sets = make_sets<T>(ctx, a, nsets);
    bench_norm<T>(ctx, a, sets);
    for (int k : a.ks) bench_conv<T>(ctx, a, k, sets);
    std::fflush(stdout);
  }
}

double measure_copy_gbps(Context& ctx) {
  DeviceArray<float> src(kCopyBytes / sizeof(float)), dst(kCopyBytes / sizeof(float));
  fill_normal(src.get(), static_cast<int64_t>(src.size()), ctx.next_seed(), ctx.stream);
  const double ms = ctx.time_ms(1, [&](int) {
    DL_CUDA_CHECK(
        cudaMemcpyAsync(dst.get(), src.get(), kCopyBytes, cudaMemcpyDeviceToDevice, ctx.stream));
  });
  return 2.0 * kCopyBytes / (ms * 1e-3) / 1e9;
}

std::string format_ms(double v) {
  if (std::isnan(v)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", v);
  return buf;
}

struct Derived {
  double speedup, gbps, pct;
};
Derived derive(const Context& ctx, const Row& r) {
  const double gbps = r.floor_bytes / (r.ours_ms * 1e-3) / 1e9;
  return {r.cudnn_ms / r.ours_ms, gbps, 100.0 * gbps / ctx.copy_gbps};
}

void print_table(const Context& ctx) {
  std::printf("\n%-24s %-18s %-5s %9s %9s %8s %9s %7s\n", "op", "shape", "dtype", "ours ms",
              "cuDNN ms", "speedup", "ours GB/s", "% copy");
  for (const Row& r : ctx.rows) {
    const Derived d = derive(ctx, r);
    char speedup[32] = "n/a";
    if (!std::isnan(d.speedup)) std::snprintf(speedup, sizeof speedup, "%.2fx", d.speedup);
    std::printf("%-24s %-18s %-5s %9s %9s %8s %9.1f %6.1f%%\n", r.op.c_str(), r.shape.c_str(),
                r.dtype.c_str(), format_ms(r.ours_ms).c_str(), format_ms(r.cudnn_ms).c_str(),
                speedup, d.gbps, d.pct);
  }
}

void write_csv(const Context& ctx, const std::string& path) {
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write the CSV file '" + path + "'");
  f << "op,shape,dtype,ours_ms,cudnn_ms,speedup,ours_gbps,pct_copy_bw,floor_bytes,baseline\n";
  for (const Row& r : ctx.rows) {
    const Derived d = derive(ctx, r);
    char speedup[32] = "n/a", num[160];
    if (!std::isnan(d.speedup)) std::snprintf(speedup, sizeof speedup, "%.4f", d.speedup);
    std::snprintf(num, sizeof num, "%.2f,%.2f,%.0f", d.gbps, d.pct, r.floor_bytes);
    std::string baseline = r.baseline;
    std::replace(baseline.begin(), baseline.end(), '"', '\'');
    f << r.op << ',' << r.shape << ',' << r.dtype << ',' << format_ms(r.ours_ms) << ','
      << format_ms(r.cudnn_ms) << ',' << speedup << ',' << num << ",\"" << baseline << "\"\n";
  }
  if (!f) throw std::runtime_error("writing the CSV file '" + path + "' failed");
}

void print_notes(const Context& ctx, const Options& o) {
  std::printf(
      "\nNotes:\n"
      "  copy bandwidth (cudaMemcpyAsync D2D, 1 GiB, bytes read + written, median): %.1f GB/s\n"
      "  ours is NHWC throughout; '/NHWC' and '/NCHW' name the layout cuDNN ran (NCHW copies of\n"
      "  the same data), with the fastest algorithm of its own search (cudnnFind*AlgorithmEx,\n"
      "  <= 1 GiB workspace); fp32 convolutions are FMA-only on both sides (no TF32).\n"
      "  GELU: cuDNN's legacy API has no GELU; gelu_fwd/gelu_bwd are compared with the copy\n"
      "  bandwidth only (cuDNN column n/a).\n"
      "  gelu_bn_res_fwd: ours fused vs our gelu_fwd + cuDNN BN forward + our add;\n"
      "  gelu_bn_bwd: ours fused vs cuDNN BN backward + our gelu_bwd.\n"
      "  Byte floors (each input read once, each output written once; A = one activation tensor):\n"
      "  dwconv_* 2A + fp32 weights; bn_fwd_train 2A; bn_bwd 3A; gelu_fwd 2A; gelu_bwd 3A;\n"
      "  gelu_bn_res_fwd 3A; gelu_bn_bwd 3A. 'ours GB/s' is that floor over our time.\n"
      "  Batch: N=512 for C=256; N=%lld for C=768/1024 (--wide-batch). Median of %d runs.\n"
      "  speedup = cuDNN ms / ours ms (> 1: ours faster).\n",
      ctx.copy_gbps, static_cast<long long>(o.wide_batch), o.reps);
  if (!ctx.bn_modes.empty()) {
    std::printf("  cuDNN BatchNorm mode per shape:\n");
    for (const std::string& s : ctx.bn_modes) std::printf("    %s\n", s.c_str());
  }
}

int run(const Options& opt) {
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    std::fprintf(stderr,
                 "bench_kernels: no CUDA GPU found (%s); run it on a machine with an NVIDIA GPU\n",
                 e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return 1;
  }
  cudaDeviceProp prop{};
  DL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  int runtime = 0;
  DL_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  std::printf("bench_kernels: %s (sm_%d%d, %d SMs, %.0f MB L2), CUDA runtime %d, cuDNN %zu\n",
              prop.name, prop.major, prop.minor, prop.multiProcessorCount, prop.l2CacheSize / 1e6,
              runtime, cudnnGetVersion());

  Context ctx(opt);
  ctx.copy_gbps = measure_copy_gbps(ctx);
  std::printf("copy bandwidth: %.1f GB/s\n", ctx.copy_gbps);

  std::vector<ActShape> shapes;
  if (opt.quick) {
    shapes.push_back({512, 16, 16, 256, {5}});
  } else {
    shapes.push_back({512, 16, 16, 256, {5, 7, 9}});
    for (int64_t c : {768, 1024})
      for (int64_t hw : {7, 14}) shapes.push_back({opt.wide_batch, hw, hw, c, {7, 9}});
  }
  if (opt.dtype != "bf16") bench_dtype<float>(ctx, shapes);
  if (opt.dtype != "fp32") bench_dtype<bf16>(ctx, shapes);

  print_notes(ctx, opt);
  if (!opt.csv.empty()) {
    write_csv(ctx, opt.csv);
    std::printf("  CSV: %s\n", opt.csv.c_str());
  }
  print_table(ctx);
  if (ctx.failures > 0) {
    std::printf("bench_kernels: %d check(s) FAILED or cuDNN call(s) failed (see above)\n",
                ctx.failures);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  try {
    opt = parse_options(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_kernels: %s\n%s", e.what(), kUsage);
    return 2;
  }
  try {
    return run(opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_kernels: %s\n", e.what());
    return 1;
  }
}
