// Training batches made where the decoded data set lives: the whole set as one uint8 tensor
// [images, h, w, c] on the CPU or a GPU, each batch image chosen by index and augmented with
// choices drawn on the host (draw_augment, from the same (seed, epoch, index) streams as the
// loader's), so that a GPU-made batch equals the CPU-made one bit for bit. On the GPU one kernel
// makes the batch (kernels/cuda/augment.cuh); on the CPU apply_augment, image by image.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/data/augment.h"
#include "engine/data/dataset.h"
#include "engine/tensor.h"

namespace dl::data {

// The decoded images of `data` as one uint8 tensor [size, h, w, c] on `device`.
Tensor images_tensor(const ImageDataset& data, Device device);

// out [indices.size(), h, w, c] f32 on images' device: image indices[i] of `images` (uint8
// [n, h, w, c], c 1 or 3) with params[i]'s choices under `config` (apply_augment's result).
// Throws dl::Error for an index outside the set, a count mismatch, or (on the GPU) an image
// larger than the kernel's shared memory holds.
Tensor augment_batch(const Tensor& images, const std::vector<int64_t>& indices,
                     const std::vector<AugmentParams>& params, const AugmentConfig& config);

}  // namespace dl::data
