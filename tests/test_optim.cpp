// Optimizers, gradient clipping, LR schedules and the moving average against double-precision
// references written here from PyTorch's formulas, and against values derived by hand.
#include <cmath>
#include <numbers>

#include "engine/error.h"
#include "engine/nn.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "test_util.h"

using namespace dl;
using namespace dl::optim;
using Catch::Contains;
using Vec = std::vector<double>;

namespace {

Vec to_double(const Tensor& t) {
  const std::vector<float> v = t.to_vector();
  return Vec(v.begin(), v.end());
}

Tensor floats(const std::vector<float>& v) {
  return Tensor::from_vector(v, {static_cast<int64_t>(v.size())});
}

// Two parameters of different shapes drawn from gen.
std::vector<Tensor> make_params(Generator& gen) {
  return {Tensor::randn({3, 4}, gen).requires_grad_(), Tensor::randn({5}, gen).requires_grad_()};
}

// Sets a fresh random gradient on each parameter and returns it.
std::vector<Vec> set_random_grads(const std::vector<Tensor>& params, Generator& gen) {
  std::vector<Vec> grads;
  for (const Tensor& p : params) {
    const Tensor g = Tensor::randn(p.shape(), gen);
    p.set_grad(g);
    grads.push_back(to_double(g));
  }
  return grads;
}

struct SgdRef {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
};

// torch.optim.SGD's single-tensor update; buf is empty before the first step.
void sgd_ref(Vec& p, const Vec& grad, Vec& buf, const SgdRef& o) {
  const bool first = buf.empty();
  buf.resize(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    double g = grad[i] + o.weight_decay * p[i];
    if (o.momentum != 0) {
      buf[i] = first ? g : o.momentum * buf[i] + (1 - o.dampening) * g;
      g = o.nesterov ? g + o.momentum * buf[i] : buf[i];
    }
    p[i] -= o.lr * g;
  }
}

struct AdamRef {
  Vec m, v;
  int t = 0;
};

// torch.optim.AdamW's single-tensor update.
void adamw_ref(Vec& p, const Vec& g, AdamRef& s, const AdamWOptions& o, double lr, double wd) {
  s.m.resize(p.size());
  s.v.resize(p.size());
  ++s.t;
  const double bc1 = 1 - std::pow(o.beta1, s.t), bc2 = 1 - std::pow(o.beta2, s.t);
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] *= 1 - lr * wd;
    s.m[i] = o.beta1 * s.m[i] + (1 - o.beta1) * g[i];
    s.v[i] = o.beta2 * s.v[i] + (1 - o.beta2) * g[i] * g[i];
    p[i] -= lr / bc1 * s.m[i] / (std::sqrt(s.v[i]) / std::sqrt(bc2) + o.eps);
  }
}

}  // namespace

TEST_CASE("SGD matches the reference over 3 steps", "[optim]") {
  const SgdRef configs[] = {{0.1, 0, 0, 0, false},      {0.05, 0.9, 0, 0, false},
                            {0.05, 0.9, 0.3, 0, false}, {0.05, 0.9, 0, 0, true},
                            {0.1, 0, 0, 0.1, false},    {0.02, 0.8, 0.1, 0.05, false},
                            {0.02, 0.8, 0, 0.05, true}};
  for (const SgdRef& c : configs) {
    const uint64_t seed = test::fresh_seed();
    INFO("seed " << seed << " lr " << c.lr << " momentum " << c.momentum << " dampening "
                 << c.dampening << " wd " << c.weight_decay << " nesterov " << c.nesterov);
    Generator gen(seed);
    std::vector<Tensor> params = make_params(gen);
    std::vector<Vec> ref = {to_double(params[0]), to_double(params[1])}, bufs(2);
    SGD opt(params, {.lr = c.lr,
                     .momentum = c.momentum,
                     .dampening = c.dampening,
                     .weight_decay = c.weight_decay,
                     .nesterov = c.nesterov});
    for (int step = 0; step < 3; ++step) {
      const std::vector<Vec> grads = set_random_grads(params, gen);
      opt.step();
      for (size_t k = 0; k < params.size(); ++k) {
        sgd_ref(ref[k], grads[k], bufs[k], c);
        test::require_close(params[k].to_vector(), ref[k], 1e-5, 1e-6, "SGD param");
      }
    }
    CHECK(opt.step_count() == 3);
  }
}

