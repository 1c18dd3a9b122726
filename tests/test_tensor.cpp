// Tensor creation, views, conversions and the autograd machinery (accumulation, release, no-grad).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "engine/runtime.h"
#include "engine/tensor.h"
#include "tests/test_util.h"

namespace dl {
namespace {

// Runs f, requires it to throw dl::Error, and returns the message.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("expected dl::Error, nothing was thrown");
  return {};
}

std::vector<float> iota(int64_t n, float start = 0.0f) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = start + static_cast<float>(i);
  return v;
}

// A float tensor from a braced list (a bare from_vector({...}) is ambiguous with the i64 overload).
Tensor floats(const std::vector<float>& values, const Shape& shape) {
  return Tensor::from_vector(values, shape);
}

Tensor leaf(const std::vector<float>& values, const Shape& shape) {
  Tensor t = floats(values, shape);
  t.requires_grad_();
  return t;
}

void require_values(const Tensor& t, const std::vector<float>& expected) {
  REQUIRE(t.defined());
  REQUIRE(t.to_vector() == expected);
}

TEST_CASE("creation: zeros, ones, full, empty, from_vector", "[tensor]") {
  const Tensor z = Tensor::zeros({2, 3});
  REQUIRE(z.shape() == Shape{2, 3});
  REQUIRE(z.dtype() == DType::f32);
  REQUIRE(z.is_contiguous());
  REQUIRE(z.strides() == Shape{3, 1});
  require_values(z, std::vector<float>(6, 0.0f));
  require_values(Tensor::ones({5}), std::vector<float>(5, 1.0f));
  require_values(Tensor::full({3, 1}, -2.5), std::vector<float>(3, -2.5f));

  const Tensor zi = Tensor::zeros({4}, DType::i64);
  REQUIRE(zi.dtype() == DType::i64);
  REQUIRE(zi.nbytes() == 32);
  const Tensor fi = Tensor::full({3}, 7.0, DType::i32);
  REQUIRE(fi.data<int32_t>()[2] == 7);
  REQUIRE_THROWS_AS(fi.data<float>(), Error);

  const Tensor scalar = Tensor::full({}, 3.0);
  REQUIRE(scalar.dim() == 0);
  REQUIRE(scalar.numel() == 1);
  REQUIRE(scalar.item() == 3.0f);

  const Tensor v = Tensor::from_vector(iota(6), {2, 3});
  require_values(v, iota(6));
  REQUIRE(v.size(-1) == 3);
  REQUIRE(v.size(0) == 2);
  REQUIRE_THROWS_AS(v.size(2), Error);
  REQUIRE_THROWS_AS(Tensor::from_vector(iota(5), {2, 3}), Error);
  REQUIRE_THROWS_AS(Tensor::empty({2, -1}), Error);
  const Tensor labels = Tensor::from_vector(std::vector<int64_t>{4, -1, 9}, {3});
  REQUIRE(labels.dtype() == DType::i64);
  REQUIRE(labels.data<int64_t>()[1] == -1);
  REQUIRE_THROWS_AS(Tensor().shape(), Error);
}

// Host blocks of 1 MiB and more are cached for the next tensor of the same size
// (engine/storage.cpp; not under AddressSanitizer, where a freed block must stay freed to catch a
// use after free).
TEST_CASE("large host tensors reuse freed blocks of their size; small ones and others do not",
          "[tensor]") {
#if defined(__SANITIZE_ADDRESS__)
  const bool cached = false;
#elif defined(__has_feature)
  const bool cached = !__has_feature(address_sanitizer);
#else
  const bool cached = true;
#endif
  const Shape large{1 << 18, 3};  // 3 MiB of f32
  const void* first = nullptr;
  {
    Tensor t = Tensor::full(large, 7.0f);
    first = t.raw_data();
  }
  Tensor again = Tensor::empty(large);
  CHECK((again.raw_data() == first) == cached);
  again = Tensor();
  // A slightly smaller size of the same size class (12.5% steps) takes the same block.
  Tensor near = Tensor::empty({(1 << 18) - 5, 3});
  CHECK((near.raw_data() == first) == cached);
  near = Tensor();
  again = Tensor::empty(large);
  // A fresh block of another size, while `again` holds the cached one; creation still fills.
  Tensor other = Tensor::zeros({1 << 19, 3});
  CHECK(other.raw_data() != first);
  const std::vector<float> values = other.to_vector();
  CHECK(std::all_of(values.begin(), values.end(), [](float v) { return v == 0.0f; }));
}

