// The communicator backends behind world() (communicator.h), each compiled when its library was
// found. Internal to engine/dist.
#pragma once
#include <memory>

#include "engine/dist/communicator.h"

namespace dl::dist {

// The MPI world of a process a launcher started; initialises MPI (finalised at exit). GPU tensors
// go through NCCL when the build has it.
std::unique_ptr<Communicator> make_mpi_world();

}  // namespace dl::dist
