// Every op of engine/ops.h against a naive double-precision reference written here from the math
// definition: the forward on random odd shapes, the gradients against central differences of the
// reference, and the CPU kernels called directly on NaN-poisoned outputs so an unwritten element
// fails.
//
// Tolerances. Forward (f32 op vs double reference): |got - ref| <= 1e-5 |ref| + atol with
// atol = 1e-5 * sqrt(m) for an output that sums m products of unit-scale values. The f32 rounding
// error of such a sum grows like sqrt(m) * 6e-8, so this leaves a margin of over 100x, while an
// indexing or formula bug (an O(1) error) still fails. Gradients (f32 autograd vs central
// differences of the double reference, step 1e-6 relative, truncation error ~1e-12):
// |got - fd| <= 1e-4 |fd| + 1e-5 * sqrt(m), m the number of terms summed into that gradient.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/runtime.h"
#include "engine/tensor.h"
#include "kernels/cpu/batchnorm.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/loss.h"
#include "kernels/cpu/pool.h"
#include "tests/test_util.h"

namespace dl {
namespace {

using Vec = std::vector<double>;
using Inputs = std::vector<Vec>;
// Double-precision reference forward: flattened inputs (in the op's layouts) -> flattened output.
using RefFn = std::function<Vec(const Inputs&)>;
using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

constexpr double kFwdRtol = 1e-5;
constexpr double kGradRtol = 1e-4;
constexpr double kFdStep = 1e-6;
// Elements per input checked by finite differences in the op checks.
constexpr size_t kMaxFdChecks = 16;
constexpr float kPoison = std::numeric_limits<float>::quiet_NaN();

double sum_atol(double terms) {
  return 1e-5 * std::sqrt(std::max(terms, 1.0));
}

Vec to_double(const Tensor& t) {
  const std::vector<float> v = t.to_vector();
  return Vec(v.begin(), v.end());
}

std::vector<float> poisoned(int64_t n) {
  return std::vector<float>(static_cast<size_t>(n), kPoison);
}

std::vector<float> randn_vec(int64_t n, Generator& gen, float scale = 1.0f, float shift = 0.0f) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& e : v) e = shift + scale * gen.normal();
  return v;
}

Vec widen(const std::vector<float>& v) {
  return Vec(v.begin(), v.end());
}

Tensor tensor_of(const std::vector<float>& v, const Shape& shape) {
  return Tensor::from_vector(v, shape);
}

int64_t rand_int(Generator& gen, int64_t lo, int64_t hi) {
  return lo + static_cast<int64_t>(gen.below(static_cast<uint64_t>(hi - lo + 1)));
}

int64_t pick(Generator& gen, const std::vector<int64_t>& options) {
  return options[gen.below(options.size())];
}

// Channel counts that are not multiples of the SIMD width.
const std::vector<int64_t> kOddChannels = {1, 3, 5, 7, 13};

// Checks that f throws dl::Error (CHECK: the remaining error cases of a test still run).
template <class F>
void check_error(F&& f, const char* what) {
  INFO(what);
  CHECK_THROWS_AS(f(), Error);
}

// --- finite differences of the double reference ------------------------------------------------

double weighted_loss(const RefFn& ref, const Inputs& v, const Vec& r) {
  const Vec out = ref(v);
  REQUIRE(out.size() == r.size());
  double s = 0.0;
  for (size_t k = 0; k < out.size(); ++k) s += out[k] * r[k];
  return s;
}

// d/dv[i][j] of sum(ref(v) * r), central differences.
double fd_at(const RefFn& ref, Inputs& v, size_t i, size_t j, const Vec& r) {
  const double v0 = v[i][j];
  const double h = kFdStep * std::max(1.0, std::abs(v0));
  v[i][j] = v0 + h;
  const double plus = weighted_loss(ref, v, r);
  v[i][j] = v0 - h;
  const double minus = weighted_loss(ref, v, r);
  v[i][j] = v0;
  return (plus - minus) / (2.0 * h);
}

Vec fd_grad_full(const RefFn& ref, Inputs v, size_t i, const Vec& r) {
  Vec g(v[i].size());
  for (size_t j = 0; j < g.size(); ++j) g[j] = fd_at(ref, v, i, j, r);
  return g;
}

void require_grad_close(float got, double expected, double atol, const std::string& what,
                        size_t index) {
  const double err = std::abs(static_cast<double>(got) - expected);
  if (!(err <= atol + kGradRtol * std::abs(expected))) {
    FAIL(what << ": element " << index << " is " << got << ", finite differences give " << expected
              << " (|err| " << err << " > " << atol << " + " << kGradRtol << "*|fd|)");
  }
}

struct OpInput {
  Tensor value;
  double grad_atol;
  const char* name;
};

// The op's forward against ref; then out.backward(R) for a random R, and each input's gradient
// against central differences of L = sum(ref(inputs) * R) at its first and last element and at
// random others.
void check_op(const std::string& what, const OpFn& op, const RefFn& ref,
              const std::vector<OpInput>& inputs, double fwd_atol, Generator& gen) {
  INFO(what);
  std::vector<Tensor> leaves;
  Inputs values;
  for (const OpInput& in : inputs) {
    Tensor leaf = in.value.detach().clone();
    leaf.requires_grad_();
    leaves.push_back(leaf);
    values.push_back(to_double(leaf));
  }
  const Tensor out = op(leaves);
  test::require_close(out.to_vector(), ref(values), kFwdRtol, fwd_atol, what + " forward");
  REQUIRE(out.grad_fn() != nullptr);
  const Tensor r = Tensor::randn(out.shape(), gen);
  const Vec rv = to_double(r);
  out.backward(r);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string name = what + " d" + inputs[i].name;
    INFO(name);
    const Tensor grad = leaves[i].grad();
    REQUIRE(grad.defined());
    REQUIRE(grad.shape() == leaves[i].shape());
    const std::vector<float> g = grad.to_vector();
    const size_t n = g.size();
    std::vector<size_t> idx;
    if (n <= kMaxFdChecks) {
      idx.resize(n);
      std::iota(idx.begin(), idx.end(), size_t{0});
    } else {
      idx = {0, n - 1};
      while (idx.size() < kMaxFdChecks) idx.push_back(gen.below(n));
    }
    for (size_t j : idx)
      require_grad_close(g[j], fd_at(ref, values, i, j, rv), inputs[i].grad_atol, name, j);
  }
}

// --- elementwise and reductions ----------------------------------------------------------------

Shape random_shape(Generator& gen) {
  return {rand_int(gen, 1, 3), rand_int(gen, 1, 6) * 2 + 1, pick(gen, kOddChannels)};
}

Vec map_ref(const Vec& x, const std::function<double(double)>& f) {
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = f(x[i]);
  return y;
}

double gelu_ref(double x) {
  return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
}

// Values at least 0.05 away from zero: finite differences never cross the relu kink.
std::vector<float> away_from_zero(int64_t n, Generator& gen) {
  std::vector<float> v = randn_vec(n, gen);
  for (float& e : v) e = std::copysign(0.05f + std::abs(e), e);
  return v;
}

TEST_CASE("add, mul, scale: forward and gradients", "[ops]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (int rep = 0; rep < 3; ++rep) {
    const Shape shape = random_shape(gen);
    INFO("shape " << shape_str(shape));
    const int64_t n = shape_numel(shape);
    const Tensor a = tensor_of(randn_vec(n, gen), shape);
    const Tensor b = tensor_of(randn_vec(n, gen), shape);
    const float factor = 0.5f + gen.uniform() * 3.0f;
    check_op(
        "add", [](const std::vector<Tensor>& t) { return add(t[0], t[1]); },
        [](const Inputs& v) {
          Vec y(v[0].size());
          for (size_t i = 0; i < y.size(); ++i) y[i] = v[0][i] + v[1][i];
          return y;
        },
        {{a, 1e-6, "a"}, {b, 1e-6, "b"}}, 1e-6, gen);
    check_op(
        "mul", [](const std::vector<Tensor>& t) { return mul(t[0], t[1]); },
        [](const Inputs& v) {
          Vec y(v[0].size());
          for (size_t i = 0; i < y.size(); ++i) y[i] = v[0][i] * v[1][i];
          return y;
        },
        {{a, 1e-6, "a"}, {b, 1e-6, "b"}}, 1e-6, gen);
    check_op(
        "scale", [factor](const std::vector<Tensor>& t) { return scale(t[0], factor); },
        [factor](const Inputs& v) { return map_ref(v[0], [&](double x) { return factor * x; }); },
        {{a, 1e-6, "x"}}, 1e-6, gen);
  }

  // The kernels write every output element.
  const int64_t n = 77;
  const std::vector<float> a = randn_vec(n, gen), b = randn_vec(n, gen);
  std::vector<float> out = poisoned(n);
  cpu::add(a.data(), b.data(), out.data(), n);
  for (int64_t i = 0; i < n; ++i) REQUIRE(out[i] == a[i] + b[i]);
  out = poisoned(n);
  cpu::mul(a.data(), b.data(), out.data(), n);
  for (int64_t i = 0; i < n; ++i) REQUIRE(out[i] == a[i] * b[i]);
  out = poisoned(n);
  cpu::scale(a.data(), -1.5f, out.data(), n);
  for (int64_t i = 0; i < n; ++i) REQUIRE(out[i] == -1.5f * a[i]);
  out = b;
  cpu::axpy(2.0f, a.data(), out.data(), n);
  Vec axpy_ref(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) axpy_ref[i] = b[i] + 2.0 * a[i];
  test::require_close(out, axpy_ref, 1e-6, 1e-6, "axpy");
}

