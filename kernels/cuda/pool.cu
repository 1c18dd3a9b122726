// Pooling kernels: global average pool and 2-D max pool with a race-free gather backward.
#include <climits>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/pool.cuh"

namespace dl::cuda {

namespace {

// Global average pool tiles: 32 channels (one warp: each pixel's loads are one contiguous
// segment) by 8 pixel lanes.
constexpr int kChannels = 32;
constexpr int kPixelLanes = 8;

// ----------------------------------------------------------------------------------------------
// CUDA kernels

// One block per (32-channel tile, image): thread (tx, ty) adds pixels ty, ty + 8, ... of channel
// blockIdx.x * 32 + tx of image blockIdx.y, lane ty = 0 adds the 8 lanes in order and writes the
// mean. Reads n hw c sizeof(T) bytes and writes n c sizeof(T); 1 FLOP per input element.
template <class T>
__global__ void __launch_bounds__(kChannels* kPixelLanes)
    global_avg_pool_forward_kernel(const T* x, int64_t hw, int64_t c, T* y) {
  __shared__ float s_sum[kPixelLanes][kChannels];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t ch = static_cast<int64_t>(blockIdx.x) * kChannels + tx;
  const T* image = x + static_cast<int64_t>(blockIdx.y) * hw * c;
  float sum = 0.0f;
  if (ch < c) {
#pragma unroll 4
    for (int64_t p = ty; p < hw; p += kPixelLanes) sum += to_float(image[p * c + ch]);
  }
  s_sum[ty][tx] = sum;
  __syncthreads();
  if (ty == 0 && ch < c) {
    for (int k = 1; k < kPixelLanes; ++k) sum += s_sum[k][tx];
    y[static_cast<int64_t>(blockIdx.y) * c + ch] = from_float<T>(sum / static_cast<float>(hw));
  }
}

// dx[b, p, j] = dy[b, j] * inv over n hw c elements. With `vec` (c a multiple of
// V = 16 / sizeof(T), both pointers 16-byte aligned) thread t writes the 16-byte pack t, else
// element t. Writes n hw c sizeof(T) bytes, reads dy (n c, cached); 1 FLOP per element.
template <class T>
__global__ void global_avg_pool_backward_kernel(const T* dy, int64_t hw, int64_t c, float inv,
                                                int64_t total, T* dx, bool vec) {
  using P = Pack16<T>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (vec) {
    const int64_t i = t * P::size;
    if (i >= total) return;
    const int64_t b = i / (hw * c), ch = i % c;
    const P g = *reinterpret_cast<const P*>(dy + b * c + ch);
    P out;
#pragma unroll
    for (int k = 0; k < P::size; ++k) out.v[k] = from_float<T>(to_float(g.v[k]) * inv);
    reinterpret_cast<P*>(dx)[t] = out;
    return;
  }
  if (t >= total) return;
  dx[t] = from_float<T>(to_float(dy[(t / (hw * c)) * c + t % c]) * inv);
}

// One thread per output element (b, oh, ow, j), j fastest (coalesced): the CPU's scan of the
// window in (i, j) order. Reads up to k^2 elements per output (n ho wo c k^2 sizeof(T) bytes, the
// overlap served by L1/L2), writes n ho wo c (sizeof(T) + 4) bytes; k^2 comparisons per output.
template <class T>
__global__ void max_pool2d_forward_kernel(Pool2dShape s, int64_t ho, int64_t wo, int64_t total,
                                          const T* x, T* y, int32_t* argmax) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= total) return;
  const int64_t ch = t % s.c, out = t / s.c;
  const int64_t ow = out % wo, oh = (out / wo) % ho, b = out / (wo * ho);
  float best = -INFINITY;
  int32_t best_at = -1;
  T best_value = from_float<T>(-INFINITY);
  for (int64_t i = 0; i < s.k; ++i) {
    const int64_t ih = oh * s.stride - s.pad + i;
    if (ih < 0 || ih >= s.h) continue;
    for (int64_t j = 0; j < s.k; ++j) {
      const int64_t iw = ow * s.stride - s.pad + j;
      if (iw < 0 || iw >= s.w) continue;
      const int64_t pixel = (b * s.h + ih) * s.w + iw;
      const T raw = x[pixel * s.c + ch];
      const float v = to_float(raw);
      if (v > best || isnan(v) || best_at < 0) {
        best = v;
        best_at = static_cast<int32_t>(ih * s.w + iw);  // within the image, as on the CPU
        best_value = raw;
      }
    }
  }
  y[t] = best_value;
  argmax[t] = best_at;
}

