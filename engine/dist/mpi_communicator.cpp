#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>

#include "engine/dist/backends.h"
#include "engine/error.h"
#ifdef DL_HAVE_NCCL
#include "engine/dist/nccl_collectives.h"
#endif

namespace dl::dist {

namespace {

// MPI counts are int: longer buffers go in pieces.
constexpr int64_t kMaxCount = INT_MAX / 2;

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::i32:
      return MPI_INT32_T;
    case DType::i64:
      return MPI_INT64_T;
    case DType::u8:
      return MPI_UINT8_T;
    default:
      break;
  }
  throw Error(std::string("MPI all-reduce: no MPI type for ") + dtype_name(dtype) +
              " tensors in host memory");
}

// Calls fn(first element, element count) for the pieces of at most kMaxCount of `count` elements
// of `type_bytes` bytes each.
template <class F>
void for_each_piece(void* data, int64_t count, int type_bytes, F&& fn) {
  auto* bytes = static_cast<char*>(data);
  for (int64_t done = 0; done < count;) {
    const int64_t piece = std::min(kMaxCount, count - done);
    fn(bytes + done * type_bytes, static_cast<int>(piece));
    done += piece;
  }
}

int size_of(MPI_Datatype type) {
  int bytes = 0;
  MPI_Type_size(type, &bytes);
  return bytes;
}

void all_reduce_host(void* data, int64_t count, MPI_Datatype type, MPI_Op op) {
  for_each_piece(data, count, size_of(type), [&](void* piece, int n) {
    MPI_Allreduce(MPI_IN_PLACE, piece, n, type, op, MPI_COMM_WORLD);
  });
}

// MPI_Iallreduce over pieces of kMaxCount; wait() completes them all.
class MpiPending final : public Communicator::Pending {
 public:
  MpiPending(void* data, int64_t count, MPI_Datatype type) {
    for_each_piece(data, count, size_of(type), [&](void* piece, int n) {
      MPI_Iallreduce(MPI_IN_PLACE, piece, n, type, MPI_SUM, MPI_COMM_WORLD,
                     &requests_.emplace_back());
    });
  }
  ~MpiPending() override { wait(); }
  void wait() override {
    if (requests_.empty()) return;
    MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
    requests_.clear();
  }

 private:
  std::vector<MPI_Request> requests_;
};

void broadcast_host(void* data, int64_t bytes, int root) {
  for_each_piece(data, bytes, 1,
                 [&](void* piece, int n) { MPI_Bcast(piece, n, MPI_BYTE, root, MPI_COMM_WORLD); });
}

class MpiWorld final : public Communicator {
 public:
  MpiWorld() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    // The engine calls MPI from the thread that created the communicator only.
    int provided = 0;
    if (!initialized) MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    DL_CHECK(initialized || provided >= MPI_THREAD_FUNNELED,
             "this MPI library cannot be called from the thread that started it");
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local_rank_);
    MPI_Comm_size(node, &local_size_);
    MPI_Comm_free(&node);
  }
  ~MpiWorld() override {
#ifdef DL_HAVE_NCCL
    nccl_.reset();
#endif
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }

  int rank() const override {
    return rank_;
  }
  int size() const override {
    return size_;
  }
  int local_rank() const override {
    return local_rank_;
  }
  int local_size() const override {
    return local_size_;
  }

  void all_reduce_sum(Tensor& t) override {
    DL_CHECK(t.is_contiguous(), "all_reduce_sum: the tensor must be contiguous");
    if (t.device().is_cpu()) {
      all_reduce_host(t.raw_data(), t.numel(), mpi_type(t.dtype()), MPI_SUM);
    } else {
      nccl().all_reduce_sum_async(t.raw_data(), t.numel(), t.dtype())->wait();
    }
    t.mark_modified();
  }

  std::unique_ptr<Pending> all_reduce_sum_async(Tensor& t) override {
    DL_CHECK(t.is_contiguous(), "all_reduce_sum: the tensor must be contiguous");
    t.mark_modified();
    if (t.device().is_cpu())
      return std::make_unique<MpiPending>(t.raw_data(), t.numel(), mpi_type(t.dtype()));
    return nccl().all_reduce_sum_async(t.raw_data(), t.numel(), t.dtype());
  }

  void broadcast(Tensor& t, int root) override {
    DL_CHECK(t.is_contiguous(), "broadcast: the tensor must be contiguous");
    if (t.device().is_cpu()) {
      broadcast_host(t.raw_data(), static_cast<int64_t>(t.nbytes()), root);
    } else {
      nccl().broadcast(t.raw_data(), static_cast<int64_t>(t.nbytes()), root);
    }
    t.mark_modified();
  }

  void all_reduce_sum(std::span<double> values) override {
    all_reduce_host(values.data(), static_cast<int64_t>(values.size()), MPI_DOUBLE, MPI_SUM);
  }

  void all_reduce_max(std::span<int64_t> values) override {
    all_reduce_host(values.data(), static_cast<int64_t>(values.size()), MPI_INT64_T, MPI_MAX);
  }

  std::vector<int64_t> all_gather(int64_t value) override {
    std::vector<int64_t> all(static_cast<size_t>(size_));
    MPI_Allgather(&value, 1, MPI_INT64_T, all.data(), 1, MPI_INT64_T, MPI_COMM_WORLD);
    return all;
  }

  void barrier() override {
    MPI_Barrier(MPI_COMM_WORLD);
  }

  [[noreturn]] void abort(int exit_code) override {
#ifdef DL_HAVE_NCCL
    if (nccl_) nccl_->abort();
#endif
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);
  }

 private:
#ifdef DL_HAVE_NCCL
  NcclCollectives& nccl() {
    if (!nccl_)
      nccl_ = std::make_unique<NcclCollectives>(rank_, size_, [](void* id, size_t bytes) {
        broadcast_host(id, static_cast<int64_t>(bytes), 0);
      });
    return *nccl_;
  }
  std::unique_ptr<NcclCollectives> nccl_;
#else
  // Stands in for NcclCollectives in a build without NCCL: says so.
  struct NoNccl {
    [[noreturn]] static void missing() {
      throw Error(
          "collectives over GPU tensors need NCCL, and this build has none (configure finds it "
          "beside the CUDA toolkit, or at NCCL_INCLUDE_DIR and NCCL_LIBRARY)");
    }
    std::unique_ptr<Pending> all_reduce_sum_async(void*, int64_t, DType) { missing(); }
    void broadcast(void*, int64_t, int) { missing(); }
  };
  static NoNccl nccl() {
    return {};
  }
#endif
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_world() {
  return std::make_unique<MpiWorld>();
}

}  // namespace dl::dist
