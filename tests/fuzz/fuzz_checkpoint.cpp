// A checkpoint as predict reads it: io::read_checkpoint, ModelSpec::from_checkpoint, the metadata
// predict and a resume read, then the model built and loaded, and its moving average (ema.).
// Each step succeeds or throws a dl::Error.
#include "engine/error.h"
#include "engine/io/checkpoint.h"
#include "engine/random.h"
#include "models/registry.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = (dl::fuzz::fresh_scratch_folder() / "last.safetensors").string();
  dl::fuzz::write_file(path, {data, size});
  try {
    const dl::io::Checkpoint checkpoint = dl::io::read_checkpoint(path);
    const auto& metadata = checkpoint.metadata;
    for (const char* key : {"data.height", "data.width"})
      if (metadata.count(key)) dl::io::metadata_integer(metadata, key, 1, INT64_MAX, path);
    for (const char* key : {"data.mean", "data.std"})
      if (metadata.count(key)) dl::io::metadata_floats(metadata, key, path);
    if (metadata.count("data.classes")) dl::io::metadata_strings(metadata, "data.classes", path);
    if (metadata.count("flags")) dl::io::metadata_string_object(metadata, "flags", path);
    const dl::models::ModelSpec spec = dl::models::ModelSpec::from_checkpoint(checkpoint);
    dl::Generator gen(0);
    const auto model = dl::models::make_model(spec, gen);
    dl::io::load_checkpoint(checkpoint, *model, nullptr);
    // The moving average of the weights (--ema), as evaluate and predict --ema load it.
    const auto average = dl::models::make_model(spec, gen);
    dl::io::load_weights(checkpoint, *average, true);
  } catch (const dl::Error&) {
  }
  return 0;
}
