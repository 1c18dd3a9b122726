#include "engine/data/dataset.h"

#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>

#include "engine/error.h"
#include "engine/io/file.h"

namespace dl::data {

namespace fs = std::filesystem;

namespace {

static_assert(std::endian::native == std::endian::little,
              "the dataset cache assumes little-endian");

[[noreturn]] void fail(const fs::path& path, const std::string& what) {
  throw Error(path.string() + ": " + what);
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool is_hidden(const fs::path& p) {
  return p.filename().string().starts_with('.');
}

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

// The entries of dir whose names do not start with '.', sorted by name.
std::vector<fs::directory_entry> list_dir(const fs::path& dir) {
  std::vector<fs::directory_entry> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (!is_hidden(it->path())) out.push_back(*it);
  if (ec) fail(dir, "cannot list the folder: " + ec.message());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.path().filename().string() < b.path().filename().string();
  });
  return out;
}

std::vector<uint8_t> read_file(const fs::path& path) {
  std::string error;
  const io::File file = io::open_regular_file(path.string(), &error);
  if (!file) fail(path, error);
  struct stat st {};
  if (::fstat(::fileno(file.get()), &st) != 0)
    fail(path, std::string("cannot stat the file: ") + std::strerror(errno));
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  if (std::fread(bytes.data(), 1, bytes.size(), file.get()) != bytes.size())
    fail(path, "read failed (the file changed while it was being read?)");
  return bytes;
}

// ---- CIFAR-10 binary ----------------------------------------------------------------------------

constexpr int64_t kCifarSide = 32;
constexpr int64_t kCifarPlane = kCifarSide * kCifarSide;
constexpr int64_t kCifarRecord = 1 + 3 * kCifarPlane;
constexpr const char* kGetCifar = "scripts/get_cifar10.sh";

const std::vector<std::string>& cifar_default_classes() {
  static const std::vector<std::string> names = {
      "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
  return names;
}

std::vector<std::string> cifar_batch_names(Split split) {
  if (split == Split::test) return {"test_batch.bin"};
  std::vector<std::string> names;
  for (int i = 1; i <= 5; ++i) names.push_back("data_batch_" + std::to_string(i) + ".bin");
  return names;
}

bool holds_cifar(const fs::path& dir) {
  for (Split s : {Split::train, Split::test})
    for (const std::string& name : cifar_batch_names(s))
      if (is_file(dir / name)) return true;
  return false;
}

// The folder holding the batch files: dir itself, or dir/cifar-10-batches-bin.
fs::path cifar_dir(const fs::path& dir) {
  const fs::path nested = dir / "cifar-10-batches-bin";
  return !holds_cifar(dir) && is_dir(nested) ? nested : dir;
}

std::vector<std::string> cifar_classes(const fs::path& dir) {
  const fs::path meta = dir / "batches.meta.txt";
  if (!is_file(meta)) return cifar_default_classes();
  std::ifstream in(meta);
  if (!in) fail(meta, "cannot open the file");
  std::vector<std::string> names;
  for (std::string line; std::getline(in, line);) {
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos) continue;
    names.push_back(line.substr(first, line.find_last_not_of(" \t\r") - first + 1));
  }
  if (names.size() != 10)
    fail(meta, detail::concat("holds ", names.size(),
                              " class names; CIFAR-10 needs 10, one per line (delete the file to "
                              "use the standard names)"));
  return names;
}

// ---- image folder -------------------------------------------------------------------------------

constexpr const char* kFolderLayout = "<root>/<train|test>/<class>/*.png|jpg|jpeg";

bool has_image_extension(const fs::path& p) {
  const std::string ext = lower(p.extension().string());
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

// ---- IDX ----------------------------------------------------------------------------------------

constexpr uint32_t kIdxImagesMagic = 0x00000803;
constexpr uint32_t kIdxLabelsMagic = 0x00000801;

std::string idx_name(Split split, bool images) {
  return std::string(split == Split::train ? "train" : "t10k") +
         (images ? "-images-idx3-ubyte" : "-labels-idx1-ubyte");
}

// dir/name or dir/name.gz, whichever exists (the plain file first).
std::optional<fs::path> find_idx(const fs::path& dir, const std::string& name) {
  for (const fs::path& p : {dir / name, dir / (name + ".gz")})
    if (is_file(p)) return p;
  return std::nullopt;
}

bool holds_idx(const fs::path& dir) {
  for (Split s : {Split::train, Split::test})
    for (bool images : {true, false})
      if (find_idx(dir, idx_name(s, images))) return true;
  return false;
}

// A file read through zlib, which passes plain (non-gzip) files through unchanged.
class GzFile {
 public:
  explicit GzFile(const fs::path& path) : path_(path), file_(gzopen(path.c_str(), "rb")) {
    if (!file_) fail(path_, std::string("cannot open the file: ") + std::strerror(errno));
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;
  ~GzFile() { gzclose(file_); }

  // Reads up to n bytes; fewer only at the end of the data.
  uint64_t read(uint8_t* dst, uint64_t n) {
    uint64_t done = 0;
    while (done < n) {
      const auto chunk = static_cast<unsigned>(std::min<uint64_t>(n - done, 1u << 30));
      const int got = gzread(file_, dst + done, chunk);
      if (got < 0) {
        int code = 0;
        fail(path_, std::string("cannot read the file (zlib: ") + gzerror(file_, &code) + ")");
      }
      if (got == 0) break;
      done += static_cast<uint64_t>(got);
    }
    return done;
  }

 private:
  fs::path path_;
  gzFile file_;
};

uint32_t read_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

std::string hex32(uint32_t v) {
  char buf[11];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

struct IdxData {
  std::vector<uint32_t> dims;
  std::vector<uint8_t> data;
};

IdxData read_idx(const fs::path& path, uint32_t magic, int ndims) {
  GzFile file(path);
  const uint64_t header_bytes = 4 + 4 * static_cast<uint64_t>(ndims);
  uint8_t header[16] = {};
  if (file.read(header, header_bytes) < header_bytes)
    fail(path,
         detail::concat("truncated: the file ends inside its ", header_bytes, "-byte IDX header"));
  const uint32_t found = read_be32(header);
  if (found != magic)
    fail(path, detail::concat("bad magic number ", hex32(found), " (an IDX ",
                              ndims == 3 ? "image" : "label", " file starts with ", hex32(magic),
                              "; is this the right file, and not corrupt?)"));
  IdxData out;
  uint64_t bytes = 1;
  for (int i = 0; i < ndims; ++i) {
    out.dims.push_back(read_be32(header + 4 + 4 * i));
    if (__builtin_mul_overflow(bytes, uint64_t{out.dims.back()}, &bytes))
      fail(path, "the header's dimensions are too large (corrupt file)");
  }
  // Read in chunks that double from 64 KiB, so that memory stays within twice the data the file
  // really holds, whatever its header claims.
  constexpr uint64_t kFirstChunk = uint64_t{64} << 10;
  while (out.data.size() < bytes) {
    const uint64_t have = out.data.size();
    const uint64_t want = std::min(bytes - have, std::max(have, kFirstChunk));
    out.data.resize(have + want);
    const uint64_t got = file.read(out.data.data() + have, want);
    if (got < want)
      fail(path, detail::concat("truncated: the header describes ", bytes,
                                " bytes of data but the file holds ", have + got));
  }
  uint8_t extra = 0;
  if (file.read(&extra, 1) != 0)
    fail(path, detail::concat("holds data past the ", bytes, " bytes its header describes"));
  return out;
}

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser",   "Pullover", "Dress",
                                                 "Coat",        "Sandal",    "Shirt",    "Sneaker",
                                                 "Bag",         "Ankle boot"};
  return names;
}

// Fashion-MNIST when the folder's name, or its parent's (torchvision's FashionMNIST/raw), says so.
bool is_fashion(const fs::path& dir) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::absolute(dir), ec);
  if (ec) p = fs::absolute(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return lower(p.filename().string()).find("fashion") != std::string::npos ||
         lower(p.parent_path().filename().string()).find("fashion") != std::string::npos;
}

// ---- format detection ---------------------------------------------------------------------------

enum class Format { cifar10_binary, image_folder, idx };

const char* format_name(Format f) {
  switch (f) {
    case Format::cifar10_binary:
      return "cifar10";
    case Format::image_folder:
      return "folder";
    case Format::idx:
      return "idx";
  }
  return "?";
}

std::optional<Format> find_format(const fs::path& root) {
  if (holds_cifar(root) || holds_cifar(root / "cifar-10-batches-bin"))
    return Format::cifar10_binary;
  if (is_dir(root / "train") || is_dir(root / "test")) return Format::image_folder;
  if (holds_idx(root)) return Format::idx;
  return std::nullopt;
}

Format detect_format(const fs::path& root) {
  std::error_code ec;
  if (!fs::exists(root, ec)) fail(root, "no such dataset folder");
  if (!is_dir(root)) fail(root, "not a folder (a dataset is a folder of files)");
  if (const auto format = find_format(root)) return *format;
  // A common slip is passing the folder above the data set (e.g. where an archive was extracted).
  std::string hint;
  for (const fs::directory_entry& e : list_dir(root))
    if (is_dir(e.path()) && find_format(e.path())) {
      hint = " (" + e.path().string() + " holds one: pass that folder instead)";
      break;
    }
  fail(root, detail::concat(
                 "no dataset found", hint,
                 ". Expected one of: (1) the CIFAR-10 binary release, "
                 "data_batch_1.bin..data_batch_5.bin and test_batch.bin in the folder or in its "
                 "cifar-10-batches-bin/ (",
                 kGetCifar, " downloads it); (2) an image folder, ", kFolderLayout,
                 "; (3) MNIST/Fashion-MNIST IDX files, train-images-idx3-ubyte, "
                 "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte "
                 "(each optionally .gz)"));
}

ImageDataset load_format(Format f, const std::string& root, Split split) {
  switch (f) {
    case Format::cifar10_binary:
      return load_cifar10_binary(root, split);
    case Format::image_folder:
      return load_image_folder(root, split);
    case Format::idx:
      return load_idx(root, split);
  }
  throw Error("load_dataset: unknown format");
}

// ---- cache --------------------------------------------------------------------------------------

constexpr char kCacheMagic[4] = {'D', 'L', 'D', 'S'};
constexpr uint32_t kCacheVersion = 2;

// What the cache records about the source files; any change invalidates it.
struct Fingerprint {
  uint64_t files = 0, bytes = 0;
  int64_t newest_ns = INT64_MIN;         // newest modification time of a file or folder
  int64_t newest_change_ns = INT64_MIN;  // newest st_ctime, which no tool can set back
  bool operator==(const Fingerprint&) const = default;
};

// Which parts of two fingerprints differ, e.g. "file count, total size".
std::string differences(const Fingerprint& was, const Fingerprint& now) {
  std::string out;
  const auto add = [&out](bool differs, const char* what) {
    if (differs) out += (out.empty() ? "" : ", ") + std::string(what);
  };
  add(was.files != now.files, "file count");
  add(was.bytes != now.bytes, "total size");
  add(was.newest_ns != now.newest_ns, "modification time");
  add(was.newest_change_ns != now.newest_change_ns, "status-change time");
  return out;
}

// The files a load of this format and split reads (folders are walked); nullopt when one is
// missing, in which case the reader itself reports the problem.
std::optional<std::vector<fs::path>> source_paths(Format f, const fs::path& root, Split split) {
  std::vector<fs::path> paths;
  switch (f) {
    case Format::cifar10_binary: {
      const fs::path dir = cifar_dir(root);
      for (const std::string& name : cifar_batch_names(split)) paths.push_back(dir / name);
      if (is_file(dir / "batches.meta.txt")) paths.push_back(dir / "batches.meta.txt");
      break;
    }
    case Format::image_folder:
      paths.push_back(root / split_name(split));
      break;
    case Format::idx:
      for (bool images : {true, false}) {
        const auto p = find_idx(root, idx_name(split, images));
        if (!p) return std::nullopt;
        paths.push_back(*p);
      }
      break;
  }
  return paths;
}

std::optional<Fingerprint> fingerprint(const std::vector<fs::path>& paths) {
  Fingerprint fp;
  // One stat(2) per file or folder; false when it fails.
  const auto add = [&fp](const fs::path& p) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return false;
    const auto ns = [](const timespec& t) { return int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec; };
    fp.newest_ns = std::max(fp.newest_ns, ns(st.st_mtim));
    fp.newest_change_ns = std::max(fp.newest_change_ns, ns(st.st_ctim));
    if (S_ISREG(st.st_mode)) {
      ++fp.files;
      fp.bytes += static_cast<uint64_t>(st.st_size);
    }
    return true;
  };
  std::error_code ec;
  for (const fs::path& p : paths) {
    if (!add(p)) return std::nullopt;
    if (!is_dir(p)) continue;
    for (fs::recursive_directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec)) {
      if (is_hidden(it->path())) {
        it.disable_recursion_pending();
        continue;
      }
      if (!add(it->path())) return std::nullopt;
    }
    if (ec) return std::nullopt;
  }
  return fp;
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Sequential reads or writes of a cache file, with a running CRC-32 of every byte.
class CacheFile {
 public:
  CacheFile(const fs::path& path, const char* mode) : file_(std::fopen(path.c_str(), mode)) {}
  CacheFile(const CacheFile&) = delete;
  CacheFile& operator=(const CacheFile&) = delete;
  ~CacheFile() {
    if (file_) std::fclose(file_);
  }
  bool ok() const { return file_ && ok_; }
  std::FILE* get() const { return file_; }
  uint32_t crc() const { return static_cast<uint32_t>(crc_); }

