// Element types and devices.
#pragma once
#include <cstdint>
#include <string>

#include "kernels/cpu/bf16.h"

namespace dl {

enum class DType : uint8_t { f32, bf16, i32, i64, u8 };

size_t dtype_size(DType t);
// Names as safetensors spells them: F32, BF16, I32, I64, U8.
const char* dtype_name(DType t);
// Inverse of dtype_name; throws dl::Error naming the unknown string.
DType dtype_from_name(const std::string& name);

// bfloat16 storage (kernels/cpu/bf16.h): the top 16 bits of an IEEE float.
using bf16 = cpu::bf16;

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::f32;
}
template <>
constexpr DType dtype_of<bf16>() {
  return DType::bf16;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::i32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::i64;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::u8;
}

enum class DeviceKind : uint8_t { cpu, cuda };

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;

  static Device cpu() { return {}; }
  static Device cuda(int index = 0) { return {DeviceKind::cuda, index}; }
  // "cpu", "cuda", "cuda:1"; throws dl::Error on anything else.
  static Device parse(const std::string& text);
  bool is_cpu() const { return kind == DeviceKind::cpu; }
  bool is_cuda() const { return kind == DeviceKind::cuda; }
  std::string str() const;
  bool operator==(const Device&) const = default;
};

}  // namespace dl
