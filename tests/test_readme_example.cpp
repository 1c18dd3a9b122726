// The README's "a network of your own" example, compiled from the README itself
// (tests/CMakeLists.txt extracts its ```cpp block into readme_example.inc), so the documentation
// cannot drift from the engine: it must build, train on a few batches and save a file that loads
// back.
#include <catch2/catch.hpp>
#include <filesystem>

#include "readme_example.inc"
#include "test_util.h"

TEST_CASE("The README's example network trains and saves a state dict") {
  Generator gen(test::fresh_seed());
  std::vector<std::pair<Tensor, Tensor>> batches;
  for (int b = 0; b < 3; ++b) {
    std::vector<int64_t> labels(8);
    for (auto& l : labels) l = static_cast<int64_t>(gen.below(10));
    batches.emplace_back(Tensor::randn({8, 28, 28, 1}, gen), Tensor::from_vector(labels, {8}));
  }
  const auto dir = std::filesystem::temp_directory_path() /
                   ("dl_readme_example_" + std::to_string(test::fresh_seed()));
  std::filesystem::create_directories(dir);
  const auto here = std::filesystem::current_path();
  std::filesystem::current_path(dir);  // the example writes net.safetensors where it runs
  train(batches);
  std::filesystem::current_path(here);
  const auto saved = io::load_safetensors((dir / "net.safetensors").string());
  CHECK(saved.find("6.weight") != nullptr);  // the Linear layer, PyTorch's Sequential naming
  std::filesystem::remove_all(dir);
}
