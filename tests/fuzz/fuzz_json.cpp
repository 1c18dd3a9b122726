// io::parse_json on any bytes: a document is parsed or refused with a dl::Error; one that parses
// serializes to text that parses back to the same serialization.
#include <cstdlib>
#include <string>
#include <string_view>

#include "engine/error.h"
#include "engine/io/json.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::string serialized;
  try {
    serialized = dl::io::to_json(dl::io::parse_json(text));
  } catch (const dl::Error&) {
    return 0;
  }
  if (dl::io::to_json(dl::io::parse_json(serialized)) != serialized) std::abort();
  return 0;
}
