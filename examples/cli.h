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

// A flag's text read whole as a value; each throws naming the flag when the text is not one.
int64_t parse_integer(const std::string& flag, const std::string& text);
double parse_real(const std::string& flag, const std::string& text);  // finite
// "MIN,MAX" as two numbers, or "MIN" alone with `default_max`.
std::pair<double, double> parse_real_range(const std::string& flag, const std::string& text,
                                           double default_max);
bool parse_boolean(const std::string& flag,
                   const std::string& text);  // true/false/1/0/yes/no/on/off

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
  // The value read as a number or a boolean (the parse_* functions above); the integer also
  // within [min, max].
  int64_t integer(const std::string& name) const;
  int64_t integer(const std::string& name, int64_t min,
                  int64_t max = std::numeric_limits<int64_t>::max()) const;
  bool boolean(const std::string& name) const;
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
