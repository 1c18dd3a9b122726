#include "engine/data/image.h"

// clang-format off
#include <cstdio>  // jpeglib.h needs FILE and size_t declared first
#include <jpeglib.h>
#include <jerror.h>
// clang-format on
#include <stb_image.h>

#include <climits>
#include <csetjmp>
#include <cstring>
#include <memory>
#include <span>

#include "engine/error.h"
#include "engine/io/file.h"

namespace dl::data {

namespace {

constexpr uint8_t kPngSignature[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
constexpr uint8_t kJpegSignature[] = {0xFF, 0xD8, 0xFF};
// A progressive JPEG re-reads the image's coefficients for every scan, so a file of many tiny
// scans costs time out of proportion to its size; libjpeg-turbo's advice for untrusted files is
// to cap them (its djpeg -maxscans). Real encoders write about ten.
constexpr int kMaxJpegScans = 500;

template <size_t N>
bool starts_with(std::span<const uint8_t> bytes, const uint8_t (&signature)[N]) {
  return bytes.size() >= N && std::memcmp(bytes.data(), signature, N) == 0;
}

std::string over_budget(int64_t width, int64_t height) {
  if (width * height <= kMaxImagePixels) return "";
  return detail::concat("image is ", width, "x", height, ", over the limit of ", kMaxImagePixels,
                        " pixels");
}

// stb_image's conversion of 8-bit grey (from = 1) or RGB (from = 3) samples to `to` components.
std::vector<uint8_t> convert_components(const std::vector<uint8_t>& src, int from, int to) {
  if (from == to) return src;
  const size_t pixels = src.size() / static_cast<size_t>(from);
  std::vector<uint8_t> out(pixels * static_cast<size_t>(to));
  for (size_t i = 0; i < pixels; ++i) {
    const uint8_t* s = &src[i * static_cast<size_t>(from)];
    uint8_t* d = &out[i * static_cast<size_t>(to)];
    const uint8_t grey =
        from == 1 ? s[0] : static_cast<uint8_t>((s[0] * 77 + s[1] * 150 + s[2] * 29) >> 8);
    if (to <= 2) {
      d[0] = grey;
    } else {
      d[0] = from == 1 ? grey : s[0];
      d[1] = from == 1 ? grey : s[1];
      d[2] = from == 1 ? grey : s[2];
    }
    if (to == 2 || to == 4) d[to - 1] = 255;
  }
  return out;
}

// ---- JPEG (libjpeg) -----------------------------------------------------------------------------

// libjpeg reports errors through callbacks that must not return: they longjmp back to
// decode_jpeg_samples. The message is kept in a plain buffer (nothing may throw inside libjpeg).
struct JpegErrors {
  jpeg_error_mgr manager;  // first member: libjpeg's pointer to it is a pointer to this
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void jpeg_fail(j_common_ptr cinfo) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, errors->message);
  std::longjmp(errors->jump, 1);
}

// libjpeg's warnings (level -1) report damaged data: a premature end of the file or of a segment,
// bad Huffman or arithmetic codes, extraneous bytes. Each is refused like an error, except the two
// that leave the pixels alone (an unknown JFIF revision, a bad ICC marker). Trace messages
// (level >= 0) are ignored.
void jpeg_warn(j_common_ptr cinfo, int level) {
  const int code = cinfo->err->msg_code;
  if (level < 0 && code != JWRN_JFIF_MAJOR && code != JWRN_BOGUS_ICC) jpeg_fail(cinfo);
}

void jpeg_limit_scans(j_common_ptr cinfo) {
  const auto* decompress = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (decompress->input_scan_number <= kMaxJpegScans) return;
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  std::snprintf(errors->message, sizeof errors->message, "more than %d scans", kMaxJpegScans);
  std::longjmp(errors->jump, 1);
}

// Decodes to grey (1 component) or RGB (3) in `samples`; returns the number of components, or 0
// with `error` set. No object with a destructor is created between setjmp and a longjmp to it.
int decode_jpeg_samples(std::span<const uint8_t> bytes, DecodedImage& image,
                        std::vector<uint8_t>& samples) {
  jpeg_decompress_struct cinfo{};
  JpegErrors errors{};
  cinfo.err = jpeg_std_error(&errors.manager);
  errors.manager.error_exit = jpeg_fail;
  errors.manager.emit_message = jpeg_warn;
  jpeg_progress_mgr progress{};
  progress.progress_monitor = jpeg_limit_scans;
  if (setjmp(errors.jump)) {
    jpeg_destroy_decompress(&cinfo);
    image.error = std::string("cannot decode the JPEG (libjpeg: ") + errors.message + ")";
    return 0;
  }
  jpeg_create_decompress(&cinfo);
  cinfo.progress = &progress;
  jpeg_mem_src(&cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  image.error = over_budget(cinfo.image_width, cinfo.image_height);
  if (!image.error.empty()) {
    jpeg_destroy_decompress(&cinfo);
    return 0;
  }
  cinfo.out_color_space = cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  const int components = cinfo.output_components;
  const size_t row_bytes = size_t{cinfo.output_width} * static_cast<size_t>(components);
  try {
    samples.resize(row_bytes * cinfo.output_height);
  } catch (...) {
    jpeg_destroy_decompress(&cinfo);
    throw;
  }
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = samples.data() + row_bytes * cinfo.output_scanline;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  image.width = static_cast<int>(cinfo.output_width);
  image.height = static_cast<int>(cinfo.output_height);
  jpeg_destroy_decompress(&cinfo);
  return components;
}

void decode_jpeg(std::span<const uint8_t> bytes, int channels, DecodedImage& image) {
  std::vector<uint8_t> samples;
  const int components = decode_jpeg_samples(bytes, image, samples);
  if (components == 0) return;
  image.pixels = convert_components(samples, components, channels);
}

// ---- PNG (stb_image) ----------------------------------------------------------------------------

// Why the PNG's chunks run past the end of its bytes, or "" when every chunk up to IEND lies
// inside them (a missing IEND is left to stb_image). stb sizes its buffer for the image data from
// a chunk's declared length before reading the chunk, so this check comes first: a 100-byte file
// declaring a 2 GB IDAT chunk made it allocate 2 GB.
std::string png_chunk_past_end(std::span<const uint8_t> bytes) {
  const auto be32 = [&](size_t at) {
    return uint32_t{bytes[at]} << 24 | uint32_t{bytes[at + 1]} << 16 |
           uint32_t{bytes[at + 2]} << 8 | bytes[at + 3];
  };
  size_t at = sizeof kPngSignature;
  while (bytes.size() - at >= 8) {                         // length and type
    const uint64_t chunk_bytes = uint64_t{be32(at)} + 12;  // with its length, type and CRC
    if (chunk_bytes > bytes.size() - at)
      return detail::concat("a chunk claims ", chunk_bytes - 12,
                            " bytes, past the end of the file");
    if (std::memcmp(&bytes[at + 4], "IEND", 4) == 0) break;
    at += chunk_bytes;
  }
  return "";
}

void decode_png(std::span<const uint8_t> bytes, int channels, DecodedImage& image) {
  if (bytes.size() > static_cast<size_t>(INT_MAX)) {
    image.error = "file is too large for a PNG";
    return;
  }
  if (const std::string past_end = png_chunk_past_end(bytes); !past_end.empty()) {
    image.error = "cannot decode the PNG (" + past_end + ")";
    return;
  }
  const auto* data = bytes.data();
  const int size = static_cast<int>(bytes.size());
  int width = 0, height = 0, components = 0;
  const auto stb_error = [] {
    return std::string("cannot decode the PNG (stb_image: ") + stbi_failure_reason() + ")";
  };
  if (!stbi_info_from_memory(data, size, &width, &height, &components)) {
    image.error = stb_error();
    return;
  }
  image.error = over_budget(width, height);
  if (!image.error.empty()) return;
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(
      stbi_load_from_memory(data, size, &image.width, &image.height, &components, channels),
      stbi_image_free);
  if (!pixels) {
    image.error = stb_error();
    return;
  }
  image.pixels.assign(pixels.get(),
                      pixels.get() + static_cast<size_t>(image.width) * image.height * channels);
}

}  // namespace

DecodedImage decode_image(const std::string& path, int channels) {
  DL_CHECK(channels >= 1 && channels <= 4, "decode_image: channels must be 1..4, got ", channels);
  DecodedImage image;
  const io::File file = io::open_regular_file(path, &image.error);
  if (!file) return image;
  std::vector<uint8_t> bytes;
  for (char buffer[1 << 16];;) {
    const size_t got = std::fread(buffer, 1, sizeof buffer, file.get());
    bytes.insert(bytes.end(), buffer, buffer + got);
    if (got < sizeof buffer) break;
  }
  if (std::ferror(file.get())) {
    image.error = "read failed";
    return image;
  }
  return decode_image_memory(bytes, channels);
}

DecodedImage decode_image_memory(std::span<const uint8_t> bytes, int channels) {
  DL_CHECK(channels >= 1 && channels <= 4, "decode_image: channels must be 1..4, got ", channels);
  DecodedImage image;
  if (bytes.empty()) {
    image.error = "empty file";
    return image;
  }
  if (starts_with(bytes, kPngSignature))
    decode_png(bytes, channels, image);
  else if (starts_with(bytes, kJpegSignature))
    decode_jpeg(bytes, channels, image);
  else
    image.error = "not a PNG or JPEG file";
  if (!image.error.empty()) image.pixels.clear();
  return image;
}

}  // namespace dl::data