  void put(const void* data, uint64_t n) {
    if (!ok() || std::fwrite(data, 1, n, file_) != n) ok_ = false;
    add_crc(data, n);
  }
  template <class T>
  void put(T v) {
    put(&v, sizeof v);
  }
  void get(void* data, uint64_t n) {
    if (!ok() || std::fread(data, 1, n, file_) != n) ok_ = false;
    if (ok_) add_crc(data, n);
  }
  template <class T>
  T get() {
    T v{};
    get(&v, sizeof v);
    return v;
  }
  bool close() {
    const bool closed = file_ && std::fclose(file_) == 0;
    file_ = nullptr;
    return closed;
  }

 private:
  void add_crc(const void* data, uint64_t n) {
    crc_ = crc32_z(crc_, static_cast<const Bytef*>(data), static_cast<z_size_t>(n));
  }
  std::FILE* file_;
  bool ok_ = true;
  uLong crc_ = crc32_z(0, nullptr, 0);
};

// Header fields after the magic and version, in file order.
struct CacheHeader {
  uint64_t height, width, channels, size, classes;
  Fingerprint source;
};

void write_header(CacheFile& f, const CacheHeader& h) {
  for (uint64_t v : {h.height, h.width, h.channels, h.size, h.classes, h.source.files,
                     h.source.bytes, static_cast<uint64_t>(h.source.newest_ns),
                     static_cast<uint64_t>(h.source.newest_change_ns)})
    f.put(v);
}

