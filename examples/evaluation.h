// What train's evaluation and the evaluate program share: a model's logits on a batch of test
// images, with test-time augmentation when asked.
#pragma once
#include <string>

#include "engine/nn.h"
#include "engine/tensor.h"

namespace dl::examples {

// Test-time augmentation. flip: the mean of the logits of each image and of its horizontal flip
// (airbench's: logits are averaged, not probabilities).
enum class Tta { none, flip };
std::string to_string(Tta tta);
// "none" or "flip"; anything else is an error naming `flag`.
Tta parse_tta(const std::string& flag, const std::string& text);

// The model's logits for a batch of normalised images [N, H, W, C] in host memory, converted to
// `activations` and moved to `device`. The caller puts the model in eval mode and turns gradients
// off.
Tensor evaluation_logits(nn::Module& model, const Tensor& images, Device device, DType activations,
                         Tta tta);

}  // namespace dl::examples