TEST_CASE("gelu and relu: forward and gradients", "[ops]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (int rep = 0; rep < 3; ++rep) {
    const Shape shape = random_shape(gen);
    INFO("shape " << shape_str(shape));
    const int64_t n = shape_numel(shape);
    const Tensor x = tensor_of(away_from_zero(n, gen), shape);
    check_op(
        "gelu", [](const std::vector<Tensor>& t) { return gelu(t[0]); },
        [](const Inputs& v) { return map_ref(v[0], gelu_ref); }, {{x, 1e-5, "x"}}, 1e-6, gen);
    check_op(
        "relu", [](const std::vector<Tensor>& t) { return relu(t[0]); },
        [](const Inputs& v) { return map_ref(v[0], [](double e) { return e > 0 ? e : 0.0; }); },
        {{x, 1e-6, "x"}}, 0.0, gen);
  }

  // Known values, the tails, and the kernels on poisoned outputs.
  const std::vector<float> x = {-8.0f, -3.0f, -1.0f, -0.25f, 0.0f, 0.5f, 1.0f, 2.5f, 6.0f};
  const int64_t n = static_cast<int64_t>(x.size());
  const std::vector<float> dy = randn_vec(n, gen);
  std::vector<float> y = poisoned(n), dx = poisoned(n);
  cpu::gelu_forward(x.data(), y.data(), n);
  test::require_close(y, map_ref(widen(x), gelu_ref), kFwdRtol, 1e-6, "gelu_forward");
  REQUIRE(y[4] == 0.0f);
  cpu::gelu_backward(x.data(), dy.data(), dx.data(), n);
  Vec dref(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    const double cdf = 0.5 * (1.0 + std::erf(v / std::sqrt(2.0)));
    const double pdf = std::exp(-0.5 * v * v) / std::sqrt(2.0 * M_PI);
    dref[i] = dy[i] * (cdf + v * pdf);
  }
  test::require_close(dx, dref, kFwdRtol, 1e-6, "gelu_backward");
  y = poisoned(n);
  dx = poisoned(n);
  cpu::relu_forward(x.data(), y.data(), n);
  cpu::relu_backward(x.data(), dy.data(), dx.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    REQUIRE(y[i] == std::max(x[i], 0.0f));
    // PyTorch's convention: the gradient at exactly 0 is 0.
    REQUIRE(dx[i] == (x[i] > 0.0f ? dy[i] : 0.0f));
  }
}

TEST_CASE("sum and mean: forward and gradients", "[ops]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (int rep = 0; rep < 3; ++rep) {
    const Shape shape = random_shape(gen);
    INFO("shape " << shape_str(shape));
    const int64_t n = shape_numel(shape);
    const Tensor x = tensor_of(randn_vec(n, gen, 1.0f, 0.5f), shape);
    check_op(
        "sum", [](const std::vector<Tensor>& t) { return sum(t[0]); },
        [](const Inputs& v) { return Vec{std::accumulate(v[0].begin(), v[0].end(), 0.0)}; },
        {{x, 1e-6, "x"}}, sum_atol(static_cast<double>(n)), gen);
    check_op(
        "mean", [](const std::vector<Tensor>& t) { return mean(t[0]); },
        [](const Inputs& v) {
          return Vec{std::accumulate(v[0].begin(), v[0].end(), 0.0) /
                     static_cast<double>(v[0].size())};
        },
        {{x, 1e-6, "x"}}, 1e-6, gen);
  }
  REQUIRE(sum(Tensor::ones({2, 3})).dim() == 0);
  REQUIRE(mean(Tensor::full({}, 4.0)).item() == 4.0f);

  // A sum over several reduction chunks, and sum_rows on a poisoned output.
  const int64_t big = 50001;
  const std::vector<float> v = randn_vec(big, gen);
  const double total = std::accumulate(v.begin(), v.end(), 0.0);
  REQUIRE(std::abs(cpu::sum(v.data(), big) - total) <= 1e-9 * big);
  REQUIRE(std::abs(sum(tensor_of(v, {big})).item() - total) <= 1e-6 * std::abs(total) + 1e-5);
  const int64_t rows = 37, cols = 13;
  std::vector<float> out = poisoned(cols);
  cpu::sum_rows(v.data(), rows, cols, out.data());
  Vec ref(cols, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) ref[c] += v[r * cols + c];
  test::require_close(out, ref, kFwdRtol, sum_atol(rows), "sum_rows");
}

// --- conv2d ------------------------------------------------------------------------------------

struct ConvCase {
  int64_t n, h, w, c_in, c_out, k, stride, pad, groups;
  bool bias;
  int64_t h_out() const { return (h + 2 * pad - k) / stride + 1; }
  int64_t w_out() const { return (w + 2 * pad - k) / stride + 1; }
  int64_t cg() const { return c_in / groups; }
  int64_t og() const { return c_out / groups; }
  Conv2dShape shape() const {
    Conv2dShape s;
    s.n = n, s.h = h, s.w = w, s.c_in = c_in, s.c_out = c_out;
    s.kh = k, s.kw = k, s.stride = stride, s.pad = pad, s.groups = groups;
    return s;
  }
  std::string str() const {
    return "conv x [" + std::to_string(n) + ", " + std::to_string(h) + ", " + std::to_string(w) +
           ", " + std::to_string(c_in) + "] c_out " + std::to_string(c_out) + " k " +
           std::to_string(k) + " stride " + std::to_string(stride) + " pad " + std::to_string(pad) +
           " groups " + std::to_string(groups) + (bias ? " bias" : " no bias");
  }
};

// y[n, oh, ow, co] = b[co] + sum_{ci, i, j} x[n, oh*s - p + i, ow*s - p + j, g*cg + ci] w[co, ci,
// i, j] with g = co / (c_out / groups); positions outside the input read as zero.
Vec conv_ref(const ConvCase& c, const Vec& x, const Vec& w, const Vec* b) {
  const int64_t ho = c.h_out(), wo = c.w_out(), cg = c.cg(), og = c.og();
  Vec y(static_cast<size_t>(c.n * ho * wo * c.c_out));
  for (int64_t n = 0; n < c.n; ++n)
    for (int64_t oh = 0; oh < ho; ++oh)
      for (int64_t ow = 0; ow < wo; ++ow)
        for (int64_t co = 0; co < c.c_out; ++co) {
          const int64_t g = co / og;
          double acc = b ? (*b)[co] : 0.0;
          for (int64_t ci = 0; ci < cg; ++ci)
            for (int64_t i = 0; i < c.k; ++i)
              for (int64_t j = 0; j < c.k; ++j) {
                const int64_t ih = oh * c.stride - c.pad + i, iw = ow * c.stride - c.pad + j;
                if (ih < 0 || ih >= c.h || iw < 0 || iw >= c.w) continue;
                acc += x[((n * c.h + ih) * c.w + iw) * c.c_in + g * cg + ci] *
                       w[((co * cg + ci) * c.k + i) * c.k + j];
              }
          y[((n * ho + oh) * wo + ow) * c.c_out + co] = acc;
        }
  return y;
}

struct ConvGrads {
  Vec dx, dw, db;
};

// The adjoint of conv_ref: every product x * w in the forward sends dy * w to dx and dy * x to dw.
ConvGrads conv_ref_backward(const ConvCase& c, const Vec& dy, const Vec& x, const Vec& w) {
  const int64_t ho = c.h_out(), wo = c.w_out(), cg = c.cg(), og = c.og();
  ConvGrads g{Vec(x.size(), 0.0), Vec(w.size(), 0.0), Vec(static_cast<size_t>(c.c_out), 0.0)};
  for (int64_t n = 0; n < c.n; ++n)
    for (int64_t oh = 0; oh < ho; ++oh)
      for (int64_t ow = 0; ow < wo; ++ow)
        for (int64_t co = 0; co < c.c_out; ++co) {
          const int64_t grp = co / og;
          const double d = dy[((n * ho + oh) * wo + ow) * c.c_out + co];
          g.db[co] += d;
          for (int64_t ci = 0; ci < cg; ++ci)
            for (int64_t i = 0; i < c.k; ++i)
              for (int64_t j = 0; j < c.k; ++j) {
                const int64_t ih = oh * c.stride - c.pad + i, iw = ow * c.stride - c.pad + j;
                if (ih < 0 || ih >= c.h || iw < 0 || iw >= c.w) continue;
                const size_t xi = ((n * c.h + ih) * c.w + iw) * c.c_in + grp * cg + ci;
                const size_t wi = ((co * cg + ci) * c.k + i) * c.k + j;
                g.dx[xi] += d * w[wi];
                g.dw[wi] += d * x[xi];
              }
        }
  return g;
}