CacheHeader read_header(CacheFile& f) {
  CacheHeader h{};
  for (uint64_t* v :
       {&h.height, &h.width, &h.channels, &h.size, &h.classes, &h.source.files, &h.source.bytes})
    *v = f.get<uint64_t>();
  h.source.newest_ns = f.get<int64_t>();
  h.source.newest_change_ns = f.get<int64_t>();
  return h;
}

void put_string(CacheFile& f, const std::string& s) {
  f.put(static_cast<uint64_t>(s.size()));
  f.put(s.data(), s.size());
}

// Reads a length-prefixed string of at most max_bytes; nullopt when damaged.
std::optional<std::string> get_string(CacheFile& f, uint64_t max_bytes) {
  const auto n = f.get<uint64_t>();
  if (!f.ok() || n > max_bytes) return std::nullopt;
  std::string s(n, '\0');
  f.get(s.data(), n);
  return f.ok() ? std::optional(std::move(s)) : std::nullopt;
}

// A cache file read back: the set, or why it cannot be used (empty when there is no file).
struct CacheRead {
  std::optional<ImageDataset> data;
  std::string stale;
};

// The cached set when the file is intact and was built from this key and these sources.
CacheRead read_cache(const fs::path& path, const std::string& key, const Fingerprint& source) {
  const auto stale = [](std::string why) { return CacheRead{std::nullopt, std::move(why)}; };
  CacheFile f(path, "rb");
  if (!f.ok())
    return stale(errno == ENOENT ? "" : "cannot open: " + std::string(std::strerror(errno)));
  const CacheRead damaged = stale("damaged");
  struct stat st {};
  if (::fstat(::fileno(f.get()), &st) != 0) return damaged;
  const auto file_bytes = static_cast<uint64_t>(st.st_size);

  char magic[4] = {};
  f.get(magic, 4);
  if (!f.ok() || std::memcmp(magic, kCacheMagic, 4) != 0) return stale("not a dataset cache");
  const auto version = f.get<uint32_t>();
  if (!f.ok()) return damaged;
  if (version != kCacheVersion)
    return stale(detail::concat("format version ", version, ", this build's is ", kCacheVersion));
  const CacheHeader h = read_header(f);
  if (!f.ok()) return damaged;
  if (!(h.source == source)) return stale("source files changed: " + differences(h.source, source));
  const auto stored_key = get_string(f, file_bytes);
  if (!stored_key) return damaged;
  if (*stored_key != key) return stale("built from another data set");

  ImageDataset d;
  d.height = static_cast<int64_t>(h.height);
  d.width = static_cast<int64_t>(h.width);
  d.channels = static_cast<int64_t>(h.channels);
  // The payload sizes must fit in what is left of the file before anything is allocated.
  uint64_t image_bytes = 0, pixel_bytes = 0;
  if (h.classes > file_bytes || h.size > file_bytes ||
      __builtin_mul_overflow(h.height, h.width, &image_bytes) ||
      __builtin_mul_overflow(image_bytes, h.channels, &image_bytes) ||
      __builtin_mul_overflow(image_bytes, h.size, &pixel_bytes) || pixel_bytes > file_bytes)
    return damaged;
  for (uint64_t i = 0; i < h.classes; ++i) {
    auto name = get_string(f, file_bytes);
    if (!name) return damaged;
    d.classes.push_back(std::move(*name));
  }
  d.labels.resize(h.size);
  d.pixels.resize(pixel_bytes);
  f.get(d.labels.data(), h.size * sizeof(int64_t));
  f.get(d.pixels.data(), pixel_bytes);
  const uint32_t crc = f.crc();
  if (!f.ok() || f.get<uint32_t>() != crc || !f.ok() || std::fgetc(f.get()) != EOF) return damaged;
  for (int64_t label : d.labels)
    if (label < 0 || label >= static_cast<int64_t>(d.classes.size())) return damaged;
  return {std::move(d), ""};
}

