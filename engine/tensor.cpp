#include "engine/tensor.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <sstream>

#include "engine/autograd.h"
#include "engine/error.h"

namespace dl {

namespace {

// The product of the dimensions times `element_bytes`, checked. Zero dimensions are skipped while
// multiplying, so that every partial product (contiguous strides, any sub-shape) fits too.
int64_t checked_size(const Shape& shape, int64_t element_bytes) {
  int64_t product = element_bytes;
  bool empty = false;
  for (int64_t d : shape) {
    DL_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
    empty = empty || d == 0;
    DL_CHECK(d == 0 || !__builtin_mul_overflow(product, d, &product), "shape ", shape_str(shape),
             " is too large: its size overflows 64-bit arithmetic");
  }
  return empty ? 0 : product;
}

}  // namespace

int64_t shape_numel(const Shape& shape) {
  return checked_size(shape, 1);
}

size_t shape_nbytes(const Shape& shape, DType dtype) {
  return static_cast<size_t>(checked_size(shape, static_cast<int64_t>(dtype_size(dtype))));
}

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

namespace {

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

Tensor view_of(const Tensor& base, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.impl().storage;
  impl->offset = offset;
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->dtype = base.dtype();
  return Tensor(impl);
}

template <class T>
void fill_host(void* p, int64_t n, double value) {
  T* d = static_cast<T*>(p);
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<T>(value);
}

void fill_host_any(void* p, DType dtype, int64_t n, double value) {
  switch (dtype) {
    case DType::f32:
      return fill_host<float>(p, n, value);
    case DType::i32:
      return fill_host<int32_t>(p, n, value);
    case DType::i64:
      return fill_host<int64_t>(p, n, value);
    case DType::u8:
      return fill_host<uint8_t>(p, n, value);
    case DType::bf16: {
      const bf16 b = bf16::from_float(static_cast<float>(value));
      auto* d = static_cast<bf16*>(p);
      for (int64_t i = 0; i < n; ++i) d[i] = b;
      return;
    }
  }
}

double load_as_double(const void* p, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::f32:
      return static_cast<const float*>(p)[i];
    case DType::bf16:
      return static_cast<const bf16*>(p)[i].to_float();
    case DType::i32:
      return static_cast<const int32_t*>(p)[i];
    case DType::i64:
      return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case DType::u8:
      return static_cast<const uint8_t*>(p)[i];
  }
  return 0.0;
}

thread_local bool t_grad_mode = true;

int64_t element_size(const Tensor& t) {
  return static_cast<int64_t>(dtype_size(t.dtype()));
}

// Calls f(i, offset) for each element in logical order: i counts elements, offset is the element's
// position in storage (in elements, from the tensor's first element).
template <class F>
void for_each_strided_offset(const Tensor& t, F&& f) {
  const int64_t n = t.numel(), nd = t.dim();
  std::vector<int64_t> index(static_cast<size_t>(nd), 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t offset = 0;
    for (int64_t k = 0; k < nd; ++k) offset += index[k] * t.strides()[k];
    f(i, offset);
    for (int64_t k = nd - 1; k >= 0; --k) {
      if (++index[k] < t.shape()[k]) break;
      index[k] = 0;
    }
  }
}

std::atomic<bool> g_fill_uninitialized_memory{false};

// NaN for the floating types, the largest value for the integer ones.
void fill_host_uninitialized(void* p, DType dtype, int64_t n) {
  switch (dtype) {
    case DType::f32:
      std::fill_n(static_cast<float*>(p), n, std::numeric_limits<float>::quiet_NaN());
      return;
    case DType::bf16:
      std::fill_n(static_cast<bf16*>(p), n,
                  bf16::from_float(std::numeric_limits<float>::quiet_NaN()));
      return;
    case DType::i32:
      std::fill_n(static_cast<int32_t*>(p), n, std::numeric_limits<int32_t>::max());
      return;
    case DType::i64:
      std::fill_n(static_cast<int64_t*>(p), n, std::numeric_limits<int64_t>::max());
      return;
    case DType::u8:
      std::fill_n(static_cast<uint8_t*>(p), n, std::numeric_limits<uint8_t>::max());
      return;
  }
}

}  // namespace

void set_fill_uninitialized_memory(bool on) {
  g_fill_uninitialized_memory = on;
}

