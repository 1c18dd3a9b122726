// A small, strict JSON value type with a parser and a serializer; enough for safetensors headers.
// Objects keep their key order; numbers keep a double and, when integral, an exact int64.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace dl::io {

class JsonValue {
 public:
  enum class Type { null, boolean, number, string, array, object };
  using Array = std::vector<JsonValue>;
  using Object = std::vector<std::pair<std::string, JsonValue>>;

  JsonValue() = default;
  JsonValue(std::nullptr_t) {}
  JsonValue(bool b) : value_(std::in_place_type<bool>, b) {}
  JsonValue(double d);
  JsonValue(int64_t i) : value_(std::in_place_type<int64_t>, i) {}
  JsonValue(int i) : JsonValue(static_cast<int64_t>(i)) {}
  JsonValue(std::string s) : value_(std::in_place_type<std::string>, std::move(s)) {}
  JsonValue(const char* s) : JsonValue(std::string(s)) {}
  JsonValue(Array a) : value_(std::in_place_type<Array>, std::move(a)) {}
  JsonValue(Object o) : value_(std::in_place_type<Object>, std::move(o)) {}

  Type type() const;
  bool is_null() const { return type() == Type::null; }
  bool is_bool() const { return type() == Type::boolean; }
  bool is_number() const { return type() == Type::number; }
  // A number that is integral and exactly representable as int64.
  bool is_int() const { return std::holds_alternative<int64_t>(value_); }
  bool is_string() const { return type() == Type::string; }
  bool is_array() const { return type() == Type::array; }
  bool is_object() const { return type() == Type::object; }

  // Accessors throw dl::Error when the value has another type.
  bool as_bool() const {
    expect(Type::boolean);
    return std::get<bool>(value_);
  }
  double as_double() const;
  int64_t as_int() const;
  const std::string& as_string() const {
    expect(Type::string);
    return std::get<std::string>(value_);
  }
  const Array& as_array() const {
    expect(Type::array);
    return std::get<Array>(value_);
  }
  const Object& as_object() const {
    expect(Type::object);
    return std::get<Object>(value_);
  }
  // Member of an object by key; nullptr when absent. Throws when this is not an object.
  const JsonValue* find(std::string_view key) const;

 private:
  void expect(Type t) const;

  // One alternative per kind of value (40 bytes a value): an integral number that fits in int64
  // is held as int64_t, any other number as double.
  std::variant<std::nullptr_t, bool, int64_t, double, std::string, Array, Object> value_;
};

// Name of a JSON type for error messages ("object", "string", ...).
const char* json_type_name(JsonValue::Type t);

// Parses exactly one JSON value (surrounding whitespace allowed). Rejects duplicate object keys,
// invalid UTF-8, lone surrogates, nesting deeper than kMaxJsonDepth and documents of more than
// kMaxJsonValues values (every value counts, containers and object keys' values included), which
// bounds the memory a document can take. Errors are dl::Error naming the byte offset.
constexpr int kMaxJsonDepth = 64;
constexpr int64_t kMaxJsonValues = 1'000'000;
JsonValue parse_json(std::string_view text);

// Compact serialization (no whitespace); non-finite numbers are an error.
std::string to_json(const JsonValue& value);

}  // namespace dl::io
