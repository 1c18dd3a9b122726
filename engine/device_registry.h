// One implementation of an interface per device kind: the storage backend (storage.h) and the
// ops table (device_ops.h). Each registry is built on its first use from the CPU's implementation,
// which is built in, and in a build with the CUDA path the CUDA one when the machine has a GPU
// (engine/cuda/registry.h). Asking for a device with none throws one error that says why and what
// to do.
#pragma once
#include <string>

#include "engine/dtype.h"
#include "engine/error.h"

#ifdef DL_HAVE_CUDA
namespace dl::cuda {
std::string absence_reason();  // engine/cuda/cuda_backend.h
}
#endif

namespace dl {

template <class Interface>
class DeviceRegistry {
 public:
  // `cuda` may be nullptr: no GPU, or no CUDA path in this build.
  DeviceRegistry(Interface* cpu, Interface* cuda) {
    slots_[static_cast<int>(DeviceKind::cpu)] = cpu;
    slots_[static_cast<int>(DeviceKind::cuda)] = cuda;
  }

  Interface& get(Device device) const {
    Interface* impl = slots_[static_cast<int>(device.kind)];
#ifdef DL_HAVE_CUDA
    DL_CHECK(impl != nullptr, "device ", device.str(), " is not available: no usable GPU (",
             cuda::absence_reason(), "); use the CPU device");
#else
    DL_CHECK(impl != nullptr, "device ", device.str(),
             " is not available: this build has no CUDA path (configure on a machine with nvcc); "
             "use the CPU device");
#endif
    return *impl;
  }

 private:
  Interface* slots_[2] = {};
};

}  // namespace dl
