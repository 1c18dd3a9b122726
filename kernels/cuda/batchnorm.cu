// BatchNorm kernels over [rows, c] (NHWC): deterministic statistics, apply, backward, fused GELU.
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"

namespace dl::cuda {

namespace {

// A block is 32 channels (one warp: each row's loads are one contiguous segment) by 8 row lanes.
constexpr int kChannels = 32;
constexpr int kRowLanes = 8;
constexpr int kThreads = kChannels * kRowLanes;
// Reductions split the rows into at most kMaxRowBlocks blocks of at least kMinRowsPerBlock rows.
constexpr int64_t kMinRowsPerBlock = 256;
constexpr int64_t kMaxRowBlocks = 512;
// The finalising kernels give each channel 16 lanes over the row blocks.
constexpr int kFinalLanes = 16;
// Elementwise passes give each thread about this many rows.
constexpr int64_t kRowsPerThread = 4;

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

// BatchNorm's input: x itself, or GELU(x) as it would be stored in T.
template <class T>
__device__ __forceinline__ float bn_input(T x, bool gelu_input) {
  const float v = to_float(x);
  return gelu_input ? round_to<T>(gelu(v)) : v;
}

// Folds the Welford state (nb, mean_b, m2_b) into (n, mean, m2) (Chan et al.).
template <class F>
__device__ __forceinline__ void welford_merge(F& n, F& mean, F& m2, F nb, F mean_b, F m2_b) {
  if (nb == F(0)) return;
  const F total = n + nb;
  const F d = mean_b - mean;
  mean += d * (nb / total);
  m2 += m2_b + d * d * (n * nb / total);
  n = total;
}

// ----------------------------------------------------------------------------------------------
// CUDA kernels

// Welford statistics of one [rows_per_block, 32] tile per block: thread (tx, ty) folds rows ty,
// ty + 8, ... of channel blockIdx.x * 32 + tx, then lane ty = 0 merges the 8 lanes in order and
// writes the tile's (mean, M2) to partials[blockIdx.y, c]. Over the grid: reads m sizeof(T) bytes
// (m = rows * c), writes 8 c bytes per row block; about 6 FLOPs per element (+20 with GELU).
template <class T>
__global__ void __launch_bounds__(kThreads)
    bn_stats_partial_kernel(const T* x, int64_t rows, int64_t c, int64_t rows_per_block,
                            bool gelu_input, float2* partials) {
  __shared__ float s_n[kRowLanes][kChannels];
  __shared__ float s_mean[kRowLanes][kChannels];
  __shared__ float s_m2[kRowLanes][kChannels];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * kChannels + tx;
  const int64_t r0 = blockIdx.y * rows_per_block;
  const int64_t r1 = min64(rows, r0 + rows_per_block);
  float n = 0.0f, mean = 0.0f, m2 = 0.0f;
  if (ch < c) {
#pragma unroll 4
    for (int64_t r = r0 + ty; r < r1; r += kRowLanes) {
      const float v = bn_input(x[r * c + ch], gelu_input);
      n += 1.0f;
      const float d = v - mean;
      mean += d / n;
      m2 += d * (v - mean);
    }
  }
  s_n[ty][tx] = n;
  s_mean[ty][tx] = mean;
  s_m2[ty][tx] = m2;
  __syncthreads();
  if (ty == 0 && ch < c) {
    for (int k = 1; k < kRowLanes; ++k)
      welford_merge(n, mean, m2, s_n[k][tx], s_mean[k][tx], s_m2[k][tx]);
    partials[blockIdx.y * c + ch] = make_float2(mean, m2);
  }
}

// Per channel: merges the row-block partials in fp64 and a fixed order (lane ty of 16 takes
// blocks ty, ty + 16, ...; lane 0 then merges the lanes in order), writes mean and
// invstd = 1 / sqrt(var + eps) (biased variance), and moves the running statistics toward the
// batch's (unbiased variance), as the CPU kernel does. Reads 8 c bytes per row block.
__global__ void __launch_bounds__(kChannels* kFinalLanes)
    bn_stats_finalize_kernel(const float2* partials, int64_t blocks, int64_t rows_per_block,
                             int64_t rows, int64_t c, float eps, float momentum,
                             float* running_mean, float* running_var, float* save_mean,
                             float* save_invstd) {
  __shared__ double s_n[kFinalLanes][kChannels];
  __shared__ double s_mean[kFinalLanes][kChannels];
  __shared__ double s_m2[kFinalLanes][kChannels];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * kChannels + tx;
  double n = 0.0, mean = 0.0, m2 = 0.0;
  if (ch < c) {
#pragma unroll 4
    for (int64_t b = ty; b < blocks; b += kFinalLanes) {
      const float2 p = partials[b * c + ch];
      const double nb =
          static_cast<double>(min64(rows, (b + 1) * rows_per_block) - b * rows_per_block);
      welford_merge<double>(n, mean, m2, nb, p.x, p.y);
    }
  }
  s_n[ty][tx] = n;
  s_mean[ty][tx] = mean;
  s_m2[ty][tx] = m2;
  __syncthreads();
  if (ty != 0 || ch >= c) return;
  for (int k = 1; k < kFinalLanes; ++k)
    welford_merge(n, mean, m2, s_n[k][tx], s_mean[k][tx], s_m2[k][tx]);
  const double var = m2 / static_cast<double>(rows);
  save_mean[ch] = static_cast<float>(mean);
  save_invstd[ch] = static_cast<float>(1.0 / sqrt(var + eps));
  if (running_mean) {
    const double unbiased = rows > 1 ? m2 / static_cast<double>(rows - 1) : var;
    running_mean[ch] = static_cast<float>((1.0 - momentum) * running_mean[ch] + momentum * mean);
    running_var[ch] = static_cast<float>((1.0 - momentum) * running_var[ch] + momentum * unbiased);
  }
}

// y = (v - mean) * invstd * gamma + beta (+ r), v = x or GELU(x). Thread (tx, ty) owns channel
// blockIdx.x * 32 + tx and rows blockIdx.y * 8 + ty, stepping by gridDim.y * 8. With from_var,
// `stat` is a variance and invstd = 1 / sqrt(var + eps) (evaluation); else it is invstd.
// Moves 2 m sizeof(T) bytes (3 with a residual); 3 FLOPs per element (+20 with GELU).
template <class T>
__global__ void __launch_bounds__(kThreads)
    bn_apply_kernel(const T* x, const T* residual, int64_t rows, int64_t c, const float* mean,
                    const float* stat, bool from_var, float eps, const float* gamma,
                    const float* beta, bool gelu_input, T* y) {
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * kChannels + threadIdx.x;
  if (ch >= c) return;
  const float invstd = from_var ? 1.0f / sqrtf(stat[ch] + eps) : stat[ch];
  const float scale = (gamma ? gamma[ch] : 1.0f) * invstd;
  const float shift = beta ? beta[ch] : 0.0f;
  const float mu = mean[ch];
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kRowLanes + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.y) * kRowLanes) {
    const int64_t i = r * c + ch;
    float out = (bn_input(x[i], gelu_input) - mu) * scale + shift;
    if (residual) out += to_float(residual[i]);
    y[i] = from_float<T>(out);
  }
}

