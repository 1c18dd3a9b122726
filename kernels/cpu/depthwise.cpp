// Depthwise convolution, register-blocked: channels in whole vectors of kLanes go through loops
// that keep their sums in registers (forward and backward-data: kBlockW output pixels of one
// channel vector while the taps stream past; at stride 1 and k 3-9 a kernel row's input pixels
// are loaded once and used by every tap; backward-weight: one tap row's kw sums over an image's
// pixels). The channels past the last whole vector, and shapes the blocked loops do not cover,
// take per-pixel loops over channel ranges.
// Backward-data at stride 1 is the forward of dy with the taps flipped. Both paths sum in the same
// order (taps in row-major order for a pixel; pixels in row-major order for a tap), so which one
// computes a channel changes no result. Floors (ConvMixer-256/8, batch 64, k 5, f32): 210 MFLOP
// and 33.5 MB (one read of x, one write of y) a pass.
#include "kernels/cpu/depthwise.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/elementwise.h"

namespace dl::cpu {

namespace {

// kLanes channels of floats: one AVX-512 register (two AVX2 ones), through GCC/Clang vector
// extensions.
constexpr int64_t kLanes = 16;
using Lanes = float __attribute__((vector_size(kLanes * sizeof(float))));
using Bits = uint32_t __attribute__((vector_size(kLanes * sizeof(uint32_t))));
using Halves = uint16_t __attribute__((vector_size(kLanes * sizeof(uint16_t))));

// Output pixels per register block, and the widest kernel the backward-weight blocking keeps.
constexpr int64_t kBlockW = 8;
constexpr int64_t kMaxBlockedKw = 9;

Lanes load_lanes(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
Lanes load_lanes(const bf16* p) {
  Halves h;
  std::memcpy(&h, p, sizeof h);
  const Bits u = __builtin_convertvector(h, Bits) << 16;
  Lanes v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
void store_lanes(float* p, Lanes v) {
  std::memcpy(p, &v, sizeof v);
}
// Rounded to nearest even, a NaN kept a quiet NaN: bf16::from_float, lane by lane.
void store_lanes(bf16* p, Lanes v) {
  Bits u;
  std::memcpy(&u, &v, sizeof u);
  const Bits rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const Bits quiet_nan = (u >> 16) | 0x40u;
  const Bits is_nan = (Bits)((u & 0x7fffffffu) > 0x7f800000u);
  const Halves h = __builtin_convertvector((is_nan & quiet_nan) | (~is_nan & rounded), Halves);
  std::memcpy(static_cast<void*>(p), &h, sizeof h);
}

// A row of c floats to accumulate an output row of T in: the row itself when T is float, else a
// per-thread buffer whose sums finish() rounds into the row once.
template <class T>
struct Accumulator;
template <>
struct Accumulator<float> {
  static float* row(float* out, int64_t) { return out; }
  static void finish(const float*, float*, int64_t, int64_t) {}
};
template <>
struct Accumulator<bf16> {
  static float* row(bf16*, int64_t c) {
    thread_local std::vector<float> buffer;
    buffer.resize(static_cast<size_t>(c));
    return buffer.data();
  }
  static void finish(const float* acc, bf16* out, int64_t c0, int64_t c1) {
    for (int64_t k = c0; k < c1; ++k) out[k] = bf16::from_float(acc[k]);
  }
};

// [c, 1, kh, kw] -> [kh * kw, c]: a tap's weights become a contiguous channel vector; flipped,
// tap (i, j) takes (kh-1-i, kw-1-j)'s weights.
std::vector<float> taps_by_channel(const Conv2dShape& s, const float* weight, bool flipped) {
  const int64_t taps = s.kh * s.kw;
  std::vector<float> out(static_cast<size_t>(taps * s.c_in));
  for (int64_t c = 0; c < s.c_in; ++c)
    for (int64_t t = 0; t < taps; ++t) out[t * s.c_in + c] = weight[c * taps + t];
  if (flipped)
    for (int64_t t = 0; t < taps / 2; ++t)
      std::swap_ranges(out.begin() + t * s.c_in, out.begin() + (t + 1) * s.c_in,
                       out.begin() + (taps - 1 - t) * s.c_in);
  return out;
}

// Forward over the channels [0, c_vec) (whole vectors) with taps w [kh * kw, c]. For each output
// row and channel vector, the kh input rows it reads are first copied as floats into a per-thread
// buffer with zeros where they fall in the padding (a bf16 input is widened once there, not once
// per tap), so the register-blocked loop below has no bounds to check.
template <class T>
void forward_vectors(const Conv2dShape& s, const T* x, const float* w, const float* bias, T* y,
                     int64_t c_vec) {
  const int64_t c = s.c_in, ho = s.h_out(), wo = s.w_out();
  const int64_t blocks = (wo + kBlockW - 1) / kBlockW;
  // Columns of a padded row: input column iw is at iw + pad; the last block reads up to here.
  const int64_t padded_w = (blocks * kBlockW - 1) * s.stride + s.kw;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t oh = 0; oh < ho; ++oh) {
      thread_local std::vector<Lanes> rows;
      rows.resize(static_cast<size_t>(s.kh * padded_w));
      for (int64_t cb = 0; cb < c_vec; cb += kLanes) {
        for (int64_t i = 0; i < s.kh; ++i) {
          const int64_t ih = oh * s.stride - s.pad + i;
          if (ih < 0 || ih >= s.h) continue;
          const T* in = x + (n * s.h + ih) * s.w * c + cb;
          Lanes* row = rows.data() + i * padded_w;
          for (int64_t col = 0; col < padded_w; ++col) {
            const int64_t iw = col - s.pad;
            row[col] = iw >= 0 && iw < s.w ? load_lanes(in + iw * c) : Lanes{};
          }
        }
        for (int64_t ow0 = 0; ow0 < wo; ow0 += kBlockW) {
          const Lanes b = bias ? load_lanes(bias + cb) : Lanes{};
          Lanes acc[kBlockW];
          for (int64_t r = 0; r < kBlockW; ++r) acc[r] = b;
          for (int64_t i = 0; i < s.kh; ++i) {
            const int64_t ih = oh * s.stride - s.pad + i;
            if (ih < 0 || ih >= s.h) continue;
            const Lanes* row = rows.data() + i * padded_w + ow0 * s.stride;
            for (int64_t j = 0; j < s.kw; ++j) {
              const Lanes wv = load_lanes(w + (i * s.kw + j) * c + cb);
              for (int64_t r = 0; r < kBlockW; ++r) acc[r] += row[r * s.stride + j] * wv;
            }
          }
          const int64_t block = std::min(kBlockW, wo - ow0);
          for (int64_t r = 0; r < block; ++r)
            store_lanes(y + ((n * ho + oh) * wo + ow0 + r) * c + cb, acc[r]);
        }
      }
    }
}

// Forward over the channels [0, c_vec) at stride 1 with a kernel KW wide, read in place: for each
// kernel row, the KW + kBlockW - 1 input pixels a block of kBlockW outputs needs are loaded once
// into registers (zeros in the padding) and each feeds up to KW FMAs, so the loop makes about
// one load per three FMAs at KW 5 (the row-buffer loop above: one per FMA, plus the copy). The
// loops over pixels run outside the channel loop, so the output is written a pixel block at a
// time. The sums are taken in the same order as forward_vectors'.
template <int KW, class T>
void forward_vectors_stride1(const Conv2dShape& s, const T* x, const float* w, const float* bias,
                             T* y, int64_t c_vec) {
  constexpr int kInputs = kBlockW + KW - 1;
  const int64_t c = s.c_in, ho = s.h_out(), wo = s.w_out();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t oh = 0; oh < ho; ++oh)
      for (int64_t ow0 = 0; ow0 < wo; ow0 += kBlockW)
        for (int64_t cb = 0; cb < c_vec; cb += kLanes) {
          const Lanes b = bias ? load_lanes(bias + cb) : Lanes{};
          Lanes acc[kBlockW];
          for (int r = 0; r < kBlockW; ++r) acc[r] = b;
          for (int64_t i = 0; i < s.kh; ++i) {
            const int64_t ih = oh - s.pad + i;
            if (ih < 0 || ih >= s.h) continue;
            const T* row = x + (n * s.h + ih) * s.w * c + cb;
            Lanes in[kInputs];
            for (int q = 0; q < kInputs; ++q) {
              const int64_t iw = ow0 - s.pad + q;
              in[q] = iw >= 0 && iw < s.w ? load_lanes(row + iw * c) : Lanes{};
            }
            Lanes taps[KW];
            for (int j = 0; j < KW; ++j) taps[j] = load_lanes(w + (i * KW + j) * c + cb);
            for (int j = 0; j < KW; ++j)
              for (int r = 0; r < kBlockW; ++r) acc[r] += in[r + j] * taps[j];
          }
          const int64_t block = std::min(kBlockW, wo - ow0);
          for (int64_t r = 0; r < block; ++r)
            store_lanes(y + ((n * ho + oh) * wo + ow0 + r) * c + cb, acc[r]);
        }
}

// Calls f(i, j, ih, iw) for each tap (i, j) of output pixel (oh, ow) whose input pixel (ih, iw)
// is inside the image, in row-major tap order.
template <class F>
void for_each_tap(const Conv2dShape& s, int64_t oh, int64_t ow, F&& f) {
  for (int64_t i = 0; i < s.kh; ++i) {
    const int64_t ih = oh * s.stride - s.pad + i;
    if (ih < 0 || ih >= s.h) continue;
    for (int64_t j = 0; j < s.kw; ++j) {
      const int64_t iw = ow * s.stride - s.pad + j;
      if (iw >= 0 && iw < s.w) f(i, j, ih, iw);
    }
  }
}

// Forward over the channels [c0, c): one output pixel at a time.
template <class T>
void forward_pixels(const Conv2dShape& s, const T* x, const float* w, const float* bias, T* y,
                    int64_t c0) {
  const int64_t c = s.c_in, ho = s.h_out(), wo = s.w_out();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t oh = 0; oh < ho; ++oh)
      for (int64_t ow = 0; ow < wo; ++ow) {
        T* out = y + ((n * ho + oh) * wo + ow) * c;
        float* acc = Accumulator<T>::row(out, c);
        for (int64_t k = c0; k < c; ++k) acc[k] = bias ? bias[k] : 0.0f;
        for_each_tap(s, oh, ow, [&](int64_t i, int64_t j, int64_t ih, int64_t iw) {
          const T* in = x + ((n * s.h + ih) * s.w + iw) * c;
          const float* wt = w + (i * s.kw + j) * c;
          for (int64_t k = c0; k < c; ++k) acc[k] += load(in[k]) * wt[k];
        });
        Accumulator<T>::finish(acc, out, c0, c);
      }
}

template <class T>
void forward_with_taps(const Conv2dShape& s, const T* x, const float* w, const float* bias, T* y) {
  const int64_t c_vec = s.c_in / kLanes * kLanes;
  if (c_vec > 0) {
    const bool stride1 = s.stride == 1;
    if (stride1 && s.kw == 3)
      forward_vectors_stride1<3>(s, x, w, bias, y, c_vec);
    else if (stride1 && s.kw == 5)
      forward_vectors_stride1<5>(s, x, w, bias, y, c_vec);
    else if (stride1 && s.kw == 7)
      forward_vectors_stride1<7>(s, x, w, bias, y, c_vec);
    else if (stride1 && s.kw == 9)
      forward_vectors_stride1<9>(s, x, w, bias, y, c_vec);
    else
      forward_vectors(s, x, w, bias, y, c_vec);
  }
  if (c_vec < s.c_in) forward_pixels(s, x, w, bias, y, c_vec);
}

// Backward-data over the channels [c0, c): one input pixel at a time, any stride.
template <class T>
void backward_data_pixels(const Conv2dShape& s, const T* dy, const float* w, T* dx, int64_t c0) {
  const int64_t c = s.c_in, ho = s.h_out(), wo = s.w_out();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t ih = 0; ih < s.h; ++ih)
      for (int64_t iw = 0; iw < s.w; ++iw) {
        T* out = dx + ((n * s.h + ih) * s.w + iw) * c;
        float* acc = Accumulator<T>::row(out, c);
        for (int64_t k = c0; k < c; ++k) acc[k] = 0.0f;
        for (int64_t i = 0; i < s.kh; ++i) {
          const int64_t oh_s = ih + s.pad - i;
          if (oh_s < 0 || oh_s % s.stride != 0 || oh_s / s.stride >= ho) continue;
          for (int64_t j = 0; j < s.kw; ++j) {
            const int64_t ow_s = iw + s.pad - j;
            if (ow_s < 0 || ow_s % s.stride != 0 || ow_s / s.stride >= wo) continue;
            const T* g = dy + ((n * ho + oh_s / s.stride) * wo + ow_s / s.stride) * c;
            const float* wt = w + (i * s.kw + j) * c;
            for (int64_t k = c0; k < c; ++k) acc[k] += load(g[k]) * wt[k];
          }
        }
        Accumulator<T>::finish(acc, out, c0, c);
      }
}

