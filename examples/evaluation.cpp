#include "examples/evaluation.h"

#include "engine/data/loader.h"
#include "engine/error.h"
#include "engine/ops.h"

namespace dl::examples {

std::string to_string(Tta tta) {
  return tta == Tta::flip ? "flip" : "none";
}

Tta parse_tta(const std::string& flag, const std::string& text) {
  if (text == "none") return Tta::none;
  if (text == "flip") return Tta::flip;
  throw Error("--" + flag + " must be none or flip, got '" + text + "'");
}

Tensor evaluation_logits(nn::Module& model, const Tensor& images, Device device, DType activations,
                         Tta tta) {
  const Tensor logits = model.forward(images.to(activations).to(device));
  if (tta == Tta::none) return logits;
  const Tensor flipped = model.forward(data::hflip_batch(images).to(activations).to(device));
  return scale(add(logits, flipped), 0.5f);
}

}  // namespace dl::examples