// Writes atomically (temp file, then rename). A failure only costs the cache: it is reported on
// stderr, false is returned and the load goes on.
bool write_cache(const fs::path& path, const std::string& key, const Fingerprint& source,
                 const ImageDataset& d) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  static std::atomic<uint64_t> writes{0};  // keeps concurrent writers in one process apart
  const fs::path tmp = path.string() + ".tmp." + std::to_string(::getpid()) + "." +
                       std::to_string(writes.fetch_add(1));
  CacheFile f(tmp, "wb");
  f.put(kCacheMagic, 4);
  f.put(kCacheVersion);
  write_header(f, {static_cast<uint64_t>(d.height), static_cast<uint64_t>(d.width),
                   static_cast<uint64_t>(d.channels), static_cast<uint64_t>(d.size()),
                   static_cast<uint64_t>(d.classes.size()), source});
  put_string(f, key);
  for (const std::string& name : d.classes) put_string(f, name);
  f.put(d.labels.data(), d.labels.size() * sizeof(int64_t));
  f.put(d.pixels.data(), d.pixels.size());
  f.put(f.crc());
  const bool written = f.ok() && std::fflush(f.get()) == 0 && ::fsync(::fileno(f.get())) == 0;
  std::string problem = written ? "" : std::strerror(errno);
  if (!f.close() && problem.empty()) problem = std::strerror(errno);
  if (problem.empty()) {
    fs::rename(tmp, path, ec);
    if (!ec) return true;
    problem = ec.message();
  }
  fs::remove(tmp, ec);
  std::cerr << "warning: could not write the dataset cache " + path.string() + " (" + problem +
                   "); continuing without it\n";
  return false;
}

}  // namespace

