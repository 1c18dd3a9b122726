// Image resizing for inference (predict): the antialiased bilinear filter of PIL's
// Image.resize(BILINEAR) and of torch.nn.functional.interpolate(mode="bilinear", antialias=True,
// align_corners=False), computed in float without rounding to uint8, so that
// scripts/pytorch_reference.py, which calls interpolate, sees the same input numbers.
#pragma once
#include <cstdint>

namespace dl::data {

// in: uint8 [h, w, c]; out: float [out_h, out_w, c] on the 0..255 scale. Separable, width first:
// output pixel i along an axis of scale s = in_size / out_size is centred at s * (i + 0.5) and
// averages the inputs j with weights max(0, 1 - |j + 0.5 - centre| / max(s, 1)), normalised to
// sum to one. At s = 1 this is a copy; when shrinking it averages over 2s inputs (antialiasing).
void resize_bilinear_antialiased(const uint8_t* in, int h, int w, int c, int out_h, int out_w,
                                 float* out);

}  // namespace dl::data