// Backward-weight over the channels [0, c_vec) into one image's partial sums ([taps, c] then the
// bias's [c]), which the caller zeroed.
template <class T>
void backward_weight_vectors(const Conv2dShape& s, const T* dy, const T* x, int64_t n,
                             float* partial, int64_t c_vec) {
  const int64_t c = s.c_in, ho = s.h_out(), wo = s.w_out();
  const T* dy_image = dy + n * ho * wo * c;
  const T* x_image = x + n * s.h * s.w * c;
  for (int64_t cb = 0; cb < c_vec; cb += kLanes) {
    for (int64_t i = 0; i < s.kh; ++i) {
      Lanes acc[kMaxBlockedKw] = {};
      for (int64_t oh = 0; oh < ho; ++oh) {
        const int64_t ih = oh * s.stride - s.pad + i;
        if (ih < 0 || ih >= s.h) continue;
        const T* row = x_image + ih * s.w * c + cb;
        for (int64_t ow = 0; ow < wo; ++ow) {
          const Lanes g = load_lanes(dy_image + (oh * wo + ow) * c + cb);
          for (int64_t j = 0; j < kMaxBlockedKw; ++j) {
            const int64_t iw = ow * s.stride - s.pad + j;
            if (j < s.kw && iw >= 0 && iw < s.w) acc[j] += g * load_lanes(row + iw * c);
          }
        }
      }
      for (int64_t j = 0; j < s.kw; ++j) store_lanes(partial + (i * s.kw + j) * c + cb, acc[j]);
    }
    Lanes bias_sum{};
    for (int64_t p = 0; p < ho * wo; ++p) bias_sum += load_lanes(dy_image + p * c + cb);
    store_lanes(partial + s.kh * s.kw * c + cb, bias_sum);
  }
}