void check_conv(const ConvCase& c, Generator& gen) {
  INFO(c.str());
  REQUIRE(c.h_out() > 0);
  REQUIRE(c.w_out() > 0);
  const Conv2dShape s = c.shape();
  const int64_t x_n = c.n * c.h * c.w * c.c_in, w_n = c.c_out * c.cg() * c.k * c.k;
  const int64_t y_n = c.n * c.h_out() * c.w_out() * c.c_out;
  const std::vector<float> x = randn_vec(x_n, gen), w = randn_vec(w_n, gen);
  const std::vector<float> b = randn_vec(c.c_out, gen), dy = randn_vec(y_n, gen);
  const Vec bd = widen(b);
  const double fan_in = static_cast<double>(c.cg() * c.k * c.k + 1);
  const double pixels = static_cast<double>(c.n * c.h_out() * c.w_out());
  const double fan_out = static_cast<double>(c.og() * c.k * c.k);

  // Kernels on poisoned outputs against the reference and its adjoint.
  std::vector<float> y = poisoned(y_n);
  cpu::conv2d_forward(s, x.data(), w.data(), c.bias ? b.data() : nullptr, y.data());
  test::require_close(y, conv_ref(c, widen(x), widen(w), c.bias ? &bd : nullptr), kFwdRtol,
                      sum_atol(fan_in), "conv2d_forward");
  const ConvGrads ref = conv_ref_backward(c, widen(dy), widen(x), widen(w));
  std::vector<float> dx = poisoned(x_n), dw = poisoned(w_n), db = poisoned(c.c_out);
  cpu::conv2d_backward_data(s, dy.data(), w.data(), dx.data());
  test::require_close(dx, ref.dx, kFwdRtol, sum_atol(fan_out), "conv2d_backward_data");
  cpu::conv2d_backward_weight(s, dy.data(), x.data(), dw.data(), c.bias ? db.data() : nullptr);
  test::require_close(dw, ref.dw, kFwdRtol, sum_atol(pixels), "conv2d_backward_weight dw");
  if (c.bias)
    test::require_close(db, ref.db, kFwdRtol, sum_atol(pixels), "conv2d_backward_weight db");

  // The op and its autograd against finite differences of the reference.
  std::vector<OpInput> inputs = {
      {tensor_of(x, {c.n, c.h, c.w, c.c_in}), sum_atol(fan_out), "x"},
      {tensor_of(w, {c.c_out, c.cg(), c.k, c.k}), sum_atol(pixels), "weight"}};
  if (c.bias) inputs.push_back({tensor_of(b, {c.c_out}), sum_atol(pixels), "bias"});
  check_op(
      c.str(),
      [c](const std::vector<Tensor>& t) {
        return conv2d(t[0], t[1], c.bias ? t[2] : Tensor(), c.stride, c.pad, c.groups);
      },
      [c](const Inputs& v) { return conv_ref(c, v[0], v[1], c.bias ? &v[2] : nullptr); }, inputs,
      sum_atol(fan_in), gen);
}

TEST_CASE("conv2d depthwise, same padding, stride 1 and 2", "[ops][conv]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (int64_t k : {3, 5, 7, 9})
    for (int64_t stride : {1, 2})
      for (bool bias : {true, false}) {
        const int64_t c = pick(gen, kOddChannels);
        const int64_t n = bias ? 1 : rand_int(gen, 2, 3);
        const int64_t h = rand_int(gen, 2, 5) * 2 + 1, w = rand_int(gen, 3, 10);
        check_conv({n, h, w, c, c, k, stride, (k - 1) / 2, c, bias}, gen);
      }
}

// Channel counts of whole 16-channel vectors and a remainder, rows wider than the CPU kernels'
// 8-pixel register blocks, kernels up to 11 (the backward-weight blocking keeps 9; the forward has
// loops for k 3, 5, 7 and 9 at stride 1, and a general one), no padding and padding beyond the
// kernel (backward-data's flipped-forward form does not apply).
TEST_CASE("conv2d depthwise: channel vectors, wide rows, any padding (blocked CPU loops)",
          "[ops][conv]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (int64_t k : {1, 3, 5, 7, 9, 11})
    for (int64_t stride : {1, 2})
      for (int64_t pad : {(k - 1) / 2, int64_t{0}, k}) {
        const int64_t c = pick(gen, {16, 35, 48});
        const int64_t h = rand_int(gen, k, k + 4), w = rand_int(gen, std::max<int64_t>(k, 9), 20);
        check_conv({2, h, w, c, c, k, stride, pad, c, stride == 1}, gen);
      }
}

TEST_CASE("conv2d patch embedding: kernel = stride, no padding", "[ops][conv]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (int64_t p : {2, 4})
    for (bool bias : {true, false}) {
      const int64_t n = rand_int(gen, 1, 3);
      // Sizes that are not multiples of p: the remainder is dropped.
      const int64_t h = p * rand_int(gen, 2, 4) + rand_int(gen, 0, p - 1);
      const int64_t w = p * rand_int(gen, 2, 4) + 1;
      check_conv({n, h, w, 3, pick(gen, {5, 7, 13}), p, p, 0, 1, bias}, gen);
    }
}

TEST_CASE("conv2d pointwise 1x1", "[ops][conv]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (int64_t stride : {1, 2})
    for (bool bias : {true, false}) {
      const int64_t n = rand_int(gen, 1, 3);
      const int64_t c_in = pick(gen, kOddChannels), c_out = pick(gen, kOddChannels);
      check_conv({n, rand_int(gen, 1, 9), rand_int(gen, 2, 9), c_in, c_out, 1, stride, 0, 1, bias},
                 gen);
    }
  // 1083 pixels: 16 whole 64-row GEMM blocks and a tail, the CPU GEMM's form with B packed once.
  for (bool bias : {true, false})
    check_conv({3, 19, 19, pick(gen, kOddChannels), pick(gen, kOddChannels), 1, 1, 0, 1, bias},
               gen);
}

TEST_CASE("conv2d general: groups 1 and 2, k 3, pad 1, stride 1 and 2", "[ops][conv]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (int64_t groups : {1, 2})
    for (int64_t stride : {1, 2})
      for (bool bias : {true, false}) {
        const int64_t n = rand_int(gen, 1, 2);
        const int64_t c_in = groups * pick(gen, {1, 3, 5}), c_out = groups * pick(gen, {1, 3, 7});
        check_conv(
            {n, rand_int(gen, 3, 8), rand_int(gen, 3, 8), c_in, c_out, 3, stride, 1, groups, bias},
            gen);
      }
  // A depthwise convolution with a channel multiplier (groups == c_in, c_out = 2 c_in), a
  // single-channel convolution, and a kernel that covers the whole padded input.
  check_conv({2, 6, 7, 3, 6, 3, 1, 1, 3, true}, gen);
  check_conv({1, 5, 6, 1, 1, 3, 2, 1, 1, false}, gen);
  check_conv({2, 3, 4, 5, 3, 5, 1, 1, 1, true}, gen);
}

