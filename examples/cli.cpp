#include "examples/cli.h"

#include <iostream>
#include <sstream>

#include "engine/error.h"

namespace dl::cli {

void Flags::add(const std::string& name, const std::string& default_value,
                const std::string& help) {
  order_.push_back(name);
  flags_[name] = {default_value, default_value, help};
}

bool Flags::parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << usage();
      return false;
    }
    if (arg.rfind("--", 0) != 0) {
      DL_CHECK(!positional_name_.empty(), "unexpected argument '", arg, "' (see --help)");
      positional_.push_back(arg);
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
    if (eq == std::string::npos) {
      if (is_bool && (i + 1 == argc || std::string(argv[i + 1]).rfind("--", 0) == 0)) {
        value = "true";
      } else {
        DL_CHECK(i + 1 < argc, "flag --", name, " needs a value");
        value = argv[++i];
      }
    }
    it->second.value = value;
    it->second.given = true;
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

void Flags::set(const std::string& name, const std::string& value) {
  auto it = flags_.find(name);
  DL_CHECK(it != flags_.end(), "unknown flag --", name);
  it->second.value = value;
  it->second.given = true;
}

std::vector<std::pair<std::string, std::string>> Flags::values() const {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& name : order_) out.emplace_back(name, flags_.at(name).value);
  return out;
}

int64_t Flags::integer(const std::string& name) const {
  const std::string v = str(name);
  size_t used = 0;
  int64_t out = 0;
  try {
    out = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  DL_CHECK(!v.empty() && used == v.size(), "flag --", name, ": '", v, "' is not an integer");
  return out;
}

double Flags::real(const std::string& name) const {
  const std::string v = str(name);
  size_t used = 0;
  double out = 0;
  try {
    out = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  DL_CHECK(!v.empty() && used == v.size(), "flag --", name, ": '", v, "' is not a number");
  return out;
}

bool Flags::boolean(const std::string& name) const {
  const std::string v = str(name);
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  throw Error("flag --" + name + ": '" + v + "' is not a boolean (true/false)");
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
