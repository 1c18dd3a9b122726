// Elementwise kernels: add/mul/scale/axpy/fill/ReLU (16-byte vectors), fp32<->bf16, bias add,
// column sums, batched transpose, whole-array sums (fp64).
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.cuh"

namespace dl::cuda {

namespace {

// clip_scale: scale, but a factor of exactly 1 writes nothing (see clip_scale in the header).
enum class Op { add, mul, scale, clip_scale, axpy, fill, relu, relu_backward };

// The value an Op writes, from a[i], b[i] (when the Op reads them) and alpha.
template <Op op>
__device__ __forceinline__ float apply(float a, float b, float alpha) {
  if constexpr (op == Op::add) {
    return a + b;
  } else if constexpr (op == Op::mul) {
    return a * b;
  } else if constexpr (op == Op::scale || op == Op::clip_scale) {
    return alpha * a;
  } else if constexpr (op == Op::axpy) {
    return fmaf(alpha, a, b);
  } else if constexpr (op == Op::relu) {
    return a > 0.0f ? a : 0.0f;
  } else if constexpr (op == Op::relu_backward) {
    return a > 0.0f ? b : 0.0f;
  } else {
    return alpha;
  }
}

__host__ __device__ constexpr bool reads_a(Op op) {
  return op != Op::fill;
}
__host__ __device__ constexpr bool reads_b(Op op) {
  return op == Op::add || op == Op::mul || op == Op::axpy || op == Op::relu_backward;
}

// 4 elements of T (16 bytes of fp32, 8 of bf16): the unit of the conversion kernels.
template <class T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

__host__ __device__ inline bool aligned_to(const void* p, uintptr_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

// Row tiles of sum_rows: 32 columns (one warp: each row's loads are one contiguous segment) by 8
// row lanes; at most kMaxRowBlocks tiles of at least kMinRowsPerBlock rows over the rows.
constexpr int kColumns = 32;
constexpr int kRowLanes = 8;
constexpr int64_t kMinRowsPerBlock = 256;
constexpr int64_t kMaxRowBlocks = 256;

int64_t row_blocks(int64_t rows) {
  const int64_t blocks = ceil_div(rows, kMinRowsPerBlock);
  return blocks < kMaxRowBlocks ? blocks : kMaxRowBlocks;
}

// transpose_batched: 32 x 32 tiles, 8 row lanes per block.
constexpr int kTile = 32;
constexpr int kTileLanes = 8;

// sum and squared_norm: blocks of kReduceBlock threads over contiguous ranges of at least
// kMinReducePerBlock elements, at most kMaxReduceBlocks of them.
constexpr int kReduceBlock = 256;
constexpr int64_t kMinReducePerBlock = 4096;
constexpr int64_t kMaxReduceBlocks = 1024;

int64_t reduce_blocks(int64_t n) {
  const int64_t blocks = ceil_div(n, kMinReducePerBlock);
  return blocks < 1 ? 1 : blocks < kMaxReduceBlocks ? blocks : kMaxReduceBlocks;
}

// The sum of every thread's v over a block of kReduceBlock threads, in a fixed tree order; valid
// in thread 0.
__device__ double block_sum(double v) {
  __shared__ double s_sum[kReduceBlock];
  s_sum[threadIdx.x] = v;
  __syncthreads();
  for (int half = kReduceBlock / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) s_sum[threadIdx.x] += s_sum[threadIdx.x + half];
    __syncthreads();
  }
  return s_sum[0];
}

// ----------------------------------------------------------------------------------------------
// CUDA kernels

// out[i] = apply<op>(a[i], b[i], alpha) over n elements, alpha being *alpha_ptr when alpha_ptr is
// non-null (a device scalar) and alpha_value otherwise. With `vec`, thread t < n / V handles the
// 16-byte pack t (V = 16 / sizeof(T)) and the next n % V threads the scalar tail; otherwise
// thread t handles element t. Moves (reads + 1) n sizeof(T) bytes, where reads is 0 (fill),
// 1 (scale, relu) or 2 (add, mul, axpy, relu_backward); at most 2 FLOPs per element.
template <class T, Op op>
__global__ void map_kernel(const T* a, const T* b, T* out, float alpha_value,
                           const float* alpha_ptr, int64_t n, bool vec) {
  using P = Pack16<T>;
  const float alpha = alpha_ptr != nullptr ? *alpha_ptr : alpha_value;
  if constexpr (op == Op::clip_scale)
    if (alpha == 1.0f) return;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = vec ? n / P::size : 0;
  if (t < packs) {
    P pa{}, pb{}, po;
    if constexpr (reads_a(op)) pa = reinterpret_cast<const P*>(a)[t];
    if constexpr (reads_b(op)) pb = reinterpret_cast<const P*>(b)[t];
#pragma unroll
    for (int k = 0; k < P::size; ++k)
      po.v[k] = from_float<T>(apply<op>(to_float(pa.v[k]), to_float(pb.v[k]), alpha));
    reinterpret_cast<P*>(out)[t] = po;
    return;
  }
  const int64_t i = packs * P::size + (t - packs);
  if (i >= n) return;
  const float va = reads_a(op) ? to_float(a[i]) : 0.0f;
  const float vb = reads_b(op) ? to_float(b[i]) : 0.0f;
  out[i] = from_float<T>(apply<op>(va, vb, alpha));
}

// y[i] = x[i] converted from TIn to TOut, 4 elements per thread (16-byte fp32 and 8-byte bf16
// accesses) with `vec`, else one. Moves n (sizeof(TIn) + sizeof(TOut)) bytes; no FLOPs.
template <class TIn, class TOut>
__global__ void convert_kernel(const TIn* x, TOut* y, int64_t n, bool vec) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = vec ? n / 4 : 0;
  if (t < packs) {
    const Vec4<TIn> in = reinterpret_cast<const Vec4<TIn>*>(x)[t];
    Vec4<TOut> out;
#pragma unroll
    for (int k = 0; k < 4; ++k) out.v[k] = from_float<TOut>(to_float(in.v[k]));
    reinterpret_cast<Vec4<TOut>*>(y)[t] = out;
    return;
  }
  const int64_t i = packs * 4 + (t - packs);
  if (i < n) y[i] = from_float<TOut>(to_float(x[i]));
}

// y[r, c] += bias[c] over rows * cols elements. With `vec` (cols a multiple of V = 16 / sizeof(T),
// y 16-byte aligned) thread t handles the 16-byte pack t, else element t. Moves
// 2 rows cols sizeof(T) bytes (the bias stays in L1/L2); 1 FLOP per element.
template <class T>
__global__ void add_bias_kernel(T* y, const float* bias, int64_t rows, int64_t cols, bool vec) {
  using P = Pack16<T>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (vec) {
    if (t >= rows * cols / P::size) return;
    const int64_t c0 = (t * P::size) % cols;
    P v = reinterpret_cast<P*>(y)[t];
#pragma unroll
    for (int k = 0; k < P::size; ++k) v.v[k] = from_float<T>(to_float(v.v[k]) + bias[c0 + k]);
    reinterpret_cast<P*>(y)[t] = v;
    return;
  }
  if (t < rows * cols) y[t] = from_float<T>(to_float(y[t]) + bias[t % cols]);
}

// Column sums of one [rows_per_block, 32] tile per block: thread (tx, ty) adds rows ty, ty + 8, ...
// of column blockIdx.x * 32 + tx, then lane ty = 0 adds the 8 lanes in order and writes
// out[blockIdx.y * cols + c]. Reads rows cols sizeof(T) bytes over the grid; 1 FLOP per element.
template <class T>
__global__ void __launch_bounds__(kColumns* kRowLanes)
    sum_rows_partial_kernel(const T* x, int64_t rows, int64_t cols, int64_t rows_per_block,
                            float* out) {
  __shared__ float s_sum[kRowLanes][kColumns];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColumns + tx;
  const int64_t r0 = blockIdx.y * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
  float sum = 0.0f;
  if (c < cols) {
#pragma unroll 4
    for (int64_t r = r0 + ty; r < r1; r += kRowLanes) sum += to_float(x[r * cols + c]);
  }
  s_sum[ty][tx] = sum;
  __syncthreads();
  if (ty == 0 && c < cols) {
    for (int k = 1; k < kRowLanes; ++k) sum += s_sum[k][tx];
    out[blockIdx.y * cols + c] = sum;
  }
}

// out[c] = sum over b < blocks of partials[b, c], in order. Reads 4 blocks cols bytes.
__global__ void sum_partials_kernel(const float* partials, int64_t blocks, int64_t cols,
                                    float* out) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) sum += partials[b * cols + c];
  out[c] = sum;
}