TEST_CASE("conv2d: partial requires_grad and strided inputs", "[ops][conv]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const ConvCase c{2, 5, 6, 3, 5, 3, 1, 1, 1, true};
  Tensor x = Tensor::randn({c.n, c.h, c.w, c.c_in}, gen);
  Tensor w = Tensor::randn({c.c_out, c.c_in, c.k, c.k}, gen);
  Tensor b = Tensor::randn({c.c_out}, gen);
  const Tensor r = Tensor::randn({c.n, c.h_out(), c.w_out(), c.c_out}, gen);
  const ConvGrads ref = conv_ref_backward(c, to_double(r), to_double(x), to_double(w));

  // Only the bias requires grad: the weight gradient is skipped, the bias one is right.
  b.requires_grad_();
  conv2d(x, w, b, 1, 1).backward(r);
  REQUIRE_FALSE(w.grad().defined());
  test::require_close(b.grad().to_vector(), ref.db, kFwdRtol, sum_atol(60), "db only");
  // Only the input requires grad.
  Tensor xi = x.detach().clone();
  xi.requires_grad_();
  conv2d(xi, w, Tensor(), 1, 1).backward(r);
  test::require_close(xi.grad().to_vector(), ref.dx, kFwdRtol, sum_atol(45), "dx only");
  // Without any input requiring grad no node is recorded.
  REQUIRE(conv2d(x, w, Tensor(), 1, 1).grad_fn() == nullptr);

  // A channel slice of a wider NHWC tensor (a strided view) as input; its gradient lands in the
  // sliced channels only.
  Tensor wide = Tensor::randn({c.n, c.h, c.w, 7}, gen);
  wide.requires_grad_();
  const Tensor view = wide.slice(3, 2, 5);
  REQUIRE_FALSE(view.is_contiguous());
  const Vec xv = to_double(view.contiguous());
  const Tensor y = conv2d(view, w, b, 1, 1);
  const Vec bd = to_double(b);
  test::require_close(y.to_vector(), conv_ref(c, xv, to_double(w), &bd), kFwdRtol, sum_atol(28),
                      "strided input forward");
  y.backward(r);
  const ConvGrads ref_view = conv_ref_backward(c, to_double(r), xv, to_double(w));
  const std::vector<float> gw = wide.grad().to_vector();
  for (int64_t p = 0; p < c.n * c.h * c.w; ++p)
    for (int64_t ch = 0; ch < 7; ++ch) {
      const float got = gw[p * 7 + ch];
      if (ch < 2 || ch >= 5) {
        REQUIRE(got == 0.0f);
      } else {
        const double e = ref_view.dx[p * 3 + ch - 2];
        REQUIRE(std::abs(got - e) <= kFwdRtol * std::abs(e) + sum_atol(45));
      }
    }
}

TEST_CASE("conv2d: bad shapes throw", "[ops][conv]") {
  const Tensor x = Tensor::zeros({1, 5, 5, 6});
  check_error([&] { conv2d(x, Tensor::zeros({4, 5, 3, 3}), Tensor()); }, "c_in mismatch");
  check_error(
      [&] {
        conv2d(x, Tensor::zeros({4, 6, 3, 3}), Tensor(), 1, 1, 2);
      },
      "weight not matching groups");
  check_error(
      [&] {
        conv2d(x, Tensor::zeros({4, 2, 3, 3}), Tensor(), 1, 1, 4);
      },
      "c_in not divisible by groups");
  check_error(
      [&] {
        conv2d(x, Tensor::zeros({5, 2, 3, 3}), Tensor(), 1, 1, 3);
      },
      "c_out not divisible by groups");
  check_error([&] { conv2d(x, Tensor::zeros({4, 6, 7, 7}), Tensor()); }, "kernel too large");
  // (h + 2 pad - k) / stride rounds toward zero: a kernel 1 or 2 larger than the padded input
  // must still be refused when the stride is 2 (PyTorch: "Kernel size can't be greater than
  // actual input size").
  check_error(
      [&] {
        conv2d(x, Tensor::zeros({4, 6, 6, 6}), Tensor(), 2);
      },
      "kernel 6 > input 5, stride 2");
  check_error(
      [&] {
        conv2d(x, Tensor::zeros({4, 6, 8, 8}), Tensor(), 2, 1);
      },
      "kernel 8 > padded input 7, stride 2");
  check_error([&] { conv2d(x, Tensor::zeros({4, 6, 3, 3}), Tensor::zeros({5})); }, "bias size");
  check_error([&] { conv2d(x, Tensor::zeros({4, 6, 3, 3}), Tensor::zeros({4, 1})); }, "bias rank");
  check_error([&] { conv2d(x, Tensor::zeros({4, 6, 3, 3}), Tensor(), 0); }, "stride 0");
  check_error([&] { conv2d(x, Tensor::zeros({4, 6, 3, 3}), Tensor(), 1, -1); }, "negative padding");
  check_error([&] { conv2d(x, Tensor::zeros({4, 6, 3, 3}), Tensor(), 1, 0, 0); }, "groups 0");
  check_error(
      [&] {
        conv2d(Tensor::zeros({5, 5, 6}), Tensor::zeros({4, 6, 3, 3}), Tensor());
      },
      "3-d input");
  check_error([&] { conv2d(x, Tensor::zeros({4, 6, 9}), Tensor()); }, "3-d weight");
  check_error(
      [&] {
        conv2d(x.to(DType::i32), Tensor::zeros({4, 6, 3, 3}), Tensor());
      },
      "i32 input");
  if (!supports_bf16(Device::cpu())) {  // bf16 activations need AVX512-BF16 on the CPU
    check_error(
        [&] {
          conv2d(x.to(DType::bf16), Tensor::zeros({4, 6, 3, 3}), Tensor());
        },
        "bf16 input on a CPU without bf16");
  }
  check_error([&] { conv2d(x, Tensor(), Tensor()); }, "undefined weight");
}

// --- batch_norm --------------------------------------------------------------------------------

struct BnStats {
  Vec mean, var;  // biased variance
};

BnStats bn_stats(const Vec& x, int64_t rows, int64_t c) {
  BnStats s{Vec(c, 0.0), Vec(c, 0.0)};
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < c; ++j) s.mean[j] += x[r * c + j];
  for (int64_t j = 0; j < c; ++j) s.mean[j] /= static_cast<double>(rows);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < c; ++j) {
      const double d = x[r * c + j] - s.mean[j];
      s.var[j] += d * d;
    }
  for (int64_t j = 0; j < c; ++j) s.var[j] /= static_cast<double>(rows);
  return s;
}

// y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis; gamma/beta null: no affine.
Vec bn_apply(const Vec& x, int64_t c, const Vec& mean, const Vec& var, const Vec* gamma,
             const Vec* beta, double eps) {
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const size_t j = i % static_cast<size_t>(c);
    const double xhat = (x[i] - mean[j]) / std::sqrt(var[j] + eps);
    y[i] = xhat * (gamma ? (*gamma)[j] : 1.0) + (beta ? (*beta)[j] : 0.0);
  }
  return y;
}

Vec bn_train_ref(const Vec& x, int64_t c, const Vec* gamma, const Vec* beta, double eps) {
  const BnStats s = bn_stats(x, static_cast<int64_t>(x.size()) / c, c);
  return bn_apply(x, c, s.mean, s.var, gamma, beta, eps);
}

struct BnCase {
  Shape shape;
  bool affine;
  std::string str() const {
    return "batch_norm x " + shape_str(shape) + (affine ? " affine" : " no affine");
  }
};

BnCase random_bn_case(Generator& gen, bool affine, bool four_d) {
  const int64_t c = pick(gen, kOddChannels);
  if (!four_d) return {{rand_int(gen, 2, 9), c}, affine};
  return {{rand_int(gen, 1, 3), rand_int(gen, 1, 4), rand_int(gen, 2, 5), c}, affine};
}

