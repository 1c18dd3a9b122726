// io::load_safetensors on any file: it is read, with every tensor's bytes inside the file, or
// refused with a dl::Error.
#include <cstdlib>

#include "engine/error.h"
#include "engine/io/safetensors.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = dl::fuzz::fresh_scratch_folder() / "input.safetensors";
  dl::fuzz::write_file(path, {data, size});
  try {
    const dl::io::SafetensorsFile file = dl::io::load_safetensors(path.string());
    int64_t bytes = 0;
    for (const auto& [name, tensor] : file.tensors) {
      if (name.empty() || file.find(name) == nullptr) std::abort();
      bytes += tensor.nbytes();
    }
    if (bytes > static_cast<int64_t>(size)) std::abort();  // every tensor's bytes are in the file
  } catch (const dl::Error&) {
  }
  return 0;
}