// out[b, j, i] = in[b, i, j]: block (blockIdx.x) transposes one 32 x 32 tile of every matrix
// b = blockIdx.y, blockIdx.y + gridDim.y, ... through shared memory, so that both the reads of in
// and the writes of out are 32-element row segments (coalesced); the extra column keeps the
// column reads free of bank conflicts (fp32). Moves 2 batch rows cols sizeof(T) bytes; no FLOPs.
template <class T>
__global__ void __launch_bounds__(kTile* kTileLanes)
    transpose_kernel(const T* in, int64_t batch, int64_t rows, int64_t cols, int64_t col_tiles,
                     T* out) {
  __shared__ T tile[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i0 = blockIdx.x / col_tiles * kTile, j0 = blockIdx.x % col_tiles * kTile;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const T* src = in + b * rows * cols;
    T* dst = out + b * rows * cols;
    for (int r = ty; r < kTile; r += kTileLanes) {
      if (i0 + r < rows && j0 + tx < cols) tile[r][tx] = src[(i0 + r) * cols + j0 + tx];
    }
    __syncthreads();
    for (int r = ty; r < kTile; r += kTileLanes) {
      if (j0 + r < cols && i0 + tx < rows) dst[(j0 + r) * rows + i0 + tx] = tile[tx][r];
    }
    __syncthreads();
  }
}