const uint8_t* ImageDataset::image(int64_t i) const {
  DL_CHECK(i >= 0 && i < size(), "ImageDataset::image: index ", i, " is out of range for ", size(),
           " images");
  return pixels.data() + i * image_bytes();
}

const char* split_name(Split split) {
  return split == Split::train ? "train" : "test";
}

ImageDataset load_cifar10_binary(const std::string& dir, Split split) {
  const fs::path base = cifar_dir(dir);
  ImageDataset d;
  d.height = d.width = kCifarSide;
  d.channels = 3;
  d.classes = cifar_classes(base);
  for (const std::string& name : cifar_batch_names(split)) {
    const fs::path path = base / name;
    if (!is_file(path))
      fail(path, detail::concat("missing CIFAR-10 batch file (the binary release holds "
                                "data_batch_1.bin..data_batch_5.bin and test_batch.bin; ",
                                kGetCifar, " downloads them)"));
    const std::vector<uint8_t> bytes = read_file(path);
    if (bytes.empty() || bytes.size() % kCifarRecord != 0)
      fail(path, detail::concat("truncated record: the file is ", bytes.size(),
                                " bytes, not a whole number of ", kCifarRecord,
                                "-byte CIFAR-10 records (re-download it with ", kGetCifar, ")"));
    const auto records = static_cast<int64_t>(bytes.size() / kCifarRecord);
    const int64_t first = d.size();
    for (int64_t r = 0; r < records; ++r) {
      const uint8_t label = bytes[r * kCifarRecord];
      if (label > 9)
        fail(path, detail::concat("record ", r, " has label byte ", int{label},
                                  " but CIFAR-10 labels are 0..9 (corrupt file, or not the "
                                  "CIFAR-10 binary version?)"));
      d.labels.push_back(label);
    }
    d.pixels.resize(static_cast<size_t>(d.size() * 3 * kCifarPlane));
#pragma omp parallel for
    for (int64_t r = 0; r < records; ++r) {
      const uint8_t* src = bytes.data() + r * kCifarRecord + 1;
      uint8_t* dst = d.pixels.data() + (first + r) * 3 * kCifarPlane;
      for (int64_t p = 0; p < kCifarPlane; ++p)
        for (int64_t c = 0; c < 3; ++c) dst[p * 3 + c] = src[c * kCifarPlane + p];
    }
  }
  return d;
}