TEST_CASE("AdamW matches the reference over 3 steps", "[optim]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const AdamWOptions o{.lr = 0.01, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.1};
  std::vector<Tensor> params = make_params(gen);
  std::vector<Vec> ref = {to_double(params[0]), to_double(params[1])};
  std::vector<AdamRef> state(2);
  AdamW opt(params, o);
  for (int step = 0; step < 3; ++step) {
    const std::vector<Vec> grads = set_random_grads(params, gen);
    opt.step();
    for (size_t k = 0; k < params.size(); ++k) {
      adamw_ref(ref[k], grads[k], state[k], o, o.lr, o.weight_decay);
      test::require_close(params[k].to_vector(), ref[k], 1e-5, 1e-6, "AdamW param");
    }
  }
}

TEST_CASE("Large parameters (the multi-threaded loops) match the reference", "[optim]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const std::vector<Tensor> params = {Tensor::randn({300, 256}, gen)};
  Tensor q = params[0].clone();
  Vec ref_p = to_double(params[0]), ref_q = ref_p, buf;
  AdamRef state;
  const AdamWOptions o{.lr = 0.01};
  const SgdRef c{0.1, 0.9, 0, 1e-3, true};
  AdamW adamw(params, o);
  SGD sgd({q},
          {.lr = c.lr, .momentum = c.momentum, .weight_decay = c.weight_decay, .nesterov = true});
  for (int step = 0; step < 2; ++step) {
    const std::vector<Vec> g = set_random_grads(params, gen);
    q.set_grad(params[0].grad());
    adamw.step();
    sgd.step();
    adamw_ref(ref_p, g[0], state, o, o.lr, o.weight_decay);
    sgd_ref(ref_q, g[0], buf, c);
  }
  test::require_close(params[0].to_vector(), ref_p, 1e-5, 1e-6, "AdamW");
  test::require_close(q.to_vector(), ref_q, 1e-5, 1e-6, "SGD");
}

TEST_CASE("AdamW on a scalar matches values derived by hand", "[optim]") {
  // p = 1, g = 0.5, lr = 0.1, wd = 0.01, betas (0.9, 0.999), eps 1e-8.
  // Step 1: p = 1 * (1 - 0.1 * 0.01) = 0.999; m = 0.05, v = 0.00025; bias corrections 0.1 and
  //   0.001, so step_size = 1 and denom = sqrt(0.00025) / sqrt(0.001) + 1e-8 = 0.5 + 1e-8;
  //   p = 0.999 - 0.05 / 0.50000001 = 0.999 - 0.099999998 = 0.899000002.
  // Step 2: p = 0.899000002 * 0.999 = 0.898101001998; m = 0.095, v = 0.00049975; corrections
  //   0.19 and 0.001999 give m_hat = 0.5, v_hat = 0.25, so the update is again 0.099999998:
  //   p = 0.798101003998.
  Tensor p = Tensor::full({1}, 1.0).requires_grad_();
  AdamW opt({p}, {.lr = 0.1});
  p.set_grad(Tensor::full({1}, 0.5));
  opt.step();
  CHECK(p.item() == Approx(0.899000002).margin(1e-7));
  opt.step();
  CHECK(p.item() == Approx(0.798101003998).margin(1e-7));
}