TEST_CASE("randn and uniform: seeded, reproducible, right moments", "[tensor]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator g1(seed), g2(seed), g3(seed + 1);
  const Tensor a = Tensor::randn({7, 11}, g1);
  const Tensor b = Tensor::randn({7, 11}, g2);
  const Tensor c = Tensor::randn({7, 11}, g3);
  REQUIRE(a.to_vector() == b.to_vector());
  REQUIRE(a.to_vector() != c.to_vector());
  // The stream continues: a second draw from the same generator differs from the first.
  REQUIRE(Tensor::randn({7, 11}, g1).to_vector() != a.to_vector());

  const int64_t n = 100000;
  const std::vector<float> x = Tensor::randn({n}, g1).to_vector();
  double s = 0.0, s2 = 0.0;
  int64_t non_finite = 0;
  for (float v : x) {
    non_finite += std::isfinite(v) ? 0 : 1;
    s += v;
    s2 += static_cast<double>(v) * v;
  }
  REQUIRE(non_finite == 0);
  const double mean = s / n, stddev = std::sqrt(s2 / n - mean * mean);
  // Standard errors are 1/sqrt(n) = 0.0032 (mean) and 1/sqrt(2n) = 0.0022 (std): 6 sigma.
  REQUIRE(std::abs(mean) < 0.02);
  REQUIRE(std::abs(stddev - 1.0) < 0.015);

  const std::vector<float> u = Tensor::uniform({n}, -3.0f, 5.0f, g1).to_vector();
  double su = 0.0;
  int64_t outside = 0;
  for (float v : u) {
    outside += v >= -3.0f && v < 5.0f ? 0 : 1;
    su += v;
  }
  REQUIRE(outside == 0);
  // Uniform on [-3, 5): mean 1, std 8/sqrt(12) = 2.31, standard error of the mean 0.0073.
  REQUIRE(std::abs(su / n - 1.0) < 0.05);
}

TEST_CASE("reshape: -1 inference, views, errors", "[tensor]") {
  const Tensor x = Tensor::from_vector(iota(24), {2, 3, 4});
  const Tensor r = x.reshape({-1, 4});
  REQUIRE(r.shape() == Shape{6, 4});
  require_values(r, iota(24));
  REQUIRE(x.reshape({4, -1, 2}).shape() == Shape{4, 3, 2});
  REQUIRE(x.reshape({24}).shape() == Shape{24});
  REQUIRE(x.reshape({-1}).shape() == Shape{24});
  // A view of a contiguous tensor: writes through it show in the original.
  Tensor r2 = x.reshape({6, 4});
  r2.data<float>()[5] = 100.0f;
  REQUIRE(x.to_vector()[5] == 100.0f);

  REQUIRE_THROWS_AS(x.reshape({-1, -1}), Error);
  REQUIRE_THROWS_AS(x.reshape({5, -1}), Error);
  REQUIRE_THROWS_AS(x.reshape({5, 5}), Error);
  REQUIRE_THROWS_AS(x.reshape({0, -1}), Error);
  REQUIRE_THROWS_AS(x.reshape({-2, -12}), Error);

  // A strided view reshapes through a copy, with the values in logical order.
  const Tensor s = x.slice(2, 1, 3);
  REQUIRE_FALSE(s.is_contiguous());
  const Tensor rs = s.reshape({-1});
  REQUIRE(rs.shape() == Shape{12});
  const std::vector<float> xv = x.to_vector();
  std::vector<float> expected;
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t j = 1; j < 3; ++j) expected.push_back(xv[static_cast<size_t>(i * 4 + j)]);
  require_values(rs, expected);
}

