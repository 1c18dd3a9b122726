// Depthwise conv kernels (NHWC, stride 1, same padding, odd k <= 9): shared-memory halo tiles.
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/depthwise_conv.cuh"

namespace dl::cuda {

namespace {

// A block covers an 8 x 8 output tile by 32 channels (blockDim.x: one warp spans 32 consecutive
// channels, so every global access of a warp is one contiguous segment).
constexpr int kTile = 8;
constexpr int kChannels = 32;
constexpr int kMaxK = 9;
constexpr int kMaxSpan = kTile + kMaxK - 1;
// Taps are staged as [k*k][33]: the padding column keeps the transposing stores off one bank.
constexpr int kWeightStride = kChannels + 1;
// The weight gradient aims at about this many blocks (channel tiles x slots).
constexpr int64_t kWeightGradBlocks = 1024;

// What the kernels take: n images of h x w pixels and c channels, a k x k kernel (stride 1 and
// padding k / 2 implied).
struct DepthwiseDims {
  int64_t n, h, w, c, k;
};

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

// Stages a rows x cols pixel window of 32 channels as fp32:
// dst[(r * cols + q) * 32 + ct] = src[n, h0 + r, w0 + q, c0 + ct], zero outside the image and past
// the last channel. With `vec` (c a multiple of the pack size, src 16-byte aligned) each thread
// moves 16-byte packs; else one element. Called by every thread of the block.
template <class T>
__device__ void load_tile(const T* src, const DepthwiseDims& s, int64_t n, int64_t h0, int64_t w0,
                          int rows, int cols, int64_t c0, bool vec, float* dst) {
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int threads = blockDim.x * blockDim.y;
  if (vec) {
    using P = Pack16<T>;
    constexpr int kPacks = kChannels / P::size;
    for (int e = tid; e < rows * cols * kPacks; e += threads) {
      const int pix = e / kPacks, ct = (e % kPacks) * P::size;
      const int64_t h = h0 + pix / cols, w = w0 + pix % cols, ch = c0 + ct;
      float v[P::size];
      if (h >= 0 && h < s.h && w >= 0 && w < s.w && ch < s.c) {
        const P p = *reinterpret_cast<const P*>(src + ((n * s.h + h) * s.w + w) * s.c + ch);
#pragma unroll
        for (int q = 0; q < P::size; ++q) v[q] = to_float(p.v[q]);
      } else {
#pragma unroll
        for (int q = 0; q < P::size; ++q) v[q] = 0.0f;
      }
      float4* d = reinterpret_cast<float4*>(dst + pix * kChannels + ct);
#pragma unroll
      for (int q = 0; q < P::size / 4; ++q)
        d[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
    }
  } else {
    for (int e = tid; e < rows * cols * kChannels; e += threads) {
      const int pix = e / kChannels, ct = e % kChannels;
      const int64_t h = h0 + pix / cols, w = w0 + pix % cols, ch = c0 + ct;
      const bool inside = h >= 0 && h < s.h && w >= 0 && w < s.w && ch < s.c;
      dst[e] = inside ? to_float(src[((n * s.h + h) * s.w + w) * s.c + ch]) : 0.0f;
    }
  }
}

// ----------------------------------------------------------------------------------------------
// CUDA kernels

// y = bias + sum_{i,j} x[h + i - k/2, w + j - k/2] * wt[i, j] per channel, one 8 x 8 x 32 output
// tile per block (blockIdx = channel tile, spatial tile, image). The input window with its halo,
// (8 + k - 1)^2 x 32, and the taps transposed to [k*k][32] (rotated by 180 degrees for the
// backward-data pass: `rotate`) are staged in shared memory as fp32; thread (tx, ty) computes the
// 8 outputs of tile row ty for channel tx from a register window of 8 + k - 1 inputs per tap row:
// k (8 + 2k - 1) shared loads for 8 k^2 FMAs. k is a runtime value below the fixed kMaxK bounds,
// so the windows stay in registers for every k. From DRAM: reads m sizeof(T) (m = n h w c; halos
// are re-read from L2, (8 + k - 1)^2 / 64 times the input) and writes m sizeof(T) bytes;
// 2 k^2 FLOPs per output.
template <class T>
__global__ void __launch_bounds__(kChannels* kTile)
    dw_forward_kernel(const T* x, const float* weight, const float* bias, DepthwiseDims s,
                      bool rotate, bool vec, T* y) {
  extern __shared__ float4 smem4[];
  const int k = static_cast<int>(s.k), pad = k / 2, span = kTile + k - 1, taps = k * k;
  float* s_x = reinterpret_cast<float*>(smem4);  // [span][span][32]
  float* s_w = s_x + span * span * kChannels;    // [taps][kWeightStride]
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kChannels;
  const int64_t tiles_w = ceil_div(s.w, kTile);
  const int64_t h0 = blockIdx.y / tiles_w * kTile, w0 = blockIdx.y % tiles_w * kTile;
  const int64_t n = blockIdx.z;
  load_tile(x, s, n, h0 - pad, w0 - pad, span, span, c0, vec, s_x);
  // Consecutive threads read consecutive taps of a channel: one contiguous run of `weight`.
  for (int e = ty * kChannels + tx; e < kChannels * taps; e += kChannels * kTile) {
    const int ct = e / taps, tap = e % taps;
    const int64_t ch = c0 + ct;
    s_w[(rotate ? taps - 1 - tap : tap) * kWeightStride + ct] =
        ch < s.c ? weight[ch * taps + tap] : 0.0f;
  }
  __syncthreads();

  const int64_t ch = c0 + tx;
  const float b = bias != nullptr && ch < s.c ? bias[ch] : 0.0f;
  float acc[kTile];
#pragma unroll
  for (int o = 0; o < kTile; ++o) acc[o] = b;
  for (int i = 0; i < k; ++i) {
    const float* row = s_x + (ty + i) * span * kChannels + tx;
    float in[kMaxSpan];
#pragma unroll
    for (int t = 0; t < kMaxSpan; ++t) in[t] = t < span ? row[t * kChannels] : 0.0f;
    const float* taps_row = s_w + i * k * kWeightStride + tx;
#pragma unroll
    for (int j = 0; j < kMaxK; ++j) {
      if (j < k) {
        const float wv = taps_row[j * kWeightStride];
#pragma unroll
        for (int o = 0; o < kTile; ++o) acc[o] = fmaf(in[o + j], wv, acc[o]);
      }
    }
  }
  const int64_t oh = h0 + ty;
  if (ch >= s.c || oh >= s.h) return;
  T* out = y + ((n * s.h + oh) * s.w + w0) * s.c + ch;
#pragma unroll
  for (int o = 0; o < kTile; ++o)
    if (w0 + o < s.w) out[o * s.c] = from_float<T>(acc[o]);
}

// Weight-gradient partials. Block (channel tile, slot) walks the spatial tiles [slot * per_slot,
// (slot + 1) * per_slot) of all images in order; per tile it stages the input window with halo
// ((8 + k - 1)^2 x 32) and dy (8 x 8 x 32) in shared memory as fp32, and thread (tx, ty) (channel
// tx, tap row i = ty: the block is 32 x k) accumulates sum dy[oh, ow] * x[oh + i - p, ow + j - p]
// for every j from register windows (8 + 8 + k - 1 shared loads for 8 k FMAs per tile row);
// lane i = 0 also sums dy for the bias. Writes partials[slot][k*k + 1][c] (taps, then bias).
// From DRAM: reads 2 m sizeof(T) bytes (halos re-read from L2); 2 k^2 FLOPs per output element.
template <class T>
__global__ void __launch_bounds__(kChannels* kMaxK)
    dw_weight_partial_kernel(const T* x, const T* dy, DepthwiseDims s, int64_t tiles_per_slot,
                             bool vec, float* partials) {
  extern __shared__ float4 smem4[];
  const int k = static_cast<int>(s.k), pad = k / 2, span = kTile + k - 1, taps = k * k;
  float* s_x = reinterpret_cast<float*>(smem4);  // [span][span][32]
  float* s_dy = s_x + span * span * kChannels;   // [8][8][32]
  const int tx = threadIdx.x, i = threadIdx.y;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kChannels;
  const int64_t tiles_w = ceil_div(s.w, kTile);
  const int64_t tiles_image = ceil_div(s.h, kTile) * tiles_w;
  const int64_t t0 = blockIdx.y * tiles_per_slot;
  const int64_t t1 = min64(s.n * tiles_image, t0 + tiles_per_slot);
  float acc[kMaxK];
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) acc[j] = 0.0f;
  float acc_bias = 0.0f;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / tiles_image, h0 = t % tiles_image / tiles_w * kTile,
                  w0 = t % tiles_w * kTile;
    __syncthreads();  // the previous tile's shared data is no longer read
    load_tile(x, s, n, h0 - pad, w0 - pad, span, span, c0, vec, s_x);
    load_tile(dy, s, n, h0, w0, kTile, kTile, c0, vec, s_dy);
    __syncthreads();
    for (int oh = 0; oh < kTile; ++oh) {
      float g[kTile];
#pragma unroll
      for (int o = 0; o < kTile; ++o) g[o] = s_dy[(oh * kTile + o) * kChannels + tx];
      if (i == 0) {
#pragma unroll
        for (int o = 0; o < kTile; ++o) acc_bias += g[o];
      }
      const float* row = s_x + (oh + i) * span * kChannels + tx;
      float in[kMaxSpan];
#pragma unroll
      for (int q = 0; q < kMaxSpan; ++q) in[q] = q < span ? row[q * kChannels] : 0.0f;
#pragma unroll
      for (int j = 0; j < kMaxK; ++j) {
        if (j < k) {
#pragma unroll
          for (int o = 0; o < kTile; ++o) acc[j] = fmaf(g[o], in[o + j], acc[j]);
        }
      }
    }
  }
  const int64_t ch = c0 + tx;
  if (ch >= s.c) return;
  float* out = partials + static_cast<int64_t>(blockIdx.y) * (taps + 1) * s.c + ch;
#pragma unroll
  for (int j = 0; j < kMaxK; ++j)
    if (j < k) out[(i * k + j) * s.c] = acc[j];
  if (i == 0) out[taps * s.c] = acc_bias;
}

// dweight[c][tap] = sum over slots, in slot order and in fp64, of partials[slot][tap][c]; dbias
// from the last row. One thread per (tap, c), c fastest, so the partials are read coalesced.
// Reads slots (k^2 + 1) c 4 bytes.
__global__ void dw_weight_reduce_kernel(const float* partials, int64_t slots, int64_t c, int taps,
                                        float* dweight, float* dbias) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_slot = (taps + 1) * c;
  if (idx >= per_slot) return;
  double sum = 0.0;
#pragma unroll 8
  for (int64_t slot = 0; slot < slots; ++slot) sum += partials[slot * per_slot + idx];
  const int64_t tap = idx / c, ch = idx % c;
  if (tap < taps)
    dweight[ch * taps + tap] = static_cast<float>(sum);
  else if (dbias != nullptr)
    dbias[ch] = static_cast<float>(sum);
}