TEST_CASE("batch_norm training: forward, running statistics, gradients", "[ops][bn]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const double eps = 1e-5;
  for (int rep = 0; rep < 6; ++rep) {
    const BnCase bc = random_bn_case(gen, rep % 2 == 0, rep < 4);
    INFO(bc.str());
    const int64_t c = bc.shape.back(), numel = shape_numel(bc.shape), rows = numel / c;
    // Per-channel offsets and scales far from 0 and 1, so the normalisation matters. Each
    // channel's noise is standardised first: with few rows, two nearly equal values would give a
    // variance near eps, where normalising f32 inputs is ill-conditioned for any implementation.
    const Vec noise = widen(randn_vec(numel, gen));
    const BnStats ns = bn_stats(noise, rows, c);
    std::vector<float> x(static_cast<size_t>(numel));
    const std::vector<float> shift = randn_vec(c, gen, 3.0f);
    std::vector<float> spread(static_cast<size_t>(c));
    for (float& v : spread) v = 1.0f + 2.0f * gen.uniform();
    for (int64_t i = 0; i < numel; ++i) {
      const int64_t j = i % c;
      x[i] =
          static_cast<float>(shift[j] + spread[j] * (noise[i] - ns.mean[j]) / std::sqrt(ns.var[j]));
    }
    const std::vector<float> gamma = randn_vec(c, gen, 0.5f, 1.0f), beta = randn_vec(c, gen);
    const std::vector<float> rm0 = randn_vec(c, gen);
    std::vector<float> rv0 = randn_vec(c, gen);
    for (float& v : rv0) v = 0.5f + std::abs(v);

    // Op: forward, running statistics (momentum 0.1, unbiased variance), gradients.
    const Tensor xt = tensor_of(x, bc.shape);
    Tensor rm = tensor_of(rm0, {c}), rv = tensor_of(rv0, {c});
    const Tensor gt = bc.affine ? tensor_of(gamma, {c}) : Tensor();
    const Tensor bt = bc.affine ? tensor_of(beta, {c}) : Tensor();
    const Tensor y = batch_norm(xt, rm, rv, gt, bt, true);
    const Vec xd = widen(x), gd = widen(gamma), bd = widen(beta);
    const Vec yref = bn_train_ref(xd, c, bc.affine ? &gd : nullptr, bc.affine ? &bd : nullptr, eps);
    test::require_close(y.to_vector(), yref, kFwdRtol, 1e-5, "forward");
    const BnStats st = bn_stats(xd, rows, c);
    Vec rm_ref(c), rv_ref(c);
    for (int64_t j = 0; j < c; ++j) {
      rm_ref[j] = 0.9 * rm0[j] + 0.1 * st.mean[j];
      rv_ref[j] = 0.9 * rv0[j] + 0.1 * st.var[j] * rows / (rows - 1.0);
    }
    test::require_close(rm.to_vector(), rm_ref, kFwdRtol, 1e-6, "running_mean");
    test::require_close(rv.to_vector(), rv_ref, kFwdRtol, 1e-6, "running_var");

    const OpInput x_in{xt, sum_atol(rows), "x"};
    const std::vector<OpInput> inputs = bc.affine
                                            ? std::vector<OpInput>{x_in,
                                                                   {gt, sum_atol(rows), "gamma"},
                                                                   {bt, sum_atol(rows), "beta"}}
                                            : std::vector<OpInput>{x_in};
    const bool affine = bc.affine;
    check_op(
        bc.str() + " training",
        [c, affine](const std::vector<Tensor>& t) {
          return batch_norm(t[0], Tensor::zeros({c}), Tensor::ones({c}), affine ? t[1] : Tensor(),
                            affine ? t[2] : Tensor(), true);
        },
        [c, affine, eps](const Inputs& v) {
          return bn_train_ref(v[0], c, affine ? &v[1] : nullptr, affine ? &v[2] : nullptr, eps);
        },
        inputs, 1e-5, gen);

    // Without running statistics: same output, nothing to update.
    const Tensor y2 = batch_norm(xt, Tensor(), Tensor(), gt, bt, true);
    test::require_close(y2.to_vector(), yref, kFwdRtol, 1e-5, "forward without running stats");

    // Kernels on poisoned outputs: forward, saved statistics, and the backward against full
    // finite differences of the reference.
    const std::vector<float> ones(c, 1.0f), zeros(c, 0.0f);
    const float* g = bc.affine ? gamma.data() : ones.data();
    const float* b = bc.affine ? beta.data() : zeros.data();
    std::vector<float> yk = poisoned(numel), save_mean = poisoned(c), save_invstd = poisoned(c);
    std::vector<float> rmk = rm0, rvk = rv0;
    cpu::batchnorm_forward_train(x.data(), rows, c, g, b, 1e-5f, 0.1f, rmk.data(), rvk.data(),
                                 yk.data(), save_mean.data(), save_invstd.data());
    test::require_close(yk, yref, kFwdRtol, 1e-5, "batchnorm_forward_train");
    test::require_close(save_mean, st.mean, kFwdRtol, 1e-6, "save_mean");
    Vec invstd_ref(c);
    for (int64_t j = 0; j < c; ++j) invstd_ref[j] = 1.0 / std::sqrt(st.var[j] + eps);
    test::require_close(save_invstd, invstd_ref, kFwdRtol, 1e-6, "save_invstd");
    test::require_close(rmk, rm_ref, kFwdRtol, 1e-6, "kernel running_mean");
    test::require_close(rvk, rv_ref, kFwdRtol, 1e-6, "kernel running_var");

    const std::vector<float> dy = randn_vec(numel, gen);
    std::vector<float> dx = poisoned(numel), dg = poisoned(c), db = poisoned(c);
    cpu::batchnorm_backward(dy.data(), x.data(), rows, c, g, save_mean.data(), save_invstd.data(),
                            true, dx.data(), dg.data(), db.data());
    const RefFn ref = [c, eps](const Inputs& v) {
      return bn_train_ref(v[0], c, &v[1], &v[2], eps);
    };
    const Inputs vals = {xd, widen(std::vector<float>(g, g + c)),
                         widen(std::vector<float>(b, b + c))};
    const Vec dyd = widen(dy);
    test::require_close(dx, fd_grad_full(ref, vals, 0, dyd), kGradRtol, sum_atol(rows),
                        "batchnorm_backward dx");
    test::require_close(dg, fd_grad_full(ref, vals, 1, dyd), kGradRtol, sum_atol(rows),
                        "batchnorm_backward dgamma");
    test::require_close(db, fd_grad_full(ref, vals, 2, dyd), kGradRtol, sum_atol(rows),
                        "batchnorm_backward dbeta");
  }
}

TEST_CASE("batch_norm evaluation: running statistics, constant-statistics gradient", "[ops][bn]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const double eps = 1e-5;
  for (int rep = 0; rep < 4; ++rep) {
    const BnCase bc = random_bn_case(gen, rep % 2 == 0, rep < 2);
    INFO(bc.str());
    const int64_t c = bc.shape.back(), numel = shape_numel(bc.shape), rows = numel / c;
    const std::vector<float> x = randn_vec(numel, gen, 2.0f, 1.0f);
    const std::vector<float> gamma = randn_vec(c, gen, 0.5f, 1.0f), beta = randn_vec(c, gen);
    const std::vector<float> rm0 = randn_vec(c, gen);
    std::vector<float> rv0 = randn_vec(c, gen);
    for (float& v : rv0) v = 0.5f + std::abs(v);
    const Vec rmd = widen(rm0), rvd = widen(rv0);

    Tensor rm = tensor_of(rm0, {c}), rv = tensor_of(rv0, {c});
    const bool affine = bc.affine;
    const OpInput x_in{tensor_of(x, bc.shape), sum_atol(1), "x"};
    const std::vector<OpInput> inputs =
        affine ? std::vector<OpInput>{x_in,
                                      {tensor_of(gamma, {c}), sum_atol(rows), "gamma"},
                                      {tensor_of(beta, {c}), sum_atol(rows), "beta"}}
               : std::vector<OpInput>{x_in};
    check_op(
        bc.str() + " evaluation",
        [&rm, &rv, affine](const std::vector<Tensor>& t) {
          return batch_norm(t[0], rm, rv, affine ? t[1] : Tensor(), affine ? t[2] : Tensor(),
                            false);
        },
        [c, affine, eps, rmd, rvd](const Inputs& v) {
          return bn_apply(v[0], c, rmd, rvd, affine ? &v[1] : nullptr, affine ? &v[2] : nullptr,
                          eps);
        },
        inputs, 1e-5, gen);
    // Evaluation leaves the running statistics alone.
    REQUIRE(rm.to_vector() == rm0);
    REQUIRE(rv.to_vector() == rv0);

    // Kernels on poisoned outputs.
    const std::vector<float> ones(c, 1.0f), zeros(c, 0.0f);
    const float* g = affine ? gamma.data() : ones.data();
    const float* b = affine ? beta.data() : zeros.data();
    const Vec gd = widen(std::vector<float>(g, g + c)), bd = widen(std::vector<float>(b, b + c));
    std::vector<float> y = poisoned(numel);
    cpu::batchnorm_forward_eval(x.data(), rows, c, g, b, rm0.data(), rv0.data(), 1e-5f, y.data());
    test::require_close(y, bn_apply(widen(x), c, rmd, rvd, &gd, &bd, eps), kFwdRtol, 1e-5,
                        "batchnorm_forward_eval");
    std::vector<float> invstd(c);
    for (int64_t j = 0; j < c; ++j) invstd[j] = static_cast<float>(1.0 / std::sqrt(rvd[j] + eps));
    const std::vector<float> dy = randn_vec(numel, gen);
    std::vector<float> dx = poisoned(numel), dg = poisoned(c), db = poisoned(c);
    cpu::batchnorm_backward(dy.data(), x.data(), rows, c, g, rm0.data(), invstd.data(), false,
                            dx.data(), dg.data(), db.data());
    const RefFn ref = [c, eps, rmd, rvd](const Inputs& v) {
      return bn_apply(v[0], c, rmd, rvd, &v[1], &v[2], eps);
    };
    const Inputs vals = {widen(x), gd, bd};
    const Vec dyd = widen(dy);
    test::require_close(dx, fd_grad_full(ref, vals, 0, dyd), kGradRtol, 1e-5,
                        "batchnorm_backward eval dx");
    test::require_close(dg, fd_grad_full(ref, vals, 1, dyd), kGradRtol, sum_atol(rows),
                        "batchnorm_backward eval dgamma");
    test::require_close(db, fd_grad_full(ref, vals, 2, dyd), kGradRtol, sum_atol(rows),
                        "batchnorm_backward eval dbeta");
  }
}