bool fill_uninitialized_memory() {
  return g_fill_uninitialized_memory;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(shape_nbytes(shape, dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  Tensor t(impl);
  if (g_fill_uninitialized_memory && t.numel() > 0) {
    if (device.is_cpu()) {
      fill_host_uninitialized(t.raw_data(), dtype, t.numel());
    } else {
      const Tensor pattern = empty(shape, dtype);
      copy_bytes(t.raw_data(), device, pattern.raw_data(), Device::cpu(), t.nbytes());
    }
  }
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) {
  return full(shape, 1.0, dtype, device);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor host = empty(shape, dtype);
  fill_host_any(host.raw_data(), dtype, host.numel(), value);
  return host.to(device);
}

Tensor Tensor::randn(const Shape& shape, Generator& gen, Device device) {
  Tensor host = empty(shape);
  float* p = host.data<float>();
  for (int64_t i = 0; i < host.numel(); ++i) p[i] = gen.normal();
  return host.to(device);
}

Tensor Tensor::uniform(const Shape& shape, float low, float high, Generator& gen, Device device) {
  Tensor host = empty(shape);
  float* p = host.data<float>();
  for (int64_t i = 0; i < host.numel(); ++i) p[i] = low + (high - low) * gen.uniform();
  return host.to(device);
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape, Device device) {
  DL_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape),
           "from_vector: ", values.size(), " values do not fill shape ", shape_str(shape));
  Tensor host = empty(shape);
  std::memcpy(host.raw_data(), values.data(), values.size() * sizeof(float));
  return host.to(device);
}

Tensor Tensor::from_vector(const std::vector<int64_t>& values, const Shape& shape, Device device) {
  DL_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape),
           "from_vector: ", values.size(), " values do not fill shape ", shape_str(shape));
  Tensor host = empty(shape, DType::i64);
  std::memcpy(host.raw_data(), values.data(), values.size() * sizeof(int64_t));
  return host.to(device);
}

TensorImpl& Tensor::impl() const {
  DL_CHECK(impl_ != nullptr, "use of an undefined tensor");
  return *impl_;
}

int64_t Tensor::size(int64_t d) const {
  const int64_t n = dim();
  if (d < 0) d += n;
  DL_CHECK(d >= 0 && d < n, "dimension ", d, " out of range for shape ", shape_str(shape()));
  return shape()[static_cast<size_t>(d)];
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape().size(); i-- > 0;) {
    if (shape()[i] != 1 && strides()[i] != expected) return false;
    expected *= shape()[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  return static_cast<char*>(impl().storage->data()) +
         impl().offset * static_cast<int64_t>(dtype_size(dtype()));
}

void Tensor::check_dtype(DType expected) const {
  DL_CHECK(dtype() == expected, "tensor has dtype ", dtype_name(dtype()), ", expected ",
           dtype_name(expected));
}

Tensor Tensor::reshape(const Shape& new_shape) const {
  Shape shape = new_shape;
  const auto infer = std::find(shape.begin(), shape.end(), int64_t{-1});
  if (infer != shape.end()) {
    DL_CHECK(std::find(infer + 1, shape.end(), int64_t{-1}) == shape.end(),
             "reshape: more than one -1 in ", shape_str(new_shape));
    Shape known_dims(shape.begin(), infer);
    known_dims.insert(known_dims.end(), infer + 1, shape.end());
    const int64_t known = shape_numel(known_dims);
    DL_CHECK(known > 0 && numel() % known == 0, "reshape: cannot infer -1 in ",
             shape_str(new_shape), " for ", numel(), " elements");
    *infer = numel() / known;
  }
  DL_CHECK(shape_numel(shape) == numel(), "reshape: shape ", shape_str(this->shape()),
           " cannot become ", shape_str(new_shape));
  const Tensor base = is_contiguous() ? *this : contiguous();
  Tensor out = view_of(base, shape, contiguous_strides(shape), base.impl().offset);
  const Shape in_shape = this->shape();
  record(out, "reshape", {*this}, [in_shape](const Tensor& g) {
    return std::vector<Tensor>{g.contiguous().reshape(in_shape)};
  });
  return out;
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  if (d < 0) d += dim();
  DL_CHECK(d >= 0 && d < dim(), "slice: dimension out of range for ", shape_str(shape()));
  const int64_t len = shape()[static_cast<size_t>(d)];
  DL_CHECK(0 <= start && start <= end && end <= len, "slice [", start, ", ", end,
           ") out of range for dimension ", d, " of size ", len);
  Shape shape = this->shape();
  shape[static_cast<size_t>(d)] = end - start;
  Tensor out =
      view_of(*this, shape, strides(), impl().offset + start * strides()[static_cast<size_t>(d)]);
  const Shape full_shape = this->shape();
  record(out, "slice", {*this}, [full_shape, d, start, end](const Tensor& g) {
    Tensor dx = Tensor::zeros(full_shape, g.dtype(), g.device());
    dx.slice(d, start, end).copy_(g);
    return std::vector<Tensor>{dx};
  });
  return out;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  DL_CHECK(device().is_cpu(), "contiguous() of a strided view is implemented on the CPU only");
  Tensor out = empty(shape(), dtype(), device());
  for_each_strided_offset(*this, [&](int64_t i, int64_t offset) {
    std::memcpy(static_cast<char*>(out.raw_data()) + i * element_size(*this),
                static_cast<const char*>(raw_data()) + offset * element_size(*this),
                element_size(*this));
  });
  record(out, "contiguous", {*this}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
  return out;
}

Tensor Tensor::clone() const {
  const Tensor src = contiguous();
  Tensor out = empty(shape(), dtype(), device());
  copy_bytes(out.raw_data(), device(), src.raw_data(), device(), nbytes());
  return out;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  const Tensor src = contiguous();
  Tensor out = empty(shape(), dtype(), target);
  copy_bytes(out.raw_data(), target, src.raw_data(), device(), nbytes());
  return out;
}

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  DL_CHECK(device().is_cpu(), "dtype conversion is implemented on the CPU only");
  const Tensor src = contiguous();
  Tensor out = empty(shape(), target);
  const int64_t n = numel();
  if (target == DType::bf16) {
    auto* d = out.data<bf16>();
    for (int64_t i = 0; i < n; ++i)
      d[i] = bf16::from_float(static_cast<float>(load_as_double(src.raw_data(), dtype(), i)));
  } else {
    for (int64_t i = 0; i < n; ++i)
      fill_host_any(static_cast<char*>(out.raw_data()) + i * dtype_size(target), target, 1,
                    load_as_double(src.raw_data(), dtype(), i));
  }
  return out;
}

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>(this->impl());
  impl->autograd.reset();
  return Tensor(impl);
}

