// data::load_image_folder on a folder made from the input's parts (fuzz_input.h), at most 8: a
// part's first byte places the file (bits 0-1: class folder a..d; bits 2-3: extension .png, .jpg,
// .JPEG or .txt; bit 4: a hidden name), the rest is its content. The set is read, every image of
// one size, or refused with a dl::Error.
#include <cstdlib>
#include <string>

#include "engine/data/dataset.h"
#include "engine/error.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = dl::fuzz::split_parts({data, size}, 8);
  const auto root = dl::fuzz::fresh_scratch_folder();
  const char* extensions[] = {".png", ".jpg", ".JPEG", ".txt"};
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].empty()) continue;
    const uint8_t place = parts[i][0];
    const std::string name = std::string(place & 0x10 ? "." : "") + "image" + std::to_string(i) +
                             extensions[(place >> 2) & 3];
    dl::fuzz::write_file(
        root / "train" / std::string(1, static_cast<char>('a' + (place & 3))) / name,
        parts[i].subspan(1));
  }
  try {
    const dl::data::ImageDataset set =
        dl::data::load_image_folder(root.string(), dl::data::Split::train, 3);
    for (int64_t label : set.labels)
      if (label < 0 || label >= static_cast<int64_t>(set.classes.size())) std::abort();
    if (set.pixels.size() != static_cast<size_t>(set.size() * set.image_bytes())) std::abort();
  } catch (const dl::Error&) {
  }
  return 0;
}