TEST_CASE("Parameter groups take their own lr and weight decay", "[optim]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  std::vector<Tensor> a = make_params(gen), b = make_params(gen);
  const SgdRef ra{0.1, 0.9, 0, 0.01, false}, rb{0.02, 0.9, 0, 0, false};
  SGD opt({ParamGroup{.params = a}, ParamGroup{.params = b, .lr = 0.02, .weight_decay = 0.0}},
          {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01});
  const std::vector<ParamGroup>& groups = opt.param_groups();
  REQUIRE(groups.size() == 2);
  CHECK(*groups[0].lr == 0.1);
  CHECK(*groups[0].weight_decay == 0.01);
  CHECK(*groups[1].lr == 0.02);
  CHECK(*groups[1].weight_decay == 0.0);

  std::vector<Vec> ref_a = {to_double(a[0]), to_double(a[1])}, buf_a(2);
  std::vector<Vec> ref_b = {to_double(b[0]), to_double(b[1])}, buf_b(2);
  for (int step = 0; step < 3; ++step) {
    const std::vector<Vec> ga = set_random_grads(a, gen), gb = set_random_grads(b, gen);
    opt.step();
    for (size_t k = 0; k < 2; ++k) {
      sgd_ref(ref_a[k], ga[k], buf_a[k], ra);
      sgd_ref(ref_b[k], gb[k], buf_b[k], rb);
      test::require_close(a[k].to_vector(), ref_a[k], 1e-5, 1e-6, "group 0");
      test::require_close(b[k].to_vector(), ref_b[k], 1e-5, 1e-6, "group 1");
    }
  }

  SECTION("set_lr keeps each group's ratio to the default lr") {
    opt.set_lr(0.05);
    CHECK(*groups[0].lr == 0.05);
    CHECK(*groups[1].lr == Approx(0.01));
    opt.set_lr(0.1);
    CHECK(*groups[1].lr == Approx(0.02));
  }
}

TEST_CASE("AdamW groups use their own lr and weight decay", "[optim]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  std::vector<Tensor> a = make_params(gen), b = make_params(gen);
  const AdamWOptions o{.lr = 0.01, .weight_decay = 0.1};
  AdamW opt({ParamGroup{.params = a}, ParamGroup{.params = b, .lr = 0.003, .weight_decay = 0.0}},
            o);
  std::vector<Vec> ref_a = {to_double(a[0]), to_double(a[1])};
  std::vector<Vec> ref_b = {to_double(b[0]), to_double(b[1])};
  std::vector<AdamRef> sa(2), sb(2);
  for (int step = 0; step < 3; ++step) {
    const std::vector<Vec> ga = set_random_grads(a, gen), gb = set_random_grads(b, gen);
    opt.step();
    for (size_t k = 0; k < 2; ++k) {
      adamw_ref(ref_a[k], ga[k], sa[k], o, 0.01, 0.1);
      adamw_ref(ref_b[k], gb[k], sb[k], o, 0.003, 0.0);
      test::require_close(a[k].to_vector(), ref_a[k], 1e-5, 1e-6, "group 0");
      test::require_close(b[k].to_vector(), ref_b[k], 1e-5, 1e-6, "group 1");
    }
  }
}

TEST_CASE("zero_grad sets gradients to undefined", "[optim]") {
  Generator gen(1);
  std::vector<Tensor> params = make_params(gen);
  SGD opt(params, {.lr = 0.1});
  set_random_grads(params, gen);
  opt.zero_grad();
  for (const Tensor& p : params) CHECK_FALSE(p.grad().defined());
}

