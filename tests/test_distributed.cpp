// The communicator and data parallelism on the ranks that mpirun started (tests/CMakeLists.txt runs
// this binary as `mpirun -np 2`; alone it is a job of one rank, where every check still holds).
// Each rank draws the same fresh random data from a seed rank 0 picks, so each can compute the
// single-process reference itself: the collectives' sums in double, BatchNorm and ConvMixer
// training on the whole global batch.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <random>

#include "engine/dist/communicator.h"
#include "engine/dist/data_parallel.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "models/registry.h"

using namespace dl;

namespace {

dist::Communicator& comm() {
  return dist::world();
}

// A seed every rank shares: rank 0's fresh draw.
uint64_t shared_seed() {
  const int64_t mine = static_cast<int64_t>(std::random_device{}() >> 1);
  return static_cast<uint64_t>(comm().all_gather(mine)[0]);
}

// Rank r's part of a global batch of n rows: rows [n * r / ranks, n * (r + 1) / ranks).
std::pair<int64_t, int64_t> my_rows(int64_t n) {
  const int64_t r = comm().rank(), ranks = comm().size();
  return {n * r / ranks, n * (r + 1) / ranks};
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  double worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<double>(x[i]) - y[i]));
  return worst;
}

double max_abs(const Tensor& a) {
  double worst = 0.0;
  for (float v : a.to_vector()) worst = std::max(worst, std::abs(static_cast<double>(v)));
  return worst;
}

}  // namespace

TEST_CASE("the job's ranks", "[dist]") {
  INFO("rank " << comm().rank() << " of " << comm().size());
  REQUIRE(comm().size() >= 1);
  REQUIRE(comm().rank() >= 0);
  REQUIRE(comm().rank() < comm().size());
  REQUIRE(comm().local_rank() >= 0);
  const std::vector<int64_t> ranks = comm().all_gather(comm().rank());
  REQUIRE(ranks.size() == static_cast<size_t>(comm().size()));
  for (int r = 0; r < comm().size(); ++r) REQUIRE(ranks[static_cast<size_t>(r)] == r);
  // mpirun -np 2 on one machine: two ranks, local ranks 0 and 1.
  if (const char* expected = std::getenv("DL_EXPECT_RANKS"))
    REQUIRE(comm().size() == std::atoi(expected));
}

TEST_CASE("all_reduce_sum of tensors against sums in double", "[dist]") {
  const uint64_t seed = shared_seed();
  INFO("seed " << seed << ", rank " << comm().rank());
  const int ranks = comm().size();
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{4097}, int64_t{3} * (1 << 20) + 5}) {
    INFO("size " << n);
    // f32: each rank's values from (seed, rank); the sum of the ranks' values in double.
    Tensor mine;
    std::vector<double> expected(static_cast<size_t>(n), 0.0);
    for (int r = 0; r < ranks; ++r) {
      Generator gen(seed + static_cast<uint64_t>(r) * 7919 + static_cast<uint64_t>(n));
      Tensor t = Tensor::randn({n}, gen);
      const std::vector<float> v = t.to_vector();
      for (int64_t i = 0; i < n; ++i) expected[static_cast<size_t>(i)] += v[static_cast<size_t>(i)];
      if (r == comm().rank()) mine = t;
    }
    comm().all_reduce_sum(mine);
    const std::vector<float> got = mine.to_vector();
    double worst = 0.0;
    for (int64_t i = 0; i < n; ++i)
      worst =
          std::max(worst, std::abs(got[static_cast<size_t>(i)] - expected[static_cast<size_t>(i)]));
    // One float rounding per addition: ranks x 2^-24 x |sum| (|values| < 10).
    REQUIRE(worst <= ranks * 10 * ranks * 6e-8);

    // Integers: exact.
    for (DType dtype : {DType::i32, DType::i64}) {
      Tensor ints = Tensor::empty({n}, dtype);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t value = (i * 31 + comm().rank() * 1000003) % 2000000 - 1000000;
        if (dtype == DType::i32)
          ints.data<int32_t>()[i] = static_cast<int32_t>(value);
        else
          ints.data<int64_t>()[i] = value << 20;
      }
      comm().all_reduce_sum(ints);
      for (int64_t i = 0; i < n; i += std::max<int64_t>(1, n / 997)) {
        int64_t sum = 0;
        for (int r = 0; r < ranks; ++r) sum += (i * 31 + r * 1000003) % 2000000 - 1000000;
        const int64_t got_int =
            dtype == DType::i32 ? ints.data<int32_t>()[i] : ints.data<int64_t>()[i] >> 20;
        REQUIRE(got_int == sum);
      }
    }
  }
}

