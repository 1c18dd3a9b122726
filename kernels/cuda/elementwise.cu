// Elementwise kernels: add/scale/axpy/fill (16-byte vectors), fp32<->bf16, bias add, column sums.
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.cuh"

namespace dl::cuda {

namespace {

enum class Op { add, scale, axpy, fill };

// The value an Op writes, from a[i], b[i] (when the Op reads them) and alpha.
template <Op op>
__device__ __forceinline__ float apply(float a, float b, float alpha) {
  if constexpr (op == Op::add) {
    return a + b;
  } else if constexpr (op == Op::scale) {
    return alpha * a;
  } else if constexpr (op == Op::axpy) {
    return fmaf(alpha, a, b);
  } else {
    return alpha;
  }
}

__host__ __device__ constexpr bool reads_a(Op op) {
  return op != Op::fill;
}
__host__ __device__ constexpr bool reads_b(Op op) {
  return op == Op::add || op == Op::axpy;
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

// ----------------------------------------------------------------------------------------------
// CUDA kernels

// out[i] = apply<op>(a[i], b[i], alpha) over n elements. With `vec`, thread t < n / V handles the
// 16-byte pack t (V = 16 / sizeof(T)) and the next n % V threads the scalar tail; otherwise
// thread t handles element t. Moves (reads + 1) n sizeof(T) bytes, where reads is 0 (fill),
// 1 (scale) or 2 (add, axpy); 1 or 2 FLOPs per element.
template <class T, Op op>
__global__ void map_kernel(const T* a, const T* b, T* out, float alpha, int64_t n, bool vec) {
  using P = Pack16<T>;
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

// ----------------------------------------------------------------------------------------------
// kernel launchers

constexpr int kBlock = 256;

template <class T, Op op>
void launch_map(const T* a, const T* b, T* out, float alpha, int64_t n, cudaStream_t stream) {
  DL_CUDA_REQUIRE(n >= 0, "negative element count");
  if (n == 0) return;
  const bool vec =
      aligned16(out) && (!reads_a(op) || aligned16(a)) && (!reads_b(op) || aligned16(b));
  constexpr int pack = Pack16<T>::size;
  const int64_t threads = vec ? n / pack + n % pack : n;
  map_kernel<T, op><<<static_cast<unsigned>(ceil_div(threads, kBlock)), kBlock, 0, stream>>>(
      a, b, out, alpha, n, vec);
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
  launch_map<T, Op::add>(a, b, out, 0.0f, n, stream);
}

template <class T>
void scale(const T* x, float alpha, T* out, int64_t n, cudaStream_t stream) {
  launch_map<T, Op::scale>(x, nullptr, out, alpha, n, stream);
}

template <class T>
void axpy(float alpha, const T* x, T* y, int64_t n, cudaStream_t stream) {
  launch_map<T, Op::axpy>(x, y, y, alpha, n, stream);
}

template <class T>
void fill(T* out, float value, int64_t n, cudaStream_t stream) {
  launch_map<T, Op::fill>(nullptr, nullptr, out, value, n, stream);
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

#define DL_INSTANTIATE_ELEMENTWISE(T)                                          \
  template void add<T>(const T*, const T*, T*, int64_t, cudaStream_t);         \
  template void scale<T>(const T*, float, T*, int64_t, cudaStream_t);          \
  template void axpy<T>(float, const T*, T*, int64_t, cudaStream_t);           \
  template void fill<T>(T*, float, int64_t, cudaStream_t);                     \
  template void add_bias<T>(T*, const float*, int64_t, int64_t, cudaStream_t); \
  template void sum_rows<T>(const T*, int64_t, int64_t, float*, void*, cudaStream_t);
DL_INSTANTIATE_ELEMENTWISE(float)
DL_INSTANTIATE_ELEMENTWISE(__nv_bfloat16)
#undef DL_INSTANTIATE_ELEMENTWISE

}  // namespace dl::cuda
