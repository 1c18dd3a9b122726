// The engine's ops, optimizers and whole models on the GPU against the same on the CPU: the
// promise that moving a model to the GPU changes the device and nothing else. Every case draws
// fresh random inputs (the seed is printed; DL_TEST_SEED repeats a run).
//
// How an op is compared: every case of the op table (tests/op_cases.h) runs on both devices from
// the same inputs, made on the CPU, with the same random upstream gradient, so backward checks
// every input's gradient with generic values. New tensors start as NaN (the caching allocator
// would otherwise hand out used memory), so an element the GPU never wrote fails.
//
// Tolerances: |gpu - cpu| <= rtol * max|cpu| over the tensor. fp32: rtol 1e-4 (sums in another
// order; the CPU accumulates BatchNorm statistics in double). bf16 activations against the fp32
// CPU on the same bf16-rounded inputs: rtol 3e-2 for one op, and for a model's step 3e-2 on the
// loss and logits and the gradients' relative L2 error below 0.1 (bf16 keeps 8 bits; errors of
// 2^-8 per rounding add up over a few layers).
#define CATCH_CONFIG_RUNNER
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cuda_test_util.h"
#include "engine/error.h"
#include "engine/nn.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "models/registry.h"
#include "op_cases.h"
#include "test_util.h"

namespace {

using dl::Device;
using dl::DType;
using dl::Tensor;

const Device kGpu = Device::cuda();
const Device kCpu = Device::cpu();

#define CHECK_CLOSE(got, want, rtol, what)                           \
  do {                                                               \
    const double e_ = dl::test::max_rel_error(got, want);            \
    INFO(what << ": max error " << e_ << " of the largest |value|"); \
    CHECK(e_ <= (rtol));                                             \
  } while (0)

TEST_CASE("squared norms, gradient clipping and the in-place helpers on the GPU match the CPU",
          "[cuda][ops]") {
  dl::Generator gen = dl::test::fresh_generator();
  Tensor big = Tensor::randn({1 << 20}, gen);
  CHECK(std::abs(dl::squared_norm(big.to(kGpu)) - dl::squared_norm(big)) <=
        1e-6 * dl::squared_norm(big));
  const std::vector<Tensor> several = {Tensor::randn({7}, gen), big, Tensor::randn({3, 5}, gen)};
  std::vector<Tensor> several_gpu;
  for (const Tensor& t : several) several_gpu.push_back(t.to(kGpu));
  const std::vector<double> want = dl::squared_norms(several), got = dl::squared_norms(several_gpu);
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) CHECK(std::abs(got[i] - want[i]) <= 1e-6 * want[i]);
  // Gradient clipping on the GPU: the same norm and the same scaled gradients as on the CPU.
  for (const double max_norm : {0.5, 1e9}) {
    INFO("clip_grad_norm, max_norm " << max_norm);
    std::vector<Tensor> cpu_params, gpu_params;
    for (const Tensor& t : several) {
      cpu_params.push_back(Tensor::zeros(t.shape()));
      cpu_params.back().set_grad(t.clone());
      gpu_params.push_back(Tensor::zeros(t.shape()).to(kGpu));
      gpu_params.back().set_grad(t.to(kGpu));
    }
    const float cpu_norm = dl::optim::clip_grad_norm(cpu_params, max_norm).item();
    const float gpu_norm = dl::optim::clip_grad_norm(gpu_params, max_norm).item();
    CHECK(std::abs(gpu_norm - cpu_norm) <= 1e-6 * cpu_norm);
    for (size_t i = 0; i < several.size(); ++i)
      CHECK_CLOSE(gpu_params[i].grad(), cpu_params[i].grad(), 1e-6, "clipped gradient");
  }
  Tensor g = big.to(kGpu), c = big.clone();
  dl::add_(g, Tensor::ones({1 << 20}).to(kGpu), 0.5f);
  dl::add_(c, Tensor::ones({1 << 20}), 0.5f);
  CHECK_CLOSE(g, c, 1e-6, "add_");
  dl::scale_(g, 3.0f);
  dl::scale_(c, 3.0f);
  CHECK_CLOSE(g, c, 1e-6, "scale_");
}