TEST_CASE("host collectives: sums in double, max, broadcast", "[dist]") {
  const int ranks = comm().size(), rank = comm().rank();
  std::vector<double> values = {1.0 + rank, 0.5 * rank, -3.25};
  comm().all_reduce_sum(values);
  REQUIRE(values[0] == Approx(ranks + ranks * (ranks - 1) / 2.0));
  REQUIRE(values[1] == Approx(0.25 * ranks * (ranks - 1)));
  REQUIRE(values[2] == -3.25 * ranks);
  std::vector<int64_t> flags = {rank == ranks - 1 ? 5 : 0, -rank};
  comm().all_reduce_max(flags);
  REQUIRE(flags[0] == 5);
  REQUIRE(flags[1] == 0);
  Tensor t = Tensor::full({5}, rank == 0 ? 2.5 : -1.0);
  comm().broadcast(t, 0);
  for (float v : t.to_vector()) REQUIRE(v == 2.5f);
  comm().barrier();
}

TEST_CASE("GradientReducer sums every gradient over the ranks, bucket by bucket", "[dist]") {
  const uint64_t seed = shared_seed();
  INFO("seed " << seed << ", rank " << comm().rank());
  const std::vector<Shape> shapes = {{3, 4}, {5}, {2, 3, 3, 3}, {1}, {17}};
  std::vector<Tensor> params;
  for (const Shape& s : shapes) params.push_back(Tensor::zeros(s).requires_grad_(true));
  // Rank r's gradients from (seed, r); parameter 3 has none on the last rank (counts as zeros).
  const int ranks = comm().size();
  std::vector<Tensor> expected;
  for (size_t k = 0; k < shapes.size(); ++k) expected.push_back(Tensor::zeros(shapes[k]));
  for (int r = 0; r < ranks; ++r) {
    Generator gen(seed + static_cast<uint64_t>(r));
    for (size_t k = 0; k < shapes.size(); ++k) {
      const Tensor g = Tensor::randn(shapes[k], gen);
      const bool has_grad = !(k == 3 && r == ranks - 1);
      if (has_grad) add_(expected[k], g);
      if (r == comm().rank()) params[k].set_grad(has_grad ? g : Tensor());
    }
  }
  // 64-byte buckets: several, one parameter larger than a bucket alone.
  dist::GradientReducer reducer(comm(), params, 64);
  REQUIRE(reducer.buckets() >= 3);
  REQUIRE(reducer.bytes() == 4 * (12 + 5 + 54 + 1 + 17));
  reducer.sum_gradients();
  for (size_t k = 0; k < shapes.size(); ++k) {
    INFO("parameter " << k);
    REQUIRE(params[k].grad().defined());
    REQUIRE(max_abs_diff(params[k].grad(), expected[k]) <= 1e-5);
  }
}

namespace {

// BatchNorm of a global batch [n, h, w, c] split over the ranks by rows, with statistics over the
// ranks, against one BatchNorm of the whole batch: outputs, input gradients (each rank's slice),
// dgamma/dbeta summed over the ranks, running statistics.
void check_sync_batch_norm(bool fused) {
  const uint64_t seed = shared_seed();
  INFO("seed " << seed << ", rank " << comm().rank() << (fused ? ", gelu_batch_norm" : ""));
  const int64_t n = 5, h = 3, w = 4, c = 6;  // 5 images: uneven over 2 ranks
  Generator gen(seed);
  const Tensor x = Tensor::randn({n, h, w, c}, gen);
  const Tensor residual = Tensor::randn({n, h, w, c}, gen);
  const Tensor upstream = Tensor::randn({n, h, w, c}, gen);
  const Tensor gamma0 = Tensor::uniform({c}, 0.5f, 1.5f, gen), beta0 = Tensor::randn({c}, gen);

  auto run = [&](const Tensor& xs, const Tensor& res, const Tensor& up,
                 const SumOverRanks& sum_over_ranks) {
    Tensor input = xs.clone().requires_grad_(true);
    Tensor gamma = gamma0.clone().requires_grad_(true), beta = beta0.clone().requires_grad_(true);
    Tensor rm = Tensor::zeros({c}), rv = Tensor::ones({c});
    const Tensor y =
        fused ? gelu_batch_norm(input, rm, rv, gamma, beta, true, 0.1f, 1e-5f, res, sum_over_ranks)
              : batch_norm(input, rm, rv, gamma, beta, true, 0.1f, 1e-5f, sum_over_ranks);
    sum(mul(y, up)).backward();
    return std::vector<Tensor>{y, input.grad(), gamma.grad(), beta.grad(), rm, rv};
  };
  const std::vector<Tensor> whole = run(x, residual, upstream, {});
  const auto [begin, end] = my_rows(n);
  const std::vector<Tensor> part =
      run(x.slice(0, begin, end).contiguous(), residual.slice(0, begin, end).contiguous(),
          upstream.slice(0, begin, end).contiguous(), [](double* values, int64_t count) {
            comm().all_reduce_sum(std::span<double>(values, static_cast<size_t>(count)));
          });
  Tensor dgamma = part[2].clone(), dbeta = part[3].clone();
  comm().all_reduce_sum(dgamma);
  comm().all_reduce_sum(dbeta);
  const double tol = 2e-6;
  CHECK(max_abs_diff(part[0], whole[0].slice(0, begin, end).contiguous()) <=
        tol * max_abs(whole[0]));
  CHECK(max_abs_diff(part[1], whole[1].slice(0, begin, end).contiguous()) <=
        tol * max_abs(whole[1]));
  CHECK(max_abs_diff(dgamma, whole[2]) <= tol * max_abs(whole[2]));
  CHECK(max_abs_diff(dbeta, whole[3]) <= tol * max_abs(whole[3]));
  CHECK(max_abs_diff(part[4], whole[4]) <= 1e-6);
  CHECK(max_abs_diff(part[5], whole[5]) <= 1e-6);
}

}  // namespace

