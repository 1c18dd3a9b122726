#include "engine/data/augment_batch.h"

#include <cstring>

#include "engine/error.h"
#ifdef DL_HAVE_CUDA
#include "engine/cuda/cuda_augment.h"
#endif

namespace dl::data {

Tensor images_tensor(const ImageDataset& data, Device device) {
  DL_CHECK(data.size() > 0, "images_tensor: the data set is empty");
  Tensor host = Tensor::empty({data.size(), data.height, data.width, data.channels}, DType::u8,
                              Device::cpu());
  std::memcpy(host.raw_data(), data.pixels.data(), data.pixels.size());
  return host.to(device);
}

Tensor augment_batch(const Tensor& images, const std::vector<int64_t>& indices,
                     const std::vector<AugmentParams>& params, const AugmentConfig& config) {
  DL_CHECK(images.dtype() == DType::u8 && images.dim() == 4 && images.is_contiguous(),
           "augment_batch: images must be a contiguous uint8 [n, h, w, c] tensor");
  const int64_t n = images.size(0), h = images.size(1), w = images.size(2), c = images.size(3);
  validate(config, static_cast<int>(c));
  DL_CHECK(indices.size() == params.size(), "augment_batch: ", indices.size(), " indices but ",
           params.size(), " parameter sets");
  for (size_t i = 0; i < indices.size(); ++i) {
    DL_CHECK(indices[i] >= 0 && indices[i] < n, "augment_batch: image ", indices[i],
             " is outside the ", n, " images");
    validate(params[i], config, static_cast<int>(h), static_cast<int>(w));
  }
  const auto count = static_cast<int64_t>(indices.size());
#ifdef DL_HAVE_CUDA
  if (images.device().is_cuda()) return cuda::augment_batch(images, indices, params, config);
#endif
  DL_CHECK(images.device().is_cpu(), "augment_batch: no augmentation on ", images.device().str());
  Tensor out = Tensor::empty({count, h, w, c}, DType::f32, Device::cpu());
  const uint8_t* pixels = images.data<uint8_t>();
  float* dst = out.data<float>();
  const int64_t bytes = h * w * c;
  // Validated above: apply_augment does not throw inside the parallel loop.
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t i = 0; i < count; ++i)
    apply_augment(config, params[static_cast<size_t>(i)],
                  pixels + indices[static_cast<size_t>(i)] * bytes, static_cast<int>(h),
                  static_cast<int>(w), static_cast<int>(c), dst + i * bytes);
  return out;
}

}  // namespace dl::data