// Every case of the op table (tests/op_cases.h) on the GPU against the CPU: f32 against f32
// (rtol 1e-4; the running statistics 1e-5), and bf16 activations against f32 from the same
// bf16-rounded inputs (rtol 3e-2; the running statistics, summed in float from bf16 values, 1e-2).
// A case the CUDA path does not take is refused with a dl::Error.
TEST_CASE("every op of the table on the GPU matches the CPU, in f32 and bf16",
          "[cuda][ops][table]") {
  using dl::test::run_case;
  dl::Generator gen = dl::test::fresh_generator();
  for (const dl::test::OpCase& c : dl::test::op_cases()) {
    INFO("op case: " << c.name);
    const std::vector<Tensor> drawn = dl::test::draw_inputs(c, gen);
    const Tensor upstream = Tensor::randn(dl::test::output_shape(c, drawn), gen);
    if (!c.on_cuda) {
      CHECK_THROWS_AS(run_case(c, drawn, kGpu, DType::f32, upstream), dl::Error);
      continue;
    }
    {
      INFO("f32");
      const dl::test::OpResult gpu = run_case(c, drawn, kGpu, DType::f32, upstream);
      const dl::test::OpResult cpu = run_case(c, drawn, kCpu, DType::f32, upstream);
      dl::test::check_results_close(c, gpu, cpu, 1e-4, 1e-5);
    }
    INFO("bf16 on the GPU against f32 on the CPU");
    const std::vector<Tensor> rounded = dl::test::round_activations_to_bf16(c, drawn);
    const Tensor upstream16 = upstream.to(DType::bf16).to(DType::f32);
    const dl::test::OpResult gpu = run_case(c, rounded, kGpu, DType::bf16, upstream16);
    const dl::test::OpResult cpu = run_case(c, rounded, kCpu, DType::f32, upstream16);
    dl::test::check_results_close(c, gpu, cpu, 3e-2, 1e-2);
  }
}

TEST_CASE("BatchNorm evaluation on the GPU leaves the running statistics alone, bit for bit",
          "[cuda][ops]") {
  dl::Generator gen = dl::test::fresh_generator();
  const Tensor x = Tensor::randn({4, 5, 3, 19}, gen).to(kGpu);
  const Tensor mean = Tensor::randn({19}, gen), var = Tensor::uniform({19}, 0.5f, 2.0f, gen);
  Tensor gpu_mean = mean.to(kGpu), gpu_var = var.to(kGpu);
  dl::batch_norm(x, gpu_mean, gpu_var, Tensor(), Tensor(), false);
  dl::gelu_batch_norm(x, gpu_mean, gpu_var, Tensor(), Tensor(), false, 0.1f, 1e-5f, x);
  CHECK(gpu_mean.to_vector() == mean.to_vector());
  CHECK(gpu_var.to_vector() == var.to_vector());
}

TEST_CASE("NaN and infinity on the GPU: sums of squares, clipping and accuracy as on the CPU",
          "[cuda][ops]") {
  dl::Generator gen = dl::test::fresh_generator();
  std::vector<float> v = Tensor::randn({5000}, gen).to_vector(), w = v;
  v[4321] = INFINITY;
  w[17] = NAN;
  const Tensor with_inf = Tensor::from_vector(v, {5000}), with_nan = Tensor::from_vector(w, {5000});
  const Tensor finite = Tensor::randn({300}, gen);
  const std::vector<double> norms =
      dl::squared_norms({finite.to(kGpu), with_inf.to(kGpu), with_nan.to(kGpu)});
  CHECK(std::isfinite(norms[0]));
  CHECK(std::isinf(norms[1]));
  CHECK(std::isnan(norms[2]));
  // A non-finite norm scales nothing (on the CPU as on the GPU) and is returned as it is.
  for (const Tensor& bad : {with_inf, with_nan}) {
    std::vector<Tensor> cpu_params, gpu_params;
    for (const Tensor& g : {finite, bad}) {
      cpu_params.push_back(Tensor::zeros(g.shape()));
      cpu_params.back().set_grad(g.clone());
      gpu_params.push_back(Tensor::zeros(g.shape()).to(kGpu));
      gpu_params.back().set_grad(g.to(kGpu));
    }
    const bool inf = &bad == &with_inf;
    for (auto* params : {&cpu_params, &gpu_params}) {
      const float norm = dl::optim::clip_grad_norm(*params, 1.0).item();
      CHECK((inf ? std::isinf(norm) : std::isnan(norm)));
      for (size_t i = 0; i < 2; ++i) {  // bit for bit: NaN compares unequal to itself
        const std::vector<float> got = (*params)[i].grad().to_vector();
        const std::vector<float> want = (i == 0 ? finite : bad).to_vector();
        CHECK(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) == 0);
      }
    }
  }
  // Rows with a NaN logit, and ties, count as on the CPU (the first maximum wins).
  std::vector<float> logits(40 * 10);
  for (auto& x : logits) x = static_cast<float>(gen.below(3));  // many ties
  logits[3 * 10 + 0] = NAN;
  logits[5 * 10 + 7] = NAN;
  std::vector<int64_t> l(40);
  for (auto& x : l) x = static_cast<int64_t>(gen.below(10));
  const Tensor lt = Tensor::from_vector(logits, {40, 10}), labels = Tensor::from_vector(l, {40});
  CHECK(dl::count_correct(lt.to(kGpu), labels).item() == dl::count_correct(lt, labels).item());
}

