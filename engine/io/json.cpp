#include "engine/io/json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <vector>

#include "engine/error.h"

namespace dl::io {

namespace {

// JSON escape letters and the characters they stand for.
constexpr std::string_view kEscapeChars = "\"\\/bfnrt";
constexpr std::string_view kEscapeValues = "\"\\/\b\f\n\r\t";

// Exact int64 for an integral double in [-2^63, 2^63).
bool integral_int64(double d, int64_t* out) {
  if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0) || std::trunc(d) != d)
    return false;
  *out = static_cast<int64_t>(d);
  return true;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

class Parser {
 public:
  explicit Parser(std::string_view text) : s_(text) {}

  JsonValue parse_document() {
    JsonValue v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(detail::concat("JSON: ", what, " at byte ", pos_));
  }
  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return at_end() ? '\0' : s_[pos_]; }
  void skip_ws() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r'))
      ++pos_;
  }
  void expect_char(char c, const char* what) {
    skip_ws();
    if (peek() != c) fail(what);
    ++pos_;
  }
  bool consume(char c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  bool consume_word(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  JsonValue parse_value(int depth) {
    skip_ws();
    if (at_end()) fail("unexpected end of input");
    if (++values_ > kMaxJsonValues) fail(detail::concat("more than ", kMaxJsonValues, " values"));
    const char c = peek();
    if (c == '{') return parse_object(depth + 1);
    if (c == '[') return parse_array(depth + 1);
    if (c == '"') return JsonValue(parse_string());
    if (consume_word("true")) return JsonValue(true);
    if (consume_word("false")) return JsonValue(false);
    if (consume_word("null")) return JsonValue();
    if (c >= 'a' && c <= 'z') fail("invalid literal");
    return parse_number();
  }

  JsonValue parse_object(int depth) {
    if (depth > kMaxJsonDepth) fail(detail::concat("nesting deeper than ", kMaxJsonDepth));
    ++pos_;
    JsonValue::Object members;
    std::vector<size_t> key_offsets;
    skip_ws();
    if (consume('}')) return JsonValue(std::move(members));
    while (true) {
      skip_ws();
      if (peek() != '"') fail("expected a string key");
      key_offsets.push_back(pos_);
      std::string key = parse_string();
      expect_char(':', "expected ':' after an object key");
      members.emplace_back(std::move(key), parse_value(depth));
      skip_ws();
      if (consume('}')) break;
      expect_char(',', "expected ',' or '}' in an object");
    }
    check_unique_keys(members, key_offsets);
    return JsonValue(std::move(members));
  }

  // Fails at the first key, in text order, that repeats an earlier one.
  void check_unique_keys(const JsonValue::Object& members, const std::vector<size_t>& offsets) {
    std::vector<size_t> order(members.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return members[a].first < members[b].first; });
    size_t repeat = members.size();
    for (size_t i = 1; i < order.size(); ++i)
      if (members[order[i]].first == members[order[i - 1]].first)
        repeat = std::min(repeat, order[i]);
    if (repeat == members.size()) return;
    pos_ = offsets[repeat];
    fail("duplicate key \"" + members[repeat].first + "\"");
  }

  JsonValue parse_array(int depth) {
    if (depth > kMaxJsonDepth) fail(detail::concat("nesting deeper than ", kMaxJsonDepth));
    ++pos_;
    JsonValue::Array items;
    skip_ws();
    if (consume(']')) return JsonValue(std::move(items));
    while (true) {
      items.push_back(parse_value(depth));
      skip_ws();
      if (consume(']')) return JsonValue(std::move(items));
      expect_char(',', "expected ',' or ']' in an array");
    }
  }

  uint32_t parse_hex4() {
    if (s_.size() - pos_ < 4) fail("truncated \\u escape");
    uint32_t v = 0;
    const auto r = std::from_chars(s_.data() + pos_, s_.data() + pos_ + 4, v, 16);
    if (r.ptr != s_.data() + pos_ + 4) fail("invalid \\u escape");
    pos_ += 4;
    return v;
  }

  // One raw UTF-8 sequence starting at pos_ (lead byte >= 0x80), validated and copied.
  void copy_utf8(std::string& out) {
    const auto b = [&](size_t i) { return static_cast<uint8_t>(s_[pos_ + i]); };
    const uint8_t lead = b(0);
    const size_t len = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC2 ? 2 : 0;
    if (len == 0 || lead > 0xF4 || s_.size() - pos_ < len) fail("invalid UTF-8");
    uint32_t cp = lead & (0x7F >> len);
    for (size_t i = 1; i < len; ++i) {
      if ((b(i) & 0xC0) != 0x80) fail("invalid UTF-8");
      cp = (cp << 6) | (b(i) & 0x3F);
    }
    const uint32_t min = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) fail("invalid UTF-8");
    out.append(s_.substr(pos_, len));
    pos_ += len;
  }

  std::string parse_string() {
    ++pos_;
    std::string out;
    while (true) {
      if (at_end()) fail("unterminated string");
      if (consume('"')) return out;
      const auto c = static_cast<uint8_t>(s_[pos_]);
      if (c < 0x20) fail("control character in string");
      if (c >= 0x80) {
        copy_utf8(out);
        continue;
      }
      ++pos_;
      if (c != '\\') {
        out += static_cast<char>(c);
        continue;
      }
      if (at_end()) fail("unterminated string");
      const char e = s_[pos_++];
      if (e != 'u') {
        const size_t k = kEscapeChars.find(e);
        if (k == std::string_view::npos) {
          --pos_;
          fail("invalid escape");
        }
        out += kEscapeValues[k];
        continue;
      }
      uint32_t cp = parse_hex4();
      if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate in \\u escape");
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (s_.substr(pos_, 2) != "\\u") fail("high surrogate without a low surrogate");
        pos_ += 2;
        const uint32_t lo = parse_hex4();
        if (lo < 0xDC00 || lo > 0xDFFF) fail("high surrogate without a low surrogate");
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      }
      append_utf8(out, cp);
    }
  }

  // RFC 8259 grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  JsonValue parse_number() {
    const size_t start = pos_;
    const auto digits = [&] {
      const size_t from = pos_;
      while (peek() >= '0' && peek() <= '9') ++pos_;
      return pos_ - from;
    };
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
    } else if (digits() == 0) {
      pos_ = start;
      fail("expected a value");
    }
    bool integral = true;
    if (peek() == '.') {
      ++pos_;
      integral = false;
      if (digits() == 0) fail("expected digits after '.'");
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      integral = false;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (digits() == 0) fail("expected digits in the exponent");
    }
    const char* first = s_.data() + start;
    const char* last = s_.data() + pos_;
    int64_t i = 0;
    if (integral && std::from_chars(first, last, i).ec == std::errc()) return JsonValue(i);
    double d = 0.0;
    if (std::from_chars(first, last, d).ec != std::errc() || !std::isfinite(d)) {
      pos_ = start;
      fail("number out of range");
    }
    return JsonValue(d);
  }

  std::string_view s_;
  size_t pos_ = 0;
  int64_t values_ = 0;
};