ImageDataset load_image_folder(const std::string& root, Split split, int channels) {
  DL_CHECK(channels >= 1 && channels <= 4, "load_image_folder: channels must be 1..4, got ",
           channels);
  const fs::path split_dir = fs::path(root) / split_name(split);
  if (!is_dir(split_dir))
    fail(split_dir, detail::concat("missing split folder (an image folder is laid out as ",
                                   kFolderLayout, ")"));
  ImageDataset d;
  d.channels = channels;
  std::vector<fs::path> files;
  for (const fs::directory_entry& cls : list_dir(split_dir)) {
    if (!is_dir(cls.path()))
      fail(cls.path(), detail::concat("not a class folder (a split folder holds only class "
                                      "folders: ",
                                      kFolderLayout, ")"));
    const auto label = static_cast<int64_t>(d.classes.size());
    d.classes.push_back(cls.path().filename().string());
    const size_t before = files.size();
    for (const fs::directory_entry& f : list_dir(cls.path())) {
      if (is_dir(f.path()))
        fail(f.path(),
             detail::concat("unexpected folder inside a class folder (", kFolderLayout, ")"));
      if (!has_image_extension(f.path()))
        fail(f.path(),
             "not an image file: expected a .png, .jpg or .jpeg extension (move the file out "
             "of the dataset, or hide it with a leading '.'; convert other formats to PNG)");
      files.push_back(f.path());
      d.labels.push_back(label);
    }
    if (files.size() == before)
      fail(cls.path(), "empty class folder (every class folder needs at least one image)");
  }
  if (d.classes.empty())
    fail(split_dir, detail::concat("no class folders (expected ", kFolderLayout, ")"));

  // The first image sets the size. The rest decode in parallel, a batch at a time, and are
  // appended in order; an image of another size is dropped as soon as it is decoded. So memory
  // grows with the images that belong to the set, and the first bad file ends the load.
  const DecodedImage first = decode_image(files[0].string(), channels);
  if (!first.error.empty()) fail(files[0], first.error);
  d.height = first.height;
  d.width = first.width;
  d.pixels = first.pixels;
  constexpr int64_t kBatch = 256;
  const int64_t n = d.size();
  for (int64_t start = 1; start < n; start += kBatch) {
    const int64_t count = std::min(kBatch, n - start);
    std::vector<DecodedImage> batch(static_cast<size_t>(count));
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t i = 0; i < count; ++i) {
      DecodedImage img = decode_image(files[start + i].string(), channels);
      if (img.error.empty() && (img.width != d.width || img.height != d.height)) {
        img.error = detail::concat("image is ", img.width, "x", img.height, " but ",
                                   files[0].string(), " is ", d.width, "x", d.height,
                                   " (width x height); all images must be the same size");
        img.pixels = {};
      }
      batch[i] = std::move(img);
    }
    for (int64_t i = 0; i < count; ++i) {
      if (!batch[i].error.empty()) fail(files[start + i], batch[i].error);
      d.pixels.insert(d.pixels.end(), batch[i].pixels.begin(), batch[i].pixels.end());
    }
  }
  return d;
}