TEST_CASE("sizes are checked: a shape whose byte count overflows is an error", "[tensor]") {
  using Catch::Contains;
  constexpr int64_t big = int64_t{1} << 31;
  // 2^62 f32 elements: 2^64 bytes, which wrapped to an empty allocation.
  REQUIRE_THROWS_WITH(Tensor::empty({big, 1, big, 1}), Contains("is too large"));
  REQUIRE_THROWS_WITH(Tensor::uniform({big, 1, big, 1}, -1, 1), Contains("is too large"));
  REQUIRE_THROWS_WITH(shape_numel({int64_t{1} << 32, int64_t{1} << 32}), Contains("is too large"));
  REQUIRE_THROWS_WITH(shape_nbytes({int64_t{1} << 61}, DType::f32), Contains("is too large"));
  REQUIRE_THROWS_WITH(shape_numel({2, -3}), Contains("negative dimension"));
  REQUIRE(shape_nbytes({int64_t{1} << 60}, DType::f32) == size_t{1} << 62);
  // A zero dimension empties the shape; the other dimensions must still fit together, so that
  // strides do.
  REQUIRE(shape_numel({0, int64_t{1} << 30, int64_t{1} << 30}) == 0);
  REQUIRE(Tensor::empty({int64_t{1} << 30, 0, int64_t{1} << 30}).nbytes() == 0);
  REQUIRE_THROWS_WITH(shape_numel({0, int64_t{1} << 62, int64_t{1} << 62}),
                      Contains("is too large"));
  const Tensor x = Tensor::zeros({2, 3});
  REQUIRE_THROWS_WITH(x.reshape({int64_t{1} << 32, int64_t{1} << 32, -1}),
                      Contains("is too large"));
}

TEST_CASE("reshape is differentiable", "[tensor][autograd]") {
  Tensor x = leaf(iota(6, 1.0f), {2, 3});
  const Tensor r = Tensor::from_vector(iota(6, -2.0f), {3, 2});
  sum(mul(x.reshape({3, -1}), r)).backward();
  REQUIRE(x.grad().shape() == Shape{2, 3});
  require_values(x.grad(), iota(6, -2.0f));
}

TEST_CASE("slice: shared storage, strided views, contiguous, gradient region", "[tensor]") {
  Tensor x = Tensor::from_vector(iota(20), {4, 5});
  Tensor rows = x.slice(0, 1, 3);
  REQUIRE(rows.shape() == Shape{2, 5});
  REQUIRE(rows.is_contiguous());
  require_values(rows, iota(10, 5.0f));
  Tensor cols = x.slice(1, 1, 4);
  REQUIRE(cols.shape() == Shape{4, 3});
  REQUIRE_FALSE(cols.is_contiguous());
  REQUIRE(cols.strides() == Shape{5, 1});
  require_values(cols, {1, 2, 3, 6, 7, 8, 11, 12, 13, 16, 17, 18});
  REQUIRE(x.slice(-1, 4, 5).shape() == Shape{4, 1});
  REQUIRE(x.slice(0, 2, 2).numel() == 0);

  // Writes through either view land in the base tensor.
  rows.fill_(-1.0);
  cols.slice(0, 3, 4).copy_(floats({90.0f, 91.0f, 92.0f}, {1, 3}));
  const std::vector<float> xv = x.to_vector();
  for (int64_t i = 5; i < 15; ++i) REQUIRE(xv[static_cast<size_t>(i)] == -1.0f);
  REQUIRE(xv[0] == 0.0f);
  REQUIRE(xv[16] == 90.0f);
  REQUIRE(xv[18] == 92.0f);
  REQUIRE(xv[19] == 19.0f);

  // contiguous() of a strided view: a fresh, densely packed copy.
  const Tensor c = cols.contiguous();
  REQUIRE(c.is_contiguous());
  REQUIRE(c.strides() == Shape{3, 1});
  REQUIRE(c.to_vector() == cols.to_vector());
  x.data<float>()[1] = 55.0f;
  REQUIRE(c.to_vector()[0] == 1.0f);
  REQUIRE(cols.to_vector()[0] == 55.0f);
  // zero_ on a strided view touches only the view.
  cols.zero_();
  const std::vector<float> after = x.to_vector();
  for (int64_t i = 0; i < 4; ++i) {
    REQUIRE(after[static_cast<size_t>(i * 5)] == xv[static_cast<size_t>(i * 5)]);
    REQUIRE(after[static_cast<size_t>(i * 5 + 1)] == 0.0f);
    REQUIRE(after[static_cast<size_t>(i * 5 + 3)] == 0.0f);
    REQUIRE(after[static_cast<size_t>(i * 5 + 4)] == xv[static_cast<size_t>(i * 5 + 4)]);
  }

  REQUIRE_THROWS_AS(x.slice(0, 3, 5), Error);
  REQUIRE_THROWS_AS(x.slice(1, 3, 2), Error);
  REQUIRE_THROWS_AS(x.slice(1, -1, 2), Error);
  REQUIRE_THROWS_AS(x.slice(2, 0, 1), Error);
}

