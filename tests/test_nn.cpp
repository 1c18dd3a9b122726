// nn modules and the ConvMixer model: names, initialisation, modes, state-dict loading.
#include <catch2/catch.hpp>
#include <cmath>

#include "engine/error.h"
#include "engine/nn.h"
#include "engine/ops.h"
#include "models/convmixer.h"
#include "test_util.h"

using namespace dl;

TEST_CASE("ConvMixer parameter and buffer names match the reference PyTorch module") {
  Generator gen(1);
  models::ConvMixer model({.dim = 8, .depth = 2, .kernel = 3, .patch = 2, .classes = 10}, gen);
  std::vector<std::string> names;
  for (auto& [name, t] : model.state_dict()) names.push_back(name);
  // PyTorch's state_dict order for the reference module (parameters, buffers, then children).
  const std::vector<std::string> layer = {"depth_wise_conv.weight",
                                          "depth_wise_conv.bias",
                                          "norm1.weight",
                                          "norm1.bias",
                                          "norm1.running_mean",
                                          "norm1.running_var",
                                          "norm1.num_batches_tracked",
                                          "point_wise_conv.weight",
                                          "point_wise_conv.bias",
                                          "norm2.weight",
                                          "norm2.bias",
                                          "norm2.running_mean",
                                          "norm2.running_var",
                                          "norm2.num_batches_tracked"};
  std::vector<std::string> expected;
  for (int i = 0; i < 2; ++i)
    for (auto& n : layer) expected.push_back("conv_mixer_layers." + std::to_string(i) + "." + n);
  for (auto n : {"patch_emb.conv.weight", "patch_emb.conv.bias", "patch_emb.norm.weight",
                 "patch_emb.norm.bias", "patch_emb.norm.running_mean", "patch_emb.norm.running_var",
                 "patch_emb.norm.num_batches_tracked", "classification.linear.weight",
                 "classification.linear.bias"})
    expected.push_back(n);
  REQUIRE(names == expected);
  REQUIRE(model.named_parameters().size() == 2 * 8 + 6);

  const auto sd = model.state_dict();
  auto shape_of = [&](const std::string& n) {
    for (auto& [k, t] : sd)
      if (k == n) return t.shape();
    return Shape{};
  };
  REQUIRE(shape_of("patch_emb.conv.weight") == Shape{8, 3, 2, 2});
  REQUIRE(shape_of("conv_mixer_layers.0.depth_wise_conv.weight") == Shape{8, 1, 3, 3});
  REQUIRE(shape_of("conv_mixer_layers.1.point_wise_conv.weight") == Shape{8, 8, 1, 1});
  REQUIRE(shape_of("classification.linear.weight") == Shape{10, 8});
  REQUIRE(shape_of("patch_emb.norm.num_batches_tracked") == Shape{});
}

TEST_CASE("Default initialisation follows PyTorch's bounds") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  nn::Conv2d conv(nn::Conv2dOptions(6, 40, 3).groups(2), gen);
  // kaiming_uniform(a = sqrt 5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 3 * 3 * 3.
  const double bound = 1.0 / std::sqrt(27.0);
  double max_abs = 0.0, sum_sq = 0.0;
  const auto w = conv.weight.to_vector();
  for (float v : w) {
    max_abs = std::max(max_abs, std::abs(double(v)));
    sum_sq += double(v) * v;
  }
  REQUIRE(max_abs <= bound);
  REQUIRE(max_abs > 0.9 * bound);
  // Variance of U(-b, b) is b^2 / 3; 1080 samples: a loose 15% band.
  REQUIRE(std::abs(sum_sq / w.size() - bound * bound / 3.0) < 0.15 * bound * bound / 3.0);
  for (float v : conv.bias.to_vector()) REQUIRE(std::abs(v) <= bound);

  nn::BatchNorm2d bn(5);
  REQUIRE(bn.weight.to_vector() == std::vector<float>(5, 1.0f));
  REQUIRE(bn.bias.to_vector() == std::vector<float>(5, 0.0f));
  REQUIRE(bn.running_var.to_vector() == std::vector<float>(5, 1.0f));
}

TEST_CASE("BatchNorm2d switches statistics with train()/eval() and counts batches") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  nn::BatchNorm2d bn(3);
  const Tensor x = Tensor::randn({2, 3, 3, 3}, gen);
  const Tensor y_train = bn.forward(x);
  REQUIRE(bn.num_batches_tracked.to(Device::cpu()).data<int64_t>()[0] == 1);
  // Training output is normalised per channel: mean 0, biased variance 1 (up to eps).
  const auto v = y_train.to_vector();
  for (int c = 0; c < 3; ++c) {
    double m = 0, s = 0;
    for (int i = 0; i < 18; ++i) m += v[i * 3 + c];
    m /= 18;
    for (int i = 0; i < 18; ++i) s += (v[i * 3 + c] - m) * (v[i * 3 + c] - m);
    REQUIRE(std::abs(m) < 1e-5);
    REQUIRE(std::abs(s / 18 - 1.0) < 1e-3);
  }
  bn.eval();
  const Tensor y_eval = bn.forward(x);
  REQUIRE(bn.num_batches_tracked.to(Device::cpu()).data<int64_t>()[0] == 1);
  const auto rm = bn.running_mean.to_vector(), rv = bn.running_var.to_vector();
  const auto xv = x.to_vector(), ye = y_eval.to_vector();
  for (size_t i = 0; i < xv.size(); ++i) {
    const size_t c = i % 3;
    REQUIRE(std::abs(ye[i] - (xv[i] - rm[c]) / std::sqrt(rv[c] + 1e-5f)) < 1e-5);
  }
}

