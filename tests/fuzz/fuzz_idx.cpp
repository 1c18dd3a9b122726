// data::load_idx on a folder made from the input's parts (fuzz_input.h): the test images file,
// then the test labels file, each named .gz when it starts with gzip's magic bytes. The set is
// read, every label a class, or refused with a dl::Error.
#include <cstdlib>

#include "engine/data/dataset.h"
#include "engine/error.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

bool is_gzip(std::span<const uint8_t> bytes) {
  return bytes.size() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = dl::fuzz::split_parts({data, size}, 2);
  const auto folder = dl::fuzz::fresh_scratch_folder();
  const char* names[] = {"t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};
  for (size_t i = 0; i < parts.size(); ++i)
    dl::fuzz::write_file(folder / (std::string(names[i]) + (is_gzip(parts[i]) ? ".gz" : "")),
                         parts[i]);
  try {
    const dl::data::ImageDataset set = dl::data::load_idx(folder.string(), dl::data::Split::test);
    for (int64_t label : set.labels)
      if (label < 0 || label >= static_cast<int64_t>(set.classes.size())) std::abort();
    if (set.pixels.size() != static_cast<size_t>(set.size() * set.image_bytes())) std::abort();
  } catch (const dl::Error&) {
  }
  return 0;
}
