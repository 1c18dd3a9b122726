// The safetensors checkpoint format: an 8-byte little-endian header length N, N bytes of JSON
// header {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ..., "__metadata__": {...}},
// then the raw little-endian tensor bytes (offsets are relative to the start of that buffer).
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace dl::io {

struct SafetensorsFile {
  std::vector<std::pair<std::string, Tensor>> tensors;  // CPU, contiguous; in header order
  std::map<std::string, std::string> metadata;
  // The tensor with this name, or nullptr.
  const Tensor* find(const std::string& name) const;
};

// Writes atomically (a temp file "<path>.tmp.<pid>", fsync, then rename over path). Tensors are
// copied to the CPU, made contiguous and laid out in name order without gaps; names must be unique
// and non-empty. The header is padded with spaces to a multiple of 8 bytes. The metadata gains
// "engine.data_crc32", the CRC-32 of the data buffer (other readers ignore it).
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Reads and validates the whole file; every problem is a dl::Error naming the file. When the file
// records "engine.data_crc32", damaged tensor data is such an error; the key is not returned.
SafetensorsFile load_safetensors(const std::string& path);

// dst.copy_(src) after checking that dtype and shape agree; a mismatch throws a dl::Error naming
// the file and the tensor, e.g. "<path>: tensor 'w' has shape [2, 3] but the model expects [3]".
void copy_checked(Tensor& dst, const Tensor& src, const std::string& name, const std::string& path);

}  // namespace dl::io
