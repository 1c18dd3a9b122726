// Tensor: a shape, strides and dtype over shared storage on a device, plus its autograd state.
// Copying a Tensor copies a handle: both refer to the same data and the same gradient.
// Activations are NHWC throughout the engine.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "engine/random.h"
#include "engine/storage.h"

namespace dl {

using Shape = std::vector<int64_t>;
// Elements in a tensor of this shape. Every size computation goes through these two, which are
// checked: a negative dimension, or a count whose bytes would not fit in int64, is a dl::Error.
int64_t shape_numel(const Shape& shape);
size_t shape_nbytes(const Shape& shape, DType dtype);
std::string shape_str(const Shape& shape);

class Tensor;
class Node;

// Autograd state of one tensor. A leaf (no grad_fn) that requires grad accumulates into `grad`.
struct AutogradMeta {
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;
  std::shared_ptr<struct TensorImpl> grad;
  std::function<void()> post_accumulate_grad_hook;  // see Tensor::set_post_accumulate_grad_hook
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  Shape strides;  // in elements
  DType dtype = DType::f32;
  std::shared_ptr<AutogradMeta> autograd;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // --- creation (contiguous) ---
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32,
                     Device device = Device::cpu());
  static Tensor randn(const Shape& shape, Generator& gen = default_generator(),
                      Device device = Device::cpu());
  static Tensor uniform(const Shape& shape, float low, float high,
                        Generator& gen = default_generator(), Device device = Device::cpu());
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape,
                            Device device = Device::cpu());
  static Tensor from_vector(const std::vector<int64_t>& values, const Shape& shape,
                            Device device = Device::cpu());

  // --- properties ---
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  int64_t dim() const { return static_cast<int64_t>(shape().size()); }
  // size(-1) is the last dimension.
  int64_t size(int64_t d) const;
  int64_t numel() const { return shape_numel(shape()); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  bool is_contiguous() const;
  size_t nbytes() const { return shape_nbytes(shape(), dtype()); }

  // Typed pointer to the first element (on the tensor's device); checks the dtype.
  template <class T>
  T* data() const {
    check_dtype(dtype_of<T>());
    return static_cast<T*>(raw_data());
  }
  void* raw_data() const;

  // --- views and copies ---
  // Differentiable. A view when contiguous, else a copy. One dimension may be -1.
  Tensor reshape(const Shape& shape) const;
  // Differentiable view of [start, end) along dim.
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;
  Tensor contiguous() const;
  // A new tensor with its own storage (not differentiable; see ops for differentiable ones).
  Tensor clone() const;
  Tensor to(Device device) const;
  // Converts element type (f32 <-> bf16, integers <-> f32) on the CPU.
  Tensor to(DType dtype) const;
  // Same data, no autograd history.
  Tensor detach() const;
  // In-place writes; each marks the tensor modified (see mark_modified).
  void copy_(const Tensor& src);  // same shape; any devices
  void fill_(double value);
  void zero_();
  // Records an in-place write to this tensor's memory (shared by all its views). Code that writes
  // through data<T>() into a tensor that autograd may have saved calls this afterwards.
  void mark_modified() const;

  float item() const;
  std::vector<float> to_vector() const;  // f32 elements in logical order, copied to the host

  // --- autograd ---
  bool requires_grad() const;
  Tensor& requires_grad_(bool value = true);
  // Gradient accumulated into a leaf by backward(); undefined until then.
  Tensor grad() const;
  void set_grad(const Tensor& grad) const;
  // A leaf's hook, run by backward() once this backward has accumulated every gradient it makes
  // for the leaf (PyTorch's register_post_accumulate_grad_hook): data parallelism starts summing
  // a bucket of gradients over the ranks while the backward goes on. One hook per tensor; an
  // empty function removes it.
  void set_post_accumulate_grad_hook(std::function<void()> hook) const;
  const std::shared_ptr<Node>& grad_fn() const;
  // Reverse-mode pass from this tensor. Without an argument the tensor must hold one element.
  // The graph is released as it is walked: a second backward through it is an error.
  void backward(const Tensor& grad_output = Tensor()) const;

  TensorImpl& impl() const;
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  void check_dtype(DType expected) const;
  std::shared_ptr<TensorImpl> impl_;
};

// PyTorch's torch.utils.deterministic.fill_uninitialized_memory: while on, every Tensor::empty
// is filled with NaN (f32, bf16) or its type's largest value (integers), so that an element that
// no kernel wrote reads as garbage a test sees instead of whatever the memory held. Off by default
// (it costs one pass over each new tensor); for tests and debugging. Process-wide.
void set_fill_uninitialized_memory(bool on);
bool fill_uninitialized_memory();

// Gradient recording is on by default; NoGradGuard turns it off for a scope (this thread).
bool grad_mode_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace dl
