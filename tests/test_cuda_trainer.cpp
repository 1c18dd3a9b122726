// The trainer end to end on the GPU (skipped without one), against the same run on the CPU: the
// GPU path's staged uploads, deferred loss and accuracy reads, gradient clipping on the device,
// mid-epoch checkpoints and the divergence guard's sums of squares on the device, all in one run
// of a tiny CIFAR-format data set written here.
//
// Tolerances: fp32 on the GPU sums in another order than the CPU, and ten AdamW steps carry the
// difference on: losses within 2e-5 (relative), accuracies within two images, parameters and
// optimizer state within 2e-4 (relative L2). On the CPU, a learning rate 1e-6 off moves them by
// under 1e-7 and 3e-6, dropping the weight decay by 5e-6 and 5e-4. bf16 activations against the
// fp32 CPU run: the first epoch's training loss within 3e-2. A run resumed on the GPU against an
// uninterrupted GPU run: 1e-6 (the same kernels and plans in the same order, so expected equal).
#define CATCH_CONFIG_RUNNER
#include <cmath>
#include <string>

#include "cuda_test_util.h"
#include "trainer_test_util.h"

namespace {

using namespace dl;
using namespace dl::test;
namespace fs = std::filesystem;

double number(const io::JsonValue& line, const std::string& key) {
  for (const auto& [k, v] : line.as_object())
    if (k == key) return v.as_double();
  FAIL("metrics line without " << key);
  return 0;
}

void check_metrics_close(const fs::path& got_run, const fs::path& want_run, double loss_rtol,
                         int64_t train_images, int64_t test_images) {
  const auto got = metrics_lines(got_run), want = metrics_lines(want_run);
  REQUIRE(got.size() == want.size());
  for (size_t e = 0; e < want.size(); ++e) {
    INFO("epoch " << e + 1);
    for (const char* key : {"train_loss", "test_loss"}) {
      INFO(key << ": " << number(got[e], key) << " against " << number(want[e], key));
      CHECK(std::abs(number(got[e], key) - number(want[e], key)) <=
            loss_rtol * std::abs(number(want[e], key)));
    }
    CHECK(std::abs(number(got[e], "train_acc") - number(want[e], "train_acc")) * train_images <=
          2.01);
    CHECK(std::abs(number(got[e], "test_acc") - number(want[e], "test_acc")) * test_images <= 2.01);
  }
}

// The model's and the optimizer's tensors of two checkpoints: F32 within `rtol` (relative L2),
// the others (step counts, BatchNorm's batch counters) equal.
void check_checkpoints_close(const fs::path& got_run, const fs::path& want_run, double rtol) {
  const io::SafetensorsFile got = last_checkpoint(got_run), want = last_checkpoint(want_run);
  int compared = 0;
  for (const auto& [name, w] : want.tensors) {
    if (name.rfind("model.", 0) != 0 && name.rfind("optim.", 0) != 0) continue;
    INFO("tensor " << name);
    const Tensor* g = got.find(name);
    REQUIRE(g != nullptr);
    REQUIRE(g->shape() == w.shape());
    REQUIRE(g->dtype() == w.dtype());
    if (w.dtype() == DType::f32) {
      const std::vector<float> a = g->to_vector(), b = w.to_vector();
      double err = 0, norm = 0;
      for (size_t i = 0; i < b.size(); ++i) {
        err += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
        norm += double(b[i]) * b[i];
      }
      INFO("relative L2 difference " << std::sqrt(err / std::max(norm, 1e-300)));
      CHECK(std::sqrt(err) <= rtol * std::sqrt(norm));
    } else {
      CHECK(std::memcmp(g->raw_data(), w.raw_data(), w.nbytes()) == 0);
    }
    ++compared;
  }
  CHECK(compared > 10);
}

examples::TrainConfig gpu_config(const fs::path& data, const fs::path& run) {
  examples::TrainConfig c = tiny_config(data, run);
  c.device = "cuda";
  c.clip_grad = 0.05;           // clips every step of this model (on the device)
  c.save_every_minutes = 1e-9;  // a checkpoint after every step: the guard and reads mid-epoch
  return c;
}

TEST_CASE("A training run on the GPU matches the same run on the CPU", "[cuda][trainer]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  TempDir tmp;
  Generator gen(seed);
  write_cifar(tmp.path / "cifar", 16, gen);  // 80 training images, 16 test images

  auto cpu = gpu_config(tmp.path / "cifar", tmp.path / "cpu");
  cpu.device = "cpu";
  REQUIRE(examples::train(cpu) == 0);
  REQUIRE(examples::train(gpu_config(tmp.path / "cifar", tmp.path / "gpu")) == 0);
  check_metrics_close(tmp.path / "gpu", tmp.path / "cpu", 2e-5, 80, 16);
  check_checkpoints_close(tmp.path / "gpu", tmp.path / "cpu", 2e-4);

  auto bf16 = gpu_config(tmp.path / "cifar", tmp.path / "bf16");
  bf16.precision = examples::Precision::bf16;
  bf16.stop_after_steps = 5;  // the first epoch of the same two-epoch schedule
  REQUIRE(examples::train(bf16) == 130);
  const auto got = metrics_lines(tmp.path / "bf16"), want = metrics_lines(tmp.path / "cpu");
  REQUIRE(got.size() == 1);
  CHECK(std::abs(number(got[0], "train_loss") - number(want[0], "train_loss")) <=
        3e-2 * number(want[0], "train_loss"));
}

TEST_CASE("A GPU run stopped mid-epoch and resumed ends where an uninterrupted one does",
          "[cuda][trainer]") {
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  TempDir tmp;
  Generator gen(seed);
  write_cifar(tmp.path / "cifar", 16, gen);
  REQUIRE(examples::train(gpu_config(tmp.path / "cifar", tmp.path / "straight")) == 0);
  auto first = gpu_config(tmp.path / "cifar", tmp.path / "resumed");
  first.stop_after_steps = 7;  // epoch 2, batch 2
  REQUIRE(examples::train(first) == 130);
  auto second = gpu_config(tmp.path / "cifar", tmp.path / "resumed");
  second.resume = (tmp.path / "resumed").string();
  REQUIRE(examples::train(second) == 0);
  check_metrics_close(tmp.path / "resumed", tmp.path / "straight", 1e-6, 80, 16);
  check_checkpoints_close(tmp.path / "resumed", tmp.path / "straight", 1e-6);
}

TEST_CASE("A diverged GPU state is never written over the last checkpoint", "[cuda][trainer]") {
  TempDir tmp;
  Generator gen(fresh_seed());
  write_cifar(tmp.path / "cifar", 4, gen);  // 2 steps per epoch: step 1 saves mid-epoch
  require_diverged_state_not_saved(gpu_config(tmp.path / "cifar", tmp.path / "run"));
}

}  // namespace

int main(int argc, char** argv) {
  return dl::cuda_test::run_tests(argc, argv);
}
