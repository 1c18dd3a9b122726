// data::load_cifar10_binary on a folder made from the input's parts (fuzz_input.h): the first is
// test_batch.bin, a second batches.meta.txt. The set is read, every label a class, or refused
// with a dl::Error.
#include <cstdlib>

#include "engine/data/dataset.h"
#include "engine/error.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = dl::fuzz::split_parts({data, size}, 2);
  if (parts.empty()) return 0;
  const auto folder = dl::fuzz::fresh_scratch_folder();
  dl::fuzz::write_file(folder / "test_batch.bin", parts[0]);
  if (parts.size() > 1) dl::fuzz::write_file(folder / "batches.meta.txt", parts[1]);
  try {
    const dl::data::ImageDataset set =
        dl::data::load_cifar10_binary(folder.string(), dl::data::Split::test);
    for (int64_t label : set.labels)
      if (label < 0 || label >= static_cast<int64_t>(set.classes.size())) std::abort();
    if (set.pixels.size() != static_cast<size_t>(set.size() * set.image_bytes())) std::abort();
  } catch (const dl::Error&) {
  }
  return 0;
}