// Backward-weight over the channels [c0, c) of image n, one output pixel at a time.
template <class T>
void backward_weight_pixels(const Conv2dShape& s, const T* dy, const T* x, int64_t n,
                            float* partial, int64_t c0) {
  const int64_t c = s.c_in, ho = s.h_out(), wo = s.w_out();
  float* acc_b = partial + s.kh * s.kw * c;
  std::vector<float> g(static_cast<size_t>(c));
  for (int64_t oh = 0; oh < ho; ++oh)
    for (int64_t ow = 0; ow < wo; ++ow) {
      const T* dy_pixel = dy + ((n * ho + oh) * wo + ow) * c;
      for (int64_t k = c0; k < c; ++k) g[k] = load(dy_pixel[k]);
      for (int64_t k = c0; k < c; ++k) acc_b[k] += g[k];
      for_each_tap(s, oh, ow, [&](int64_t i, int64_t j, int64_t ih, int64_t iw) {
        const T* in = x + ((n * s.h + ih) * s.w + iw) * c;
        float* a = partial + (i * s.kw + j) * c;
        for (int64_t k = c0; k < c; ++k) a[k] += g[k] * load(in[k]);
      });
    }
}

}  // namespace

template <class T>
void depthwise_forward(const Conv2dShape& s, const T* x, const float* weight, const float* bias,
                       T* y) {
  const std::vector<float> w = taps_by_channel(s, weight, false);
  forward_with_taps(s, x, w.data(), bias, y);
}

