#include "engine/dist/communicator.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "engine/dist/backends.h"
#include "engine/error.h"

namespace dl::dist {

namespace {

// A job of one rank: every collective leaves its data as it is.
class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 1; }
  void all_reduce_sum(Tensor&) override {}
  std::unique_ptr<Pending> all_reduce_sum_async(Tensor&) override {
    struct Done final : Pending {
      void wait() override {}
    };
    return std::make_unique<Done>();
  }
  void broadcast(Tensor&, int) override {}
  void all_reduce_sum(std::span<double>) override {}
  void all_reduce_max(std::span<int64_t>) override {}
  std::vector<int64_t> all_gather(int64_t value) override { return {value}; }
  void barrier() override {}
  [[noreturn]] void abort(int exit_code) override { std::exit(exit_code); }
};

// The number of ranks the launcher started, from the variables OpenMPI's mpirun, PMIx (srun
// --mpi=pmix) and PMI-2 (srun --mpi=pmi2, MPICH's hydra) set; 0 without a launcher.
int launched_ranks() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"})
    if (const char* value = std::getenv(name)) return std::atoi(value);
  // PMIx sets the rank but not always the size; under srun, Slurm says how many tasks.
  if (!std::getenv("PMIX_RANK")) return 0;
  for (const char* name : {"SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"})
    if (const char* value = std::getenv(name)) return std::max(1, std::atoi(value));
  return 1;
}

std::unique_ptr<Communicator> make_world() {
  const int ranks = launched_ranks();
  if (ranks == 0) return std::make_unique<SingleProcess>();
#ifdef DL_HAVE_MPI
  return make_mpi_world();
#else
  DL_CHECK(ranks == 1, "this process is one of ", ranks,
           " ranks a launcher started, but this build has no MPI, so each would train alone: "
           "install libopenmpi-dev and openmpi-bin and build again (configure says "
           "'several processes ON')");
  return std::make_unique<SingleProcess>();
#endif
}

}  // namespace

namespace {
std::atomic<Communicator*> g_started{nullptr};
}  // namespace

Communicator& world() {
  static const std::unique_ptr<Communicator> instance = make_world();
  g_started = instance.get();
  return *instance;
}

Communicator* started_world() {
  return g_started;
}

bool built_with_mpi() {
#ifdef DL_HAVE_MPI
  return true;
#else
  return false;
#endif
}

bool built_with_nccl() {
#ifdef DL_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

}  // namespace dl::dist