TEST_CASE("slice gradient lands in the sliced region", "[tensor][autograd]") {
  Tensor x = leaf(iota(20), {4, 5});
  const Tensor r = Tensor::from_vector(iota(6, 1.0f), {3, 2});
  sum(mul(x.slice(0, 1, 4).slice(1, 2, 4), r)).backward();
  std::vector<float> expected(20, 0.0f);
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 2; ++j)
      expected[static_cast<size_t>((i + 1) * 5 + j + 2)] = static_cast<float>(i * 2 + j + 1);
  require_values(x.grad(), expected);

  // Two slices of one tensor: each contributes to its own region, overlaps add.
  Tensor y = leaf(iota(6), {6});
  sum(add(y.slice(0, 0, 4), y.slice(0, 2, 6))).backward();
  require_values(y.grad(), {1, 1, 2, 2, 1, 1});
}

TEST_CASE("clone is independent; detach shares data without history", "[tensor]") {
  Tensor x = Tensor::from_vector(iota(6), {2, 3});
  Tensor c = x.clone();
  c.fill_(9.0);
  require_values(x, iota(6));
  x.data<float>()[0] = -4.0f;
  REQUIRE(c.to_vector()[0] == 9.0f);
  const Tensor cs = x.slice(1, 1, 3).clone();
  REQUIRE(cs.is_contiguous());
  require_values(cs, {1, 2, 4, 5});

  Tensor w = leaf(iota(3, 1.0f), {3});
  const Tensor y = mul(w, w);
  REQUIRE(y.requires_grad());
  REQUIRE(y.grad_fn() != nullptr);
  Tensor d = y.detach();
  REQUIRE_FALSE(d.requires_grad());
  REQUIRE(d.grad_fn() == nullptr);
  REQUIRE(d.raw_data() == y.raw_data());
  d.data<float>()[1] = 42.0f;
  REQUIRE(y.to_vector()[1] == 42.0f);
  REQUIRE(y.requires_grad());
  REQUIRE_FALSE(w.detach().requires_grad());
  REQUIRE(w.requires_grad());
}

TEST_CASE("to(DType): bf16 round to nearest even, integer conversions", "[tensor]") {
  // bf16 keeps 7 mantissa bits: its spacing at 1 is 2^-7 = 0.0078125.
  const std::vector<float> in = {
      1.0f,         // exact
      1.00390625f,  // 1 + 2^-8: tie between 1 (even) and 1 + 2^-7 -> 1
      1.01171875f,  // 1 + 3 * 2^-8: tie between 1 + 2^-7 (odd) and 1 + 2^-6 (even) -> 1 + 2^-6
      std::nextafter(1.00390625f, 2.0f),  // just above the first tie -> rounds up
      -1.01171875f,
      0.15625f,                           // 5 / 32, exact
      std::numeric_limits<float>::max(),  // past the largest bf16 -> inf
      -std::numeric_limits<float>::infinity(),
      0.0f};
  const Tensor b = Tensor::from_vector(in, {9}).to(DType::bf16);
  REQUIRE(b.dtype() == DType::bf16);
  REQUIRE(b.nbytes() == 18);
  const std::vector<float> back = b.to(DType::f32).to_vector();
  REQUIRE(back[0] == 1.0f);
  REQUIRE(back[1] == 1.0f);
  REQUIRE(back[2] == 1.015625f);
  REQUIRE(back[3] == 1.0078125f);
  REQUIRE(back[4] == -1.015625f);
  REQUIRE(back[5] == 0.15625f);
  REQUIRE(std::isinf(back[6]));
  REQUIRE(back[6] > 0.0f);
  REQUIRE(back[7] == -std::numeric_limits<float>::infinity());
  REQUIRE(back[8] == 0.0f);
  REQUIRE(b.data<bf16>()[0].bits == 0x3f80);
  REQUIRE(b.data<bf16>()[2].bits == 0x3f82);
  REQUIRE(std::isnan(Tensor::full({1}, std::nan("")).to(DType::bf16).item()));

  // Every bf16 value is an f32 value: f32 -> bf16 -> f32 -> bf16 is the identity on bf16 bits.
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const Tensor r = Tensor::randn({257}, gen).to(DType::bf16);
  const Tensor r2 = r.to(DType::f32).to(DType::bf16);
  for (int64_t i = 0; i < 257; ++i) REQUIRE(r.data<bf16>()[i].bits == r2.data<bf16>()[i].bits);
  // The rounding error is at most half a bf16 ulp: relative 2^-8.
  const std::vector<float> rf = Tensor::randn({257}, gen).to_vector();
  const std::vector<float> rb = Tensor::from_vector(rf, {257}).to(DType::bf16).to_vector();
  for (size_t i = 0; i < rf.size(); ++i) REQUIRE(std::abs(rb[i] - rf[i]) <= std::abs(rf[i]) / 256);

  const Tensor as_int = floats({1.0f, -3.0f, 250.0f}, {3}).to(DType::i64);
  REQUIRE(as_int.dtype() == DType::i64);
  REQUIRE(as_int.data<int64_t>()[1] == -3);
  REQUIRE(as_int.data<int64_t>()[2] == 250);
  require_values(as_int.to(DType::f32), {1.0f, -3.0f, 250.0f});
  // Converting to the same dtype is a no-op view.
  const Tensor same = b.to(DType::bf16);
  REQUIRE(same.raw_data() == b.raw_data());
}