ImageDataset load_idx(const std::string& dir, Split split) {
  fs::path paths[2];
  for (bool images : {true, false}) {
    const std::string name = idx_name(split, images);
    const auto found = find_idx(dir, name);
    if (!found)
      fail(fs::path(dir) / name,
           "missing IDX file (looked for it with and without .gz; MNIST-style data needs "
           "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
           "t10k-labels-idx1-ubyte)");
    paths[images ? 0 : 1] = *found;
  }
  IdxData images = read_idx(paths[0], kIdxImagesMagic, 3);
  const IdxData labels = read_idx(paths[1], kIdxLabelsMagic, 1);
  if (images.dims[0] != labels.dims[0])
    fail(paths[1], detail::concat("holds ", labels.dims[0], " labels but ", paths[0].string(),
                                  " holds ", images.dims[0], " images"));
  ImageDataset d;
  d.height = images.dims[1];
  d.width = images.dims[2];
  d.channels = 1;
  d.pixels = std::move(images.data);
  d.classes = is_fashion(dir) ? fashion_mnist_classes() : std::vector<std::string>{};
  if (d.classes.empty())
    for (int i = 0; i < 10; ++i) d.classes.push_back(std::to_string(i));
  for (size_t i = 0; i < labels.data.size(); ++i) {
    if (labels.data[i] > 9)
      fail(paths[1], detail::concat("label ", i, " is ", int{labels.data[i]},
                                    " but MNIST-style labels are 0..9"));
    d.labels.push_back(labels.data[i]);
  }
  return d;
}

ImageDataset load_dataset(const std::string& root, Split split) {
  return load_format(detect_format(root), root, split);
}

ImageDataset load_dataset_cached(const std::string& root, Split split,
                                 const std::string& cache_dir) {
  if (cache_dir.empty()) return load_dataset(root, split);
  const Format format = detect_format(root);
  const auto sources = source_paths(format, root, split);
  const auto source = sources ? fingerprint(*sources) : std::nullopt;
  if (!source) return load_format(format, root, split);

  std::error_code ec;
  fs::path canonical = fs::weakly_canonical(fs::absolute(root), ec);
  if (ec) canonical = fs::absolute(root).lexically_normal();
  const std::string key =
      canonical.string() + "\n" + split_name(split) + "\n" + format_name(format);
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(fnv1a(key)));
  const fs::path path = fs::path(cache_dir) / (std::string(format_name(format)) + "-" +
                                               split_name(split) + "-" + hash + ".dlds");
  CacheRead cached = read_cache(path, key, *source);
  if (cached.data) {
    std::cerr << "cache: read " + path.string() + "\n";
    return std::move(*cached.data);
  }
  ImageDataset d = load_format(format, root, split);
  if (write_cache(path, key, *source, d))
    std::cerr << (cached.stale.empty()
                      ? "cache: wrote " + path.string() + "\n"
                      : "cache: " + path.string() + " is stale (" + cached.stale + "), rebuilt\n");
  return d;
}

ImageDataset subset(const ImageDataset& d, int64_t n) {
  if (n <= 0 || n >= d.size()) return d;
  const auto classes = static_cast<int64_t>(d.classes.size());
  const int64_t cap = (n + std::max<int64_t>(classes, 1) - 1) / std::max<int64_t>(classes, 1);
  ImageDataset out;
  out.height = d.height;
  out.width = d.width;
  out.channels = d.channels;
  out.classes = d.classes;
  std::vector<int64_t> taken(static_cast<size_t>(classes), 0);
  const int64_t bytes = d.image_bytes();
  for (int64_t i = 0; i < d.size() && out.size() < n; ++i) {
    const int64_t label = d.labels[i];
    DL_CHECK(label >= 0 && label < classes, "subset: image ", i, " has label ", label,
             " outside [0, ", classes, ")");
    if (taken[label] == cap) continue;
    ++taken[label];
    out.labels.push_back(label);
    out.pixels.insert(out.pixels.end(), d.pixels.begin() + i * bytes,
                      d.pixels.begin() + (i + 1) * bytes);
  }
  return out;
}

}  // namespace dl::data
