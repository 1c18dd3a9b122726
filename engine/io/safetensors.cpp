#include "engine/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <tuple>

#include <zlib.h>

#include "engine/error.h"
#include "engine/io/file.h"
#include "engine/io/json.h"

namespace dl::io {

namespace {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes little-endian");

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit
constexpr const char* kMetadataKey = "__metadata__";
// The writer records the CRC-32 of the data buffer under this metadata key; the reader checks it
// when present (files from other writers have none) and does not return it with the metadata.
constexpr const char* kChecksumKey = "engine.data_crc32";

// Eight lower-case hex digits, as the checksum is recorded.
std::string hex32(uint32_t v) {
  char text[9];
  std::snprintf(text, sizeof text, "%08x", v);
  return text;
}

// zlib's CRC-32 continued over `bytes` more bytes; the CRC of nothing is 0. Empty tensors are
// skipped: zlib treats a null pointer as "start again".
uint32_t crc32_update(uint32_t crc, const void* data, size_t bytes) {
  if (bytes == 0) return crc;
  return static_cast<uint32_t>(
      crc32_z(crc, static_cast<const Bytef*>(data), static_cast<z_size_t>(bytes)));
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error(path + ": " + what);
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

Entry parse_entry(const std::string& path, const std::string& name, const JsonValue& v,
                  uint64_t buffer_bytes) {
  const auto bad = [&](const std::string& what) { fail(path, "tensor '" + name + "': " + what); };
  if (!v.is_object())
    bad(std::string("entry is a ") + json_type_name(v.type()) + ", expected an object");
  Entry e{name, DType::f32, {}, 0, 0};

  const JsonValue* dtype = v.find("dtype");
  if (!dtype || !dtype->is_string()) bad("\"dtype\" is missing or not a string");
  try {
    e.dtype = dtype_from_name(dtype->as_string());
  } catch (const Error& err) {
    bad(err.what());
  }

  const JsonValue* shape = v.find("shape");
  if (!shape || !shape->is_array()) bad("\"shape\" is missing or not an array");
  for (const JsonValue& d : shape->as_array()) {
    if (!d.is_int()) bad("\"shape\" holds a non-integer");
    if (d.as_int() < 0) bad("\"shape\" has a negative dimension " + std::to_string(d.as_int()));
    e.shape.push_back(d.as_int());
  }

  const JsonValue* offsets = v.find("data_offsets");
  if (!offsets || !offsets->is_array() || offsets->as_array().size() != 2)
    bad("\"data_offsets\" is missing or not an array of two integers");
  for (const JsonValue& o : offsets->as_array())
    if (!o.is_int() || o.as_int() < 0) bad("\"data_offsets\" must be non-negative integers");
  e.begin = static_cast<uint64_t>(offsets->as_array()[0].as_int());
  e.end = static_cast<uint64_t>(offsets->as_array()[1].as_int());
  const std::string range = detail::concat("data_offsets [", e.begin, ", ", e.end, "]");
  if (e.begin > e.end) bad(range + " have begin > end");
  if (e.end > buffer_bytes)
    bad(detail::concat(range, " run past the end of the data buffer (", buffer_bytes, " bytes)"));
  uint64_t bytes = 0;
  try {
    bytes = shape_nbytes(e.shape, e.dtype);
  } catch (const Error& err) {
    bad(err.what());
  }
  if (e.end - e.begin != bytes)
    bad(detail::concat(range, " span ", e.end - e.begin, " bytes but ", dtype_name(e.dtype),
                       " shape ", shape_str(e.shape), " needs ", bytes));
  return e;
}

// The reference layout: tensors tile the data buffer exactly, with no overlaps and no gaps.
void check_layout(const std::string& path, const std::vector<Entry>& entries,
                  uint64_t buffer_bytes) {
  std::vector<const Entry*> order;
  for (const Entry& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return std::tie(a->begin, a->end) < std::tie(b->begin, b->end);
  });
  uint64_t cursor = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const Entry& e = *order[i];
    if (e.begin < cursor)
      fail(path, "tensor '" + e.name + "' overlaps tensor '" + order[i - 1]->name + "'");
    if (e.begin > cursor)
      fail(path, detail::concat("data buffer bytes [", cursor, ", ", e.begin,
                                ") belong to no tensor (gap before tensor '", e.name, "')"));
    cursor = e.end;
  }
  if (cursor != buffer_bytes)
    fail(path, detail::concat("data buffer is ", buffer_bytes, " bytes but the tensors cover ",
                              cursor, " (trailing bytes)"));
}

// write(2) all of `bytes`, retrying short writes.
bool write_all(int fd, const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

const Tensor* SafetensorsFile::find(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, Tensor>> sorted;
  for (const auto& [name, t] : tensors) {
    DL_CHECK(!name.empty() && name != kMetadataKey, path, ": cannot save a tensor named '", name,
             "'");
    DL_CHECK(t.defined(), path, ": cannot save tensor '", name, "': it is undefined");
    sorted.emplace_back(name, t.to(Device::cpu()).contiguous());
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 1; i < sorted.size(); ++i)
    DL_CHECK(sorted[i].first != sorted[i - 1].first, path, ": tensor name '", sorted[i].first,
             "' appears twice");

  uint32_t crc = 0;
  for (const auto& [name, t] : sorted) crc = crc32_update(crc, t.raw_data(), t.nbytes());
  DL_CHECK(!metadata.count(kChecksumKey), path, ": the metadata key '", kChecksumKey,
           "' is the writer's own");
  std::map<std::string, std::string> meta_with_checksum = metadata;
  meta_with_checksum[kChecksumKey] = hex32(crc);
  JsonValue::Object header;
  JsonValue::Object meta;
  for (const auto& [k, v] : meta_with_checksum) meta.emplace_back(k, v);
  header.emplace_back(kMetadataKey, std::move(meta));
  int64_t offset = 0;
  for (const auto& [name, t] : sorted) {
    const int64_t end = offset + static_cast<int64_t>(t.nbytes());
    header.emplace_back(
        name, JsonValue::Object{{"dtype", dtype_name(t.dtype())},
                                {"shape", JsonValue::Array(t.shape().begin(), t.shape().end())},
                                {"data_offsets", JsonValue::Array{offset, end}}});
    offset = end;
  }
  std::string json = to_json(header);
  json.append((8 - json.size() % 8) % 8, ' ');
  const uint64_t json_bytes = json.size();

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const auto check = [&](bool ok, const char* what) {
    if (ok) return;
    const int err = errno;
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    fail(path, detail::concat("cannot save: ", what, " '", tmp, "' failed: ", std::strerror(err)));
  };
  check(fd >= 0, "creating");
  check(write_all(fd, &json_bytes, 8) && write_all(fd, json.data(), json.size()), "writing");
  for (const auto& [name, t] : sorted) check(write_all(fd, t.raw_data(), t.nbytes()), "writing");
  check(::fsync(fd) == 0, "syncing");
  const int closed = ::close(fd);
  fd = -1;
  check(closed == 0, "closing");
  check(::rename(tmp.c_str(), path.c_str()) == 0, "renaming");
  // Make the rename itself durable; best effort.
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::string error;
  const File file = open_regular_file(path, &error);
  if (!file) fail(path, error);
  struct stat st {};
  if (::fstat(::fileno(file.get()), &st) != 0)
    fail(path, std::string("cannot stat: ") + std::strerror(errno));
  const auto file_bytes = static_cast<uint64_t>(st.st_size);
  const auto read_at = [&](uint64_t offset, void* dst, size_t bytes) {
    if (::fseeko(file.get(), static_cast<off_t>(offset), SEEK_SET) != 0 ||
        std::fread(dst, 1, bytes, file.get()) != bytes)
      fail(path, detail::concat("read of ", bytes, " bytes at offset ", offset, " failed"));
  };

  if (file_bytes < 8)
    fail(path,
         detail::concat("file is ", file_bytes, " bytes, too short for the 8-byte header length"));
  uint64_t header_bytes = 0;
  read_at(0, &header_bytes, 8);
  if (header_bytes > kMaxHeaderBytes)
    fail(path, detail::concat("header length ", header_bytes, " is over the ", kMaxHeaderBytes,
                              "-byte limit (corrupt or not a safetensors file)"));
  if (header_bytes > file_bytes - 8)
    fail(path, detail::concat("header length ", header_bytes, " runs past the end of the file (",
                              file_bytes, " bytes): truncated?"));
  std::string text(header_bytes, '\0');
  read_at(8, text.data(), text.size());
  JsonValue header;
  try {
    header = parse_json(text);
  } catch (const Error& e) {
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object())
    fail(path,
         std::string("header is a JSON ") + json_type_name(header.type()) + ", expected an object");

  const uint64_t data_start = 8 + header_bytes;
  const uint64_t buffer_bytes = file_bytes - data_start;
  SafetensorsFile out;
  std::vector<Entry> entries;
  for (const auto& [key, value] : header.as_object()) {
    if (key != kMetadataKey) {
      entries.push_back(parse_entry(path, key, value, buffer_bytes));
      continue;
    }
    if (!value.is_object()) fail(path, "__metadata__ is not an object");
    for (const auto& [k, v] : value.as_object()) {
      if (!v.is_string())
        fail(path, "__metadata__ value for key '" + k + "' is a " + json_type_name(v.type()) +
                       ", expected a string");
      out.metadata[k] = v.as_string();
    }
  }
  check_layout(path, entries, buffer_bytes);

  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (t.nbytes() > 0) read_at(data_start + e.begin, t.raw_data(), t.nbytes());
    out.tensors.emplace_back(e.name, std::move(t));
  }
  auto recorded = out.metadata.find(kChecksumKey);
  if (recorded != out.metadata.end()) {
    // check_layout made the entries tile the buffer; in offset order they are the buffer.
    std::vector<size_t> order(entries.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return entries[a].begin < entries[b].begin; });
    uint32_t crc = 0;
    for (size_t i : order) {
      const Tensor& t = out.tensors[i].second;
      crc = crc32_update(crc, t.raw_data(), t.nbytes());
    }
    if (recorded->second != hex32(crc))
      fail(path, "the tensor data is damaged (its CRC-32 is " + hex32(crc) + ", the file records " +
                     recorded->second +
                     "): the file was changed or corrupted after it was written");
    out.metadata.erase(recorded);
  }
  return out;
}

void copy_checked(Tensor& dst, const Tensor& src, const std::string& name,
                  const std::string& path) {
  DL_CHECK(src.shape() == dst.shape(), path, ": tensor '", name, "' has shape ",
           shape_str(src.shape()), " but the model expects ", shape_str(dst.shape()));
  DL_CHECK(src.dtype() == dst.dtype(), path, ": tensor '", name, "' has dtype ",
           dtype_name(src.dtype()), " but the model expects ", dtype_name(dst.dtype()));
  NoGradGuard no_grad;
  dst.copy_(src);
}

}  // namespace dl::io
