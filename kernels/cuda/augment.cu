// See augment.cuh. Compiled with -fmad=false (kernels/CMakeLists.txt): every product and sum
// rounds on its own, as engine/data/augment.cpp's do (-ffp-contract=off); the warp's grid keeps
// the one fused multiply-add the CPU writes explicitly (fmaf).
#include <cstdint>

#include "kernels/cuda/augment.cuh"
#include "kernels/cuda/check.h"

namespace dl::cuda {

namespace {

constexpr int kThreads = 256;
// Two image copies in the default 48 KiB of shared memory, beside the reduction scratch.
constexpr size_t kMaxImageBytes = 20 * 1024;

// Tensor.clamp(0, 255).to(uint8): truncation toward zero.
__device__ uint8_t clamp_u8(float v) {
  return static_cast<uint8_t>(fminf(fmaxf(v, 0.0f), 255.0f));
}

__device__ uint8_t blend(float r, float s, float a, float b) {
  return clamp_u8(r * a + s * b);
}

// rgb_to_grayscale of one RGB pixel, truncated to uint8.
__device__ uint8_t gray(const uint8_t* px) {
  return static_cast<uint8_t>(0.2989f * px[0] + 0.587f * px[1] + 0.114f * px[2]);
}

// The block's shared scratch for reductions.
struct Scratch {
  unsigned long long sum;
  int lo[3], hi[3];
  int hist[256];
  uint8_t lut[256];
};

// Per-channel histogram equalisation (torchvision's _scale_channel), channel k.
__device__ void equalize_channel(const uint8_t* in, uint8_t* out, int n, int c, int k,
                                 Scratch& sc) {
  for (int v = threadIdx.x; v < 256; v += blockDim.x) sc.hist[v] = 0;
  __syncthreads();
  for (int p = threadIdx.x; p < n; p += blockDim.x) atomicAdd(&sc.hist[in[p * c + k]], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    int last = 255;
    while (sc.hist[last] == 0) --last;
    const int64_t step = (static_cast<int64_t>(n) - sc.hist[last]) / 255;
    for (int v = 0; v < 256; ++v) sc.lut[v] = static_cast<uint8_t>(v);
    if (step > 0) {
      int64_t cum = 0;
      sc.lut[0] = 0;
      for (int v = 0; v < 255; ++v) {
        cum += sc.hist[v];
        const int64_t q = (cum + step / 2) / step;
        sc.lut[v + 1] = static_cast<uint8_t>(q < 255 ? q : 255);
      }
    }
  }
  __syncthreads();
  for (int p = threadIdx.x; p < n; p += blockDim.x) out[p * c + k] = sc.lut[in[p * c + k]];
  __syncthreads();
}

// One step from `in` to `out` (both h x w x c in shared memory). Ends with a barrier.
__device__ void apply_step(const AugmentStep& st, const uint8_t* in, uint8_t* out, int h, int w,
                           int c, Scratch& sc) {
  const int n = h * w, total = n * c;
  switch (st.kind) {
    case AugmentStepKind::identity:
      for (int i = threadIdx.x; i < total; i += blockDim.x) out[i] = in[i];
      break;
    case AugmentStepKind::warp: {
      const float half_w = 0.5f * static_cast<float>(w), half_h = 0.5f * static_cast<float>(h);
      for (int p = threadIdx.x; p < n; p += blockDim.x) {
        const int i = p / w, j = p % w;
        const float y = -half_h + 0.5f + static_cast<float>(i);
        const float x = -half_w + 0.5f + static_cast<float>(j);
        const float gx = fmaf(y, st.t[1], x * st.t[0]) + st.t[2];
        const float gy = fmaf(y, st.t[4], x * st.t[3]) + st.t[5];
        const float sx = rintf((gx + 1.0f) * half_w - 0.5f);
        const float sy = rintf((gy + 1.0f) * half_h - 0.5f);
        const bool inside = sx >= 0.0f && sx <= static_cast<float>(w - 1) && sy >= 0.0f &&
                            sy <= static_cast<float>(h - 1);
        const int src = inside ? (static_cast<int>(sy) * w + static_cast<int>(sx)) * c : 0;
        for (int k = 0; k < c; ++k) out[p * c + k] = inside ? in[src + k] : 0;
      }
      break;
    }
    case AugmentStepKind::brightness:
      for (int i = threadIdx.x; i < total; i += blockDim.x) out[i] = blend(st.r, st.s, in[i], 0.0f);
      break;
    case AugmentStepKind::saturation:
      for (int p = threadIdx.x; p < n; p += blockDim.x) {
        if (c == 1) {
          out[p] = in[p];
          continue;
        }
        const float g = gray(in + 3 * p);
        for (int k = 0; k < 3; ++k) out[3 * p + k] = blend(st.r, st.s, in[3 * p + k], g);
      }
      break;
    case AugmentStepKind::contrast: {
      if (threadIdx.x == 0) sc.sum = 0;
      __syncthreads();
      unsigned long long mine = 0;
      for (int p = threadIdx.x; p < n; p += blockDim.x) mine += c == 3 ? gray(in + 3 * p) : in[p];
      atomicAdd(&sc.sum, mine);
      __syncthreads();
      const float mean = static_cast<float>(static_cast<int64_t>(sc.sum)) / static_cast<float>(n);
      for (int i = threadIdx.x; i < total; i += blockDim.x) out[i] = blend(st.r, st.s, in[i], mean);
      break;
    }
    case AugmentStepKind::sharpness: {
      const float edge = 1.0f / 13.0f, centre = 5.0f / 13.0f;
      for (int i = threadIdx.x; i < total; i += blockDim.x) {
        const int k = i % c, p = i / c, y = p / w, x = p % w;
        float smooth = in[i];
        if (h > 2 && w > 2 && y > 0 && y < h - 1 && x > 0 && x < w - 1) {
          float acc = 0.0f;
          for (int dy = -1; dy <= 1; ++dy)
            for (int dx = -1; dx <= 1; ++dx)
              acc += (dy == 0 && dx == 0 ? centre : edge) * in[((y + dy) * w + (x + dx)) * c + k];
          smooth = rintf(acc);
        }
        out[i] = h > 2 && w > 2 ? blend(st.r, st.s, in[i], smooth) : in[i];
      }
      break;
    }
    case AugmentStepKind::posterize:
      for (int i = threadIdx.x; i < total; i += blockDim.x)
        out[i] = static_cast<uint8_t>(in[i] & st.mask);
      break;
    case AugmentStepKind::solarize:
      for (int i = threadIdx.x; i < total; i += blockDim.x)
        out[i] =
            static_cast<float>(in[i]) >= st.threshold ? static_cast<uint8_t>(255 - in[i]) : in[i];
      break;
    case AugmentStepKind::autocontrast: {
      if (threadIdx.x < 3) sc.lo[threadIdx.x] = 255, sc.hi[threadIdx.x] = 0;
      __syncthreads();
      // Each thread's own range first, then one atomic per thread and channel.
      int lo[3] = {255, 255, 255}, hi[3] = {0, 0, 0};
      for (int i = threadIdx.x; i < total; i += blockDim.x) {
        lo[i % c] = min(lo[i % c], static_cast<int>(in[i]));
        hi[i % c] = max(hi[i % c], static_cast<int>(in[i]));
      }
      for (int k = 0; k < c; ++k) {
        atomicMin(&sc.lo[k], lo[k]);
        atomicMax(&sc.hi[k], hi[k]);
      }
      __syncthreads();
      for (int i = threadIdx.x; i < total; i += blockDim.x) {
        const int lo = sc.lo[i % c], hi = sc.hi[i % c];
        const float low = lo == hi ? 0.0f : static_cast<float>(lo);
        const float scale = lo == hi ? 1.0f : (1.0f / static_cast<float>(hi - lo)) * 255.0f;
        out[i] = clamp_u8((static_cast<float>(in[i]) - low) * scale);
      }
      break;
    }
    case AugmentStepKind::equalize:
      for (int k = 0; k < c; ++k) equalize_channel(in, out, n, c, k, sc);
      break;
  }
  __syncthreads();
}

__global__ void augment_kernel(const uint8_t* data, int h, int w, int c, int padding,
                               const ImageAugment* plans, const float* mean, const float* std,
                               float* out) {
  extern __shared__ uint8_t images[];
  __shared__ Scratch scratch;
  const int n = h * w, total = n * c;
  uint8_t* cur = images;
  uint8_t* next = images + total;
  const ImageAugment& plan = plans[blockIdx.x];
  const uint8_t* src = data + plan.source * static_cast<int64_t>(total);

  // Crop (or copy) from global memory, then flip.
  for (int i = threadIdx.x; i < total; i += blockDim.x) {
    const int k = i % c, p = i / c, y = p / w, x = p % w;
    uint8_t v = 0;
    if (plan.crop == AugmentCrop::none) {
      v = src[i];
    } else if (plan.crop == AugmentCrop::padded) {
      const int sy = plan.crop_top + y - padding, sx = plan.crop_left + x - padding;
      v = sy >= 0 && sy < h && sx >= 0 && sx < w ? src[(sy * w + sx) * c + k] : 0;
    } else {
      // upsample_bilinear2d (align_corners=False), as resized_crop in augment.cpp.
      const float scale_y = static_cast<float>(plan.crop_h) / static_cast<float>(h);
      const float scale_x = static_cast<float>(plan.crop_w) / static_cast<float>(w);
      const double src_y = fmax(static_cast<double>(scale_y) * (y + 0.5) - 0.5, 0.0);
      const double src_x = fmax(static_cast<double>(scale_x) * (x + 0.5) - 0.5, 0.0);
      const int y0 = static_cast<int>(src_y), x0 = static_cast<int>(src_x);
      const int y1 = y0 + (y0 < plan.crop_h - 1 ? 1 : 0);
      const int x1 = x0 + (x0 < plan.crop_w - 1 ? 1 : 0);
      const float fy = static_cast<float>(src_y - y0), fx = static_cast<float>(src_x - x0);
      const uint8_t* row0 = src + ((plan.crop_top + y0) * w + plan.crop_left) * c;
      const uint8_t* row1 = src + ((plan.crop_top + y1) * w + plan.crop_left) * c;
      const float top_v = (1.0f - fx) * row0[x0 * c + k] + fx * row0[x1 * c + k];
      const float bottom_v = (1.0f - fx) * row1[x0 * c + k] + fx * row1[x1 * c + k];
      const float value = (1.0f - fy) * top_v + fy * bottom_v;
      v = static_cast<uint8_t>(fminf(fmaxf(rintf(value), 0.0f), 255.0f));
    }
    cur[i] = v;
  }
  __syncthreads();
  if (plan.flip) {
    for (int i = threadIdx.x; i < total; i += blockDim.x) {
      const int k = i % c, p = i / c, y = p / w, x = p % w;
      next[i] = cur[(y * w + (w - 1 - x)) * c + k];
    }
    __syncthreads();
    uint8_t* t = cur;
    cur = next, next = t;
  }
  for (int s = 0; s < plan.steps; ++s) {
    apply_step(plan.step[s], cur, next, h, w, c, scratch);
    uint8_t* t = cur;
    cur = next, next = t;
  }

  // Normalise, erase, write.
  float* dst = out + static_cast<int64_t>(blockIdx.x) * total;
  for (int i = threadIdx.x; i < total; i += blockDim.x) {
    const int k = i % c, p = i / c, y = p / w, x = p % w;
    const bool erased = plan.erase && y >= plan.erase_top && y < plan.erase_top + plan.erase_h &&
                        x >= plan.erase_left && x < plan.erase_left + plan.erase_w;
    const float value = static_cast<float>(cur[i]) / 255.0f;
    dst[i] = erased ? 0.0f : (value - mean[k]) / std[k];
  }
}

}  // namespace

size_t augment_max_image_bytes() {
  return kMaxImageBytes;
}

void augment_images(const uint8_t* data, int h, int w, int c, int padding,
                    const ImageAugment* plans, int64_t n, const float* mean, const float* std,
                    float* out, cudaStream_t stream) {
  if (n == 0) return;
  const size_t bytes = 2 * static_cast<size_t>(h) * w * c;
  augment_kernel<<<static_cast<unsigned>(n), kThreads, bytes, stream>>>(data, h, w, c, padding,
                                                                        plans, mean, std, out);
  DL_CUDA_CHECK_LAUNCH();
}

}  // namespace dl::cuda
