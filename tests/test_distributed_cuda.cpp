// The NCCL communicator on the GPU, run as `mpirun -np 1` (one GPU holds one rank: NCCL cannot put
// two ranks on a device). A sum over one rank is the tensor itself, so every collective must give
// back its input bit for bit, through NCCL's whole path (communicator set-up, the engine's stream);
// and data-parallel ConvMixer steps through GradientReducer equal plain steps bit for bit. Skipped
// (77) without a GPU.
#define CATCH_CONFIG_RUNNER
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>

#include "cuda_test_util.h"
#include "engine/dist/communicator.h"
#include "engine/dist/data_parallel.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "engine/runtime.h"
#include "models/registry.h"

using namespace dl;

namespace {

dist::Communicator& comm() {
  return dist::world();
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(Device::cpu()), y = b.to(Device::cpu());
  return x.nbytes() == y.nbytes() && std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

}  // namespace

TEST_CASE("one rank under mpirun, on its GPU", "[dist][cuda]") {
  REQUIRE(dist::built_with_nccl());
  REQUIRE(comm().size() == 1);
}

TEST_CASE("NCCL all_reduce_sum and broadcast of GPU tensors give back their input on one rank",
          "[dist][cuda]") {
  Generator gen(std::random_device{}());
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{4097}, int64_t{3} * (1 << 20) + 5}) {
    INFO("size " << n);
    for (DType dtype : {DType::f32, DType::bf16, DType::i32, DType::i64}) {
      INFO("dtype " << dtype_name(dtype));
      const Tensor host = dtype == DType::f32 || dtype == DType::bf16
                              ? Tensor::randn({n}, gen).to(dtype)
                              : Tensor::full({n}, -12345, dtype);
      Tensor t = host.to(Device::cuda());
      comm().all_reduce_sum(t);
      REQUIRE(same_bytes(t, host));
      comm().broadcast(t, 0);
      REQUIRE(same_bytes(t, host));
    }
  }
}

TEST_CASE("ConvMixer steps through GradientReducer on NCCL equal plain steps bit for bit",
          "[dist][cuda]") {
  const uint64_t seed = std::random_device{}();
  INFO("seed " << seed);
  auto train = [&](bool reduce) {
    models::ModelSpec spec;
    spec.dim = 32, spec.depth = 2, spec.kernel = 5, spec.patch = 2;
    Generator init(seed);
    auto model = models::make_model(spec, init);
    model->to(Device::cuda());
    optim::SGD opt(model->parameters(), {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.05});
    std::optional<dist::GradientReducer> reducer;
    if (reduce) reducer.emplace(comm(), model->parameters(), 4096);
    Generator data(seed + 1);
    for (int step = 0; step < 3; ++step) {
      const Tensor images = Tensor::randn({16, 16, 16, 3}, data).to(Device::cuda());
      std::vector<int64_t> labels;
      for (int64_t i = 0; i < 16; ++i) labels.push_back((i * 3 + step) % 10);
      opt.zero_grad();
      cross_entropy(model->forward(images), Tensor::from_vector(labels, {16})).backward();
      if (reduce) {
        REQUIRE(reducer->started_in_backward() == reducer->buckets());
        reducer->sum_gradients();
      }
      opt.step();
    }
    return model->state_dict();
  };
  const nn::NamedTensors plain = train(false), reduced = train(true);
  REQUIRE(plain.size() == reduced.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    INFO(plain[i].first);
    CHECK(same_bytes(reduced[i].second, plain[i].second));
  }
}

// Issue 14's bar, run by scripts/gpu_check.sh (hidden: "[.bench]"): ConvMixer-256/8 AdamW steps at
// batch 512 with the gradients summed through GradientReducer on NCCL (the trainer's 1 MB buckets)
// against the same steps without it, in rounds that alternate the two; prints each round's
// milliseconds per step and the ratio. One rank: the sums are NCCL's whole path with no peer.
TEST_CASE("step time with the NCCL gradient sum against without", "[.bench][dist][cuda]") {
  const int kRounds = 3, kSteps = 20;
  for (const DType precision : {DType::f32, DType::bf16}) {
    models::ModelSpec spec;
    Generator init(1), data(2);
    auto model = models::make_model(spec, init);
    model->to(Device::cuda());
    optim::AdamW opt(model->parameters(), {.lr = 1e-3, .weight_decay = 0.05});
    const Tensor images = Tensor::randn({512, 32, 32, 3}, data).to(precision).to(Device::cuda());
    std::vector<int64_t> labels(512);
    for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<int64_t>(i % 10);
    const Tensor targets = Tensor::from_vector(labels, {512});
    // Milliseconds per step over `count` steps after one untimed step; reducer may be null.
    const auto time_steps = [&](dist::GradientReducer* reducer, int count) {
      const auto step = [&] {
        opt.zero_grad();
        cross_entropy(model->forward(images), targets).backward();
        if (reducer != nullptr) reducer->sum_gradients();
        opt.step();
      };
      step();
      synchronize(Device::cuda());
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < count; ++i) step();
      synchronize(Device::cuda());
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                 .count() /
             count;
    };
    for (int round = 0; round < kRounds; ++round) {
      const double plain = time_steps(nullptr, kSteps);
      dist::GradientReducer reducer(comm(), model->parameters(), int64_t{1} << 20);
      const double summed = time_steps(&reducer, kSteps);
      std::printf("%s round %d: %.3f ms/step plain, %.3f with the NCCL gradient sum: %.4f\n",
                  dtype_name(precision), round, plain, summed, summed / plain);
    }
  }
}

int main(int argc, char** argv) {
  return dl::cuda_test::run_tests(argc, argv);
}