// The small models of the tests: one ConvMixer and one ResNet, both on 16x16 images.
dl::models::ModelSpec convmixer_spec() {
  dl::models::ModelSpec spec;
  spec.dim = 32, spec.depth = 2, spec.kernel = 5, spec.patch = 2;
  return spec;
}
dl::models::ModelSpec resnet_spec() {
  dl::models::ModelSpec spec;
  spec.name = "resnet", spec.dim = 8, spec.depth = 1;
  return spec;
}

struct StepResult {
  Tensor logits, loss;
  std::vector<Tensor> grads, params;
};

// `steps` training steps of a fresh model (seeded init) on `device`; results copied to the CPU.
StepResult train_steps(const dl::models::ModelSpec& spec, uint64_t seed, Device device,
                       DType activations, const Tensor& images, const Tensor& labels, bool adamw,
                       int steps) {
  dl::Generator init(seed);
  auto model = dl::models::make_model(spec, init);
  model->to(device);
  std::unique_ptr<dl::optim::Optimizer> opt;
  if (adamw) {
    opt = std::make_unique<dl::optim::AdamW>(
        model->parameters(), dl::optim::AdamWOptions{.lr = 0.01, .weight_decay = 0.05});
  } else {
    opt = std::make_unique<dl::optim::SGD>(
        model->parameters(),
        dl::optim::SGDOptions{.lr = 0.05, .momentum = 0.9, .weight_decay = 5e-4, .nesterov = true});
  }
  // The labels stay in host memory, as the trainer keeps them (cross_entropy checks them there).
  const Tensor x = images.to(activations).to(device), y = labels;
  StepResult r;
  for (int s = 0; s < steps; ++s) {
    const Tensor logits = model->forward(x);
    const Tensor loss = dl::cross_entropy(logits, y, 0.1f);
    opt->zero_grad();
    loss.backward();
    dl::optim::clip_grad_norm(model->parameters(), 5.0);
    if (s == 0) {
      r.logits = logits.to(kCpu);
      r.loss = loss.to(kCpu);
      for (const Tensor& p : model->parameters()) r.grads.push_back(p.grad().to(kCpu));
    }
    opt->step();
  }
  for (const Tensor& p : model->parameters()) r.params.push_back(p.to(kCpu));
  return r;
}

void compare_training(const dl::models::ModelSpec& spec, bool adamw) {
  dl::Generator gen = dl::test::fresh_generator();
  const uint64_t init_seed = gen.next_u64();
  const Tensor images = Tensor::randn({6, 16, 16, 3}, gen);
  std::vector<int64_t> l(6);
  for (auto& v : l) v = static_cast<int64_t>(gen.next_u64() % 10);
  const Tensor labels = Tensor::from_vector(l, {6});
  const StepResult cpu = train_steps(spec, init_seed, kCpu, DType::f32, images, labels, adamw, 3);
  const StepResult gpu = train_steps(spec, init_seed, kGpu, DType::f32, images, labels, adamw, 3);
  CHECK_CLOSE(gpu.loss, cpu.loss, 1e-5, "loss");
  CHECK_CLOSE(gpu.logits, cpu.logits, 1e-4, "logits");
  for (size_t i = 0; i < cpu.grads.size(); ++i) {
    INFO("parameter " << i);
    CHECK_CLOSE(gpu.grads[i], cpu.grads[i], 1e-3, "gradient after step 1");
    CHECK_CLOSE(gpu.params[i], cpu.params[i], 1e-3, "parameter after 3 steps");
  }
}

TEST_CASE("a ConvMixer trained 3 AdamW steps on the GPU matches the CPU", "[cuda][model]") {
  compare_training(convmixer_spec(), true);
}

TEST_CASE("a ResNet trained 3 SGD (Nesterov) steps on the GPU matches the CPU", "[cuda][model]") {
  compare_training(resnet_spec(), false);
}

