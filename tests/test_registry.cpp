// The model registry: the size of a spec's state without building it, the bounds a spec must keep,
// and a checkpoint's metadata checked against the tensors the file holds before a model is built.
#include <unistd.h>

#include <filesystem>
#include <map>
#include <string>

#include "engine/error.h"
#include "engine/io/checkpoint.h"
#include "models/registry.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using Catch::Contains;
using dl::models::ModelSpec;

namespace {

ModelSpec convmixer(int64_t dim, int64_t depth, int64_t kernel, int64_t patch) {
  return {.name = "convmixer", .dim = dim, .depth = depth, .kernel = kernel, .patch = patch};
}

int64_t built_state_size(const ModelSpec& spec) {
  dl::Generator gen(0);
  int64_t n = 0;
  for (const auto& [name, t] : dl::models::make_model(spec, gen)->state_dict()) n += t.numel();
  return n;
}

// A checkpoint of `spec`'s model whose metadata is then changed by `edits`; removed on scope exit.
class Checkpoint {
 public:
  Checkpoint(const ModelSpec& spec, const std::map<std::string, std::string>& edits) {
    dl::Generator gen(0);
    std::map<std::string, std::string> metadata = spec.to_metadata();
    for (const auto& [key, value] : edits) metadata[key] = value;
    dl::io::save_checkpoint(path_.string(), *dl::models::make_model(spec, gen), nullptr, {},
                            metadata);
  }
  ~Checkpoint() {
    std::error_code ec;
    fs::remove(path_, ec);
  }
  const std::string path() const { return path_.string(); }
  ModelSpec spec() const { return ModelSpec::from_checkpoint(dl::io::read_checkpoint(path())); }

 private:
  fs::path path_ = fs::temp_directory_path() / ("dl_test_registry_" + std::to_string(::getpid()) +
                                                "_" + std::to_string(dl::test::fresh_seed()));
};

}  // namespace

TEST_CASE("state_size counts the parameters and buffers of the built model", "[models]") {
  for (const ModelSpec& spec :
       {convmixer(8, 2, 3, 2), convmixer(4, 0, 1, 4), convmixer(6, 1, 5, 1),
        ModelSpec{.name = "resnet", .dim = 4, .depth = 1, .classes = 3, .in_channels = 1},
        ModelSpec{.name = "resnet", .dim = 3, .depth = 2}}) {
    INFO(spec.describe());
    REQUIRE(dl::models::state_size(spec) == built_state_size(spec));
  }
}

TEST_CASE("a model spec is bounded, and the message names the bound", "[models]") {
  using dl::models::validate;
  REQUIRE_THROWS_WITH(validate(convmixer(8, 100'000'000, 5, 2)),
                      Contains("model depth must be in [0, 1024], got 100000000"));
  REQUIRE_THROWS_WITH(validate(convmixer(8, 1, 5, int64_t{1} << 31)),
                      Contains("ConvMixer patch must be in [1, 1024], got 2147483648"));
  REQUIRE_THROWS_WITH(validate(convmixer(8, 1, 65, 2)), Contains("must be odd and in [1, 63]"));
  REQUIRE_THROWS_WITH(validate(convmixer(16384, 1024, 5, 2)), Contains("over the limit of"));
  REQUIRE_NOTHROW(validate(convmixer(1536, 20, 9, 7)));
}

TEST_CASE("a checkpoint's model metadata must match the tensors it holds", "[models]") {
  const ModelSpec spec = convmixer(8, 2, 3, 2);
  REQUIRE(Checkpoint(spec, {}).spec().describe() == spec.describe());

  SECTION("a model larger than the file's tensors is refused before it is built") {
    const Checkpoint deeper(spec, {{"model.depth", "3"}});
    REQUIRE_THROWS_WITH(
        deeper.spec(),
        Contains(deeper.path() + ": its metadata describes 'convmixer dim=8 depth=3") &&
            Contains("but its model tensors hold"));
  }
  SECTION("sizes out of bounds name the file and the bound") {
    const Checkpoint deep(spec, {{"model.depth", "100000000"}});
    REQUIRE_THROWS_WITH(deep.spec(),
                        Contains(deep.path()) && Contains("model depth must be in [0, 1024]"));
  }
  SECTION("malformed numbers name the file and the key") {
    for (const std::string bad : {"1e8", "99999999999999999999", "-1", ""}) {
      const Checkpoint damaged(spec, {{"model.dim", bad}});
      REQUIRE_THROWS_WITH(damaged.spec(),
                          Contains(damaged.path() + ": the checkpoint's metadata 'model.dim' is '" +
                                   bad + "', not an integer"));
    }
  }
  SECTION("metadata alone (no tensors) with a 2^31 patch") {
    Checkpoint hostile(spec, {});
    std::map<std::string, std::string> metadata =
        convmixer(1, 0, 1, int64_t{1} << 31).to_metadata();
    metadata["model.in_channels"] = "1";
    metadata["format"] = dl::io::kCheckpointFormat;
    metadata["format_version"] = std::to_string(dl::io::kCheckpointVersion);
    dl::io::save_safetensors(hostile.path(), {}, metadata);
    REQUIRE_THROWS_WITH(hostile.spec(), Contains(hostile.path()) &&
                                            Contains("ConvMixer patch must be in [1, 1024]"));
  }
}