// ----------------------------------------------------------------------------------------------
// kernel launchers

// The kernels' sizes for shape s, which must be a depthwise convolution that they take.
DepthwiseDims dims_of(const Conv2dShape& s) {
  DL_CUDA_REQUIRE(s.depthwise() && s.kh == s.kw && s.stride == 1 && s.pad == s.kh / 2,
                  "depthwise conv: needs groups = c_in = c_out, a square kernel, stride 1 and "
                  "padding kernel / 2");
  return {s.n, s.h, s.w, s.c_in, s.kh};
}

void check_shape(const DepthwiseDims& s) {
  DL_CUDA_REQUIRE(s.k >= 3 && s.k <= kMaxK && s.k % 2 == 1,
                  "depthwise conv: kernel size must be 3, 5, 7 or 9, got " + std::to_string(s.k));
  DL_CUDA_REQUIRE(s.n >= 1 && s.h >= 1 && s.w >= 1 && s.c >= 1, "depthwise conv: empty shape");
  DL_CUDA_REQUIRE(s.n <= 65535 && ceil_div(s.h, kTile) * ceil_div(s.w, kTile) <= 65535,
                  "depthwise conv: at most 65535 images and 65535 8x8 tiles per image");
}

// 16-byte loads of `p`: every pixel's channel vector starts on a 16-byte boundary.
template <class T>
bool vectorisable(const DepthwiseDims& s, const T* p) {
  return s.c % Pack16<T>::size == 0 && aligned16(p);
}

