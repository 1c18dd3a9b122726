// Softmax cross-entropy kernels: fused loss + dlogits (a warp per row), fixed-order mean, accuracy.
#include <cmath>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/loss.cuh"

namespace dl::cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kBlock = 256;
constexpr int kRowsPerBlock = kBlock / kWarp;

// Butterfly reductions: every lane ends with the same value, combined in the same order.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// ----------------------------------------------------------------------------------------------
// CUDA kernels

// One warp per row i of logits [n, classes]: lane l visits columns l, l + 32, ... three times
// (max; sum of exp and of z; gradient), so the row is read three times (L1 serves the repeats).
// Writes row_loss[i] and, if dlogits is non-null, dlogits[i, :]. Per row: reads classes
// sizeof(T) bytes from DRAM, writes 4 + classes sizeof(T); about 2 expf + 6 FLOPs per logit.
template <class T>
__global__ void __launch_bounds__(kBlock)
    cross_entropy_kernel(const T* logits, const int64_t* labels, int64_t n, int64_t classes,
                         float eps, float grad_scale, float* row_loss, T* dlogits,
                         int32_t* bad_label) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= n) return;  // whole warps: a warp shares its row
  const T* z = logits + row * classes;
  float zmax = -INFINITY;
  for (int64_t j = lane; j < classes; j += kWarp) zmax = fmaxf(zmax, to_float(z[j]));
  zmax = warp_max(zmax);
  float denom = 0.0f, sum_z = 0.0f;
  for (int64_t j = lane; j < classes; j += kWarp) {
    const float v = to_float(z[j]);
    denom += expf(v - zmax);
    sum_z += v;
  }
  denom = warp_sum(denom);
  sum_z = warp_sum(sum_z);
  const float log_denom = logf(denom) + zmax;
  const int64_t label = labels[row];
  const bool valid = label >= 0 && label < classes;
  if (lane == 0) {
    if (valid) {
      const float nll = log_denom - to_float(z[label]);
      const float smooth = log_denom - sum_z / static_cast<float>(classes);
      row_loss[row] = (1.0f - eps) * nll + eps * smooth;
    } else {
      row_loss[row] = NAN;
      *bad_label = 1;
    }
  }
  if (dlogits == nullptr) return;
  const float off = eps / static_cast<float>(classes);
  T* dz = dlogits + row * classes;
  for (int64_t j = lane; j < classes; j += kWarp) {
    const float p = expf(to_float(z[j]) - log_denom);
    const float target = off + (j == label ? 1.0f - eps : 0.0f);
    dz[j] = from_float<T>(valid ? grad_scale * (p - target) : 0.0f);
  }
}

// mean[0] = (sum of row_loss[0..n)) / n: thread t adds rows t, t + 256, ..., then a shared-memory
// tree in a fixed order. One block; reads 4 n bytes.
__global__ void __launch_bounds__(kBlock)
    mean_kernel(const float* row_loss, int64_t n, float* mean) {
  __shared__ float s_sum[kBlock];
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += kBlock) sum += row_loss[i];
  s_sum[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kBlock / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) s_sum[threadIdx.x] += s_sum[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) mean[0] = s_sum[0] / static_cast<float>(n);
}

// One thread per row: the trainer's argmax scan, then one integer atomicAdd per warp of the
// ballot count. Reads classes sizeof(T) + 8 bytes per row.
template <class T>
__global__ void __launch_bounds__(kBlock)
    count_correct_kernel(const T* logits, const int64_t* labels, int64_t n, int64_t classes,
                         int32_t* correct) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  bool hit = false;
  if (row < n) {
    const T* z = logits + row * classes;
    int64_t best = 0;
    float best_value = to_float(z[0]);
    for (int64_t c = 1; c < classes; ++c) {
      const float v = to_float(z[c]);
      if (v > best_value) {
        best = c;
        best_value = v;
      }
    }
    hit = best == labels[row];
  }
  const unsigned mask = __ballot_sync(0xffffffffu, hit);
  if (threadIdx.x % kWarp == 0 && mask != 0) atomicAdd(correct, __popc(mask));
}

}  // namespace

// ----------------------------------------------------------------------------------------------
// kernel launchers

template <class T>
void cross_entropy_forward_backward(const T* logits, const int64_t* labels, int64_t n,
                                    int64_t classes, float label_smoothing, float dloss,
                                    float* row_loss, float* mean_loss, T* dlogits,
                                    int32_t* bad_label, cudaStream_t stream) {
  DL_CUDA_REQUIRE(n > 0 && classes > 0, "need at least one row and one class");
  DL_CUDA_REQUIRE(label_smoothing >= 0.0f && label_smoothing <= 1.0f,
                  "label_smoothing must be in [0, 1]");
  DL_CUDA_REQUIRE(row_loss != nullptr && bad_label != nullptr, "row_loss and bad_label needed");
  const float grad_scale = dloss / static_cast<float>(n);
  cross_entropy_kernel<T><<<static_cast<unsigned>(ceil_div(n, kRowsPerBlock)), kBlock, 0, stream>>>(
      logits, labels, n, classes, label_smoothing, grad_scale, row_loss, dlogits, bad_label);
  DL_CUDA_CHECK_LAUNCH();
  if (mean_loss == nullptr) return;
  mean_kernel<<<1, kBlock, 0, stream>>>(row_loss, n, mean_loss);
  DL_CUDA_CHECK_LAUNCH();
}

template <class T>
void count_correct(const T* logits, const int64_t* labels, int64_t n, int64_t classes,
                   int32_t* correct, cudaStream_t stream) {
  DL_CUDA_REQUIRE(n >= 0 && classes > 0, "bad shape");
  if (n == 0) return;
  count_correct_kernel<T><<<static_cast<unsigned>(ceil_div(n, kBlock)), kBlock, 0, stream>>>(
      logits, labels, n, classes, correct);
  DL_CUDA_CHECK_LAUNCH();
}

template void cross_entropy_forward_backward<float>(const float*, const int64_t*, int64_t, int64_t,
                                                    float, float, float*, float*, float*, int32_t*,
                                                    cudaStream_t);
template void cross_entropy_forward_backward<__nv_bfloat16>(const __nv_bfloat16*, const int64_t*,
                                                            int64_t, int64_t, float, float, float*,
                                                            float*, __nv_bfloat16*, int32_t*,
                                                            cudaStream_t);
template void count_correct<float>(const float*, const int64_t*, int64_t, int64_t, int32_t*,
                                   cudaStream_t);
template void count_correct<__nv_bfloat16>(const __nv_bfloat16*, const int64_t*, int64_t, int64_t,
                                           int32_t*, cudaStream_t);

}  // namespace dl::cuda
