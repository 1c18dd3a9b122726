// Raw memory behind tensors, and the per-device backend that provides it. The CPU backend is
// built in; the CUDA path provides its own (caching allocator, async copies) when the machine has
// a GPU, so tensors, ops and modules move to the GPU without changes above this file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "engine/dtype.h"

namespace dl {

class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* ptr, size_t bytes) = 0;
  // Copies between this device and the host or within the device: `to` and `from` say where the
  // destination and source live.
  virtual void copy(void* dst, Device to, const void* src, Device from, size_t bytes) = 0;
  virtual void memset_zero(void* dst, size_t bytes) = 0;
};

// Throws dl::Error when the device has no backend (no GPU, or CUDA in a CPU-only build).
DeviceBackend& device_backend(Device device);
// Copies bytes between two devices; the non-CPU side's backend performs it.
void copy_bytes(void* dst, Device to, const void* src, Device from, size_t bytes);

class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  // Counts the in-place writes to this memory (Tensor::mark_modified): autograd compares it with
  // its value when a tensor was saved for a backward, so a saved tensor changed in between is an
  // error instead of a wrong gradient.
  uint64_t version() const { return version_; }
  void bump_version() { ++version_; }

 private:
  uint64_t version_ = 0;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
};

}  // namespace dl