TEST_CASE("bf16 mixed precision on the GPU stays close to the fp32 CPU step", "[cuda][model]") {
  dl::Generator gen = dl::test::fresh_generator();
  const uint64_t init_seed = gen.next_u64();
  const Tensor images = Tensor::randn({8, 16, 16, 3}, gen);
  std::vector<int64_t> l(8);
  for (auto& v : l) v = static_cast<int64_t>(gen.next_u64() % 10);
  const Tensor labels = Tensor::from_vector(l, {8});
  const auto spec = convmixer_spec();
  const StepResult cpu = train_steps(spec, init_seed, kCpu, DType::f32, images, labels, true, 1);
  const StepResult gpu = train_steps(spec, init_seed, kGpu, DType::bf16, images, labels, true, 1);
  CHECK(gpu.logits.dtype() == DType::bf16);
  CHECK_CLOSE(gpu.loss, cpu.loss, 3e-2, "loss");
  CHECK_CLOSE(gpu.logits, cpu.logits, 3e-2, "logits");
  dl::test::check_gradients_close(gpu.grads, cpu.grads, 0.1);
}

TEST_CASE("host-to-device copies arrive intact through the staging ring", "[cuda][copy]") {
  dl::Generator gen = dl::test::fresh_generator();
  // Many more uploads than staging slots, each source freed at once, interleaved with GPU work
  // that reads earlier uploads; and one copy too large for a slot (the pageable path).
  std::vector<std::vector<float>> expected;
  std::vector<Tensor> uploaded;
  // Milliseconds of queued GPU work first, so that the uploads wait behind it and the ring's
  // slots are reused while earlier copies are still queued.
  Tensor busy = Tensor::zeros({int64_t{1} << 26}, DType::f32, kGpu);
  for (int i = 0; i < 20; ++i) busy = dl::gelu(busy);
  Tensor running = Tensor::zeros({1000}).to(kGpu);
  for (int i = 0; i < 24; ++i) {
    // Every sixth upload is 6 MiB (a batch of 512 CIFAR-10 images in fp32): its slot grows.
    const int64_t n = i % 6 == 5 ? (int64_t{6} << 20) / 4 + i : 1000 + 977 * i;
    Tensor host = Tensor::randn({n}, gen);
    expected.push_back(host.to_vector());
    uploaded.push_back(host.to(kGpu));
    host.fill_(-1.0);  // the source changes right after the copy: the device copy must not
    running = dl::add(running, uploaded.back().slice(0, 0, 1000).contiguous());
  }
  std::vector<float> running_ref(1000, 0.0f);
  for (size_t i = 0; i < uploaded.size(); ++i) {
    INFO("upload " << i);
    CHECK(uploaded[i].to_vector() == expected[i]);
    for (size_t j = 0; j < running_ref.size(); ++j) running_ref[j] += expected[i][j];
  }
  CHECK(running.to_vector() == running_ref);  // the same float additions in the same order
  const Tensor big = Tensor::randn({(int64_t{40} << 20) / 4}, gen);
  CHECK(big.to(kGpu).to_vector() == big.to_vector());
}

TEST_CASE("count_correct on the GPU matches the CPU, also for bf16 logits", "[cuda][ops]") {
  dl::Generator gen = dl::test::fresh_generator();
  for (const int64_t n : {1, 37, 1000}) {
    std::vector<int64_t> l(static_cast<size_t>(n));
    for (auto& v : l) v = static_cast<int64_t>(gen.next_u64() % 10);
    const Tensor labels = Tensor::from_vector(l, {n});
    const Tensor logits = Tensor::randn({n, 10}, gen);
    const float want = dl::count_correct(logits, labels).item();
    INFO("n " << n);
    CHECK(dl::count_correct(logits.to(kGpu), labels).item() == want);
    const Tensor rounded = logits.to(DType::bf16);
    CHECK(dl::count_correct(rounded.to(kGpu), labels.to(kGpu)).item() ==
          dl::count_correct(rounded.to(DType::f32), labels).item());
  }
}

TEST_CASE("a label outside the classes is a clear error on the GPU", "[cuda][ops]") {
  const Tensor logits = Tensor::zeros({3, 10});
  const Tensor labels = Tensor::from_vector(std::vector<int64_t>{1, 10, 2}, {3});
  const auto message = Catch::Contains("outside [0, 10)");
  // Labels on the GPU (the GPU checks), in host memory (the host checks), and GPU labels for
  // CPU logits.
  CHECK_THROWS_WITH(dl::cross_entropy(logits.to(kGpu), labels.to(kGpu)), message);
  CHECK_THROWS_WITH(dl::cross_entropy(logits.to(kGpu), labels), message);
  CHECK_THROWS_WITH(dl::cross_entropy(logits, labels.to(kGpu)), message);
}

