// augment_batch (engine/data/augment_batch.h) for images on the GPU: the host turns each image's
// AugmentParams into the kernel's ImageAugment (kernels/cuda/augment.cuh), the plans and the
// normalisation are copied to the device, one kernel makes the batch. Compiled only when
// DL_HAVE_CUDA.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/data/augment.h"
#include "engine/tensor.h"

namespace dl::cuda {

// The arguments are augment_batch's, already checked there; images are on the GPU.
Tensor augment_batch(const Tensor& images, const std::vector<int64_t>& indices,
                     const std::vector<data::AugmentParams>& params,
                     const data::AugmentConfig& config);

}  // namespace dl::cuda
