// A consumer of the installed or added engine: builds a tiny ConvMixer, runs one forward, backward
// and AdamW step, saves the state dict to argv[1] and reads it back. Exits 0 when all of it works.
#include <cstdio>
#include <exception>
#include <vector>

#include "engine/io/safetensors.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "models/convmixer.h"

#if defined(DL_HAVE_CUDA) != CONSUMER_EXPECTS_CUDA
#error "DL_HAVE_CUDA on the targets disagrees with convmixer_engine_HAS_CUDA"
#endif

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer OUT.safetensors\n");
    return 2;
  }
  try {
    using namespace dl;
    Generator gen(0);
    models::ConvMixer model({.dim = 8, .depth = 1, .kernel = 3, .patch = 2, .classes = 4}, gen);
    optim::AdamW optimizer(model.parameters(), {.lr = 1e-3});
    const Tensor images = Tensor::randn({2, 8, 8, 3}, gen);
    const Tensor labels = Tensor::from_vector(std::vector<int64_t>{1, 3}, {2});
    Tensor loss = cross_entropy(model.forward(images), labels);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();

    const auto state = model.state_dict();
    io::save_safetensors(argv[1], state);
    const io::SafetensorsFile saved = io::load_safetensors(argv[1]);
    if (saved.tensors.size() != state.size() || !saved.find("classification.linear.weight")) {
      std::fprintf(stderr, "consumer: %s does not hold the model's state dict\n", argv[1]);
      return 1;
    }
    std::printf("consumer: loss %.4f, %zu tensors saved to %s (CUDA path %s)\n", loss.item(),
                state.size(), argv[1], CONSUMER_EXPECTS_CUDA ? "in" : "out");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
  return 0;
}