// Backward pass 1, per [rows_per_block, 32] tile: sum dy and sum dy * (v - mean) over the tile
// (lanes added in order by ty = 0), written to partials[blockIdx.y, c]. Reads 2 m sizeof(T) bytes
// over the grid; 3 FLOPs per element (+20 with GELU).
template <class T>
__global__ void __launch_bounds__(kThreads)
    bn_backward_partial_kernel(const T* dy, const T* x, int64_t rows, int64_t c,
                               int64_t rows_per_block, const float* mean, bool gelu_input,
                               float2* partials) {
  __shared__ float2 s_sum[kRowLanes][kChannels];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * kChannels + tx;
  const int64_t r0 = blockIdx.y * rows_per_block;
  const int64_t r1 = min64(rows, r0 + rows_per_block);
  float sum_dy = 0.0f, sum_dyx = 0.0f;
  if (ch < c) {
    const float mu = mean[ch];
#pragma unroll 4
    for (int64_t r = r0 + ty; r < r1; r += kRowLanes) {
      const float g = to_float(dy[r * c + ch]);
      sum_dy += g;
      sum_dyx += g * (bn_input(x[r * c + ch], gelu_input) - mu);
    }
  }
  s_sum[ty][tx] = make_float2(sum_dy, sum_dyx);
  __syncthreads();
  if (ty == 0 && ch < c) {
    for (int k = 1; k < kRowLanes; ++k) {
      sum_dy += s_sum[k][tx].x;
      sum_dyx += s_sum[k][tx].y;
    }
    partials[blockIdx.y * c + ch] = make_float2(sum_dy, sum_dyx);
  }
}

