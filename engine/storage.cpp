#include "engine/storage.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
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

#if defined(__SANITIZE_ADDRESS__)
#define DL_ADDRESS_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DL_ADDRESS_SANITIZER 1
#endif
#endif

// Host memory. Blocks of 1 MiB and more are cached when freed and handed out again for a request
// of the same size class (eight classes per power of two: a block is at most 12.5% larger than
// asked): a training step frees and allocates the same activation sizes every step, and fresh
// large blocks come from mmap, whose first touch of each page faults (a ConvMixer-256/8 step at
// batch 512 spent most of its time there). The cache holds at most half of the memory the process
// may use (the machine's, or its cgroup's limit); past that the blocks cached first are freed
// first. It is emptied before an allocation that fails is retried. Under AddressSanitizer nothing
// is cached, so that a use after free is still found.
class CpuBackend final : public DeviceBackend {
 public:
  void* allocate(size_t bytes) override {
    const size_t size = block_size(bytes);
    if (size >= kCachedFrom) {
      std::lock_guard lock(mutex_);
      auto it = by_size_.find(size);
      if (it != by_size_.end()) {
        void* p = it->second->second;
        cached_bytes_ -= size;
        order_.erase(it->second);
        by_size_.erase(it);
        return p;
      }
    }
    void* p = std::aligned_alloc(64, size);
    if (p == nullptr) {
      release_cache();
      p = std::aligned_alloc(64, size);
    }
    DL_CHECK(p != nullptr, "out of host memory: could not allocate ", bytes, " bytes");
    return p;
  }
  void deallocate(void* ptr, size_t bytes) override {
    const size_t size = block_size(bytes);
    if (size < kCachedFrom || size > max_cached_bytes()) return std::free(ptr);
    std::lock_guard lock(mutex_);
    while (cached_bytes_ + size > max_cached_bytes()) {  // the oldest blocks make room
      const auto [old_size, old_ptr] = order_.front();
      std::free(old_ptr);
      cached_bytes_ -= old_size;
      auto range = by_size_.equal_range(old_size);
      for (auto it = range.first; it != range.second; ++it)
        if (it->second == order_.begin()) {
          by_size_.erase(it);
          break;
        }
      order_.pop_front();
    }
    order_.emplace_back(size, ptr);
    by_size_.emplace(size, std::prev(order_.end()));
    cached_bytes_ += size;
  }
  void copy(void* dst, Device, const void* src, Device, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void memset_zero(void* dst, size_t bytes) override {
    if (bytes) std::memset(dst, 0, bytes);
  }

 private:
#ifdef DL_ADDRESS_SANITIZER
  static constexpr size_t kCachedFrom = SIZE_MAX;
#else
  static constexpr size_t kCachedFrom = size_t{1} << 20;
#endif

  // The bytes a request gets: 64-byte multiples (whole cache lines, aligned vector loads), at
  // least one line; from 1 MiB on, rounded up to its size class.
  static size_t block_size(size_t bytes) {
    const size_t lines = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
    if (lines < (size_t{1} << 20)) return lines;
    const size_t step = size_t{1} << (63 - __builtin_clzll(lines) - 3);
    return (lines + step - 1) / step * step;
  }

  // Half of what this process may use: the machine's memory, or its cgroup's limit when lower.
  static size_t max_cached_bytes() {
    static const size_t limit = [] {
      size_t usable =
          static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
      if (std::FILE* f = std::fopen("/sys/fs/cgroup/memory.max", "r")) {
        unsigned long long cgroup = 0;
        if (std::fscanf(f, "%llu", &cgroup) == 1 && cgroup > 0 && cgroup < usable)
          usable = static_cast<size_t>(cgroup);  // "max" (no limit) does not parse
        std::fclose(f);
      }
      return usable / 2;
    }();
    return limit;
  }

  void release_cache() {
    std::lock_guard lock(mutex_);
    for (const auto& [size, ptr] : order_) std::free(ptr);
    order_.clear();
    by_size_.clear();
    cached_bytes_ = 0;
  }

  using Block = std::pair<size_t, void*>;  // size, pointer
  std::mutex mutex_;
  std::list<Block> order_;                                     // cached blocks, oldest first
  std::multimap<size_t, std::list<Block>::iterator> by_size_;  // size -> its block in order_
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
