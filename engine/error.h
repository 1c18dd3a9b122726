// The engine's one error type and its check macro. Messages say what is wrong and, where there is
// one, what to do next.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace dl {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}
}  // namespace detail

}  // namespace dl

// DL_CHECK(cond, "message parts", value, ...): throws dl::Error with the parts concatenated.
#define DL_CHECK(cond, ...)                                            \
  do {                                                                 \
    if (!(cond)) throw ::dl::Error(::dl::detail::concat(__VA_ARGS__)); \
  } while (0)
