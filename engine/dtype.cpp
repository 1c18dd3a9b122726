#include "engine/dtype.h"

#include "engine/error.h"

namespace dl {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32:
      return 4;
    case DType::bf16:
      return 2;
    case DType::i32:
      return 4;
    case DType::i64:
      return 8;
    case DType::u8:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "F32";
    case DType::bf16:
      return "BF16";
    case DType::i32:
      return "I32";
    case DType::i64:
      return "I64";
    case DType::u8:
      return "U8";
  }
  return "?";
}

DType dtype_from_name(const std::string& name) {
  for (DType t : {DType::f32, DType::bf16, DType::i32, DType::i64, DType::u8})
    if (name == dtype_name(t)) return t;
  throw Error("unknown dtype '" + name + "' (supported: F32, BF16, I32, I64, U8)");
}

Device Device::parse(const std::string& text) {
  if (text == "cpu") return cpu();
  if (text == "cuda") return cuda(0);
  if (text.rfind("cuda:", 0) == 0) {
    const std::string idx = text.substr(5);
    DL_CHECK(!idx.empty() && idx.size() <= 4 &&
                 idx.find_first_not_of("0123456789") == std::string::npos,
             "bad device '", text, "' (expected cpu, cuda or cuda:N)");
    return cuda(std::stoi(idx));
  }
  throw Error("bad device '" + text + "' (expected cpu, cuda or cuda:N)");
}

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

}  // namespace dl
