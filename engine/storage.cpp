#include "engine/storage.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "engine/device_registry.h"
#include "engine/error.h"
#ifdef DL_HAVE_CUDA
#include "engine/cuda/registry.h"
#endif

namespace dl {

namespace {

class CpuBackend final : public DeviceBackend {
 public:
  void* allocate(size_t bytes) override {
    // 64-byte alignment: whole cache lines, aligned vector loads.
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    DL_CHECK(p != nullptr, "out of host memory: could not allocate ", bytes, " bytes");
    return p;
  }
  void deallocate(void* ptr, size_t) override { std::free(ptr); }
  void copy(void* dst, Device, const void* src, Device, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void memset_zero(void* dst, size_t bytes) override {
    if (bytes) std::memset(dst, 0, bytes);
  }
};

DeviceRegistry<DeviceBackend>& backends() {
  static CpuBackend cpu;
#ifdef DL_HAVE_CUDA
  static DeviceRegistry<DeviceBackend> registry(&cpu, cuda::backend_if_available());
#else
  static DeviceRegistry<DeviceBackend> registry(&cpu, nullptr);
#endif
  return registry;
}

}  // namespace

DeviceBackend& device_backend(Device device) {
  return backends().get(device);
}

void copy_bytes(void* dst, Device to, const void* src, Device from, size_t bytes) {
  // The non-CPU side owns the copy (it knows its own memory); CPU<->CPU is a memcpy.
  device_backend(to.is_cpu() ? from : to).copy(dst, to, src, from, bytes);
}

Storage::Storage(size_t bytes, Device device)
    : data_(device_backend(device).allocate(bytes)), bytes_(bytes), device_(device) {}

Storage::~Storage() {
  device_backend(device_).deallocate(data_, bytes_);
}

}  // namespace dl
