#include "engine/storage.h"

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include "engine/device_registry.h"
#include "engine/error.h"
#ifdef DL_HAVE_CUDA
#include "engine/cuda/registry.h"
#endif

namespace dl {

namespace {

// Host memory. Blocks of 1 MiB and more are cached when freed and handed out again for the same
// rounded size: a training step frees and allocates the same activation sizes every step, and
// fresh large blocks come from mmap, whose first touch of each page faults (a ConvMixer-256/8
// step at batch 512 spent most of its time there). The cache holds at most half the machine's
// memory, and is emptied before an allocation that fails is retried. Under AddressSanitizer
// nothing is cached, so that a use after free is still found.
class CpuBackend final : public DeviceBackend {
 public:
  void* allocate(size_t bytes) override {
    const size_t rounded = round_up(bytes);
    if (rounded >= kCachedFrom) {
      std::lock_guard lock(mutex_);
      auto it = cache_.find(rounded);
      if (it != cache_.end()) {
        void* p = it->second;
        cache_.erase(it);
        cached_bytes_ -= rounded;
        return p;
      }
    }
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) {
      release_cache();
      p = std::aligned_alloc(64, rounded);
    }
    DL_CHECK(p != nullptr, "out of host memory: could not allocate ", bytes, " bytes");
    return p;
  }
  void deallocate(void* ptr, size_t bytes) override {
    const size_t rounded = round_up(bytes);
    if (rounded >= kCachedFrom) {
      std::lock_guard lock(mutex_);
      if (cached_bytes_ + rounded <= max_cached_bytes()) {
        cache_.emplace(rounded, ptr);
        cached_bytes_ += rounded;
        return;
      }
    }
    std::free(ptr);
  }
  void copy(void* dst, Device, const void* src, Device, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void memset_zero(void* dst, size_t bytes) override {
    if (bytes) std::memset(dst, 0, bytes);
  }

 private:
#ifdef __SANITIZE_ADDRESS__
  static constexpr size_t kCachedFrom = SIZE_MAX;
#else
  static constexpr size_t kCachedFrom = size_t{1} << 20;
#endif

  // 64-byte multiples (whole cache lines, aligned vector loads), at least one line.
  static size_t round_up(size_t bytes) { return bytes == 0 ? 64 : (bytes + 63) / 64 * 64; }

  static size_t max_cached_bytes() {
    static const size_t half_of_memory = static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) *
                                         static_cast<size_t>(sysconf(_SC_PAGESIZE)) / 2;
    return half_of_memory;
  }

  void release_cache() {
    std::lock_guard lock(mutex_);
    for (const auto& [bytes, ptr] : cache_) std::free(ptr);
    cache_.clear();
    cached_bytes_ = 0;
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> cache_;  // rounded size -> free block
  size_t cached_bytes_ = 0;
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
