// The CUDA path's entries in the engine's device registries (engine/device_registry.h): storage.cpp
// and cpu_ops.cpp ask for them when their registry is first used. Compiled only when DL_HAVE_CUDA.
#pragma once

namespace dl {
class DeviceBackend;
class DeviceOps;
}  // namespace dl

namespace dl::cuda {

// The CUDA DeviceBackend (cuda_backend.cpp) when the machine has a CUDA device, else nullptr.
// Decided once, on the first call, by device_present(): the driver is loaded but no context is
// created (init() does that on first use). Never throws.
DeviceBackend* backend_if_available();
// The CUDA DeviceOps (cuda_ops.cpp), on the same test: both are present or neither is.
DeviceOps* ops_if_available();

}  // namespace dl::cuda