// Backward, per channel: adds the row-block partials in fp64 and a fixed order (lanes as in
// bn_stats_finalize_kernel); dbeta = sum dy, dgamma = invstd * sum dy * (v - mean).
// Reads 8 c bytes per row block.
__global__ void __launch_bounds__(kChannels* kFinalLanes)
    bn_backward_finalize_kernel(const float2* partials, int64_t blocks, int64_t c,
                                const float* invstd, float* dgamma, float* dbeta) {
  __shared__ double s_dy[kFinalLanes][kChannels];
  __shared__ double s_dyx[kFinalLanes][kChannels];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * kChannels + tx;
  double sum_dy = 0.0, sum_dyx = 0.0;
  if (ch < c) {
#pragma unroll 4
    for (int64_t b = ty; b < blocks; b += kFinalLanes) {
      const float2 p = partials[b * c + ch];
      sum_dy += p.x;
      sum_dyx += p.y;
    }
  }
  s_dy[ty][tx] = sum_dy;
  s_dyx[ty][tx] = sum_dyx;
  __syncthreads();
  if (ty != 0 || ch >= c) return;
  for (int k = 1; k < kFinalLanes; ++k) {
    sum_dy += s_dy[k][tx];
    sum_dyx += s_dyx[k][tx];
  }
  dbeta[ch] = static_cast<float>(sum_dy);
  dgamma[ch] = static_cast<float>(sum_dyx * invstd[ch]);
}

// Backward pass 2: dx = gamma invstd (dy - dbeta / rows - xhat dgamma / rows), xhat =
// (v - mean) invstd (batch statistics), or dx = gamma invstd dy; times GELU'(x) when BatchNorm's
// input is GELU(x). Thread layout as bn_apply_kernel. Moves 3 m sizeof(T) bytes; 6 FLOPs per
// element (+45 with GELU: forward and derivative).
template <class T>
__global__ void __launch_bounds__(kThreads)
    bn_backward_dx_kernel(const T* dy, const T* x, int64_t rows, int64_t c, const float* gamma,
                          const float* mean, const float* invstd, const float* dgamma,
                          const float* dbeta, float inv_rows, bool batch_stats, bool gelu_input,
                          T* dx) {
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * kChannels + threadIdx.x;
  if (ch >= c) return;
  const float inv = invstd[ch];
  const float a = (gamma ? gamma[ch] : 1.0f) * inv;
  const float mu = mean[ch];
  const float mean_dy = batch_stats ? dbeta[ch] * inv_rows : 0.0f;
  const float mean_dyxhat = batch_stats ? dgamma[ch] * inv_rows : 0.0f;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kRowLanes + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.y) * kRowLanes) {
    const int64_t i = r * c + ch;
    const float xv = to_float(x[i]);
    const float v = gelu_input ? round_to<T>(gelu(xv)) : xv;
    float g = a * (to_float(dy[i]) - mean_dy - (v - mu) * inv * mean_dyxhat);
    if (gelu_input) g *= gelu_grad(xv);
    dx[i] = from_float<T>(g);
  }
}

// invstd[j] = 1 / sqrt(running_var[j] + eps) in fp64 (IEEE division and square root), rounded
// once to fp32, one thread per channel. Moves 8 c bytes.
__global__ void bn_eval_invstd_kernel(const float* running_var, int64_t c, float eps,
                                      float* invstd) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < c)
    invstd[j] = static_cast<float>(
        1.0 / sqrt(static_cast<double>(running_var[j]) + static_cast<double>(eps)));
}

// ----------------------------------------------------------------------------------------------
// kernel launchers

struct RowSplit {
  int64_t blocks;
  int64_t rows_per_block;
};

// Depends only on `rows`, so the reduction order (and the result) is the same on every GPU.
RowSplit split_rows(int64_t rows) {
  const int64_t wanted = ceil_div(rows, kMinRowsPerBlock);
  const int64_t per_block = ceil_div(rows, wanted < kMaxRowBlocks ? wanted : kMaxRowBlocks);
  return {ceil_div(rows, per_block), per_block};
}

void check_shape(int64_t rows, int64_t c) {
  DL_CUDA_REQUIRE(rows >= 1 && c >= 1, "BatchNorm needs at least one row and one channel");
  DL_CUDA_REQUIRE(ceil_div(c, kChannels) <= INT32_MAX, "too many channels");
}

dim3 elementwise_grid(int64_t rows, int64_t c) {
  const int64_t y = ceil_div(rows, kRowLanes * kRowsPerThread);
  return dim3(static_cast<unsigned>(ceil_div(c, kChannels)),
              static_cast<unsigned>(y < 65535 ? y : 65535));
}

