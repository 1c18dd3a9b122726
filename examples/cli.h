// A small command-line flag parser for the example binaries: --name value or --name=value
// (a boolean flag alone means true; it takes the next argument only when that is true/false/...),
// defaults shown by --help, one clear error for an unknown flag or a bad value.
#pragma once
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace dl::cli {

class Flags {
 public:
  explicit Flags(std::string program, std::string summary)
      : program_(std::move(program)), summary_(std::move(summary)) {}
  // Declares a flag with its default (as text) and help line.
  void add(const std::string& name, const std::string& default_value, const std::string& help);
  // Parses argv. Returns false when --help was given (usage already printed); throws dl::Error
  // naming the flag on an unknown flag or a missing value.
  bool parse(int argc, char** argv);
  // Lets parse() collect arguments that are not flags (e.g. file names) instead of rejecting them;
  // `what` names them in the usage line.
  void allow_positional(std::string what) { positional_name_ = std::move(what); }
  const std::vector<std::string>& positional() const { return positional_; }
  std::string str(const std::string& name) const;
  // True when the command line gave the flag (not just its default).
  bool given(const std::string& name) const;
  // Replaces a flag's value (e.g. from a checkpoint's recorded flags); given() still tells
  // whether the command line gave it.
  void set(const std::string& name, const std::string& value);
  // Every flag and its value, in declaration order.
  std::vector<std::pair<std::string, std::string>> values() const;
  // The value read as a number or a boolean; each throws naming the flag when the value is not
  // one (or is outside [min, max]).
  int64_t integer(const std::string& name) const;
  int64_t integer(const std::string& name, int64_t min,
                  int64_t max = std::numeric_limits<int64_t>::max()) const;
  double real(const std::string& name) const;  // finite
  // "MIN,MAX" as two numbers, or "MIN" alone with `default_max`.
  std::pair<double, double> real_range(const std::string& name, double default_max) const;
  bool boolean(const std::string& name) const;  // true/false/1/0/yes/no/on/off
  std::string usage() const;

 private:
  struct Flag {
    std::string value, default_value, help;
    bool given = false;
  };
  std::string program_, summary_, positional_name_;
  std::vector<std::string> positional_;
  std::vector<std::string> order_;
  std::map<std::string, Flag> flags_;
};

}  // namespace dl::cli