TEST_CASE("SyncBatchNorm: a batch split over the ranks normalises as one batch", "[dist]") {
  check_sync_batch_norm(false);
  check_sync_batch_norm(true);
}

namespace {

// Trains a small ConvMixer for 3 SGD steps on fresh random global batches of 8 images and
// returns its state. Data-parallel (`ranks_share` true): this rank's rows of each batch, the loss
// scaled by its share, gradients summed over the ranks. Otherwise one process on the whole batch,
// or, with `per_slice`, one process that normalises each rank's slice on its own (what data
// parallelism without SyncBatchNorm computes).
nn::NamedTensors train_steps(uint64_t seed, bool ranks_share, bool sync_bn, bool per_slice) {
  models::ModelSpec spec;
  spec.dim = 16, spec.depth = 2, spec.kernel = 3, spec.patch = 2;
  Generator init(seed);
  auto model = models::make_model(spec, init);
  if (ranks_share && sync_bn) dist::sync_batch_norm(*model, comm());
  optim::SGD opt(model->parameters(), {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.05});
  // 512-byte buckets: several, started by the backward as their gradients complete.
  std::optional<dist::GradientReducer> reducer;
  if (ranks_share) reducer.emplace(comm(), model->parameters(), 512);
  Generator data(seed + 1);
  const int64_t n = 8;
  const auto [begin, end] = my_rows(n);
  for (int step = 0; step < 3; ++step) {
    const Tensor images = Tensor::randn({n, 8, 8, 3}, data);
    std::vector<int64_t> label_values;
    for (int64_t i = 0; i < n; ++i) label_values.push_back((i * 7 + step) % 10);
    const Tensor labels = Tensor::from_vector(label_values, {n});
    opt.zero_grad();
    // (begin, end) slices of the batch, each with its share of the mean loss.
    auto slice_step = [&](int64_t b, int64_t e) {
      const Tensor loss = cross_entropy(model->forward(images.slice(0, b, e).contiguous()),
                                        labels.slice(0, b, e).contiguous());
      loss.backward(Tensor::full({}, static_cast<double>(e - b) / n));
    };
    if (ranks_share) {
      slice_step(begin, end);
      REQUIRE(reducer->buckets() > 3);
      REQUIRE(reducer->started_in_backward() == reducer->buckets());
      reducer->sum_gradients();
      REQUIRE(reducer->started_in_backward() == 0);
    } else if (per_slice) {
      for (int r = 0; r < comm().size(); ++r)
        slice_step(n * r / comm().size(), n * (r + 1) / comm().size());
    } else {
      cross_entropy(model->forward(images), labels).backward();
    }
    opt.step();
  }
  return model->named_parameters();
}

void require_same_parameters(const nn::NamedTensors& a, const nn::NamedTensors& b, double rtol) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(a[i].first);
    CHECK(max_abs_diff(a[i].second, b[i].second) <= rtol * std::max(1.0, max_abs(b[i].second)));
  }
}

}  // namespace

TEST_CASE("data-parallel ConvMixer steps equal one process's", "[dist]") {
  const uint64_t seed = shared_seed();
  INFO("seed " << seed << ", rank " << comm().rank() << " of " << comm().size());
  // Float rounding of sums in another order, through three SGD steps.
  const double rtol = 1e-5;
  SECTION("with SyncBatchNorm: the one-process run on the whole batch") {
    require_same_parameters(train_steps(seed, true, true, false),
                            train_steps(seed, false, false, false), rtol);
  }
  SECTION("without: the one-process run that normalises each rank's slice on its own") {
    require_same_parameters(train_steps(seed, true, false, false),
                            train_steps(seed, false, false, true), rtol);
  }
}