TEST_CASE("optimizer state follows a model moved to the GPU after CPU steps", "[cuda][model]") {
  dl::Generator gen = dl::test::fresh_generator();
  const uint64_t init_seed = gen.next_u64();
  const Tensor images = Tensor::randn({4, 16, 16, 3}, gen);
  const Tensor labels = Tensor::from_vector(std::vector<int64_t>{3, 1, 4, 1}, {4});
  auto run = [&](bool move) {
    dl::Generator init(init_seed);
    auto model = dl::models::make_model(convmixer_spec(), init);
    dl::optim::AdamW opt(model->parameters(), {.lr = 0.01});
    auto step = [&](Device d) {
      const Tensor loss = dl::cross_entropy(model->forward(images.to(d)), labels.to(d));
      opt.zero_grad();
      loss.backward();
      opt.step();
    };
    step(kCpu);
    if (move) model->to(kGpu);
    step(move ? kGpu : kCpu);
    std::vector<Tensor> params;
    for (const Tensor& p : model->parameters()) params.push_back(p.to(kCpu));
    return params;
  };
  const std::vector<Tensor> moved = run(true), cpu = run(false);
  for (size_t i = 0; i < cpu.size(); ++i) {
    INFO("parameter " << i);
    CHECK_CLOSE(moved[i], cpu[i], 1e-3, "parameter after a CPU step and a GPU step");
  }
}

TEST_CASE("a moving average of a model trained on the GPU matches the CPU's", "[cuda][model]") {
  dl::Generator gen = dl::test::fresh_generator();
  const uint64_t init_seed = gen.next_u64();
  const Tensor images = Tensor::randn({4, 16, 16, 3}, gen);
  const Tensor labels = Tensor::from_vector(std::vector<int64_t>{3, 1, 4, 1}, {4});
  auto run = [&](Device d) {
    dl::Generator init(init_seed);
    auto model = dl::models::make_model(convmixer_spec(), init);
    auto average = dl::models::make_model(convmixer_spec(), init);
    model->to(d);
    average->to(d);
    dl::optim::AdamW opt(model->parameters(), {.lr = 0.01});
    dl::optim::ExponentialMovingAverage ema(*model, *average, 0.5);
    for (int step = 0; step < 3; ++step) {
      const Tensor loss = dl::cross_entropy(model->forward(images.to(d)), labels.to(d));
      opt.zero_grad();
      loss.backward();
      opt.step();
      ema.update();
    }
    dl::nn::NamedTensors state = average->state_dict();
    for (auto& [name, t] : state) t = t.to(kCpu);
    return state;
  };
  const dl::nn::NamedTensors gpu = run(kGpu), cpu = run(kCpu);
  for (size_t i = 0; i < cpu.size(); ++i) {
    INFO(cpu[i].first);
    if (cpu[i].second.dtype() == DType::i64)
      CHECK(gpu[i].second.data<int64_t>()[0] == cpu[i].second.data<int64_t>()[0]);
    else
      CHECK_CLOSE(gpu[i].second, cpu[i].second, 1e-3, "the average after 3 steps");
  }
}

TEST_CASE("after a warm-up step, GPU training steps allocate no device memory", "[cuda][model]") {
  dl::Generator gen = dl::test::fresh_generator();
  auto model = dl::models::make_model(convmixer_spec(), gen);
  model->to(kGpu);
  dl::optim::AdamW opt(model->parameters(), {.lr = 0.01});
  auto average = dl::models::make_model(convmixer_spec(), gen);
  average->to(kGpu);
  dl::optim::ExponentialMovingAverage ema(*model, *average, 0.9);
  const Tensor x = Tensor::randn({8, 16, 16, 3}, gen).to(kGpu);
  const Tensor y = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}, {8});
  auto step = [&] {
    const Tensor loss = dl::cross_entropy(model->forward(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    ema.update();
  };
  step();
  step();
  dl::cuda::synchronize();
  const size_t allocs = dl::cuda::memory_stats().device_allocs;
  for (int i = 0; i < 3; ++i) step();
  dl::cuda::synchronize();
  CHECK(dl::cuda::memory_stats().device_allocs == allocs);
}

}  // namespace

// New tensors are filled with NaN, as in every test binary (see main.cpp): on the GPU each one is
// a copy of a host pattern, so an element an op does not write cannot pass as a cached value.
int main(int argc, char** argv) {
  dl::set_fill_uninitialized_memory(true);
  return dl::cuda_test::run_tests(argc, argv);
}