TEST_CASE("batch_norm: bad inputs throw", "[ops][bn]") {
  const Tensor x = Tensor::randn({2, 3, 3, 5});
  const Tensor rm = Tensor::zeros({5}), rv = Tensor::ones({5});
  check_error([&] { batch_norm(x, rm, rv, Tensor::ones({4}), Tensor(), true); }, "weight size");
  check_error([&] { batch_norm(x, rm, rv, Tensor(), Tensor::zeros({6}), true); }, "bias size");
  check_error([&] { batch_norm(x, Tensor::zeros({3}), rv, Tensor(), Tensor(), true); },
              "running_mean size");
  check_error([&] { batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), false); },
              "evaluation without running statistics");
  check_error(
      [&] {
        batch_norm(Tensor::randn({1, 1, 1, 5}), rm, rv, Tensor(), Tensor(), true);
      },
      "one value per channel in training");
  check_error([&] { batch_norm(Tensor::randn({5}), rm, rv, Tensor(), Tensor(), true); },
              "1-d input");
  // An empty batch, also in evaluation (the same error on every device).
  check_error(
      [&] {
        batch_norm(Tensor::zeros({0, 3, 3, 5}), rm, rv, Tensor(), Tensor(), false);
      },
      "empty input in evaluation");
  check_error(
      [&] {
        gelu_batch_norm(Tensor::zeros({0, 3, 3, 5}), rm, rv, Tensor(), Tensor(), false);
      },
      "gelu_batch_norm: empty input in evaluation");
  REQUIRE_NOTHROW(batch_norm(Tensor::randn({1, 1, 1, 5}), rm, rv, Tensor(), Tensor(), false));
}

TEST_CASE("gelu_batch_norm equals gelu, batch_norm and add, bit for bit", "[ops][bn]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  // An odd channel count, and ConvMixer's 256 (whole vectors in the CPU kernels' loops).
  for (const Shape& shape : {Shape{3, 4, 5, 7}, Shape{2, 8, 8, 256}}) {
    const int64_t c = shape.back();
    for (const bool training : {true, false}) {
      for (const bool with_residual : {true, false}) {
        for (const bool affine : {true, false}) {
          INFO("shape " << shape_str(shape) << ", training " << training << ", residual "
                        << with_residual << ", affine " << affine);
          const Tensor h0 = Tensor::randn(shape, gen), r0 = Tensor::randn(shape, gen);
          const Tensor w0 = Tensor::randn({c}, gen), b0 = Tensor::randn({c}, gen);
          const Tensor rm0 = Tensor::randn({c}, gen), rv0 = Tensor::uniform({c}, 0.5f, 2.0f, gen);
          const Tensor upstream = Tensor::randn(shape, gen);
          struct Run {
            Tensor h, r, w, b, rm, rv, y;
          };
          auto run = [&](bool fused) {
            Run t{h0.clone().requires_grad_(),
                  r0.clone().requires_grad_(),
                  affine ? w0.clone().requires_grad_() : Tensor(),
                  affine ? b0.clone().requires_grad_() : Tensor(),
                  rm0.clone(),
                  rv0.clone(),
                  Tensor()};
            const Tensor res = with_residual ? t.r : Tensor();
            if (fused) {
              t.y = gelu_batch_norm(t.h, t.rm, t.rv, t.w, t.b, training, 0.1f, 1e-5f, res);
            } else {
              t.y = batch_norm(gelu(t.h), t.rm, t.rv, t.w, t.b, training, 0.1f, 1e-5f);
              if (with_residual) t.y = add(t.y, res);
            }
            sum(mul(t.y, upstream)).backward();
            return t;
          };
          const Run fused = run(true), plain = run(false);
          CHECK(fused.y.to_vector() == plain.y.to_vector());
          CHECK(fused.rm.to_vector() == plain.rm.to_vector());
          CHECK(fused.rv.to_vector() == plain.rv.to_vector());
          CHECK(fused.h.grad().to_vector() == plain.h.grad().to_vector());
          if (with_residual) CHECK(fused.r.grad().to_vector() == plain.r.grad().to_vector());
          if (affine) {
            CHECK(fused.w.grad().to_vector() == plain.w.grad().to_vector());
            CHECK(fused.b.grad().to_vector() == plain.b.grad().to_vector());
          }
        }
      }
    }
  }
  const Tensor h = Tensor::randn({2, 3, 3, 5}), rm = Tensor::zeros({5}), rv = Tensor::ones({5});
  check_error(
      [&] {
        gelu_batch_norm(h, rm, rv, Tensor(), Tensor(), true, 0.1f, 1e-5f, Tensor::randn({5}));
      },
      "residual of another shape");
  check_error([&] { gelu_batch_norm(h, Tensor::zeros({3}), rv, Tensor(), Tensor(), true); },
              "running_mean size");
}

// --- pooling -----------------------------------------------------------------------------------

// Distinct values 0.01 apart in shuffled order: no ties, and finite differences never change the
// arg max. `negative` shifts them all below zero, where a zero-padded window would win.
std::vector<float> distinct_values(int64_t n, Generator& gen, bool negative) {
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  for (int64_t i = n - 1; i > 0; --i) std::swap(perm[i], perm[gen.below(i + 1)]);
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    v[i] = static_cast<float>((negative ? perm[i] - n : perm[i] - n / 2) * 0.01 - 0.005);
  return v;
}

// Max over the in-bounds part of each window; arg max as the flat input pixel index.
Vec max_pool_ref(const Pool2dShape& s, const Vec& x, std::vector<int32_t>* argmax) {
  const int64_t ho = s.h_out(), wo = s.w_out();
  Vec y(static_cast<size_t>(s.n * ho * wo * s.c));
  if (argmax) argmax->assign(y.size(), -1);
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t oh = 0; oh < ho; ++oh)
      for (int64_t ow = 0; ow < wo; ++ow)
        for (int64_t c = 0; c < s.c; ++c) {
          double best = -std::numeric_limits<double>::infinity();
          int64_t best_at = -1;
          for (int64_t i = 0; i < s.k; ++i)
            for (int64_t j = 0; j < s.k; ++j) {
              const int64_t ih = oh * s.stride - s.pad + i, iw = ow * s.stride - s.pad + j;
              if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) continue;
              const int64_t pixel = (n * s.h + ih) * s.w + iw;
              if (x[pixel * s.c + c] > best) {
                best = x[pixel * s.c + c];
                best_at = ih * s.w + iw;  // within the image
              }
            }
          const size_t o = ((n * ho + oh) * wo + ow) * s.c + c;
          y[o] = best;
          if (argmax) (*argmax)[o] = static_cast<int32_t>(best_at);
        }
  return y;
}

TEST_CASE("max_pool2d: k2 s2, k3 s2 p1, k3 s1 p1", "[ops][pool]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  struct Cfg {
    int64_t k, stride, pad;
  };
  for (const Cfg cfg : {Cfg{2, 2, 0}, Cfg{3, 2, 1}, Cfg{3, 1, 1}})
    for (bool negative : {false, true}) {
      Pool2dShape s;
      s.n = rand_int(gen, 1, 3), s.h = rand_int(gen, 2, 5) * 2 + 1, s.w = rand_int(gen, 3, 9);
      s.c = pick(gen, kOddChannels), s.k = cfg.k, s.stride = cfg.stride, s.pad = cfg.pad;
      const std::string what = "max_pool2d x [" + std::to_string(s.n) + ", " + std::to_string(s.h) +
                               ", " + std::to_string(s.w) + ", " + std::to_string(s.c) + "] k " +
                               std::to_string(s.k) + " stride " + std::to_string(s.stride) +
                               " pad " + std::to_string(s.pad) + (negative ? " negative" : "");
      INFO(what);
      const int64_t numel = s.n * s.h * s.w * s.c, out_n = s.n * s.h_out() * s.w_out() * s.c;
      const std::vector<float> x = distinct_values(numel, gen, negative);
      std::vector<int32_t> argmax_ref;
      const Vec yref = max_pool_ref(s, widen(x), &argmax_ref);
      if (negative)
        for (double v : yref) REQUIRE(v < 0.0);

      std::vector<float> y = poisoned(out_n);
      std::vector<int32_t> argmax(static_cast<size_t>(out_n), -7);
      cpu::max_pool2d_forward(s, x.data(), y.data(), argmax.data());
      test::require_close(y, yref, 0.0, 0.0, what + " kernel forward");
      REQUIRE(argmax == argmax_ref);
      const std::vector<float> dy = randn_vec(out_n, gen);
      std::vector<float> dx = poisoned(numel);
      cpu::max_pool2d_backward(s, dy.data(), argmax.data(), dx.data());
      const RefFn ref = [s](const Inputs& v) { return max_pool_ref(s, v[0], nullptr); };
      test::require_close(dx, fd_grad_full(ref, {widen(x)}, 0, widen(dy)), kGradRtol, 1e-5,
                          what + " kernel backward");

      check_op(
          what,
          [cfg](const std::vector<Tensor>& t) {
            return max_pool2d(t[0], cfg.k, cfg.stride, cfg.pad);
          },
          ref, {{tensor_of(x, {s.n, s.h, s.w, s.c}), 1e-5, "x"}}, 0.0, gen);
    }
}

