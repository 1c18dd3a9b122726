// One implementation of an interface per device kind: the storage backend (storage.h) and the
// ops table (device_ops.h). The CPU's is built in; the CUDA path registers its own before main
// when the machine has a GPU. Asking for a device with none registered throws one error that says
// why and what to do.
#pragma once
#include "engine/dtype.h"
#include "engine/error.h"

namespace dl {

template <class Interface>
class DeviceRegistry {
 public:
  explicit DeviceRegistry(Interface* cpu) { slots_[static_cast<int>(DeviceKind::cpu)] = cpu; }

  void set(DeviceKind kind, Interface* impl) { slots_[static_cast<int>(kind)] = impl; }

  Interface& get(Device device) const {
    Interface* impl = slots_[static_cast<int>(device.kind)];
#ifdef DL_HAVE_CUDA
    DL_CHECK(
        impl != nullptr, "device ", device.str(),
        " is not available: no GPU was found (the CUDA driver reports none); use --device cpu");
#else
    DL_CHECK(impl != nullptr, "device ", device.str(),
             " is not available: this build has no CUDA path (configure on a machine with nvcc); "
             "use --device cpu");
#endif
    return *impl;
  }

 private:
  Interface* slots_[2] = {};
};

}  // namespace dl
