// What the fuzz targets share: the libFuzzer entry point each defines, a scratch folder for readers
// that take a path, and the encoding of several files in one input.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

// Called once per input by libFuzzer, or by replay_main.cpp. Returns 0; a finding aborts.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace dl::fuzz {

// A folder of this process, emptied by each call: readers of paths get their files here. Removed
// when the process exits normally.
std::filesystem::path fresh_scratch_folder();

// Writes bytes to path (creating its parent folders).
void write_file(const std::filesystem::path& path, std::span<const uint8_t> bytes);

// Several files in one input: each part is a 4-byte little-endian length, then that many bytes; a
// length past the end takes what remains. At most max_parts parts are read.
std::vector<std::span<const uint8_t>> split_parts(std::span<const uint8_t> input, size_t max_parts);
// The inverse, for writing seeds.
std::vector<uint8_t> join_parts(const std::vector<std::vector<uint8_t>>& parts);

}  // namespace dl::fuzz
