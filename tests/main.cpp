// The Catch2 main of the test binaries. Every test runs with new tensors filled with NaN (or the
// largest integer: dl::set_fill_uninitialized_memory), so an op that leaves part of an output
// unwritten fails the test that reads it instead of passing on whatever the allocator's cache
// held.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "engine/tensor.h"

int main(int argc, char** argv) {
  dl::set_fill_uninitialized_memory(true);
  return Catch::Session().run(argc, argv);
}
