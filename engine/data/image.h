// Decoding one image file: PNG (stb_image) or JPEG (libjpeg), told apart by their signatures;
// nothing else is read, whatever the file's name.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace dl::data {

// The most pixels an image may have, PIL's limit (Image.MAX_IMAGE_PIXELS): checked from the
// file's header before it is decoded.
inline constexpr int64_t kMaxImagePixels = 89'478'485;

struct DecodedImage {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;  // [height, width, channels]; empty on failure
  std::string error;            // why the file could not be read; empty on success
};

// A PNG or JPEG file decoded into `channels` (1..4) components: grey, grey + alpha, RGB, RGBA, with
// stb_image's conversions (grey = (77 R + 150 G + 29 B) >> 8, an added alpha is opaque); 16-bit
// PNGs keep the high byte of each value. Never throws for a bad file: error says "no such file",
// "is a directory", "not a regular file", "empty file", "cannot open (<reason>)", "not a PNG or
// JPEG file", "image is <w>x<h>, over the limit of ... pixels", or why the decoder refused it
// ("cannot decode the PNG (stb_image: <reason>)", "cannot decode the JPEG (libjpeg: <reason>)");
// a truncated or corrupt JPEG is refused, not decoded as far as it goes.
DecodedImage decode_image(const std::string& path, int channels);
// The same for a file's bytes already in memory (the errors about opening a file aside).
DecodedImage decode_image_memory(std::span<const uint8_t> bytes, int channels);

}  // namespace dl::data
