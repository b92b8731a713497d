// coil::Error: the one exception type for user mistakes. Messages name the op and the values.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace coil {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... R>
void append(std::ostringstream& os, const T& v, const R&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

// Builds a message from any streamable pieces: COIL_CHECK(cond, "matmul: ", a.sizes(), " vs ",
// ...).
template <class... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  throw Error(os.str());
}

}  // namespace coil

#define COIL_CHECK(cond, ...)           \
  do {                                  \
    if (__builtin_expect(!(cond), 0)) { \
      ::coil::fail(__VA_ARGS__);        \
    }                                   \
  } while (0)
