// OpProfiler (engine/profile.h): the ops of a ConvMixer training step with their call counts and
// shapes, nothing counted once it is gone, and results unchanged by profiling.
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "engine/device_ops.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/profile.h"
#include "models/convmixer.h"
#include "test_util.h"

using namespace dl;

namespace {

constexpr int64_t kDepth = 2;

// A ConvMixer-16/2 (kernel 3, patch 2) with AdamW, on a fixed batch of 4 random 8x8 images.
struct Run {
  explicit Run(uint64_t seed)
      : gen(seed),
        model({.dim = 16, .depth = kDepth, .kernel = 3, .patch = 2, .classes = 10}, gen),
        opt(model.parameters(), {.lr = 1e-2, .weight_decay = 0.005}),
        images(Tensor::randn({4, 8, 8, 3}, gen)),
        labels(Tensor::from_vector(std::vector<int64_t>{3, 0, 9, 3}, {4})) {}

  // One training step; returns its loss.
  float step() {
    Tensor loss = cross_entropy(model.forward(images), labels);
    opt.zero_grad();
    loss.backward();
    opt.step();
    return loss.item();
  }

  std::vector<std::vector<float>> params() const {
    std::vector<std::vector<float>> values;
    for (const Tensor& p : model.parameters()) values.push_back(p.to_vector());
    return values;
  }

  Generator gen;
  models::ConvMixer model;
  optim::AdamW opt;
  Tensor images, labels;
};

}  // namespace

TEST_CASE("OpProfiler times every op of a ConvMixer step and changes nothing") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);

  // Reference: two steps without the profiler.
  Run plain(seed);
  const float plain_loss1 = plain.step(), plain_loss2 = plain.step();

  // The same two steps, the first one profiled.
  Run profiled(seed);
  std::vector<OpTime> rows;
  float loss1 = 0;
  std::string table;
  double total = 0;
  {
    OpProfiler profiler(Device::cpu());
    CHECK(OpProfiler::active(DeviceKind::cpu));
    loss1 = profiled.step();
    rows = profiler.report();
    total = profiler.total_seconds();
    std::ostringstream out;
    profiler.print(out, 1);
    table = out.str();
  }
  CHECK_FALSE(OpProfiler::active(DeviceKind::cpu));
  const float loss2 = profiled.step();

  // Bit-identical results, during and after profiling.
  CHECK(loss1 == plain_loss1);
  CHECK(loss2 == plain_loss2);
  CHECK(profiled.params() == plain.params());

  // Calls per op, over all shapes: the patch embedding (conv, fused GELU + BatchNorm), then per
  // layer a depthwise conv, fused GELU + BatchNorm + residual, pointwise conv, fused GELU +
  // BatchNorm; pooling, linear, loss, and one AdamW call for all parameters. Backward: no
  // conv2d_backward_data for the patch conv (the images need no gradient); one add per layer sums
  // the two gradients that reach the residual's input; scale_by applies the loss's upstream
  // gradient.
  std::map<std::string, int64_t> calls;
  for (const OpTime& r : rows) calls[r.op] += r.calls;
  const std::map<std::string, int64_t> expected = {
      {"conv2d_forward", 1 + 2 * kDepth},
      {"conv2d_backward_data", 2 * kDepth},
      {"conv2d_backward_weight", 1 + 2 * kDepth},
      {"gelu_batchnorm_forward_train", 1 + 2 * kDepth},
      {"gelu_batchnorm_backward", 1 + 2 * kDepth},
      {"add", kDepth},
      {"global_avg_pool_forward", 1},
      {"global_avg_pool_backward", 1},
      {"linear_forward", 1},
      {"linear_backward_data", 1},
      {"linear_backward_weight", 1},
      {"cross_entropy", 1},
      {"scale_by", 1},
      {"adamw_update", 1},
  };
  CHECK(calls == expected);

  // Shape signatures: one row per (op, shape).
  std::map<std::string, int64_t> conv_forward;
  for (const OpTime& r : rows)
    if (r.op == "conv2d_forward") conv_forward[r.shape] = r.calls;
  CHECK(conv_forward == std::map<std::string, int64_t>{{"4x8x8x3 k2 s2 ->16", 1},
                                                       {"4x4x4x16 k3 p1 dw", kDepth},
                                                       {"4x4x4x16 k1", kDepth}});
  for (const OpTime& r : rows) {
    if (r.op == "linear_forward") CHECK(r.shape == "4x16 ->10");
    if (r.op == "adamw_update") {
      // Patch conv (weight, bias) and BatchNorm; per layer a depthwise conv, a pointwise conv and
      // two BatchNorms; the classifier.
      const int64_t values = (16 * 3 * 2 * 2 + 16) + 2 * 16 +
                             kDepth * ((16 * 3 * 3 + 16) + (16 * 16 + 16) + 2 * 2 * 16) +
                             (10 * 16 + 10);
      CHECK(r.shape == "22 tensors, " + std::to_string(values) + " values");
    }
  }

  // Sorted by time, shares summing to 1, and a table with a header, a line per row and a total.
  double sum = 0, shares = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i > 0) CHECK(rows[i - 1].seconds >= rows[i].seconds);
    sum += rows[i].seconds;
    shares += rows[i].share;
  }
  CHECK(total == Approx(sum));
  CHECK(shares == Approx(1.0));
  int lines = 0;
  for (char c : table) lines += c == '\n';
  CHECK(lines == static_cast<int>(rows.size()) + 2);
  CHECK(table.rfind("op ", 0) == 0);
  CHECK(table.find("\ntotal ") != std::string::npos);
  CHECK(table.find("calls/step") != std::string::npos);
}

TEST_CASE("OpProfilers nest, each counting the calls made while it is alive") {
  const Tensor a = Tensor::from_vector(std::vector<float>{1, 2, 3}, {3});
  {
    OpProfiler outer(Device::cpu());
    add(a, a);
    {
      OpProfiler inner(Device::cpu());
      const Tensor b = add(a, a);
      CHECK(b.to_vector() == std::vector<float>{2, 4, 6});
      const std::vector<OpTime> rows = inner.report();
      REQUIRE(rows.size() == 1);
      CHECK(rows[0].op == "add");
      CHECK(rows[0].shape == "3");
      CHECK(rows[0].calls == 1);
    }
    const std::vector<OpTime> rows = outer.report();
    REQUIRE(rows.size() == 1);
    CHECK(rows[0].calls == 2);
  }
  CHECK_FALSE(OpProfiler::active(DeviceKind::cpu));
}

#ifndef DL_HAVE_CUDA
TEST_CASE("OpProfiler on a device without ops throws and profiles nothing") {
  CHECK_THROWS_AS(OpProfiler(Device::cuda()), Error);
  CHECK_FALSE(OpProfiler::active(DeviceKind::cuda));
  CHECK_FALSE(OpProfiler::active(DeviceKind::cpu));
}
#endif