template <class T>
void forward_train(const T* x, int64_t rows, int64_t c, const float* gamma, const float* beta,
                   float eps, float momentum, float* running_mean, float* running_var,
                   const T* residual, T* y, float* save_mean, float* save_invstd, void* workspace,
                   bool gelu_input, cudaStream_t stream) {
  check_shape(rows, c);
  DL_CUDA_REQUIRE(x && y && save_mean && save_invstd && workspace, "null tensor argument");
  DL_CUDA_REQUIRE(aligned16(workspace), "workspace must be 16-byte aligned");
  DL_CUDA_REQUIRE((running_mean == nullptr) == (running_var == nullptr),
                  "running_mean and running_var must both be given or both be null");
  const RowSplit split = split_rows(rows);
  float2* partials = static_cast<float2*>(workspace);
  const dim3 block(kChannels, kRowLanes);
  const dim3 grid(static_cast<unsigned>(ceil_div(c, kChannels)),
                  static_cast<unsigned>(split.blocks));
  bn_stats_partial_kernel<T>
      <<<grid, block, 0, stream>>>(x, rows, c, split.rows_per_block, gelu_input, partials);
  DL_CUDA_CHECK_LAUNCH();
  const dim3 final_block(kChannels, kFinalLanes);
  bn_stats_finalize_kernel<<<grid.x, final_block, 0, stream>>>(
      partials, split.blocks, split.rows_per_block, rows, c, eps, momentum, running_mean,
      running_var, save_mean, save_invstd);
  DL_CUDA_CHECK_LAUNCH();
  bn_apply_kernel<T><<<elementwise_grid(rows, c), block, 0, stream>>>(
      x, residual, rows, c, save_mean, save_invstd, false, eps, gamma, beta, gelu_input, y);
  DL_CUDA_CHECK_LAUNCH();
}

template <class T>
void forward_eval(const T* x, int64_t rows, int64_t c, const float* gamma, const float* beta,
                  const float* running_mean, const float* running_var, float eps, const T* residual,
                  T* y, bool gelu_input, cudaStream_t stream) {
  check_shape(rows, c);
  DL_CUDA_REQUIRE(x && y && running_mean && running_var, "null tensor argument");
  bn_apply_kernel<T><<<elementwise_grid(rows, c), dim3(kChannels, kRowLanes), 0, stream>>>(
      x, residual, rows, c, running_mean, running_var, true, eps, gamma, beta, gelu_input, y);
  DL_CUDA_CHECK_LAUNCH();
}

template <class T>
void backward(const T* dy, const T* x, int64_t rows, int64_t c, const float* gamma,
              const float* mean, const float* invstd, bool batch_stats, T* dx, float* dgamma,
              float* dbeta, void* workspace, bool gelu_input, cudaStream_t stream) {
  check_shape(rows, c);
  DL_CUDA_REQUIRE(dy && x && mean && invstd && dx && dgamma && dbeta && workspace,
                  "null tensor argument");
  DL_CUDA_REQUIRE(aligned16(workspace), "workspace must be 16-byte aligned");
  const RowSplit split = split_rows(rows);
  float2* partials = static_cast<float2*>(workspace);
  const dim3 block(kChannels, kRowLanes);
  const dim3 grid(static_cast<unsigned>(ceil_div(c, kChannels)),
                  static_cast<unsigned>(split.blocks));
  bn_backward_partial_kernel<T><<<grid, block, 0, stream>>>(dy, x, rows, c, split.rows_per_block,
                                                            mean, gelu_input, partials);
  DL_CUDA_CHECK_LAUNCH();
  bn_backward_finalize_kernel<<<grid.x, dim3(kChannels, kFinalLanes), 0, stream>>>(
      partials, split.blocks, c, invstd, dgamma, dbeta);
  DL_CUDA_CHECK_LAUNCH();
  const float inv_rows = static_cast<float>(1.0 / static_cast<double>(rows));
  bn_backward_dx_kernel<T><<<elementwise_grid(rows, c), block, 0, stream>>>(
      dy, x, rows, c, gamma, mean, invstd, dgamma, dbeta, inv_rows, batch_stats, gelu_input, dx);
  DL_CUDA_CHECK_LAUNCH();
}

}  // namespace

void batchnorm_eval_invstd(const float* running_var, int64_t c, float eps, float* invstd,
                           cudaStream_t stream) {
  DL_CUDA_REQUIRE(c >= 1, "BatchNorm needs at least one channel");
  DL_CUDA_REQUIRE(running_var && invstd, "null tensor argument");
  constexpr int block = 256;
  bn_eval_invstd_kernel<<<static_cast<unsigned>(ceil_div(c, block)), block, 0, stream>>>(
      running_var, c, eps, invstd);
  DL_CUDA_CHECK_LAUNCH();
}