TEST_CASE("item", "[tensor]") {
  REQUIRE(Tensor::full({1, 1}, 2.5).item() == 2.5f);
  REQUIRE(Tensor::full({}, -1.0).item() == -1.0f);
  REQUIRE(Tensor::full({1}, 5.0, DType::i64).item() == 5.0f);
  REQUIRE(Tensor::from_vector(iota(6), {2, 3}).slice(1, 2, 3).slice(0, 1, 2).item() == 5.0f);
  REQUIRE_THROWS_AS(Tensor::zeros({2}).item(), Error);
  REQUIRE_THROWS_AS(Tensor::zeros({0}).item(), Error);
}

TEST_CASE("gradients accumulate over paths and over backward passes", "[autograd]") {
  Tensor x = leaf({1.0f, -2.0f, 3.0f}, {3});
  // x used twice: x * x + x -> 2x + 1.
  sum(add(mul(x, x), x)).backward();
  require_values(x.grad(), {3.0f, -3.0f, 7.0f});
  // A second, fresh graph accumulates into the same .grad.
  sum(scale(x, 4.0f)).backward();
  require_values(x.grad(), {7.0f, 1.0f, 11.0f});
  // The same tensor as both inputs of one node.
  x.set_grad(Tensor());
  REQUIRE_FALSE(x.grad().defined());
  sum(add(x, x)).backward();
  require_values(x.grad(), {2.0f, 2.0f, 2.0f});
  x.set_grad(Tensor());
  sum(mul(x, x)).backward();
  require_values(x.grad(), {2.0f, -4.0f, 6.0f});
  REQUIRE_THROWS_AS(x.set_grad(Tensor::zeros({2})), Error);

  // backward(grad_output) on a non-scalar weights the paths.
  Tensor y = leaf({1.0f, 2.0f}, {2});
  const Tensor g = floats({10.0f, -1.0f}, {2});
  add(scale(y, 3.0f), y).backward(g);
  require_values(y.grad(), {40.0f, -4.0f});
  require_values(g, {10.0f, -1.0f});

  // backward() on a leaf itself accumulates the seed.
  Tensor s = leaf({2.0f}, {});
  s.backward();
  s.backward();
  require_values(s.grad(), {2.0f});
}

TEST_CASE("diamond graph: y = a * b + a", "[autograd]") {
  Tensor a = leaf({1.5f, -2.0f, 0.5f, 4.0f}, {2, 2});
  Tensor b = leaf({3.0f, 0.25f, -1.0f, 2.0f}, {2, 2});
  const Tensor y = add(mul(a, b), a);
  sum(y).backward();
  require_values(a.grad(), {4.0f, 1.25f, 0.0f, 3.0f});
  require_values(b.grad(), {1.5f, -2.0f, 0.5f, 4.0f});

  // A deeper diamond through a shared intermediate: h = relu(a); z = h * h + scale(h, 2).
  a.set_grad(Tensor());
  const Tensor h = relu(a);
  sum(add(mul(h, h), scale(h, 2.0f))).backward();
  require_values(a.grad(), {5.0f, 0.0f, 3.0f, 10.0f});
}

