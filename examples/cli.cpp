#include "examples/cli.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <iostream>
#include <optional>
#include <sstream>

#include "engine/error.h"

namespace dl::cli {

namespace {

// Whether `v` spells a boolean (true/1/yes/on, false/0/no/off); its value goes to *value.
bool is_boolean_word(const std::string& v, bool* value = nullptr) {
  const bool yes = v == "true" || v == "1" || v == "yes" || v == "on";
  const bool no = v == "false" || v == "0" || v == "no" || v == "off";
  if (value) *value = yes;
  return yes || no;
}

// The whole of `text` as a finite number; nothing when it is not one.
std::optional<double> to_real(const std::string& text) {
  size_t used = 0;
  double out = 0;
  try {
    out = std::stod(text, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (text.empty() || used != text.size() || !std::isfinite(out)) return std::nullopt;
  return out;
}

}  // namespace

int64_t parse_integer(const std::string& flag, const std::string& text) {
  // As std::stoll reads it: leading white space and one sign; then the whole rest.
  const char* begin = text.data() + std::min(text.find_first_not_of(" \t\n"), text.size());
  const char* end = text.data() + text.size();
  if (begin != end && *begin == '+' && end - begin > 1 && begin[1] != '-') ++begin;
  int64_t out = 0;
  const auto [stop, error] = std::from_chars(begin, end, out);
  DL_CHECK(error != std::errc::result_out_of_range, "flag --", flag, ": ", text,
           " is out of range [", std::numeric_limits<int64_t>::min(), ", ",
           std::numeric_limits<int64_t>::max(), "]");
  DL_CHECK(begin != end && error == std::errc() && stop == end, "flag --", flag, ": '", text,
           "' is not an integer");
  return out;
}

double parse_real(const std::string& flag, const std::string& text) {
  const std::optional<double> out = to_real(text);
  DL_CHECK(out.has_value(), "flag --", flag, ": '", text, "' is not a finite number");
  return *out;
}

std::pair<double, double> parse_real_range(const std::string& flag, const std::string& text,
                                           double default_max) {
  const size_t comma = text.find(',');
  const std::optional<double> min = to_real(text.substr(0, comma));
  const std::optional<double> max = comma == std::string::npos ? std::optional<double>(default_max)
                                                               : to_real(text.substr(comma + 1));
  DL_CHECK(min.has_value() && max.has_value(), "flag --", flag, ": '", text,
           "' is not MIN or MIN,MAX (finite numbers)");
  return {*min, *max};
}

bool parse_boolean(const std::string& flag, const std::string& text) {
  bool value = false;
  DL_CHECK(is_boolean_word(text, &value), "flag --", flag, ": '", text,
           "' is not a boolean (true/false, yes/no, on/off, 1/0)");
  return value;
}

void Flags::add(const std::string& name, const std::string& default_value,
                const std::string& help) {
  order_.push_back(name);
  flags_[name] = {default_value, default_value, help};
}

bool Flags::parse(int argc, char** argv) {
  bool flags_ended = false;  // after "--" every argument is positional
  std::string bare_boolean;  // a boolean flag given alone just before this argument
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (!flags_ended && (arg == "--help" || arg == "-h")) {
      std::cout << usage();
      return false;
    }
    if (!flags_ended && arg == "--") {
      flags_ended = true;
      bare_boolean.clear();
      continue;
    }
    if (flags_ended || arg.rfind("--", 0) != 0) {
      // "--hflip maybe" most likely meant a value for --hflip.
      DL_CHECK(!positional_name_.empty() || bare_boolean.empty(), "flag --", bare_boolean, ": '",
               arg, "' is not a boolean (true/false, yes/no, on/off, 1/0)");
      DL_CHECK(!positional_name_.empty(), "unexpected argument '", arg, "' (see --help)");
      positional_.push_back(arg);
      bare_boolean.clear();
      continue;
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto it = flags_.find(name);
    DL_CHECK(it != flags_.end(), "unknown flag --", name, " (see --help)");
    const bool is_bool = it->second.default_value == "true" || it->second.default_value == "false";
    // A boolean flag takes the next argument only when it is a boolean word, so that
    // "--json image.png" reads as "--json true image.png".
    const bool alone =
        is_bool && eq == std::string::npos && (i + 1 == argc || !is_boolean_word(argv[i + 1]));
    if (alone) {
      value = "true";
    } else if (eq == std::string::npos) {
      DL_CHECK(i + 1 < argc, "flag --", name, " needs a value");
      value = argv[++i];
    }
    it->second.value = value;
    it->second.given = true;
    bare_boolean = alone ? name : "";
  }
  return true;
}

std::string Flags::str(const std::string& name) const {
  auto it = flags_.find(name);
  DL_CHECK(it != flags_.end(), "internal: undeclared flag --", name);
  return it->second.value;
}

bool Flags::given(const std::string& name) const {
  auto it = flags_.find(name);
  DL_CHECK(it != flags_.end(), "internal: undeclared flag --", name);
  return it->second.given;
}

int64_t Flags::integer(const std::string& name) const {
  return parse_integer(name, str(name));
}

int64_t Flags::integer(const std::string& name, int64_t min, int64_t max) const {
  const int64_t v = integer(name);
  DL_CHECK(v >= min, "flag --", name, " must be at least ", min, ", got ", v);
  DL_CHECK(v <= max, "flag --", name, " must be at most ", max, ", got ", v);
  return v;
}

bool Flags::boolean(const std::string& name) const {
  return parse_boolean(name, str(name));
}

std::string Flags::usage() const {
  std::ostringstream out;
  out << "usage: " << program_ << " [flags]"
      << (positional_name_.empty() ? "" : " " + positional_name_ + "...") << "\n"
      << summary_ << "\n\nflags:\n";
  for (const auto& name : order_) {
    const Flag& f = flags_.at(name);
    out << "  --" << name << " (default: " << (f.default_value.empty() ? "\"\"" : f.default_value)
        << ")\n      " << f.help << "\n";
  }
  return out.str();
}

}  // namespace dl::cli
