// Times ConvMixer training steps (forward, backward, AdamW) on synthetic data. The last line is
// train_img_per_s=<number>, for scripts to compare with PyTorch (scripts/pytorch_reference.py).
#include <chrono>
#include <cstdio>
#include <iostream>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "examples/cli.h"
#include "kernels/cpu/parallel.h"
#include "models/convmixer.h"

using namespace dl;

namespace {

int run(int argc, char** argv) {
  cli::Flags flags("bench_model", "Times ConvMixer training steps on synthetic 32x32 images.");
  flags.add("dim", "256", "channels");
  flags.add("depth", "8", "ConvMixer layers");
  flags.add("kernel", "5", "depthwise kernel size (odd)");
  flags.add("patch", "2", "patch size");
  flags.add("batch", "64", "images per step");
  flags.add("steps", "5", "timed steps");
  flags.add("warmup", "1", "untimed steps first");
  flags.add("threads", "2", "CPU threads");
  flags.add("device", "cpu", "cpu or cuda");
  flags.add("seed", "0", "random seed");
  if (!flags.parse(argc, argv)) return 0;

  const Device device = Device::parse(flags.str("device"));
  device_backend(device);
  require_op_support(device);
  cpu::set_num_threads(static_cast<int>(flags.integer("threads")));
  const int64_t batch = flags.integer("batch"), steps = flags.integer("steps");
  DL_CHECK(batch > 0 && steps > 0, "--batch and --steps must be positive");
  Generator gen(static_cast<uint64_t>(flags.integer("seed")));
  models::ConvMixerConfig config;
  config.dim = flags.integer("dim"), config.depth = flags.integer("depth");
  config.kernel = flags.integer("kernel"), config.patch = flags.integer("patch");
  models::ConvMixer model(config, gen);
  model.to(device);
  optim::AdamW opt(model.parameters(), {.lr = 1e-3, .weight_decay = 0.005});

  const Tensor images = Tensor::randn({batch, 32, 32, 3}, gen, device);
  std::vector<int64_t> label_values(static_cast<size_t>(batch));
  for (auto& l : label_values) l = static_cast<int64_t>(gen.below(10));
  const Tensor labels = Tensor::from_vector(label_values, {batch}, device);

  auto step = [&] {
    Tensor loss = cross_entropy(model.forward(images), labels);
    opt.zero_grad();
    loss.backward();
    opt.step();
    return loss;
  };
  for (int64_t i = 0; i < flags.integer("warmup"); ++i) step();
  const auto start = std::chrono::steady_clock::now();
  float last_loss = 0.0f;
  for (int64_t i = 0; i < steps; ++i) last_loss = step().item();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "convmixer-%lld/%lld k%lld p%lld batch %lld on %s, %d threads: step_ms=%.1f loss=%.4f\n",
      static_cast<long long>(config.dim), static_cast<long long>(config.depth),
      static_cast<long long>(config.kernel), static_cast<long long>(config.patch),
      static_cast<long long>(batch), device.str().c_str(), cpu::num_threads(),
      1000.0 * seconds / steps, last_loss);
  std::printf("train_img_per_s=%.1f\n", batch * steps / seconds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "bench_model: error: " << e.what() << "\n";
    return 1;
  }
}