// One thread per input element (b, ih, iw, j): adds dy over the output windows (oh, ow) that
// cover (ih, iw), in increasing (oh, ow), where argmax names this pixel. Reads at most
// ceil(k / stride)^2 (dy, argmax) pairs per input element and writes n h w c sizeof(T) bytes.
template <class T>
__global__ void max_pool2d_backward_kernel(Pool2dShape s, int64_t ho, int64_t wo, int64_t total,
                                           const T* dy, const int32_t* argmax, T* dx) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= total) return;
  const int64_t ch = t % s.c, pixel = t / s.c;
  const int64_t iw = pixel % s.w, ih = (pixel / s.w) % s.h, b = pixel / (s.w * s.h);
  // Windows oh with oh * stride - pad <= ih < oh * stride - pad + k.
  const int64_t lo_h = ih + s.pad - s.k + 1, lo_w = iw + s.pad - s.k + 1;
  const int64_t oh0 = lo_h <= 0 ? 0 : ceil_div(lo_h, s.stride);
  const int64_t ow0 = lo_w <= 0 ? 0 : ceil_div(lo_w, s.stride);
  const int64_t oh1 = min((ih + s.pad) / s.stride, ho - 1);
  const int64_t ow1 = min((iw + s.pad) / s.stride, wo - 1);
  float sum = 0.0f;
  for (int64_t oh = oh0; oh <= oh1; ++oh)
    for (int64_t ow = ow0; ow <= ow1; ++ow) {
      const int64_t o = ((b * ho + oh) * wo + ow) * s.c + ch;
      if (argmax[o] == ih * s.w + iw) sum += to_float(dy[o]);
    }
  dx[t] = from_float<T>(sum);
}

// ----------------------------------------------------------------------------------------------
// kernel launchers

constexpr int kBlock = 256;

void check_pool_shape(const Pool2dShape& s) {
  DL_CUDA_REQUIRE(s.n >= 0 && s.h > 0 && s.w > 0 && s.c >= 0, "bad input shape");
  DL_CUDA_REQUIRE(s.k > 0 && s.stride > 0 && s.pad >= 0, "bad window, stride or padding");
  DL_CUDA_REQUIRE(s.h + 2 * s.pad >= s.k && s.w + 2 * s.pad >= s.k,
                  "window larger than the padded input");
  DL_CUDA_REQUIRE(s.h * s.w <= INT_MAX, "argmax is int32: h * w must be below 2^31");
}

}  // namespace

template <class T>
void global_avg_pool_forward(const T* x, int64_t n, int64_t hw, int64_t c, T* y,
                             cudaStream_t stream) {
  DL_CUDA_REQUIRE(n >= 0 && hw > 0 && c >= 0, "bad shape");
  DL_CUDA_REQUIRE(n <= 65535, "at most 65535 images per launch");
  if (n == 0 || c == 0) return;
  const dim3 grid(static_cast<unsigned>(ceil_div(c, kChannels)), static_cast<unsigned>(n));
  global_avg_pool_forward_kernel<T><<<grid, dim3(kChannels, kPixelLanes), 0, stream>>>(x, hw, c, y);
  DL_CUDA_CHECK_LAUNCH();
}

template <class T>
void global_avg_pool_backward(const T* dy, int64_t n, int64_t hw, int64_t c, T* dx,
                              cudaStream_t stream) {
  DL_CUDA_REQUIRE(n >= 0 && hw > 0 && c >= 0, "bad shape");
  const int64_t total = n * hw * c;
  if (total == 0) return;
  const float inv = 1.0f / static_cast<float>(hw);
  const bool vec = c % Pack16<T>::size == 0 && aligned16(dy) && aligned16(dx);
  const int64_t threads = vec ? total / Pack16<T>::size : total;
  global_avg_pool_backward_kernel<T>
      <<<static_cast<unsigned>(ceil_div(threads, kBlock)), kBlock, 0, stream>>>(dy, hw, c, inv,
                                                                                total, dx, vec);
  DL_CUDA_CHECK_LAUNCH();
}

template <class T>
void max_pool2d_forward(const Pool2dShape& s, const T* x, T* y, int32_t* argmax,
                        cudaStream_t stream) {
  check_pool_shape(s);
  const int64_t ho = s.h_out(), wo = s.w_out(), total = s.n * ho * wo * s.c;
  if (total == 0) return;
  max_pool2d_forward_kernel<T>
      <<<static_cast<unsigned>(ceil_div(total, kBlock)), kBlock, 0, stream>>>(s, ho, wo, total, x,
                                                                              y, argmax);
  DL_CUDA_CHECK_LAUNCH();
}

template <class T>
void max_pool2d_backward(const Pool2dShape& s, const T* dy, const int32_t* argmax, T* dx,
                         cudaStream_t stream) {
  check_pool_shape(s);
  const int64_t ho = s.h_out(), wo = s.w_out(), total = s.n * s.h * s.w * s.c;
  if (total == 0) return;
  max_pool2d_backward_kernel<T>
      <<<static_cast<unsigned>(ceil_div(total, kBlock)), kBlock, 0, stream>>>(s, ho, wo, total, dy,
                                                                              argmax, dx);
  DL_CUDA_CHECK_LAUNCH();
}

#define DL_INSTANTIATE_POOL(T)                                                                     \
  template void global_avg_pool_forward<T>(const T*, int64_t, int64_t, int64_t, T*, cudaStream_t); \
  template void global_avg_pool_backward<T>(const T*, int64_t, int64_t, int64_t, T*,               \
                                            cudaStream_t);                                         \
  template void max_pool2d_forward<T>(const Pool2dShape&, const T*, T*, int32_t*, cudaStream_t);   \
  template void max_pool2d_backward<T>(const Pool2dShape&, const T*, const int32_t*, T*,           \
                                       cudaStream_t);
DL_INSTANTIATE_POOL(float)
DL_INSTANTIATE_POOL(__nv_bfloat16)
#undef DL_INSTANTIATE_POOL

}  // namespace dl::cuda
