// data::decode_image_memory on any bytes: an image of width x height x channels pixels within the
// pixel budget, or an error message; never an exception.
#include <cstdlib>

#include "engine/data/image.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (int channels = 1; channels <= 4; ++channels) {
    const dl::data::DecodedImage image = dl::data::decode_image_memory({data, size}, channels);
    if (!image.error.empty()) {
      if (!image.pixels.empty()) std::abort();
      return 0;  // the other channel counts refuse it too
    }
    const int64_t pixels = int64_t{image.width} * image.height;
    if (image.width <= 0 || image.height <= 0 || pixels > dl::data::kMaxImagePixels ||
        image.pixels.size() != static_cast<size_t>(pixels * channels))
      std::abort();
  }
  return 0;
}