template <class T>
void depthwise_backward_data(const Conv2dShape& s, const T* dy, const float* weight, T* dx) {
  // At stride 1 with a square kernel and pad < k, dx is the forward of dy (ho x wo, padded by
  // k-1-pad) with the taps flipped.
  if (s.stride == 1 && s.kh == s.kw && s.pad < s.kh) {
    Conv2dShape flipped = s;
    flipped.h = s.h_out(), flipped.w = s.w_out(), flipped.pad = s.kh - 1 - s.pad;
    const std::vector<float> w = taps_by_channel(s, weight, true);
    forward_with_taps(flipped, dy, w.data(), nullptr, dx);
    return;
  }
  const std::vector<float> w = taps_by_channel(s, weight, false);
  backward_data_pixels(s, dy, w.data(), dx, 0);
}

template <class T>
void depthwise_backward_weight(const Conv2dShape& s, const T* dy, const T* x, float* dweight,
                               float* dbias) {
  const int64_t c = s.c_in, taps = s.kh * s.kw, per_image = (taps + 1) * c;
  const int64_t c_vec = s.kw <= kMaxBlockedKw ? c / kLanes * kLanes : 0;
  std::vector<float> partial(static_cast<size_t>(s.n * per_image), 0.0f);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < s.n; ++n) {
    float* image_partial = partial.data() + n * per_image;
    if (c_vec > 0) backward_weight_vectors(s, dy, x, n, image_partial, c_vec);
    if (c_vec < c) backward_weight_pixels(s, dy, x, n, image_partial, c_vec);
  }
  std::vector<float> total(static_cast<size_t>(per_image));
  sum_rows(partial.data(), s.n, per_image, total.data());
  for (int64_t ch = 0; ch < c; ++ch)
    for (int64_t t = 0; t < taps; ++t) dweight[ch * taps + t] = total[t * c + ch];
  if (dbias) std::copy(total.begin() + taps * c, total.end(), dbias);
}

template void depthwise_forward(const Conv2dShape&, const float*, const float*, const float*,
                                float*);
template void depthwise_forward(const Conv2dShape&, const bf16*, const float*, const float*, bf16*);
template void depthwise_backward_data(const Conv2dShape&, const float*, const float*, float*);
template void depthwise_backward_data(const Conv2dShape&, const bf16*, const float*, bf16*);
template void depthwise_backward_weight(const Conv2dShape&, const float*, const float*, float*,
                                        float*);
template void depthwise_backward_weight(const Conv2dShape&, const bf16*, const bf16*, float*,
                                        float*);

}  // namespace dl::cpu
