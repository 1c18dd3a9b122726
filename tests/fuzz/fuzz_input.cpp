#include "tests/fuzz/fuzz_input.h"

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace dl::fuzz {

namespace fs = std::filesystem;

namespace {

class ScratchFolder {
 public:
  ScratchFolder() {
    std::string pattern = (fs::temp_directory_path() / "dl-fuzz-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("fuzz: cannot create " + pattern);
    path_ = pattern;
  }
  ScratchFolder(const ScratchFolder&) = delete;
  ScratchFolder& operator=(const ScratchFolder&) = delete;
  ~ScratchFolder() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

}  // namespace

fs::path fresh_scratch_folder() {
  static const ScratchFolder scratch;
  for (const fs::directory_entry& entry : fs::directory_iterator(scratch.path()))
    fs::remove_all(entry.path());
  return scratch.path();
}

void write_file(const fs::path& path, std::span<const uint8_t> bytes) {
  fs::create_directories(path.parent_path());
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (!file) throw std::runtime_error("fuzz: cannot write " + path.string());
  const size_t written = std::fwrite(bytes.data(), 1, bytes.size(), file);
  if (std::fclose(file) != 0 || written != bytes.size())
    throw std::runtime_error("fuzz: cannot write " + path.string());
}

std::vector<std::span<const uint8_t>> split_parts(std::span<const uint8_t> input,
                                                  size_t max_parts) {
  std::vector<std::span<const uint8_t>> parts;
  while (input.size() >= 4 && parts.size() < max_parts) {
    const size_t length =
        size_t{input[0]} | size_t{input[1]} << 8 | size_t{input[2]} << 16 | size_t{input[3]} << 24;
    input = input.subspan(4);
    const size_t taken = std::min(length, input.size());
    parts.push_back(input.first(taken));
    input = input.subspan(taken);
  }
  return parts;
}

std::vector<uint8_t> join_parts(const std::vector<std::vector<uint8_t>>& parts) {
  std::vector<uint8_t> out;
  for (const std::vector<uint8_t>& part : parts) {
    const auto length = static_cast<uint32_t>(part.size());
    for (int shift = 0; shift < 32; shift += 8)
      out.push_back(static_cast<uint8_t>(length >> shift));
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

}  // namespace dl::fuzz