struct SlotSplit {
  int64_t slots;
  int64_t tiles_per_slot;
};

// Depends only on the shape, so the summation order is the same on every GPU.
SlotSplit split_slots(const DepthwiseDims& s) {
  const int64_t tiles = s.n * ceil_div(s.h, kTile) * ceil_div(s.w, kTile);
  const int64_t channel_tiles = ceil_div(s.c, kChannels);
  int64_t wanted = kWeightGradBlocks / channel_tiles;
  wanted = wanted < 1 ? 1 : (wanted > tiles ? tiles : wanted);
  const int64_t per_slot = ceil_div(tiles, wanted);
  return {ceil_div(tiles, per_slot), per_slot};
}

template <class T>
void forward_impl(const DepthwiseDims& s, const T* x, const float* weight, const float* bias,
                  bool rotate, T* y, cudaStream_t stream) {
  check_shape(s);
  DL_CUDA_REQUIRE(x && weight && y, "depthwise conv: null tensor argument");
  const int span = kTile + static_cast<int>(s.k) - 1;
  const size_t smem = (span * span * kChannels + s.k * s.k * kWeightStride) * sizeof(float);
  const dim3 grid(static_cast<unsigned>(ceil_div(s.c, kChannels)),
                  static_cast<unsigned>(ceil_div(s.h, kTile) * ceil_div(s.w, kTile)),
                  static_cast<unsigned>(s.n));
  dw_forward_kernel<T><<<grid, dim3(kChannels, kTile), smem, stream>>>(x, weight, bias, s, rotate,
                                                                       vectorisable(s, x), y);
  DL_CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class T>
void depthwise_conv_forward(const Conv2dShape& s, const T* x, const float* weight,
                            const float* bias, T* y, cudaStream_t stream) {
  forward_impl(dims_of(s), x, weight, bias, false, y, stream);
}

template <class T>
void depthwise_conv_backward_data(const Conv2dShape& s, const T* dy, const float* weight, T* dx,
                                  cudaStream_t stream) {
  // Stride 1 and same padding with odd k: the transposed convolution is the forward one with
  // the taps rotated by 180 degrees.
  forward_impl(dims_of(s), dy, weight, nullptr, true, dx, stream);
}

size_t depthwise_conv_backward_weight_workspace_bytes(const Conv2dShape& shape) {
  const DepthwiseDims s = dims_of(shape);
  check_shape(s);
  return static_cast<size_t>(split_slots(s).slots * (s.k * s.k + 1) * s.c) * sizeof(float);
}

template <class T>
void depthwise_conv_backward_weight(const Conv2dShape& shape, const T* x, const T* dy,
                                    float* dweight, float* dbias, void* workspace,
                                    cudaStream_t stream) {
  const DepthwiseDims s = dims_of(shape);
  check_shape(s);
  DL_CUDA_REQUIRE(x && dy && dweight && workspace, "depthwise conv: null tensor argument");
  DL_CUDA_REQUIRE(aligned16(workspace), "depthwise conv: workspace must be 16-byte aligned");
  const SlotSplit split = split_slots(s);
  float* partials = static_cast<float*>(workspace);
  const int k = static_cast<int>(s.k), span = kTile + k - 1;
  const size_t smem = (span * span + kTile * kTile) * kChannels * sizeof(float);
  const dim3 grid(static_cast<unsigned>(ceil_div(s.c, kChannels)),
                  static_cast<unsigned>(split.slots));
  dw_weight_partial_kernel<T><<<grid, dim3(kChannels, k), smem, stream>>>(
      x, dy, s, split.tiles_per_slot, vectorisable(s, x) && vectorisable(s, dy), partials);
  DL_CUDA_CHECK_LAUNCH();
  const int threads = 256;
  const int64_t outputs = (s.k * s.k + 1) * s.c;
  dw_weight_reduce_kernel<<<static_cast<unsigned>(ceil_div(outputs, threads)), threads, 0,
                            stream>>>(partials, split.slots, s.c, k * k, dweight, dbias);
  DL_CUDA_CHECK_LAUNCH();
}

#define DL_INSTANTIATE_DEPTHWISE(T)                                                               \
  template void depthwise_conv_forward<T>(const Conv2dShape&, const T*, const float*,             \
                                          const float*, T*, cudaStream_t);                        \
  template void depthwise_conv_backward_data<T>(const Conv2dShape&, const T*, const float*, T*,   \
                                                cudaStream_t);                                    \
  template void depthwise_conv_backward_weight<T>(const Conv2dShape&, const T*, const T*, float*, \
                                                  float*, void*, cudaStream_t);
DL_INSTANTIATE_DEPTHWISE(float)
DL_INSTANTIATE_DEPTHWISE(__nv_bfloat16)
#undef DL_INSTANTIATE_DEPTHWISE

}  // namespace dl::cuda
