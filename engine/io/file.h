// Opening files that come from users: only regular files, and never a read that can block.
#pragma once
#include <cstdio>
#include <memory>
#include <string>

namespace dl::io {

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

// Opens `path` for binary reading. The file is opened without blocking (O_NONBLOCK) and checked
// with fstat before anything is read, so a FIFO or a device is refused instead of waited on.
// Returns nullptr with `error` set to "no such file", "is a directory", "not a regular file" or
// "cannot open (<reason>)".
File open_regular_file(const std::string& path, std::string* error);

}  // namespace dl::io