// partials[blockIdx.x] = the sum of x[i] (x[i]^2 with `square`) over the block's range
// [blockIdx.x per_block, + per_block) of the n elements, in fp64: thread t adds elements t,
// t + 256, ... of the range (coalesced loads), then block_sum adds the threads' sums. Reads
// n sizeof(T) bytes over the grid; 1 (2) FLOPs per element.
template <class T, bool square>
__global__ void __launch_bounds__(kReduceBlock)
    reduce_partial_kernel(const T* x, int64_t n, int64_t per_block, double* partials) {
  const int64_t begin = blockIdx.x * per_block;
  const int64_t end = begin + per_block < n ? begin + per_block : n;
  double sum = 0.0;
#pragma unroll 4
  for (int64_t i = begin + threadIdx.x; i < end; i += kReduceBlock) {
    const double v = to_float(x[i]);
    sum += square ? v * v : v;
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// out[0] = the sum of partials[0, blocks), in a fixed order (one block), converted to Out.
// Reads 8 blocks bytes.
template <class Out>
__global__ void __launch_bounds__(kReduceBlock)
    reduce_final_kernel(const double* partials, int64_t blocks, Out* out) {
  double sum = 0.0;
  for (int64_t b = threadIdx.x; b < blocks; b += kReduceBlock) sum += partials[b];
  sum = block_sum(sum);
  if (threadIdx.x == 0) out[0] = static_cast<Out>(sum);
}

// ----------------------------------------------------------------------------------------------
// kernel launchers

constexpr int kBlock = 256;

template <class T, Op op>
void launch_map(const T* a, const T* b, T* out, float alpha, const float* alpha_ptr, int64_t n,
                cudaStream_t stream) {
  DL_CUDA_REQUIRE(n >= 0, "negative element count");
  if (n == 0) return;
  const bool vec =
      aligned16(out) && (!reads_a(op) || aligned16(a)) && (!reads_b(op) || aligned16(b));
  constexpr int pack = Pack16<T>::size;
  const int64_t threads = vec ? n / pack + n % pack : n;
  map_kernel<T, op><<<static_cast<unsigned>(ceil_div(threads, kBlock)), kBlock, 0, stream>>>(
      a, b, out, alpha, alpha_ptr, n, vec);
  DL_CUDA_CHECK_LAUNCH();
}

template <class T, bool square, class Out>
void launch_reduce(const T* x, int64_t n, Out* out, void* workspace, cudaStream_t stream) {
  DL_CUDA_REQUIRE(n >= 0, "negative element count");
  DL_CUDA_REQUIRE(out != nullptr, "out is null");
  if (n == 0) {
    DL_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(Out), stream));
    return;
  }
  DL_CUDA_REQUIRE(x != nullptr && workspace != nullptr, "x and the workspace are needed");
  const int64_t blocks = reduce_blocks(n);
  auto* partials = static_cast<double*>(workspace);
  reduce_partial_kernel<T, square><<<static_cast<unsigned>(blocks), kReduceBlock, 0, stream>>>(
      x, n, ceil_div(n, blocks), partials);
  DL_CUDA_CHECK_LAUNCH();
  reduce_final_kernel<Out><<<1, kReduceBlock, 0, stream>>>(partials, blocks, out);
  DL_CUDA_CHECK_LAUNCH();
}