size_t batchnorm_workspace_bytes(int64_t rows, int64_t c) {
  check_shape(rows, c);
  return static_cast<size_t>(split_rows(rows).blocks * c) * sizeof(float2);
}

template <class T>
void batchnorm_forward_train(const T* x, int64_t rows, int64_t c, const float* gamma,
                             const float* beta, float eps, float momentum, float* running_mean,
                             float* running_var, const T* residual, T* y, float* save_mean,
                             float* save_invstd, void* workspace, cudaStream_t stream) {
  forward_train(x, rows, c, gamma, beta, eps, momentum, running_mean, running_var, residual, y,
                save_mean, save_invstd, workspace, false, stream);
}

template <class T>
void batchnorm_forward_eval(const T* x, int64_t rows, int64_t c, const float* gamma,
                            const float* beta, const float* running_mean, const float* running_var,
                            float eps, const T* residual, T* y, cudaStream_t stream) {
  forward_eval(x, rows, c, gamma, beta, running_mean, running_var, eps, residual, y, false, stream);
}

template <class T>
void batchnorm_backward(const T* dy, const T* x, int64_t rows, int64_t c, const float* gamma,
                        const float* mean, const float* invstd, bool batch_stats, T* dx,
                        float* dgamma, float* dbeta, void* workspace, cudaStream_t stream) {
  backward(dy, x, rows, c, gamma, mean, invstd, batch_stats, dx, dgamma, dbeta, workspace, false,
           stream);
}

template <class T>
void gelu_batchnorm_forward_train(const T* h, int64_t rows, int64_t c, const float* gamma,
                                  const float* beta, float eps, float momentum, float* running_mean,
                                  float* running_var, const T* residual, T* y, float* save_mean,
                                  float* save_invstd, void* workspace, cudaStream_t stream) {
  forward_train(h, rows, c, gamma, beta, eps, momentum, running_mean, running_var, residual, y,
                save_mean, save_invstd, workspace, true, stream);
}

template <class T>
void gelu_batchnorm_forward_eval(const T* h, int64_t rows, int64_t c, const float* gamma,
                                 const float* beta, const float* running_mean,
                                 const float* running_var, float eps, const T* residual, T* y,
                                 cudaStream_t stream) {
  forward_eval(h, rows, c, gamma, beta, running_mean, running_var, eps, residual, y, true, stream);
}

template <class T>
void gelu_batchnorm_backward(const T* dy, const T* h, int64_t rows, int64_t c, const float* gamma,
                             const float* mean, const float* invstd, bool batch_stats, T* dh,
                             float* dgamma, float* dbeta, void* workspace, cudaStream_t stream) {
  backward(dy, h, rows, c, gamma, mean, invstd, batch_stats, dh, dgamma, dbeta, workspace, true,
           stream);
}

#define DL_INSTANTIATE_BATCHNORM(T)                                                                \
  template void batchnorm_forward_train<T>(const T*, int64_t, int64_t, const float*, const float*, \
                                           float, float, float*, float*, const T*, T*, float*,     \
                                           float*, void*, cudaStream_t);                           \
  template void batchnorm_forward_eval<T>(const T*, int64_t, int64_t, const float*, const float*,  \
                                          const float*, const float*, float, const T*, T*,         \
                                          cudaStream_t);                                           \
  template void batchnorm_backward<T>(const T*, const T*, int64_t, int64_t, const float*,          \
                                      const float*, const float*, bool, T*, float*, float*, void*, \
                                      cudaStream_t);                                               \
  template void gelu_batchnorm_forward_train<T>(                                                   \
      const T*, int64_t, int64_t, const float*, const float*, float, float, float*, float*,        \
      const T*, T*, float*, float*, void*, cudaStream_t);                                          \
  template void gelu_batchnorm_forward_eval<T>(const T*, int64_t, int64_t, const float*,           \
                                               const float*, const float*, const float*, float,    \
                                               const T*, T*, cudaStream_t);                        \
  template void gelu_batchnorm_backward<T>(const T*, const T*, int64_t, int64_t, const float*,     \
                                           const float*, const float*, bool, T*, float*, float*,   \
                                           void*, cudaStream_t);
DL_INSTANTIATE_BATCHNORM(float)
DL_INSTANTIATE_BATCHNORM(__nv_bfloat16)
#undef DL_INSTANTIATE_BATCHNORM

}  // namespace dl::cuda