TEST_CASE("Parameters without a gradient are skipped", "[optim]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  std::vector<Tensor> params = make_params(gen);
  const AdamWOptions o{.lr = 0.01};
  AdamW opt(params, o);
  const std::vector<float> frozen = params[1].to_vector();
  Vec ref0 = to_double(params[0]);
  AdamRef s0, s1;
  for (int step = 0; step < 2; ++step) {
    const Tensor g = Tensor::randn(params[0].shape(), gen);
    params[0].set_grad(g);
    opt.step();
    adamw_ref(ref0, to_double(g), s0, o, o.lr, o.weight_decay);
  }
  test::require_close(params[0].to_vector(), ref0, 1e-5, 1e-6, "updated param");
  CHECK(params[1].to_vector() == frozen);
  for (const auto& [name, t] : opt.state_tensors()) CHECK(name.find("param1") == std::string::npos);

  // Its first update uses bias corrections for step 1, not for the optimizer's step 3.
  Vec ref1(frozen.begin(), frozen.end());
  const Tensor g = Tensor::randn(params[1].shape(), gen);
  params[0].set_grad(Tensor());
  params[1].set_grad(g);
  opt.step();
  adamw_ref(ref1, to_double(g), s1, o, o.lr, o.weight_decay);
  test::require_close(params[1].to_vector(), ref1, 1e-5, 1e-6, "late param");
  CHECK(opt.step_count() == 3);
}

TEST_CASE("A refused step changes no parameter and no step count", "[optim]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  std::vector<Tensor> params = make_params(gen);
  AdamW opt(params, {.lr = 0.01});
  params[0].set_grad(Tensor::randn(params[0].shape(), gen));
  opt.step();
  const std::vector<float> p0 = params[0].to_vector(), p1 = params[1].to_vector();
  const auto state = opt.state_tensors();
  // The first parameter's gradient is fine, the second's has the wrong dtype.
  params[0].set_grad(Tensor::randn(params[0].shape(), gen));
  params[1].set_grad(Tensor::zeros(params[1].shape(), DType::i64));
  REQUIRE_THROWS_WITH(opt.step(), Contains("must be f32"));
  CHECK(opt.step_count() == 1);
  CHECK(params[0].to_vector() == p0);
  CHECK(params[1].to_vector() == p1);
  const auto after = opt.state_tensors();
  REQUIRE(after.size() == state.size());
  for (size_t i = 0; i < state.size(); ++i) {
    INFO(state[i].first);
    CHECK(after[i].second.to_vector() == state[i].second.to_vector());
  }
}

TEST_CASE("Invalid options throw with a clear message", "[optim]") {
  const std::vector<Tensor> params = {Tensor::zeros({2})};
  CHECK_THROWS_WITH(SGD(params, {.lr = -1}), Contains("Invalid learning rate: -1"));
  CHECK_THROWS_WITH(SGD(params, {.momentum = -0.5}), Contains("Invalid momentum value: -0.5"));
  CHECK_THROWS_WITH(SGD(params, {.weight_decay = -1}), Contains("Invalid weight_decay value"));
  CHECK_THROWS_WITH(SGD(params, {.nesterov = true}), Contains("Nesterov"));
  CHECK_THROWS_WITH(SGD(params, {.momentum = 0.9, .dampening = 0.1, .nesterov = true}),
                    Contains("zero dampening"));
  CHECK_THROWS_WITH(AdamW(params, {.lr = -1}), Contains("Invalid learning rate: -1"));
  CHECK_THROWS_WITH(AdamW(params, {.beta1 = 1.0}), Contains("Invalid beta parameter at index 0"));
  CHECK_THROWS_WITH(AdamW(params, {.beta2 = -0.1}), Contains("Invalid beta parameter at index 1"));
  CHECK_THROWS_WITH(AdamW(params, {.eps = -1}), Contains("Invalid epsilon value"));
  CHECK_THROWS_WITH(AdamW(params, {.weight_decay = -0.1}), Contains("Invalid weight_decay value"));
  CHECK_THROWS_WITH(AdamW({ParamGroup{.params = params, .lr = -2.0}}),
                    Contains("Invalid learning rate: -2"));
  CHECK_THROWS_WITH(AdamW(std::vector<Tensor>{}), Contains("empty parameter list"));
  CHECK_THROWS_WITH(SGD({ParamGroup{.params = params}, ParamGroup{.params = params}}),
                    Contains("more than one parameter group"));
  SGD opt(params, {.lr = 0.1});
  CHECK_THROWS_WITH(opt.set_lr(-1), Contains("Invalid learning rate: -1"));
}