template <class TIn, class TOut>
void launch_convert(const TIn* x, TOut* y, int64_t n, cudaStream_t stream) {
  DL_CUDA_REQUIRE(n >= 0, "negative element count");
  if (n == 0) return;
  const bool vec = aligned_to(x, 4 * sizeof(TIn)) && aligned_to(y, 4 * sizeof(TOut));
  const int64_t threads = vec ? n / 4 + n % 4 : n;
  convert_kernel<TIn, TOut>
      <<<static_cast<unsigned>(ceil_div(threads, kBlock)), kBlock, 0, stream>>>(x, y, n, vec);
  DL_CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class T>
void add(const T* a, const T* b, T* out, int64_t n, cudaStream_t stream) {
  launch_map<T, Op::add>(a, b, out, 0.0f, nullptr, n, stream);
}

template <class T>
void mul(const T* a, const T* b, T* out, int64_t n, cudaStream_t stream) {
  launch_map<T, Op::mul>(a, b, out, 0.0f, nullptr, n, stream);
}

template <class T>
void scale(const T* x, float alpha, T* out, int64_t n, cudaStream_t stream) {
  launch_map<T, Op::scale>(x, nullptr, out, alpha, nullptr, n, stream);
}

template <class T>
void scale_by(const T* x, const float* factor, T* out, int64_t n, cudaStream_t stream) {
  DL_CUDA_REQUIRE(factor != nullptr || n == 0, "factor is null");
  launch_map<T, Op::scale>(x, nullptr, out, 0.0f, factor, n, stream);
}

template <class T>
void axpy(float alpha, const T* x, T* y, int64_t n, cudaStream_t stream) {
  launch_map<T, Op::axpy>(x, y, y, alpha, nullptr, n, stream);
}

template <class T>
void fill(T* out, float value, int64_t n, cudaStream_t stream) {
  launch_map<T, Op::fill>(nullptr, nullptr, out, value, nullptr, n, stream);
}

template <class T>
void fill_with(T* out, const float* value, int64_t n, cudaStream_t stream) {
  DL_CUDA_REQUIRE(value != nullptr || n == 0, "value is null");
  launch_map<T, Op::fill>(nullptr, nullptr, out, 0.0f, value, n, stream);
}

template <class T>
void relu_forward(const T* x, T* y, int64_t n, cudaStream_t stream) {
  launch_map<T, Op::relu>(x, nullptr, y, 0.0f, nullptr, n, stream);
}

template <class T>
void relu_backward(const T* x, const T* dy, T* dx, int64_t n, cudaStream_t stream) {
  launch_map<T, Op::relu_backward>(x, dy, dx, 0.0f, nullptr, n, stream);
}

void convert(const float* x, __nv_bfloat16* y, int64_t n, cudaStream_t stream) {
  launch_convert(x, y, n, stream);
}

void convert(const __nv_bfloat16* x, float* y, int64_t n, cudaStream_t stream) {
  launch_convert(x, y, n, stream);
}

template <class T>
void add_bias(T* y, const float* bias, int64_t rows, int64_t cols, cudaStream_t stream) {
  DL_CUDA_REQUIRE(rows >= 0 && cols >= 0, "negative matrix size");
  if (rows == 0 || cols == 0) return;
  DL_CUDA_REQUIRE(bias != nullptr, "bias is null");
  const bool vec = cols % Pack16<T>::size == 0 && aligned16(y);
  const int64_t threads = vec ? rows * cols / Pack16<T>::size : rows * cols;
  add_bias_kernel<T><<<static_cast<unsigned>(ceil_div(threads, kBlock)), kBlock, 0, stream>>>(
      y, bias, rows, cols, vec);
  DL_CUDA_CHECK_LAUNCH();
}

size_t sum_rows_workspace_bytes(int64_t rows, int64_t cols) {
  const int64_t blocks = row_blocks(rows);
  return blocks > 1 ? static_cast<size_t>(blocks * cols) * sizeof(float) : 0;
}

template <class T>
void sum_rows(const T* x, int64_t rows, int64_t cols, float* out, void* workspace,
              cudaStream_t stream) {
  DL_CUDA_REQUIRE(rows >= 0 && cols >= 0, "negative matrix size");
  if (cols == 0) return;
  if (rows == 0) {
    DL_CUDA_CHECK(cudaMemsetAsync(out, 0, static_cast<size_t>(cols) * sizeof(float), stream));
    return;
  }
  const int64_t blocks = row_blocks(rows);
  DL_CUDA_REQUIRE(blocks == 1 || workspace != nullptr, "sum_rows needs a workspace");
  float* partials = blocks > 1 ? static_cast<float*>(workspace) : out;
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, kColumns)), static_cast<unsigned>(blocks));
  sum_rows_partial_kernel<T><<<grid, dim3(kColumns, kRowLanes), 0, stream>>>(
      x, rows, cols, ceil_div(rows, blocks), partials);
  DL_CUDA_CHECK_LAUNCH();
  if (blocks == 1) return;
  sum_partials_kernel<<<static_cast<unsigned>(ceil_div(cols, kBlock)), kBlock, 0, stream>>>(
      partials, blocks, cols, out);
  DL_CUDA_CHECK_LAUNCH();
}

