// Times ConvMixer training steps (forward, backward, AdamW), or with --eval evaluation batches
// (the forward in eval mode, without gradients), on synthetic data, in fp32 or bf16
// mixed precision (bf16 activations, fp32 parameters and optimizer state; the GPU, or a CPU with
// AVX512-BF16). On the
// CUDA path it also prints peak_mem_mb=<peak device memory of the caching allocator, MiB>. With
// --profile it then runs --profile-steps more steps under an OpProfiler (engine/profile.h) and
// prints the time of each op per step. The last line is train_img_per_s=<number> (of the timed
// steps; eval_img_per_s=<number> with --eval), for scripts to compare with PyTorch
// (scripts/pytorch_reference.py bench, scripts/bench.sh, scripts/bench_gpu.sh).
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/profile.h"
#include "engine/runtime.h"
#include "examples/cli.h"
#include "examples/runtime.h"
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
  flags.add("device", "cpu", "cpu, cuda or auto");
  flags.add("seed", "0", "random seed");
  flags.add("precision", "fp32", "fp32 or bf16 (bf16 mixed precision: the GPU, or a CPU with AVX512-BF16)");
  flags.add("tf32", "false", "allow TF32 in fp32 GEMMs and convolutions (CUDA path)");
  flags.add("profile", "false",
            "after the timed steps, print each op's time per step (device synchronized around "
            "every op)");
  flags.add("profile-steps", "3", "steps profiled by --profile");
  flags.add("eval", "false",
            "time evaluation batches (the forward in eval mode, no gradients) instead of training "
            "steps");
  if (!flags.parse(argc, argv)) return 0;

  const examples::Precision precision =
      examples::parse_precision("precision", flags.str("precision"));
  const bool tf32 = flags.boolean("tf32");
  // bf16: the images are converted on the host before the copy, as the trainer does.
  const examples::Runtime runtime = examples::setup_runtime(
      flags.str("device"), static_cast<int>(flags.integer("threads", 0, 1024)), precision, tf32);
  const Device device = runtime.device;
  const DType activations = runtime.activations;
  const int64_t batch = flags.integer("batch"), steps = flags.integer("steps");
  DL_CHECK(batch > 0 && steps > 0, "--batch and --steps must be positive");
  const bool profile = flags.boolean("profile");
  const int64_t profile_steps = flags.integer("profile-steps");
  DL_CHECK(!profile || profile_steps > 0, "--profile-steps must be positive");
  Generator gen(static_cast<uint64_t>(flags.integer("seed", 0)));
  models::ConvMixerConfig config;
  config.dim = flags.integer("dim"), config.depth = flags.integer("depth");
  config.kernel = flags.integer("kernel"), config.patch = flags.integer("patch");
  models::ConvMixer model(config, gen);
  model.to(device);
  optim::AdamW opt(model.parameters(), {.lr = 1e-3, .weight_decay = 0.005});

  const Tensor images =
      Tensor::randn({batch, 32, 32, 3}, gen, Device::cpu()).to(activations).to(device);
  std::vector<int64_t> label_values(static_cast<size_t>(batch));
  for (auto& l : label_values) l = static_cast<int64_t>(gen.below(10));
  // In host memory, as the trainer keeps them: cross_entropy checks them there, so a GPU step
  // does not wait for a check on the device.
  const Tensor labels = Tensor::from_vector(label_values, {batch});

  const bool eval = flags.boolean("eval");
  if (eval) model.eval();
  auto step = [&] {
    if (eval) {
      NoGradGuard no_grad;
      return cross_entropy(model.forward(images), labels);
    }
    Tensor loss = cross_entropy(model.forward(images), labels);
    opt.zero_grad();
    loss.backward();
    opt.step();
    return loss;
  };
  // Everything queued on the device is finished before each clock reading.
  auto sync = [&] { synchronize(device); };
  for (int64_t i = 0; i < flags.integer("warmup"); ++i) step();
  sync();
  const auto start = std::chrono::steady_clock::now();
  // The loss is read once, after the loop, as PyTorch's bench does (reading it every step would
  // add a wait per step on the GPU).
  Tensor loss;
  for (int64_t i = 0; i < steps; ++i) loss = step();
  sync();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const float last_loss = loss.item();
  std::printf(
      "convmixer-%lld/%lld k%lld p%lld batch %lld on %s (%s%s%s), %d threads: %.2f ms/step, "
      "loss %.4f\n",
      static_cast<long long>(config.dim), static_cast<long long>(config.depth),
      static_cast<long long>(config.kernel), static_cast<long long>(config.patch),
      static_cast<long long>(batch), device.str().c_str(), examples::to_string(precision).c_str(),
      tf32 ? ", tf32" : "", eval ? ", eval" : "", num_threads(), 1000.0 * seconds / steps,
      last_loss);
  std::printf("step_ms=%.3f\n", 1000.0 * seconds / steps);
  if (device.is_cuda()) std::printf("peak_mem_mb=%.1f\n", examples::peak_memory_mb(device));
  if (profile) {
    // The profiled steps' wall time, to compare with the time inside the ops.
    const auto profile_start = std::chrono::steady_clock::now();
    OpProfiler profiler(device);
    for (int64_t i = 0; i < profile_steps; ++i) step();
    sync();
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - profile_start).count();
    const double in_ops = profiler.total_seconds();
    std::printf("\nprofile of %lld more steps, the device synchronized before and after each op:\n",
                static_cast<long long>(profile_steps));
    std::fflush(stdout);
    profiler.print(std::cout, static_cast<int>(profile_steps));
    std::cout.flush();
    std::printf(
        "profiled steps: %.3f ms/step wall, %.3f in ops, %.3f outside them (autograd, "
        "allocation, copies)\n",
        1e3 * wall / profile_steps, 1e3 * in_ops / profile_steps,
        1e3 * (wall - in_ops) / profile_steps);
  }
  std::printf("%s_img_per_s=%.1f\n", eval ? "eval" : "train", batch * steps / seconds);
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