TEST_CASE("max_pool2d: ties pick the first maximum, the gradient goes there only", "[ops][pool]") {
  // All-equal input: each window's arg max is its first in-bounds pixel (row-major).
  Pool2dShape s;
  s.n = 1, s.h = 5, s.w = 5, s.c = 2, s.k = 3, s.stride = 2, s.pad = 1;
  Tensor x = Tensor::full({1, 5, 5, 2}, -3.0);
  x.requires_grad_();
  const Tensor y = max_pool2d(x, 3, 2, 1);
  REQUIRE(y.shape() == Shape{1, 3, 3, 2});
  for (float v : y.to_vector()) REQUIRE(v == -3.0f);
  y.backward(Tensor::ones(y.shape()));
  const std::vector<float> g = x.grad().to_vector();
  for (int64_t ih = 0; ih < 5; ++ih)
    for (int64_t iw = 0; iw < 5; ++iw)
      for (int64_t c = 0; c < 2; ++c) {
        // Window (oh, ow) starts at max(2 oh - 1, 0): pixels 0, 1, 3 in each axis.
        const bool first = (ih == 0 || ih == 1 || ih == 3) && (iw == 0 || iw == 1 || iw == 3);
        INFO("pixel " << ih << ", " << iw);
        REQUIRE(g[(ih * 5 + iw) * 2 + c] == (first ? 1.0f : 0.0f));
      }
}

TEST_CASE("max_pool2d: bad arguments throw", "[ops][pool]") {
  const Tensor x = Tensor::randn({1, 4, 4, 3});
  check_error([&] { max_pool2d(x, 3, 2, 2); }, "padding above half the kernel");
  check_error([&] { max_pool2d(x, 5, 1); }, "window larger than input");
  check_error([&] { max_pool2d(x, 5, 2); }, "window 5 > input 4, stride 2");
  check_error([&] { max_pool2d(x, 2, 0); }, "stride 0");
  check_error([&] { max_pool2d(x, 0, 1); }, "kernel 0");
  check_error([&] { max_pool2d(Tensor::randn({4, 4, 3}), 2, 2); }, "3-d input");
}

TEST_CASE("global_avg_pool: forward and gradients", "[ops][pool]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (int rep = 0; rep < 4; ++rep) {
    const int64_t n = rand_int(gen, 1, 3), h = rand_int(gen, 1, 7), w = rand_int(gen, 1, 6) * 2 + 1;
    const int64_t c = pick(gen, kOddChannels), hw = h * w;
    INFO("global_avg_pool x [" << n << ", " << h << ", " << w << ", " << c << "]");
    const std::vector<float> x = randn_vec(n * hw * c, gen, 1.0f, 0.5f);
    const RefFn ref = [n, hw, c](const Inputs& v) {
      Vec y(static_cast<size_t>(n * c), 0.0);
      for (int64_t b = 0; b < n; ++b)
        for (int64_t p = 0; p < hw; ++p)
          for (int64_t j = 0; j < c; ++j) y[b * c + j] += v[0][(b * hw + p) * c + j];
      for (double& e : y) e /= static_cast<double>(hw);
      return y;
    };
    const Tensor out = global_avg_pool(tensor_of(x, {n, h, w, c}));
    REQUIRE(out.shape() == Shape{n, c});
    check_op(
        "global_avg_pool", [](const std::vector<Tensor>& t) { return global_avg_pool(t[0]); }, ref,
        {{tensor_of(x, {n, h, w, c}), 1e-6, "x"}}, 1e-6, gen);

    std::vector<float> y = poisoned(n * c);
    cpu::global_avg_pool_forward(x.data(), n, hw, c, y.data());
    test::require_close(y, ref({widen(x)}), kFwdRtol, 1e-6, "global_avg_pool_forward");
    const std::vector<float> dy = randn_vec(n * c, gen);
    std::vector<float> dx = poisoned(n * hw * c);
    cpu::global_avg_pool_backward(dy.data(), n, hw, c, dx.data());
    test::require_close(dx, fd_grad_full(ref, {widen(x)}, 0, widen(dy)), kGradRtol, 1e-6,
                        "global_avg_pool_backward");
  }
  check_error([] { global_avg_pool(Tensor::randn({2, 3, 4})); }, "3-d input");
}

// --- linear ------------------------------------------------------------------------------------

// y[i, o] = b[o] + sum_k x[i, k] w[o, k]
Vec linear_ref(const Vec& x, const Vec& w, const Vec* b, int64_t n, int64_t in, int64_t out) {
  Vec y(static_cast<size_t>(n * out));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double acc = b ? (*b)[o] : 0.0;
      for (int64_t k = 0; k < in; ++k) acc += x[i * in + k] * w[o * in + k];
      y[i * out + o] = acc;
    }
  return y;
}

// Empty sums (GEMMs with K = 0): no input features give the bias (or zeros) and the bias's
// gradient is the upstream gradient's column sums; an empty batch gives zero weight gradients.
TEST_CASE("linear with no input features or an empty batch: empty sums", "[ops][linear]") {
  Generator gen(test::fresh_seed());
  const Tensor x = Tensor::zeros({3, 0}), w = Tensor::zeros({4, 0});
  Tensor b = Tensor::randn({4}, gen);
  b.requires_grad_();
  const Tensor y = linear(x, w, b);
  REQUIRE(y.shape() == Shape{3, 4});
  const std::vector<float> got = y.to_vector(), bias = b.to_vector();
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 4; ++j) CHECK(got[i * 4 + j] == bias[j]);
  CHECK(linear(x, w, Tensor()).to_vector() == std::vector<float>(12, 0.0f));
  sum(y).backward();
  CHECK(b.grad().to_vector() == std::vector<float>(4, 3.0f));
  // An empty batch: the weight's gradient is a sum over no rows (oneDNN 2.6 divided by zero
  // making that GEMM: the process died of SIGFPE).
  Tensor w2 = Tensor::zeros({3, 4});
  w2.requires_grad_();
  sum(linear(Tensor::zeros({0, 4}), w2, Tensor())).backward();
  CHECK(w2.grad().to_vector() == std::vector<float>(12, 0.0f));
}

TEST_CASE("linear: forward and gradients", "[ops][linear]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (int64_t n : {1, 5})
    for (bool bias : {true, false}) {
      const int64_t in = pick(gen, {1, 3, 13, 37}), out = pick(gen, {1, 5, 7});
      const std::string what = "linear [" + std::to_string(n) + ", " + std::to_string(in) +
                               "] -> " + std::to_string(out) + (bias ? " bias" : " no bias");
      std::vector<OpInput> inputs = {{Tensor::randn({n, in}, gen), sum_atol(out), "x"},
                                     {Tensor::randn({out, in}, gen), sum_atol(n), "weight"}};
      if (bias) inputs.push_back({Tensor::randn({out}, gen), sum_atol(n), "bias"});
      check_op(
          what,
          [bias](const std::vector<Tensor>& t) {
            return linear(t[0], t[1], bias ? t[2] : Tensor());
          },
          [n, in, out, bias](const Inputs& v) {
            return linear_ref(v[0], v[1], bias ? &v[2] : nullptr, n, in, out);
          },
          inputs, sum_atol(in + 1), gen);
    }
  const Tensor x = Tensor::zeros({2, 3});
  check_error([&] { linear(x, Tensor::zeros({4, 5}), Tensor()); }, "in mismatch");
  check_error([&] { linear(x, Tensor::zeros({4, 3}), Tensor::zeros({3})); }, "bias size");
  check_error(
      [&] {
        linear(Tensor::zeros({2, 1, 3}), Tensor::zeros({4, 3}), Tensor());
      },
      "3-d input");
  check_error([&] { linear(x, Tensor::zeros({3}), Tensor()); }, "1-d weight");
}

// --- cross_entropy -----------------------------------------------------------------------------

// PyTorch: the target is t = (1 - eps) one_hot(y) + eps / classes, loss_i = -sum_c t_c log p_c,
// averaged over the batch; log p_c computed stably with the row maximum subtracted.
Vec cross_entropy_ref(const Vec& z, const std::vector<int64_t>& labels, int64_t classes,
                      double eps) {
  const int64_t n = static_cast<int64_t>(labels.size());
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double* row = z.data() + i * classes;
    const double m = *std::max_element(row, row + classes);
    double se = 0.0;
    for (int64_t c = 0; c < classes; ++c) se += std::exp(row[c] - m);
    const double lse = m + std::log(se);
    for (int64_t c = 0; c < classes; ++c) {
      const double target = (c == labels[i] ? 1.0 - eps : 0.0) + eps / static_cast<double>(classes);
      total -= target * (row[c] - lse);
    }
  }
  return {total / static_cast<double>(n)};
}