TEST_CASE("a post-accumulate hook runs once per backward, after the leaf's last gradient",
          "[autograd]") {
  Tensor a = leaf({1.5f, -2.0f, 0.5f, 4.0f}, {2, 2});
  Tensor b = leaf({3.0f, 0.25f, -1.0f, 2.0f}, {2, 2});
  Tensor unused = leaf({1.0f}, {1});
  // a reaches y by three edges (a * b, + a, and a * a); the hook must see all of them summed.
  std::vector<std::vector<float>> seen_a;
  int calls_b = 0, calls_unused = 0;
  a.set_post_accumulate_grad_hook([&] { seen_a.push_back(a.grad().to_vector()); });
  b.set_post_accumulate_grad_hook([&] { ++calls_b; });
  unused.set_post_accumulate_grad_hook([&] { ++calls_unused; });
  sum(add(add(mul(a, b), a), mul(a, a))).backward();
  REQUIRE(seen_a.size() == 1);
  CHECK(seen_a[0] == std::vector<float>{7.0f, -2.75f, 1.0f, 11.0f});  // b + 1 + 2a
  CHECK(calls_b == 1);
  CHECK(calls_unused == 0);   // not in the graph
  sum(mul(a, b)).backward();  // a second backward: once more
  CHECK(seen_a.size() == 2);
  CHECK(calls_b == 2);
  a.set_post_accumulate_grad_hook({});
  sum(a).backward();
  CHECK(seen_a.size() == 2);
  // A backward from the leaf itself accumulates its seed, then runs the hook.
  int calls_leaf = 0;
  b.set_post_accumulate_grad_hook([&] { ++calls_leaf; });
  b.backward(Tensor::ones({2, 2}));
  CHECK(calls_leaf == 1);
}

TEST_CASE("NoGradGuard records nothing and restores the mode", "[autograd]") {
  Tensor x = leaf({1.0f, 2.0f}, {2});
  REQUIRE(grad_mode_enabled());
  {
    NoGradGuard guard;
    REQUIRE_FALSE(grad_mode_enabled());
    const Tensor y = mul(x, x);
    REQUIRE(y.grad_fn() == nullptr);
    REQUIRE_FALSE(y.requires_grad());
    REQUIRE(x.slice(0, 0, 1).grad_fn() == nullptr);
    REQUIRE(x.reshape({2, 1}).grad_fn() == nullptr);
    {
      NoGradGuard inner;
      REQUIRE_FALSE(grad_mode_enabled());
    }
    REQUIRE_FALSE(grad_mode_enabled());
    require_values(y, {1.0f, 4.0f});
  }
  REQUIRE(grad_mode_enabled());
  const Tensor z = mul(x, x);
  REQUIRE(z.grad_fn() != nullptr);
  REQUIRE(std::string(z.grad_fn()->name()) == "mul");
  // No node when no input requires grad.
  const Tensor c = Tensor::ones({2});
  REQUIRE(mul(c, c).grad_fn() == nullptr);
  REQUIRE_FALSE(mul(c, c).requires_grad());
}

TEST_CASE("backward errors", "[autograd]") {
  Tensor x = leaf({1.0f, 2.0f, 3.0f}, {3});
  const Tensor loss = sum(mul(x, x));
  loss.backward();
  const std::string msg = error_of([&] { loss.backward(); });
  INFO(msg);
  REQUIRE(msg.find("released") != std::string::npos);
  // The first pass's result is intact.
  require_values(x.grad(), {2.0f, 4.0f, 6.0f});

  const Tensor y = mul(x, x);
  const std::string non_scalar = error_of([&] { y.backward(); });
  REQUIRE(non_scalar.find("one-element") != std::string::npos);
  REQUIRE_THROWS_AS(y.backward(Tensor::ones({4})), Error);
  REQUIRE_THROWS_AS(Tensor::ones({1}).backward(), Error);

  Tensor labels = Tensor::zeros({3}, DType::i64);
  REQUIRE_THROWS_AS(labels.requires_grad_(), Error);
  REQUIRE_NOTHROW(labels.requires_grad_(false));
  Tensor non_leaf = mul(x, x);
  REQUIRE_THROWS_AS(non_leaf.requires_grad_(), Error);
}