TEST_CASE("load_state_dict copies values and rejects another model's state") {
  Generator gen_a(1), gen_b(2);
  models::ConvMixer a({.dim = 8, .depth = 1, .kernel = 3, .patch = 2, .classes = 10}, gen_a);
  models::ConvMixer b({.dim = 8, .depth = 1, .kernel = 3, .patch = 2, .classes = 10}, gen_b);
  b.load_state_dict(a.state_dict());
  const auto sa = a.state_dict(), sb = b.state_dict();
  for (size_t i = 0; i < sa.size(); ++i)
    REQUIRE(sa[i].second.to_vector() == sb[i].second.to_vector());

  models::ConvMixer wider({.dim = 16, .depth = 1, .kernel = 3, .patch = 2, .classes = 10}, gen_a);
  REQUIRE_THROWS_WITH(b.load_state_dict(wider.state_dict(), "ckpt.safetensors"),
                      Catch::Contains("ckpt.safetensors does not match this model") &&
                          Catch::Contains("mismatched") &&
                          Catch::Contains("depth_wise_conv.weight (F32[16, 1, 3, 3] in the file") &&
                          Catch::Contains("19 in all"));
  models::ConvMixer deeper({.dim = 8, .depth = 2, .kernel = 3, .patch = 2, .classes = 10}, gen_a);
  REQUIRE_THROWS_WITH(b.load_state_dict(deeper.state_dict()),
                      Catch::Contains("unexpected") && Catch::Contains("conv_mixer_layers.1."));
  REQUIRE_THROWS_WITH(deeper.load_state_dict(b.state_dict()), Catch::Contains("missing"));
}

TEST_CASE("Sequential, Residual, pooling and flatten compose") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  auto inner = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Conv2d>(nn::Conv2dOptions(4, 4, 3).padding(1), gen),
      std::make_shared<nn::ReLU>()});
  nn::Sequential net({std::make_shared<nn::Residual>(inner), std::make_shared<nn::MaxPool2d>(2, 2),
                      std::make_shared<nn::AdaptiveAvgPool2d>(1), std::make_shared<nn::Flatten>(),
                      std::make_shared<nn::Linear>(4, 3, true, gen)});
  std::vector<std::string> names;
  for (auto& [n, t] : net.named_parameters()) names.push_back(n);
  REQUIRE(names == std::vector<std::string>{"0.fn.0.weight", "0.fn.0.bias", "4.weight", "4.bias"});
  const Tensor x = Tensor::randn({2, 6, 6, 4}, gen);
  const Tensor y = net.forward(x);
  REQUIRE(y.shape() == Shape{2, 3});
  // The residual branch: x + relu(conv(x)), checked against the functional ops.
  const Tensor r = nn::Residual(inner).forward(x);
  test::require_close(r, add(relu(inner->forward(x)), x), 0, 0, "residual");
  sum(y).backward();
  for (auto& p : net.parameters()) REQUIRE(p.grad().defined());
  net.zero_grad();
  for (auto& p : net.parameters()) REQUIRE(!p.grad().defined());
}

TEST_CASE("Flatten orders an NHWC map as PyTorch flattens NCHW, and passes gradients back") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const int64_t n = 2, h = 3, w = 2, c = 5;
  Tensor x = Tensor::randn({n, h, w, c}, gen);
  x.requires_grad_();
  const Tensor y = nn::Flatten().forward(x);
  REQUIRE(y.shape() == Shape{n, c * h * w});
  const auto xv = x.to_vector(), yv = y.to_vector();
  for (int64_t b = 0; b < n; ++b)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j)
          REQUIRE(yv[b * c * h * w + (ch * h + i) * w + j] == xv[((b * h + i) * w + j) * c + ch]);
  // d/dx sum(y * r) = r put back in NHWC order.
  const Tensor r = Tensor::randn({n, c * h * w}, gen);
  sum(mul(y, r)).backward();
  const auto gv = x.grad().to_vector(), rv = r.to_vector();
  for (int64_t b = 0; b < n; ++b)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j)
          REQUIRE(gv[((b * h + i) * w + j) * c + ch] == rv[b * c * h * w + (ch * h + i) * w + j]);
}