TEST_CASE("clip_grad_norm", "[optim]") {
  Tensor a = Tensor::zeros({2}), b = Tensor::zeros({1}), none = Tensor::zeros({3});
  const std::vector<Tensor> params = {a, b, none};

  SECTION("known norm, clipped") {
    a.set_grad(floats({3.0f, 0.0f}));
    b.set_grad(floats({4.0f}));
    CHECK(clip_grad_norm(params, 1.0).item() == 5.0f);
    const double coef = 1.0 / (5.0 + 1e-6);
    test::require_close(a.grad().to_vector(), {3 * coef, 0}, 1e-6, 0, "a.grad");
    test::require_close(b.grad().to_vector(), {4 * coef}, 1e-6, 0, "b.grad");
  }
  SECTION("below max_norm: unchanged") {
    a.set_grad(floats({3.0f, 0.0f}));
    b.set_grad(floats({4.0f}));
    CHECK(clip_grad_norm(params, 10.0).item() == 5.0f);
    CHECK(a.grad().to_vector() == std::vector<float>{3.0f, 0.0f});
    CHECK(b.grad().to_vector() == std::vector<float>{4.0f});
  }
  SECTION("random gradients") {
    const uint64_t seed = test::fresh_seed();
    INFO("seed " << seed);
    Generator gen(seed);
    std::vector<Tensor> ps = make_params(gen);
    const std::vector<Vec> grads = set_random_grads(ps, gen);
    double sum_sq = 0;
    for (const Vec& g : grads) {
      for (double x : g) sum_sq += x * x;
    }
    const double norm = std::sqrt(sum_sq), coef = 0.5 / (norm + 1e-6);
    // The norm comes back in f32 (as PyTorch returns it in the gradients' dtype).
    CHECK(clip_grad_norm(ps, 0.5).item() == Approx(norm).epsilon(1e-7));
    for (size_t k = 0; k < ps.size(); ++k) {
      Vec expected = grads[k];
      for (double& x : expected) x *= coef;
      test::require_close(ps[k].grad().to_vector(), expected, 1e-6, 1e-9, "clipped grad");
    }
  }
  SECTION("non-finite norm is returned, gradients untouched") {
    a.set_grad(floats({INFINITY, 1.0f}));
    CHECK(std::isinf(clip_grad_norm(params, 1.0).item()));
    CHECK(a.grad().to_vector()[1] == 1.0f);
  }
  SECTION("no gradients") {
    CHECK(clip_grad_norm(params, 1.0).item() == 0.0f);
  }
}

TEST_CASE("OneCycleLinear follows the ConvMixer recipe", "[schedule]") {
  // E = 10, 100 steps per epoch: knots at epochs [0, 4, 8, 10], t = (step + 1) / 100.
  const OneCycleLinear s(0.01, 10, 100);
  CHECK(s.lr(0) == Approx(0.01 * 0.01 / 4));  // t = 0.01, on the way up
  CHECK(s.lr(199) == Approx(0.005));          // t = 2
  CHECK(s.lr(399) == Approx(0.01));           // t = 4: peak
  CHECK(s.lr(599) == Approx(0.01 * 0.525));   // t = 6: halfway from lr_max to lr_max / 20
  CHECK(s.lr(799) == Approx(0.0005));         // t = 8: the knee, lr_max / 20
  CHECK(s.lr(899) == Approx(0.00025));        // t = 9
  CHECK(s.lr(999) == 0.0);                    // t = 10: end
  CHECK(s.lr(5000) == 0.0);

  // E = 3: E*2//5 = 1 and E*4//5 = 2 by integer division.
  const OneCycleLinear s3(1.0, 3, 10);
  CHECK(s3.lr(4) == Approx(0.5));
  CHECK(s3.lr(9) == Approx(1.0));
  CHECK(s3.lr(19) == Approx(0.05));
  CHECK(s3.lr(24) == Approx(0.025));

  // E = 1: knots [0, 0, 0, 1]; np.interp starts from the last repeated knot (lr_max / 20).
  const OneCycleLinear s1(1.0, 1, 4);
  CHECK(s1.lr(0) == Approx(0.05 * 0.75));
  CHECK(s1.lr(3) == 0.0);
}