TEST_CASE("graph is released after backward", "[autograd]") {
  Tensor x = leaf({1.0f, 2.0f}, {2});
  const Tensor loss = sum(mul(x, x));
  const std::shared_ptr<Node> node = loss.grad_fn();
  REQUIRE(node != nullptr);
  REQUIRE_FALSE(node->released());
  REQUIRE(node->inputs.size() == 1);
  loss.backward();
  REQUIRE(node->released());
  REQUIRE(node->inputs.empty());
}

}  // namespace
}  // namespace dl

TEST_CASE("contiguous() of a strided view keeps the gradient path") {
  dl::Tensor x = dl::Tensor::randn({3, 5});
  x.requires_grad_();
  const dl::Tensor view = x.slice(1, 1, 4);
  REQUIRE(!view.is_contiguous());
  dl::sum(view.contiguous()).backward();
  const auto g = x.grad().to_vector();
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 5; ++c) REQUIRE(g[r * 5 + c] == (c >= 1 && c < 4 ? 1.0f : 0.0f));
}

namespace dl {
namespace {

TEST_CASE("an in-place write to a tensor saved for backward makes the backward throw",
          "[autograd]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  auto modified_error = Catch::Contains("modified in place after the forward");

  // The input of gelu, written through add_, fill_ and copy_ (also through a view).
  for (int how = 0; how < 4; ++how) {
    INFO("write " << how);
    Tensor x = Tensor::randn({4, 6}, gen).requires_grad_();
    Tensor base = Tensor::randn({4, 6}, gen);
    Tensor input = add(x, base).detach().requires_grad_();
    const Tensor y = sum(gelu(input));
    NoGradGuard no_grad;
    if (how == 0) add_(input, Tensor::ones({4, 6}));
    if (how == 1) input.fill_(2.0);
    if (how == 2) input.copy_(Tensor::zeros({4, 6}));
    if (how == 3) input.slice(0, 1, 2).copy_(Tensor::zeros({1, 6}));
    CHECK_THROWS_WITH(y.backward(), modified_error);
  }

  // A weight updated by an optimizer step between the forward and the backward.
  Tensor w = Tensor::randn({3, 6}, gen).requires_grad_();
  const Tensor x = Tensor::randn({5, 6}, gen);
  const Tensor loss = sum(linear(x, w, Tensor()));
  {
    NoGradGuard no_grad;
    scale_(w, 0.5f);
  }
  CHECK_THROWS_WITH(loss.backward(), Catch::Contains("backward of 'linear'"));

  // Writes to tensors the backward does not read are fine (add saves nothing), and so is the
  // usual forward, backward, update, forward, backward.
  Tensor a = Tensor::randn({4}, gen).requires_grad_(), b = Tensor::randn({4}, gen);
  const Tensor s = sum(add(a, b));
  b.fill_(3.0);
  REQUIRE_NOTHROW(s.backward());
  Tensor p = Tensor::randn({2, 3}, gen).requires_grad_();
  for (int step = 0; step < 2; ++step) {
    sum(gelu(p)).backward();
    NoGradGuard no_grad;
    add_(p, p.grad(), -0.1f);
    p.set_grad(Tensor());
  }
}

TEST_CASE("a device without a GPU: the error says what to do without naming a program's flag",
          "[device]") {
  if (resolve_device("auto").is_cuda()) {
    CHECK(resolve_device("cuda").is_cuda());
    return;
  }
  CHECK(resolve_device("auto") == Device::cpu());
  for (auto use : std::vector<std::function<void()>>{
           [] { resolve_device("cuda"); }, [] { Tensor::zeros({2}, DType::f32, Device::cuda()); },
           [] { Tensor::ones({2}).to(Device::cuda()); }, [] { synchronize(Device::cuda()); }}) {
    const std::string message = error_of(use);
    CHECK_THAT(message, Catch::Contains("device cuda:0 is not available") &&
                            Catch::EndsWith("use the CPU device"));
    CHECK_THAT(message, !Catch::Contains("--"));
  }
}

TEST_CASE("the runtime: CPU threads, waiting, peak memory, TF32 off", "[device]") {
  const int threads = num_threads();
  set_num_threads(1);
  CHECK(num_threads() == 1);
  set_num_threads(0);  // keeps the count
  CHECK(num_threads() == 1);
  set_num_threads(threads);
  CHECK(num_threads() == threads);
  synchronize(Device::cpu());
  CHECK(max_memory_allocated(Device::cpu()) == 0);
  set_allow_tf32(false);
}

}  // namespace
}  // namespace dl