void write_string(std::string& out, const std::string& s) {
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<uint8_t>(ch);
    const size_t k = c == '/' ? std::string_view::npos : kEscapeValues.find(ch);
    if (k != std::string_view::npos) {
      out += '\\';
      out += kEscapeChars[k];
    } else if (c < 0x20) {
      out += "\\u00";
      out += "0123456789abcdef"[c >> 4];
      out += "0123456789abcdef"[c & 0xF];
    } else {
      out += ch;
    }
  }
  out += '"';
}

void write_value(std::string& out, const JsonValue& v) {
  if (v.is_null()) {
    out += "null";
  } else if (v.is_bool()) {
    out += v.as_bool() ? "true" : "false";
  } else if (v.is_number()) {
    DL_CHECK(std::isfinite(v.as_double()), "to_json: ", v.as_double(), " is not valid JSON");
    char buf[32];
    const auto r = v.is_int() ? std::to_chars(buf, buf + sizeof buf, v.as_int())
                              : std::to_chars(buf, buf + sizeof buf, v.as_double());
    out.append(buf, r.ptr);
  } else if (v.is_string()) {
    write_string(out, v.as_string());
  } else if (v.is_array()) {
    out += '[';
    for (size_t i = 0; i < v.as_array().size(); ++i) {
      if (i) out += ',';
      write_value(out, v.as_array()[i]);
    }
    out += ']';
  } else {
    out += '{';
    for (size_t i = 0; i < v.as_object().size(); ++i) {
      if (i) out += ',';
      write_string(out, v.as_object()[i].first);
      out += ':';
      write_value(out, v.as_object()[i].second);
    }
    out += '}';
  }
}

}  // namespace

JsonValue::JsonValue(double d) : value_(std::in_place_type<double>, d) {
  int64_t i = 0;
  if (integral_int64(d, &i)) value_.emplace<int64_t>(i);
}

JsonValue::Type JsonValue::type() const {
  static constexpr Type types[] = {Type::null,   Type::boolean, Type::number, Type::number,
                                   Type::string, Type::array,   Type::object};
  return types[value_.index()];
}

double JsonValue::as_double() const {
  expect(Type::number);
  return is_int() ? static_cast<double>(std::get<int64_t>(value_)) : std::get<double>(value_);
}

const char* json_type_name(JsonValue::Type t) {
  static const char* names[] = {"null", "boolean", "number", "string", "array", "object"};
  return names[static_cast<int>(t)];
}

void JsonValue::expect(Type t) const {
  DL_CHECK(type() == t, "JSON: expected ", json_type_name(t), ", got ", json_type_name(type()));
}

int64_t JsonValue::as_int() const {
  expect(Type::number);
  DL_CHECK(is_int(), "JSON: ", as_double(), " is not an integer that fits in int64");
  return std::get<int64_t>(value_);
}

const JsonValue* JsonValue::find(std::string_view key) const {
  for (const auto& [k, v] : as_object())
    if (k == key) return &v;
  return nullptr;
}

JsonValue parse_json(std::string_view text) {
  return Parser(text).parse_document();
}

std::string to_json(const JsonValue& value) {
  std::string out;
  write_value(out, value);
  return out;
}

}  // namespace dl::io
