// A small, strict JSON value type with a parser and a serializer; enough for safetensors headers.
// Objects keep their key order; numbers keep a double and, when integral, an exact int64.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dl::io {

class JsonValue {
 public:
  enum class Type { null, boolean, number, string, array, object };
  using Array = std::vector<JsonValue>;
  using Object = std::vector<std::pair<std::string, JsonValue>>;

  JsonValue() = default;
  JsonValue(std::nullptr_t) {}
  JsonValue(bool b) : type_(Type::boolean), bool_(b) {}
  JsonValue(double d);
  JsonValue(int64_t i)
      : type_(Type::number), number_(static_cast<double>(i)), int_(i), is_int_(true) {}
  JsonValue(int i) : JsonValue(static_cast<int64_t>(i)) {}
  JsonValue(std::string s) : type_(Type::string), string_(std::move(s)) {}
  JsonValue(const char* s) : JsonValue(std::string(s)) {}
  JsonValue(Array a) : type_(Type::array), array_(std::move(a)) {}
  JsonValue(Object o) : type_(Type::object), object_(std::move(o)) {}

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::null; }
  bool is_bool() const { return type_ == Type::boolean; }
  bool is_number() const { return type_ == Type::number; }
  // A number that is integral and exactly representable as int64.
  bool is_int() const { return type_ == Type::number && is_int_; }
  bool is_string() const { return type_ == Type::string; }
  bool is_array() const { return type_ == Type::array; }
  bool is_object() const { return type_ == Type::object; }

  // Accessors throw dl::Error when the value has another type.
  bool as_bool() const {
    expect(Type::boolean);
    return bool_;
  }
  double as_double() const {
    expect(Type::number);
    return number_;
  }
  int64_t as_int() const;
  const std::string& as_string() const {
    expect(Type::string);
    return string_;
  }
  const Array& as_array() const {
    expect(Type::array);
    return array_;
  }
  const Object& as_object() const {
    expect(Type::object);
    return object_;
  }
  // Member of an object by key; nullptr when absent. Throws when this is not an object.
  const JsonValue* find(std::string_view key) const;

 private:
  void expect(Type t) const;

  Type type_ = Type::null;
  bool bool_ = false;
  double number_ = 0.0;
  int64_t int_ = 0;
  bool is_int_ = false;
  std::string string_;
  Array array_;
  Object object_;
};

// Name of a JSON type for error messages ("object", "string", ...).
const char* json_type_name(JsonValue::Type t);

// Parses exactly one JSON value (surrounding whitespace allowed). Rejects duplicate object keys,
// invalid UTF-8, lone surrogates and nesting deeper than kMaxJsonDepth. Errors are dl::Error
// naming the byte offset.
constexpr int kMaxJsonDepth = 64;
JsonValue parse_json(std::string_view text);

// Compact serialization (no whitespace); non-finite numbers are an error.
std::string to_json(const JsonValue& value);

}  // namespace dl::io
