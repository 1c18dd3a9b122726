#include "engine/io/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>

namespace dl::io {

namespace {

std::string open_error(int err) {
  if (err == ENOENT || err == ENOTDIR) return "no such file";
  std::string reason = std::strerror(err);
  if (!reason.empty())
    reason[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(reason[0])));
  return "cannot open (" + reason + ")";
}

}  // namespace

File open_regular_file(const std::string& path, std::string* error) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) {
    *error = open_error(errno);
    return nullptr;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    *error = S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file";
    ::close(fd);
    return nullptr;
  }
  File file(::fdopen(fd, "rb"));
  if (!file) {
    *error = open_error(errno);
    ::close(fd);
  }
  return file;
}

}  // namespace dl::io