TEST_CASE("cross_entropy: forward and gradients, label smoothing 0 and 0.1", "[ops][loss]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  for (float smoothing : {0.0f, 0.1f})
    for (int64_t n : {1, 5})
      for (float offset : {0.0f, 1000.0f}) {
        const int64_t classes = pick(gen, {2, 3, 7, 13});
        const std::string what = "cross_entropy [" + std::to_string(n) + ", " +
                                 std::to_string(classes) + "] smoothing " +
                                 std::to_string(smoothing) + " offset " + std::to_string(offset);
        INFO(what);
        std::vector<int64_t> labels(static_cast<size_t>(n));
        for (int64_t& y : labels) y = static_cast<int64_t>(gen.below(classes));
        const Tensor lt = Tensor::from_vector(labels, {n});
        // A large common offset: the loss must not overflow (log-sum-exp with the max removed).
        const std::vector<float> z = randn_vec(n * classes, gen, 2.0f, offset);
        const double eps = smoothing;
        const RefFn ref = [labels, classes, eps](const Inputs& v) {
          return cross_entropy_ref(v[0], labels, classes, eps);
        };
        check_op(
            what,
            [lt, smoothing](const std::vector<Tensor>& t) {
              return cross_entropy(t[0], lt, smoothing);
            },
            ref, {{tensor_of(z, {n, classes}), 1e-6, "logits"}}, 1e-5, gen);

        // Kernels on poisoned outputs: probabilities and the gradient.
        std::vector<float> probs = poisoned(n * classes);
        const double loss = cpu::cross_entropy_forward(z.data(), labels.data(), n, classes,
                                                       smoothing, probs.data());
        REQUIRE(std::abs(loss - ref({widen(z)})[0]) <= 1e-5 * std::abs(loss) + 1e-5);
        Vec p_ref(probs.size());
        for (int64_t i = 0; i < n; ++i) {
          double m = -std::numeric_limits<double>::infinity(), se = 0.0;
          for (int64_t c = 0; c < classes; ++c) m = std::max<double>(m, z[i * classes + c]);
          for (int64_t c = 0; c < classes; ++c) se += std::exp(z[i * classes + c] - m);
          for (int64_t c = 0; c < classes; ++c)
            p_ref[i * classes + c] = std::exp(z[i * classes + c] - m) / se;
        }
        test::require_close(probs, p_ref, kFwdRtol, 1e-6, "cross_entropy_forward probs");
        const float dloss = 0.5f + gen.uniform();
        std::vector<float> dz = poisoned(n * classes);
        cpu::cross_entropy_backward(probs.data(), labels.data(), n, classes, smoothing, dloss,
                                    dz.data());
        test::require_close(dz, fd_grad_full(ref, {widen(z)}, 0, Vec{dloss}), kGradRtol, 1e-6,
                            "cross_entropy_backward");
      }
}

TEST_CASE("cross_entropy: bad labels and arguments throw", "[ops][loss]") {
  const Tensor logits = Tensor::randn({3, 4});
  const auto labels = [](std::vector<int64_t> v) {
    const int64_t n = static_cast<int64_t>(v.size());
    return Tensor::from_vector(v, {n});
  };
  REQUIRE_NOTHROW(cross_entropy(logits, labels({0, 3, 2})));
  check_error([&] { cross_entropy(logits, labels({0, 4, 2})); }, "label == classes");
  check_error([&] { cross_entropy(logits, labels({0, -1, 2})); }, "negative label");
  check_error([&] { cross_entropy(logits, labels({0, 1})); }, "too few labels");
  check_error([&] { cross_entropy(logits, Tensor::zeros({3})); }, "f32 labels");
  check_error([&] { cross_entropy(logits, Tensor()); }, "undefined labels");
  check_error([&] { cross_entropy(Tensor::randn({3, 4, 1}), labels({0, 1, 2})); }, "3-d logits");
  check_error([&] { cross_entropy(logits, labels({0, 1, 2}), -0.1f); }, "negative smoothing");
  check_error([&] { cross_entropy(logits, labels({0, 1, 2}), 1.5f); }, "smoothing above 1");
}

TEST_CASE("count_correct: first maximum against the label, ties and NaN", "[ops][loss]") {
  const uint64_t seed = test::fresh_seed();
  INFO("seed " << seed);
  Generator gen(seed);
  const int64_t n = 301, classes = 7;
  std::vector<float> z(static_cast<size_t>(n * classes));
  for (float& v : z) v = static_cast<float>(gen.below(4));       // many ties
  z[5 * classes + 0] = std::numeric_limits<float>::quiet_NaN();  // a NaN in column 0 never loses
  std::vector<int64_t> y(static_cast<size_t>(n));
  for (auto& v : y) v = static_cast<int64_t>(gen.below(classes));
  int64_t want = 0;
  for (int64_t i = 0; i < n; ++i) {
    int64_t best = 0;  // the first maximum; comparisons with NaN are false
    for (int64_t c = 1; c < classes; ++c)
      if (z[i * classes + c] > z[i * classes + best]) best = c;
    want += best == y[i];
  }
  const Tensor count =
      count_correct(Tensor::from_vector(z, {n, classes}), Tensor::from_vector(y, {n}));
  CHECK(count.dtype() == DType::i32);
  CHECK(static_cast<int64_t>(count.item()) == want);
  check_error([&] { count_correct(Tensor::randn({3, 4}), Tensor::zeros({3})); }, "f32 labels");
  check_error([&] { count_correct(Tensor::randn({3}), Tensor::zeros({3}, DType::i64)); },
              "1-d logits");
}

// --- elementwise errors ------------------------------------------------------------------------

TEST_CASE("elementwise and reductions: bad inputs throw", "[ops]") {
  const Tensor a = Tensor::zeros({2, 3});
  check_error([&] { add(a, Tensor::zeros({3, 2})); }, "add shape mismatch");
  check_error([&] { mul(a, Tensor::zeros({6})); }, "mul shape mismatch");
  check_error([&] { add(a, Tensor::zeros({2, 3}, DType::i64)); }, "add i64");
  check_error([&] { relu(Tensor::zeros({2}, DType::i32)); }, "relu i32");
  check_error([&] { gelu(Tensor()); }, "gelu undefined");
  check_error([&] { sum(Tensor::zeros({2}, DType::i32)); }, "sum i32");
  if (!supports_bf16(Device::cpu()))
    check_error([&] { sum(Tensor::zeros({2}, DType::bf16)); }, "sum bf16 on a CPU without bf16");
  check_error([] { mean(Tensor::zeros({0})); }, "mean of empty");
  Tensor dst = Tensor::zeros({2, 3});
  check_error([&] { add_(dst, Tensor::zeros({3})); }, "add_ shape mismatch");
}

TEST_CASE("in-place helpers: add_, scale_, squared_norm", "[ops]") {
  Tensor x = Tensor::from_vector(std::vector<float>{1.0f, -2.0f, 3.0f}, {3});
  add_(x, Tensor::from_vector(std::vector<float>{1.0f, 1.0f, 1.0f}, {3}), -2.0f);
  REQUIRE(x.to_vector() == std::vector<float>{-1.0f, -4.0f, 1.0f});
  scale_(x, 0.5f);
  REQUIRE(x.to_vector() == std::vector<float>{-0.5f, -2.0f, 0.5f});
  REQUIRE(squared_norm(x) == 4.5);
  // A strided source.
  Tensor y = Tensor::ones({2, 1});
  add_(y, Tensor::from_vector(std::vector<float>{1.0f, 2.0f, 3.0f, 4.0f}, {2, 2}).slice(1, 1, 2));
  REQUIRE(y.to_vector() == std::vector<float>{3.0f, 5.0f});
}

}  // namespace
}  // namespace dl

TEST_CASE("GELU kernels are accurate over the whole float range") {
  // The CPU GELU uses its own vectorisable erf and exp; sweep far past where they clamp.
  const int64_t n = 400001;
  std::vector<float> x(n), y(n), dy(n, 1.0f), dx(n);
  for (int64_t i = 0; i < n; ++i) x[i] = -20.0f + 40.0f * static_cast<float>(i) / (n - 1);
  dl::cpu::gelu_forward(x.data(), y.data(), n);
  dl::cpu::gelu_backward(x.data(), dy.data(), dx.data(), n);
  double worst_y = 0.0, worst_dx = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i], cdf = 0.5 * std::erfc(-v / std::sqrt(2.0));
    const double pdf = std::exp(-0.5 * v * v) / std::sqrt(2.0 * M_PI);
    worst_y = std::max(worst_y, std::abs(y[i] - v * cdf) / (1.0 + std::abs(v * cdf)));
    worst_dx = std::max(worst_dx, std::abs(dx[i] - (cdf + v * pdf)));
  }
  INFO("worst GELU error " << worst_y << ", worst GELU' error " << worst_dx);
  // Float evaluation of 0.5 x (1 + erf(x / sqrt 2)) loses ~1e-7 * |x| to rounding anyway.
  REQUIRE(worst_y < 1e-6);
  REQUIRE(worst_dx < 1e-6);
}