void Tensor::copy_(const Tensor& src) {
  DL_CHECK(src.shape() == shape(), "copy_: shape ", shape_str(src.shape()), " into ",
           shape_str(shape()));
  DL_CHECK(src.dtype() == dtype(), "copy_: dtype ", dtype_name(src.dtype()), " into ",
           dtype_name(dtype()));
  const Tensor s = src.contiguous();
  mark_modified();
  if (is_contiguous()) {
    copy_bytes(raw_data(), device(), s.raw_data(), s.device(), nbytes());
    return;
  }
  DL_CHECK(device().is_cpu() && s.device().is_cpu(),
           "copy_ into a strided view is implemented on the CPU only");
  for_each_strided_offset(*this, [&](int64_t i, int64_t offset) {
    std::memcpy(static_cast<char*>(raw_data()) + offset * element_size(*this),
                static_cast<const char*>(s.raw_data()) + i * element_size(*this),
                element_size(*this));
  });
}

void Tensor::fill_(double value) {
  if (value == 0.0) return zero_();
  copy_(full(shape(), value, dtype()).to(device()));
}

void Tensor::mark_modified() const {
  impl().storage->bump_version();
}

void Tensor::zero_() {
  if (is_contiguous()) {
    mark_modified();
    device_backend(device()).memset_zero(raw_data(), nbytes());
  } else {
    copy_(zeros(shape(), dtype(), device()));
  }
}

float Tensor::item() const {
  DL_CHECK(numel() == 1, "item() of a tensor with ", numel(), " elements");
  const Tensor host = to(Device::cpu());
  return static_cast<float>(load_as_double(host.raw_data(), dtype(), 0));
}

std::vector<float> Tensor::to_vector() const {
  const Tensor host = to(Device::cpu()).contiguous();
  std::vector<float> out(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i)
    out[static_cast<size_t>(i)] = static_cast<float>(load_as_double(host.raw_data(), dtype(), i));
  return out;
}

bool Tensor::requires_grad() const {
  return impl().autograd && impl().autograd->requires_grad;
}

Tensor& Tensor::requires_grad_(bool value) {
  DL_CHECK(!value || dtype() == DType::f32 || dtype() == DType::bf16,
           "only floating-point tensors can require gradients");
  if (!impl().autograd) impl().autograd = std::make_shared<AutogradMeta>();
  DL_CHECK(!impl().autograd->grad_fn, "requires_grad_ on a non-leaf tensor");
  impl().autograd->requires_grad = value;
  return *this;
}

Tensor Tensor::grad() const {
  if (!impl().autograd || !impl().autograd->grad) return Tensor();
  return Tensor(impl().autograd->grad);
}

void Tensor::set_grad(const Tensor& grad) const {
  if (!impl().autograd) impl().autograd = std::make_shared<AutogradMeta>();
  DL_CHECK(!grad.defined() || grad.shape() == shape(), "set_grad: gradient shape ",
           shape_str(grad.shape()), " for a tensor of shape ", shape_str(shape()));
  impl().autograd->grad = grad.defined() ? grad.impl_ptr() : nullptr;
}

void Tensor::set_post_accumulate_grad_hook(std::function<void()> hook) const {
  if (!impl().autograd) impl().autograd = std::make_shared<AutogradMeta>();
  impl().autograd->post_accumulate_grad_hook = std::move(hook);
}

const std::shared_ptr<Node>& Tensor::grad_fn() const {
  static const std::shared_ptr<Node> none;
  return impl().autograd ? impl().autograd->grad_fn : none;
}

bool grad_mode_enabled() {
  return t_grad_mode;
}

NoGradGuard::NoGradGuard() : previous_(t_grad_mode) {
  t_grad_mode = false;
}
NoGradGuard::~NoGradGuard() {
  t_grad_mode = previous_;
}

}  // namespace dl