template <class T>
void transpose_batched(const T* in, int64_t batch, int64_t rows, int64_t cols, T* out,
                       cudaStream_t stream) {
  DL_CUDA_REQUIRE(batch >= 0 && rows >= 0 && cols >= 0, "negative size");
  if (batch == 0 || rows == 0 || cols == 0) return;
  DL_CUDA_REQUIRE(in != nullptr && out != nullptr && in != out, "null or aliased matrices");
  const int64_t col_tiles = ceil_div(cols, kTile), tiles = ceil_div(rows, kTile) * col_tiles;
  DL_CUDA_REQUIRE(tiles <= INT32_MAX, "matrices too large for one launch");
  const dim3 grid(static_cast<unsigned>(tiles),
                  static_cast<unsigned>(batch < 65535 ? batch : 65535));
  transpose_kernel<T>
      <<<grid, dim3(kTile, kTileLanes), 0, stream>>>(in, batch, rows, cols, col_tiles, out);
  DL_CUDA_CHECK_LAUNCH();
}

size_t reduce_workspace_bytes(int64_t n) {
  return static_cast<size_t>(reduce_blocks(n)) * sizeof(double);
}

template <class T>
void sum(const T* x, int64_t n, float* out, void* workspace, cudaStream_t stream) {
  launch_reduce<T, false>(x, n, out, workspace, stream);
}

void squared_norm(const float* x, int64_t n, double* out, void* workspace, cudaStream_t stream) {
  launch_reduce<float, true>(x, n, out, workspace, stream);
}

namespace {
__global__ void clip_coefficient_kernel(const double* squares, int64_t count, double max_norm,
                                        float* total_norm, float* coefficient) {
  double sum = 0.0;
  for (int64_t i = 0; i < count; ++i) sum += squares[i];
  const double total = sqrt(sum);
  const double coef = max_norm / (total + 1e-6);
  *total_norm = static_cast<float>(total);
  *coefficient = isfinite(total) && coef < 1.0 ? static_cast<float>(coef) : 1.0f;
}
}  // namespace

void clip_coefficient(const double* squares, int64_t count, double max_norm, float* total_norm,
                      float* coefficient, cudaStream_t stream) {
  clip_coefficient_kernel<<<1, 1, 0, stream>>>(squares, count, max_norm, total_norm, coefficient);
  DL_CUDA_CHECK_LAUNCH();
}

void clip_scale(float* x, const float* coefficient, int64_t n, cudaStream_t stream) {
  DL_CUDA_REQUIRE(coefficient != nullptr || n == 0, "coefficient is null");
  launch_map<float, Op::clip_scale>(x, nullptr, x, 0.0f, coefficient, n, stream);
}

#define DL_INSTANTIATE_ELEMENTWISE(T)                                                        \
  template void add<T>(const T*, const T*, T*, int64_t, cudaStream_t);                       \
  template void mul<T>(const T*, const T*, T*, int64_t, cudaStream_t);                       \
  template void scale<T>(const T*, float, T*, int64_t, cudaStream_t);                        \
  template void scale_by<T>(const T*, const float*, T*, int64_t, cudaStream_t);              \
  template void axpy<T>(float, const T*, T*, int64_t, cudaStream_t);                         \
  template void fill<T>(T*, float, int64_t, cudaStream_t);                                   \
  template void fill_with<T>(T*, const float*, int64_t, cudaStream_t);                       \
  template void relu_forward<T>(const T*, T*, int64_t, cudaStream_t);                        \
  template void relu_backward<T>(const T*, const T*, T*, int64_t, cudaStream_t);             \
  template void add_bias<T>(T*, const float*, int64_t, int64_t, cudaStream_t);               \
  template void sum_rows<T>(const T*, int64_t, int64_t, float*, void*, cudaStream_t);        \
  template void transpose_batched<T>(const T*, int64_t, int64_t, int64_t, T*, cudaStream_t); \
  template void sum<T>(const T*, int64_t, float*, void*, cudaStream_t);
DL_INSTANTIATE_ELEMENTWISE(float)
DL_INSTANTIATE_ELEMENTWISE(__nv_bfloat16)
#undef DL_INSTANTIATE_ELEMENTWISE

}  // namespace dl::cuda