TEST_CASE("CosineWithWarmup and ConstantLR", "[schedule]") {
  const CosineWithWarmup s(1.0, 100, 10);
  CHECK(s.lr(0) == Approx(0.1));
  CHECK(s.lr(4) == Approx(0.5));
  CHECK(s.lr(9) == Approx(1.0));   // end of warm-up
  CHECK(s.lr(54) == Approx(0.5));  // halfway through the cosine
  CHECK(s.lr(99) == 0.0);
  CHECK(s.lr(500) == 0.0);

  const CosineWithWarmup floor(1.0, 100, 10, 0.1);
  CHECK(floor.lr(54) == Approx(0.55));
  CHECK(floor.lr(99) == Approx(0.1));

  const CosineWithWarmup no_warmup(2.0, 100);
  CHECK(no_warmup.lr(0) == Approx(1.0 + std::cos(std::numbers::pi / 100)));

  CHECK(ConstantLR(0.3).lr(0) == 0.3);
  CHECK(ConstantLR(0.3).lr(12345) == 0.3);
  CHECK_THROWS_WITH(CosineWithWarmup(1.0, 10, 20), Contains("warmup_steps"));
}

TEST_CASE("LinearWarmupDecay: up over the warm-up steps, straight down to 0 at the end",
          "[schedule]") {
  const LinearWarmupDecay s(0.4, 10, 2);
  // Step k is the (k + 1)-th: 0.4 * 1/2, 0.4 * 2/2, then 0.4 * (10 - (k + 1)) / 8.
  const double expected[] = {0.2, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.0, 0.0, 0.0};
  for (int k = 0; k < 12; ++k) {
    INFO("step " << k);
    CHECK(s.lr(k) == Approx(expected[k]).margin(1e-15));
  }
  const LinearWarmupDecay no_warmup(1.0, 4);
  CHECK(no_warmup.lr(0) == Approx(0.75));
  CHECK(no_warmup.lr(3) == 0.0);
  CHECK_THROWS_WITH(LinearWarmupDecay(1.0, 10, 10), Contains("warmup_steps 10 must lie in [0"));
  CHECK_THROWS_WITH(LinearWarmupDecay(1.0, 0), Contains("total_steps must be positive"));
}

TEST_CASE("make_schedule", "[schedule]") {
  CHECK(make_schedule(Schedule::linear, 0.4, 5, 2, 2)->lr(2) == Approx(0.35));
  CHECK(make_schedule(Schedule::onecycle, 0.01, 10, 100)->lr(399) == Approx(0.01));
  CHECK(make_schedule(Schedule::cosine, 1.0, 10, 10, 10)->lr(54) == Approx(0.5));
  CHECK(make_schedule(Schedule::constant, 0.2, 10, 10)->lr(7) == 0.2);
  CHECK_THROWS_WITH(make_schedule(static_cast<Schedule>(9), 0.1, 10, 10),
                    Contains("unknown LR schedule 9"));
  CHECK_THROWS_WITH(make_schedule(Schedule::onecycle, -1, 10, 10),
                    Contains("Invalid learning rate: -1"));
}

TEST_CASE("Optimizer state round-trips bit-exactly", "[optim]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const auto run = [&](auto make_opt, const std::vector<std::string>& buffer_names) {
    std::vector<Tensor> params = make_params(gen);
    auto opt = make_opt(params);
    std::vector<std::vector<Tensor>> grads(5);
    for (auto& step : grads) step = {Tensor::randn({3, 4}, gen), Tensor::randn({5}, gen)};
    const auto apply = [](std::vector<Tensor>& ps, const std::vector<Tensor>& gs, auto& o) {
      for (size_t k = 0; k < ps.size(); ++k) ps[k].set_grad(gs[k].clone());
      o.step();
    };
    for (int i = 0; i < 2; ++i) apply(params, grads[i], opt);
    const auto saved = opt.state_tensors();
    std::vector<std::string> expected = {"optim.step"};
    for (const char* p : {"optim.group0.param0.", "optim.group0.param1."}) {
      expected.push_back(std::string(p) + "step");
      for (const std::string& b : buffer_names) expected.push_back(p + b);
    }
    std::vector<std::string> names;
    for (const auto& [name, t] : saved) names.push_back(name);
    CHECK(names == expected);

    std::vector<Tensor> resumed = {params[0].clone(), params[1].clone()};
    auto opt2 = make_opt(resumed);
    opt2.load_state_tensors(saved);
    CHECK(opt2.step_count() == 2);
    for (int i = 2; i < 5; ++i) {
      apply(params, grads[i], opt);
      apply(resumed, grads[i], opt2);
    }
    for (size_t k = 0; k < params.size(); ++k) {
      CHECK(params[k].to_vector() == resumed[k].to_vector());
    }
    const auto s1 = opt.state_tensors(), s2 = opt2.state_tensors();
    REQUIRE(s1.size() == s2.size());
    for (size_t i = 0; i < s1.size(); ++i) {
      CHECK(s1[i].first == s2[i].first);
      if (s1[i].second.dtype() == DType::f32) {
        CHECK(s1[i].second.to_vector() == s2[i].second.to_vector());
      }
    }
  };
  SECTION("AdamW") {
    run([](const std::vector<Tensor>& p) { return AdamW(p, {.lr = 0.01}); },
        {"exp_avg", "exp_avg_sq"});
  }
  SECTION("SGD with momentum") {
    run(
        [](const std::vector<Tensor>& p) {
          return SGD(p, {.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-3, .nesterov = true});
        },
        {"momentum_buffer"});
  }
}

TEST_CASE("Loading bad optimizer state throws and changes nothing", "[optim]") {
  Generator gen(7);
  std::vector<Tensor> params = make_params(gen);
  AdamW opt(params);
  set_random_grads(params, gen);
  opt.step();
  const auto good = opt.state_tensors();
  const auto without = [&](const std::string& skip) {
    std::vector<std::pair<std::string, Tensor>> out;
    for (const auto& e : good) {
      if (e.first != skip) out.push_back(e);
    }
    return out;
  };

  AdamW fresh(params);
  CHECK_THROWS_WITH(fresh.load_state_tensors(without("optim.step")),
                    Contains("missing 'optim.step'"));
  CHECK_THROWS_WITH(fresh.load_state_tensors(without("optim.group0.param1.exp_avg_sq")),
                    Contains("missing 'optim.group0.param1.exp_avg_sq'"));
  auto bad_shape = good;
  for (auto& [name, t] : bad_shape) {
    if (name == "optim.group0.param0.exp_avg") t = Tensor::zeros({4, 3});
  }
  CHECK_THROWS_WITH(fresh.load_state_tensors(bad_shape),
                    Contains("optim.group0.param0.exp_avg") && Contains("[4, 3]"));
  auto extra = good;
  extra.emplace_back("optim.group1.param0.step", Tensor::from_vector(std::vector<int64_t>{1}, {}));
  CHECK_THROWS_WITH(fresh.load_state_tensors(extra), Contains("unexpected 'optim.group1"));
  CHECK(fresh.step_count() == 0);
  CHECK(fresh.state_tensors().size() == 1);

  SGD sgd(params, {.lr = 0.1, .momentum = 0.9});
  CHECK_THROWS_WITH(sgd.load_state_tensors(good), Contains("missing"));

  // Entries outside "optim." (model weights in the same checkpoint) are ignored.
  auto with_model = good;
  with_model.emplace_back("model.weight", Tensor::zeros({2}));
  fresh.load_state_tensors(with_model);
  CHECK(fresh.step_count() == 1);
}

namespace {

// A convolution, GELU (so that the bias has a gradient) and a BatchNorm: parameters, floating
// buffers and an integer counter.
std::shared_ptr<nn::Module> conv_bn(Generator& gen) {
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Conv2d>(nn::Conv2dOptions(3, 4, 3).padding(1), gen),
      std::make_shared<nn::GELU>(), std::make_shared<nn::BatchNorm2d>(4)});
}

// Every entry of a state dict in double (the i64 counter too).
std::vector<Vec> state_in_double(const nn::Module& m) {
  std::vector<Vec> out;
  for (const auto& [name, t] : m.state_dict()) {
    if (t.dtype() == DType::i64) {
      out.push_back({static_cast<double>(t.data<int64_t>()[0])});
    } else {
      out.push_back(to_double(t));
    }
  }
  return out;
}

}  // namespace

TEST_CASE("The moving average follows a double-precision reference, buffers included", "[optim]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const auto model = conv_bn(gen), average = conv_bn(gen);
  const double decay = 0.8;
  ExponentialMovingAverage ema(*model, *average, decay);
  std::vector<Vec> expected = state_in_double(*model);  // it starts as a copy
  CHECK(state_in_double(*average) == expected);
  SGD opt(model->parameters(), {.lr = 0.5});
  for (int step = 0; step < 4; ++step) {
    const Tensor y = model->forward(Tensor::randn({2, 5, 5, 3}, gen));
    const Tensor loss = mean(mul(y, Tensor::randn(y.shape(), gen)));
    opt.zero_grad();
    loss.backward();
    opt.step();
    ema.update();
    const std::vector<Vec> now = state_in_double(*model);
    const nn::NamedTensors state = model->state_dict();
    for (size_t i = 0; i < now.size(); ++i)
      for (size_t k = 0; k < now[i].size(); ++k)
        expected[i][k] = state[i].second.dtype() == DType::i64
                             ? now[i][k]
                             : decay * expected[i][k] + (1 - decay) * now[i][k];
  }
  const nn::NamedTensors names = model->state_dict();
  const std::vector<Vec> got = state_in_double(*average), trained = state_in_double(*model);
  for (size_t i = 0; i < got.size(); ++i) {
    INFO(names[i].first);
    for (size_t k = 0; k < got[i].size(); ++k)
      REQUIRE(std::abs(got[i][k] - expected[i][k]) <= 1e-6 + 1e-6 * std::abs(expected[i][k]));
    // The average lags the trained state, which it would equal were it a copy.
    if (names[i].first == "2.num_batches_tracked")
      CHECK(got[i] == Vec{4.0});
    else
      CHECK(got[i] != trained[i]);
  }
}

TEST_CASE("A moving average of another architecture or a bad decay is refused", "[optim]") {
  Generator gen(3);
  const auto model = conv_bn(gen), average = conv_bn(gen);
  CHECK_THROWS_WITH(ExponentialMovingAverage(*model, *average, 1.5),
                    Contains("decay must lie in [0, 1], got 1.5"));
  CHECK_THROWS_WITH(ExponentialMovingAverage(*model, *model, 0.9),
                    Contains("shared by the average and its source"));
  nn::Linear other(3, 4, true, gen);
  CHECK_THROWS_WITH(ExponentialMovingAverage(*model, other, 0.9),
                    Contains("not a module of the source's architecture"));
}
