// Dataset readers: CIFAR-10 binary, image folders, IDX, format detection, the cache and subset.
// Every test writes its own tiny data set under a fresh temp folder and removes it afterwards.
#include <stb_image_write.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include "engine/data/dataset.h"
#include "engine/error.h"
#include "engine/random.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Catch::Contains;
using dl::data::ImageDataset;
using dl::data::Split;

namespace {

// A fresh folder under the system temp folder, removed with everything in it at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    char name[64];
    std::snprintf(name, sizeof name, "dl_test_data_%016llx",
                  static_cast<unsigned long long>(dl::test::fresh_seed()));
    path = fs::temp_directory_path() / name;
    fs::create_directories(path);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::vector<uint8_t> random_bytes(dl::Generator& gen, size_t n) {
  std::vector<uint8_t> v(n);
  for (uint8_t& b : v) b = static_cast<uint8_t>(gen.below(256));
  return v;
}

void write_file(const fs::path& path, const std::vector<uint8_t>& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::vector<uint8_t> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<uint8_t> flip_byte(std::vector<uint8_t> bytes, size_t at) {
  if (at < bytes.size()) bytes[at] ^= 0xff;
  return bytes;
}

void write_png(const fs::path& path, int w, int h, int comp, const std::vector<uint8_t>& px) {
  fs::create_directories(path.parent_path());
  REQUIRE(stbi_write_png(path.c_str(), w, h, comp, px.data(), w * comp) != 0);
}

void require_same(const ImageDataset& a, const ImageDataset& b) {
  REQUIRE(a.height == b.height);
  REQUIRE(a.width == b.width);
  REQUIRE(a.channels == b.channels);
  REQUIRE(a.classes == b.classes);
  REQUIRE(a.labels == b.labels);
  REQUIRE(a.pixels == b.pixels);
}

// ---- CIFAR-10 binary ----

constexpr size_t kRecord = 3073;

struct CifarRecord {
  uint8_t label;
  std::vector<uint8_t> planes;  // R, G, B planes of 32x32, row-major
};

std::vector<CifarRecord> write_cifar_batch(const fs::path& path, dl::Generator& gen, int n) {
  std::vector<CifarRecord> recs;
  std::vector<uint8_t> bytes;
  for (int i = 0; i < n; ++i) {
    recs.push_back({static_cast<uint8_t>(gen.below(10)), random_bytes(gen, 3072)});
    bytes.push_back(recs.back().label);
    bytes.insert(bytes.end(), recs.back().planes.begin(), recs.back().planes.end());
  }
  write_file(path, bytes);
  return recs;
}

void require_cifar(const ImageDataset& d, const std::vector<CifarRecord>& recs) {
  REQUIRE(d.height == 32);
  REQUIRE(d.width == 32);
  REQUIRE(d.channels == 3);
  REQUIRE(d.size() == static_cast<int64_t>(recs.size()));
  REQUIRE(d.pixels.size() == recs.size() * 3072);
  for (size_t i = 0; i < recs.size(); ++i) {
    REQUIRE(d.labels[i] == recs[i].label);
    const uint8_t* img = d.image(static_cast<int64_t>(i));
    for (int y = 0; y < 32; ++y)
      for (int x = 0; x < 32; ++x)
        for (int c = 0; c < 3; ++c)
          if (img[(y * 32 + x) * 3 + c] != recs[i].planes[c * 1024 + y * 32 + x])
            FAIL("image " << i << " pixel (" << y << ", " << x << ") channel " << c
                          << " is not the CHW source value");
  }
}

// ---- IDX ----

void put_be32(std::vector<uint8_t>& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(v >> s));
}

std::vector<uint8_t> idx_bytes(uint32_t magic, const std::vector<uint32_t>& dims,
                               const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out;
  put_be32(out, magic);
  for (uint32_t d : dims) put_be32(out, d);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

void write_gz(const fs::path& path, const std::vector<uint8_t>& bytes) {
  fs::create_directories(path.parent_path());
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) ==
          static_cast<int>(bytes.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

struct IdxSet {
  std::vector<uint8_t> images, labels;
};

// n images of 4x3 (rows x cols) with labels 0..9.
IdxSet random_idx(dl::Generator& gen, uint32_t n) {
  IdxSet s{random_bytes(gen, n * 12), {}};
  for (uint32_t i = 0; i < n; ++i) s.labels.push_back(static_cast<uint8_t>(gen.below(10)));
  return s;
}

// A 16-bit greyscale PNG (stb_image_write writes only 8 bits): big-endian samples, no filtering.
void write_png16_grey(const fs::path& path, uint32_t w, uint32_t h,
                      const std::vector<uint16_t>& px) {
  std::vector<uint8_t> raw;
  for (uint32_t y = 0; y < h; ++y) {
    raw.push_back(0);  // the row's filter: none
    for (uint32_t x = 0; x < w; ++x) {
      raw.push_back(static_cast<uint8_t>(px[y * w + x] >> 8));
      raw.push_back(static_cast<uint8_t>(px[y * w + x]));
    }
  }
  uLongf packed_size = compressBound(static_cast<uLong>(raw.size()));
  std::vector<uint8_t> packed(packed_size);
  REQUIRE(compress(packed.data(), &packed_size, raw.data(), static_cast<uLong>(raw.size())) ==
          Z_OK);
  packed.resize(packed_size);
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  const auto chunk = [&png](const char* type, const std::vector<uint8_t>& data) {
    put_be32(png, static_cast<uint32_t>(data.size()));
    const size_t begin = png.size();
    png.insert(png.end(), type, type + 4);
    png.insert(png.end(), data.begin(), data.end());
    put_be32(png, static_cast<uint32_t>(
                      crc32(0, png.data() + begin, static_cast<uInt>(png.size() - begin))));
  };
  std::vector<uint8_t> header;
  put_be32(header, w);
  put_be32(header, h);
  header.insert(header.end(), {16, 0, 0, 0, 0});  // 16 bits, grey, deflate, no filter, no interlace
  chunk("IHDR", header);
  chunk("IDAT", packed);
  chunk("IEND", {});
  write_file(path, png);
}

fs::path only_cache_file(const fs::path& dir) {
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".dlds") found.push_back(e.path());
  REQUIRE(found.size() == 1);
  return found[0];
}

}  // namespace

TEST_CASE("CIFAR-10 binary batches read back with CHW converted to HWC", "[data]") {
  const uint64_t seed = dl::test::fresh_seed();
  INFO("seed " << seed);
  dl::Generator gen(seed);
  TempDir tmp;
  const fs::path dir = tmp.path / "cifar-10-batches-bin";
  std::vector<CifarRecord> train;
  for (int b = 1; b <= 5; ++b) {
    auto recs =
        write_cifar_batch(dir / ("data_batch_" + std::to_string(b) + ".bin"), gen, b % 3 + 1);
    train.insert(train.end(), recs.begin(), recs.end());
  }
  const auto test = write_cifar_batch(dir / "test_batch.bin", gen, 3);

  SECTION("train and test splits, from the folder and from its parent") {
    const ImageDataset d = dl::data::load_cifar10_binary(dir.string(), Split::train);
    require_cifar(d, train);
    REQUIRE(d.classes.size() == 10);
    REQUIRE(d.classes[0] == "airplane");
    REQUIRE(d.classes[9] == "truck");
    require_cifar(dl::data::load_cifar10_binary(tmp.path.string(), Split::test), test);
    require_same(dl::data::load_dataset(tmp.path.string(), Split::test),
                 dl::data::load_cifar10_binary(dir.string(), Split::test));
  }
  SECTION("class names from batches.meta.txt") {
    std::string meta;
    for (int i = 0; i < 10; ++i) meta += "class" + std::to_string(i) + "\n";
    write_file(dir / "batches.meta.txt", std::vector<uint8_t>(meta.begin(), meta.end() - 1));
    const ImageDataset d = dl::data::load_cifar10_binary(dir.string(), Split::test);
    REQUIRE(d.classes[0] == "class0");
    REQUIRE(d.classes[9] == "class9");
  }
}

TEST_CASE("CIFAR-10 binary errors name the file and the problem", "[data]") {
  dl::Generator gen(dl::test::fresh_seed());
  TempDir tmp;
  const fs::path file = tmp.path / "test_batch.bin";

  SECTION("truncated record") {
    std::vector<uint8_t> bytes(2 * kRecord + 5, 1);
    write_file(file, bytes);
    REQUIRE_THROWS_WITH(dl::data::load_cifar10_binary(tmp.path.string(), Split::test),
                        Contains(file.string()) && Contains("truncated record") &&
                            Contains(std::to_string(bytes.size())));
  }
  SECTION("label byte 10") {
    std::vector<uint8_t> bytes = random_bytes(gen, 3 * kRecord);
    for (size_t r = 0; r < 3; ++r) bytes[r * kRecord] = static_cast<uint8_t>(r);
    bytes[2 * kRecord] = 10;
    write_file(file, bytes);
    REQUIRE_THROWS_WITH(
        dl::data::load_cifar10_binary(tmp.path.string(), Split::test),
        Contains(file.string()) && Contains("record 2") && Contains("label byte 10"));
  }
  SECTION("missing batch file") {
    write_cifar_batch(file, gen, 1);
    REQUIRE_THROWS_WITH(dl::data::load_dataset(tmp.path.string(), Split::train),
                        Contains((tmp.path / "data_batch_1.bin").string()) &&
                            Contains("missing CIFAR-10 batch file"));
  }
}

TEST_CASE("image folders decode PNG and JPEG in a fixed order", "[data]") {
  const uint64_t seed = dl::test::fresh_seed();
  INFO("seed " << seed);
  dl::Generator gen(seed);
  TempDir tmp;
  const int w = 5, h = 4;
  const fs::path train = tmp.path / "train";
  // Classes and files are sorted by name: "a_cat" is label 0 and "10.png" comes before "2.PNG".
  const auto cat10 = random_bytes(gen, w * h * 3), cat2 = random_bytes(gen, w * h * 3);
  const auto dog = random_bytes(gen, w * h * 3);
  write_png(train / "a_cat" / "10.png", w, h, 3, cat10);
  write_png(train / "a_cat" / "2.PNG", w, h, 3, cat2);
  write_png(train / "b_dog" / "x.png", w, h, 3, dog);
  write_file(train / "b_dog" / ".DS_Store", {1, 2, 3});
  fs::create_directories(train / ".hidden_class");
  // JPEG is lossy: a smooth image at quality 100 comes back within a small mean error.
  std::vector<uint8_t> smooth(w * h * 3);
  for (int i = 0; i < w * h * 3; ++i)
    smooth[i] = static_cast<uint8_t>(40 + 7 * (i / 3) + 30 * (i % 3));
  REQUIRE(stbi_write_jpg((train / "b_dog" / "y.JPEG").c_str(), w, h, 3, smooth.data(), 100) != 0);
  write_png(tmp.path / "test" / "a_cat" / "t.png", w, h, 3, cat2);

  const ImageDataset d = dl::data::load_image_folder(tmp.path.string(), Split::train);
  REQUIRE(d.classes == std::vector<std::string>{"a_cat", "b_dog"});
  REQUIRE(d.labels == std::vector<int64_t>{0, 0, 1, 1});
  REQUIRE(d.height == h);
  REQUIRE(d.width == w);
  REQUIRE(d.channels == 3);
  REQUIRE(std::vector<uint8_t>(d.image(0), d.image(0) + d.image_bytes()) == cat10);
  REQUIRE(std::vector<uint8_t>(d.image(1), d.image(1) + d.image_bytes()) == cat2);
  REQUIRE(std::vector<uint8_t>(d.image(2), d.image(2) + d.image_bytes()) == dog);
  double err = 0;
  for (int i = 0; i < w * h * 3; ++i) err += std::abs(int{d.image(3)[i]} - int{smooth[i]});
  REQUIRE(err / (w * h * 3) < 3);

  require_same(dl::data::load_dataset(tmp.path.string(), Split::train), d);
  const ImageDataset t = dl::data::load_dataset(tmp.path.string(), Split::test);
  REQUIRE(t.size() == 1);
  REQUIRE(t.classes == std::vector<std::string>{"a_cat"});

  SECTION("forced to one channel") {
    std::vector<uint8_t> gray_rgb(w * h * 3), gray(w * h);
    for (int i = 0; i < w * h; ++i) {
      gray[i] = static_cast<uint8_t>(gen.below(256));
      for (int c = 0; c < 3; ++c) gray_rgb[i * 3 + c] = gray[i];
    }
    write_png(tmp.path / "test" / "a_cat" / "t.png", w, h, 3, gray_rgb);
    const ImageDataset g = dl::data::load_image_folder(tmp.path.string(), Split::test, 1);
    REQUIRE(g.channels == 1);
    REQUIRE(g.pixels == gray);
  }
}

TEST_CASE("image folder errors name the file or folder and the problem", "[data]") {
  dl::Generator gen(dl::test::fresh_seed());
  TempDir tmp;
  const fs::path cls = tmp.path / "train" / "cat";
  write_png(cls / "a.png", 5, 4, 3, random_bytes(gen, 60));
  const auto load = [&] { return dl::data::load_image_folder(tmp.path.string(), Split::train); };

  SECTION("a file without an image extension") {
    write_file(cls / "notes.txt", {'h', 'i'});
    REQUIRE_THROWS_WITH(load(),
                        Contains((cls / "notes.txt").string()) && Contains("not an image file"));
  }
  SECTION("a corrupt .png") {
    write_file(cls / "b.png", {'n', 'o', 't', ' ', 'p', 'n', 'g'});
    REQUIRE_THROWS_WITH(load(), Contains((cls / "b.png").string() + ": not a PNG or JPEG file"));
  }
  SECTION("a 16-bit PGM named .png (stb_image read past its end, and it was trained on)") {
    write_file(cls / "x.png", {'P', '5', ' ', '3', ' ', '5', ' ', '5', '1', '2', '\n', 0, 1, 2});
    REQUIRE_THROWS_WITH(load(), Contains((cls / "x.png").string() + ": not a PNG or JPEG file"));
  }
  SECTION("a BMP, which no longer reads") {
    write_file(cls / "b.bmp", {'B', 'M'});
    REQUIRE_THROWS_WITH(load(), Contains((cls / "b.bmp").string()) &&
                                    Contains("expected a .png, .jpg or .jpeg extension"));
  }
  SECTION("an empty class folder") {
    fs::create_directories(tmp.path / "train" / "dog");
    write_file(tmp.path / "train" / "dog" / ".keep", {});
    REQUIRE_THROWS_WITH(
        load(), Contains((tmp.path / "train" / "dog").string()) && Contains("empty class folder"));
  }
  SECTION("a missing split folder") {
    REQUIRE_THROWS_WITH(dl::data::load_dataset(tmp.path.string(), Split::test),
                        Contains((tmp.path / "test").string()) && Contains("missing split folder"));
  }
  SECTION("no class folders") {
    fs::create_directories(tmp.path / "test");
    REQUIRE_THROWS_WITH(dl::data::load_image_folder(tmp.path.string(), Split::test),
                        Contains((tmp.path / "test").string()) && Contains("no class folders"));
  }
  SECTION("images of different sizes") {
    write_png(tmp.path / "train" / "dog" / "b.png", 6, 4, 3, random_bytes(gen, 72));
    REQUIRE_THROWS_WITH(load(), Contains((tmp.path / "train" / "dog" / "b.png").string()) &&
                                    Contains("6x4") && Contains("5x4") &&
                                    Contains((cls / "a.png").string()));
  }
}

TEST_CASE("an image folder's memory grows with the images it decodes, not from the first one",
          "[data]") {
  // A 2000x2000 first image and 200 damaged ones: the whole set was sized from the first image
  // (2.4 GB, zero-filled) before the second was found damaged.
  TempDir tmp;
  const fs::path cls = tmp.path / "train" / "cat";
  write_png(cls / "a.png", 2000, 2000, 1, std::vector<uint8_t>(2000 * 2000, 0));
  for (int i = 0; i < 200; ++i) {
    char name[16];
    std::snprintf(name, sizeof name, "b%d.png", i);
    write_file(cls / name, {'n', 'o'});
  }
  const auto peak_rss_kib = [] {
    struct rusage usage {};
    ::getrusage(RUSAGE_SELF, &usage);
    return usage.ru_maxrss;
  };
  const long before = peak_rss_kib();
  REQUIRE_THROWS_WITH(dl::data::load_image_folder(tmp.path.string(), Split::train),
                      Contains((cls / "b0.png").string() + ": not a PNG or JPEG file"));
  CHECK(peak_rss_kib() - before < 256 * 1024);
}

TEST_CASE("decode_image names why a file cannot be read", "[data]") {
  dl::Generator gen(dl::test::fresh_seed());
  TempDir tmp;
  const auto px = random_bytes(gen, 5 * 4 * 3);
  write_png(tmp.path / "a.png", 5, 4, 3, px);
  const dl::data::DecodedImage good = dl::data::decode_image((tmp.path / "a.png").string(), 3);
  REQUIRE(good.error.empty());
  REQUIRE(good.width == 5);
  REQUIRE(good.height == 4);
  REQUIRE(good.pixels == px);

  const auto reason = [](const fs::path& p) { return dl::data::decode_image(p.string(), 3).error; };
  CHECK(reason(tmp.path / "missing.png") == "no such file");
  CHECK(reason(tmp.path / "a.png" / "b.png") == "no such file");
  CHECK(reason(tmp.path) == "is a directory");
  write_file(tmp.path / "empty.png", {});
  CHECK(reason(tmp.path / "empty.png") == "empty file");
  REQUIRE(::mkfifo((tmp.path / "fifo.png").c_str(), 0600) == 0);
  CHECK(reason(tmp.path / "fifo.png") == "not a regular file");  // named, not opened
  write_file(tmp.path / "notes.png", {'h', 'i'});
  CHECK(reason(tmp.path / "notes.png") == "not a PNG or JPEG file");
  if (::geteuid() != 0) {  // root reads any file
    fs::permissions(tmp.path / "a.png", fs::perms::none);
    CHECK(reason(tmp.path / "a.png") == "cannot open (permission denied)");
  }
}

namespace {

std::vector<uint8_t> encode(bool jpeg, int w, int h, int comp, const std::vector<uint8_t>& px) {
  std::vector<uint8_t> out;
  const auto append = [](void* context, void* data, int size) {
    auto* bytes = static_cast<std::vector<uint8_t>*>(context);
    bytes->insert(bytes->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
  };
  const int ok = jpeg ? stbi_write_jpg_to_func(append, &out, w, h, comp, px.data(), 90)
                      : stbi_write_png_to_func(append, &out, w, h, comp, px.data(), w * comp);
  REQUIRE(ok != 0);
  return out;
}

// The offset of the first JPEG marker 0xFF `code` (its segment follows).
size_t find_marker(const std::vector<uint8_t>& jpeg, uint8_t code) {
  for (size_t i = 2; i + 1 < jpeg.size(); ++i)
    if (jpeg[i] == 0xFF && jpeg[i + 1] == code) return i;
  FAIL("no marker 0xFF" << std::hex << int{code});
  return 0;
}

void put_be16(std::vector<uint8_t>& bytes, size_t at, uint16_t v) {
  bytes[at] = static_cast<uint8_t>(v >> 8);
  bytes[at + 1] = static_cast<uint8_t>(v);
}

}  // namespace

TEST_CASE("decode_image reads only PNG and JPEG, within a pixel budget, and refuses damage",
          "[data]") {
  dl::Generator gen(dl::test::fresh_seed());
  TempDir tmp;
  const int w = 24, h = 16;
  const std::vector<uint8_t> px = random_bytes(gen, w * h * 3);
  const std::vector<uint8_t> png = encode(false, w, h, 3, px), jpeg = encode(true, w, h, 3, px);
  const auto decode = [&](const std::vector<uint8_t>& bytes, int channels = 3) {
    write_file(tmp.path / "x.png", bytes);
    return dl::data::decode_image((tmp.path / "x.png").string(), channels);
  };
  REQUIRE(decode(png).pixels == px);
  REQUIRE(decode(jpeg).error.empty());

  SECTION("other formats, whatever the name (stb_image decoded them all)") {
    // A 16-bit PGM with too little data, a TGA and a BMP header claiming 16000x16000.
    CHECK(decode({'P', '5', ' ', '3', ' ', '5', ' ', '5', '1', '2', '\n', 0, 1, 2}).error ==
          "not a PNG or JPEG file");
    std::vector<uint8_t> tga(30, 0);
    tga[2] = 2, tga[12] = 0x80, tga[13] = 0x3e, tga[14] = 0x80, tga[15] = 0x3e, tga[16] = 24;
    CHECK(decode(tga).error == "not a PNG or JPEG file");
    std::vector<uint8_t> bmp(54, 0);
    bmp[0] = 'B', bmp[1] = 'M', bmp[14] = 40, bmp[18] = 0x80, bmp[19] = 0x3e, bmp[22] = 0x80;
    bmp[23] = 0x3e, bmp[26] = 1, bmp[28] = 24;
    CHECK(decode(bmp).error == "not a PNG or JPEG file");
  }
  SECTION("a header over the pixel budget is refused before decoding") {
    std::vector<uint8_t> big_png = png;  // IHDR's width and height at bytes 16..23, CRC after
    for (size_t at : {16, 20})
      big_png[at] = 0, big_png[at + 1] = 0, put_be16(big_png, at + 2, 16000);
    const uLong crc = crc32(0, big_png.data() + 12, 17);
    for (int i = 0; i < 4; ++i) big_png[29 + i] = static_cast<uint8_t>(crc >> (24 - 8 * i));
    CHECK(decode(big_png).error == "image is 16000x16000, over the limit of 89478485 pixels");
    std::vector<uint8_t> big_jpeg = jpeg;  // SOF0: marker, length, precision, height, width
    const size_t sof = find_marker(big_jpeg, 0xC0);
    put_be16(big_jpeg, sof + 5, 16000);
    put_be16(big_jpeg, sof + 7, 16000);
    big_jpeg.resize(find_marker(big_jpeg, 0xDA) + 20);  // truncated inside the scan data
    CHECK(decode(big_jpeg).error == "image is 16000x16000, over the limit of 89478485 pixels");
  }
  SECTION("truncated files are refused, not decoded as far as they go") {
    const std::vector<uint8_t> half_jpeg(jpeg.begin(), jpeg.begin() + jpeg.size() * 2 / 3);
    CHECK(decode(half_jpeg).error ==
          "cannot decode the JPEG (libjpeg: Premature end of JPEG file)");
    const std::vector<uint8_t> half_png(png.begin(), png.begin() + png.size() * 2 / 3);
    CHECK_THAT(decode(half_png).error, Contains("past the end of the file"));
    const std::vector<uint8_t> no_end(png.begin(), png.end() - 12);  // without its IEND chunk
    CHECK_THAT(decode(no_end).error, Contains("cannot decode the PNG (stb_image: "));
  }
  SECTION("a chunk longer than the file is refused before stb_image allocates its length") {
    std::vector<uint8_t> claims_2gb = png;  // found by fuzzing: stb allocated the claimed size
    const size_t idat =
        std::search(png.begin(), png.end(), std::begin("IDAT"), std::end("IDAT") - 1) -
        png.begin() - 4;
    put_be16(claims_2gb, idat, 0x7FFF);
    put_be16(claims_2gb, idat + 2, 0xFFFF);
    CHECK(decode(claims_2gb).error ==
          "cannot decode the PNG (a chunk claims 2147483647 bytes, past the end of the file)");
  }
  SECTION("Huffman code counts that sum past 256 (out-of-bounds writes in stb_image)") {
    std::vector<uint8_t> bogus = jpeg;
    const size_t dht = find_marker(bogus, 0xC4);  // marker, length, class/id, 16 code counts
    for (size_t i = 0; i < 16; ++i) bogus[dht + 5 + i] = 255;
    CHECK(decode(bogus).error ==
          "cannot decode the JPEG (libjpeg: Bogus Huffman table definition)");
  }
  SECTION("a colour JPEG in 1, 2 and 4 channels follows stb_image's conversions") {
    const std::vector<uint8_t> rgb = decode(jpeg).pixels;
    const std::vector<uint8_t> grey = decode(jpeg, 1).pixels, grey_alpha = decode(jpeg, 2).pixels,
                               rgba = decode(jpeg, 4).pixels;
    REQUIRE(grey.size() == size_t{w * h});
    for (int i = 0; i < w * h; ++i) {
      const int y = (rgb[i * 3] * 77 + rgb[i * 3 + 1] * 150 + rgb[i * 3 + 2] * 29) >> 8;
      REQUIRE(int{grey[i]} == y);
      REQUIRE(grey_alpha[i * 2] == grey[i]);
      REQUIRE(grey_alpha[i * 2 + 1] == 255);
      for (int c = 0; c < 3; ++c) REQUIRE(rgba[i * 4 + c] == rgb[i * 3 + c]);
      REQUIRE(rgba[i * 4 + 3] == 255);
    }
  }
}

TEST_CASE("decode_image keeps the high byte of 16-bit samples", "[data]") {
  // scripts/pytorch_reference.py predict does the same, where PIL's convert would clip.
  dl::Generator gen(dl::test::fresh_seed());
  TempDir tmp;
  std::vector<uint16_t> grey(6 * 3);
  for (uint16_t& v : grey) v = static_cast<uint16_t>(gen.below(65536));
  grey[0] = 0x12ff;
  write_png16_grey(tmp.path / "grey16.png", 6, 3, grey);
  for (int channels : {1, 3}) {
    const dl::data::DecodedImage d =
        dl::data::decode_image((tmp.path / "grey16.png").string(), channels);
    REQUIRE(d.error.empty());
    REQUIRE(d.width == 6);
    REQUIRE(d.height == 3);
    std::vector<uint8_t> expected;
    for (uint16_t v : grey) expected.insert(expected.end(), channels, static_cast<uint8_t>(v >> 8));
    REQUIRE(d.pixels == expected);
  }
}

TEST_CASE("IDX files read back, gzip'd or plain", "[data]") {
  const uint64_t seed = dl::test::fresh_seed();
  INFO("seed " << seed);
  dl::Generator gen(seed);
  TempDir tmp;
  const IdxSet train = random_idx(gen, 7), test = random_idx(gen, 3);
  for (const char* name : {"mnist", "fashion-mnist"}) {
    const fs::path dir = tmp.path / name;
    write_gz(dir / "train-images-idx3-ubyte.gz", idx_bytes(0x803, {7, 4, 3}, train.images));
    write_gz(dir / "train-labels-idx1-ubyte.gz", idx_bytes(0x801, {7}, train.labels));
    write_file(dir / "t10k-images-idx3-ubyte", idx_bytes(0x803, {3, 4, 3}, test.images));
    write_file(dir / "t10k-labels-idx1-ubyte", idx_bytes(0x801, {3}, test.labels));
    for (Split split : {Split::train, Split::test}) {
      const IdxSet& want = split == Split::train ? train : test;
      const ImageDataset d = dl::data::load_dataset(dir.string(), split);
      REQUIRE(d.height == 4);
      REQUIRE(d.width == 3);
      REQUIRE(d.channels == 1);
      REQUIRE(d.pixels == want.images);
      REQUIRE(d.labels == std::vector<int64_t>(want.labels.begin(), want.labels.end()));
      REQUIRE(d.classes.size() == 10);
      REQUIRE(d.classes[0] == (std::string(name) == "mnist" ? "0" : "T-shirt/top"));
    }
  }
}

TEST_CASE("IDX errors name the file and the problem", "[data]") {
  dl::Generator gen(dl::test::fresh_seed());
  TempDir tmp;
  const IdxSet s = random_idx(gen, 5);
  const fs::path images = tmp.path / "train-images-idx3-ubyte.gz";
  write_gz(tmp.path / "train-labels-idx1-ubyte.gz", idx_bytes(0x801, {5}, s.labels));
  const auto load = [&] { return dl::data::load_idx(tmp.path.string(), Split::train); };

  SECTION("bad magic") {
    write_gz(images, idx_bytes(0x801, {5, 4, 3}, s.images));
    REQUIRE_THROWS_WITH(load(),
                        Contains(images.string()) && Contains("bad magic number 0x00000801"));
  }
  SECTION("fewer images than the header says") {
    write_gz(images, idx_bytes(0x803, {6, 4, 3}, s.images));
    REQUIRE_THROWS_WITH(load(), Contains(images.string()) && Contains("truncated"));
  }
  SECTION("a gzip stream cut short") {
    std::vector<uint8_t> big(4000);
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(gen.below(256));
    write_gz(images, idx_bytes(0x803, {1000, 2, 2}, big));
    std::vector<uint8_t> gz = read_file(images);
    gz.resize(gz.size() / 2);
    write_file(images, gz);
    REQUIRE_THROWS_WITH(load(), Contains(images.string()) && Contains("truncated"));
  }
  SECTION("label and image counts differ") {
    write_gz(images, idx_bytes(0x803, {4, 4, 3}, std::vector<uint8_t>(48)));
    REQUIRE_THROWS_WITH(load(), Contains("train-labels-idx1-ubyte.gz") && Contains("5 labels") &&
                                    Contains("4 images"));
  }
}

TEST_CASE("a folder with no recognised layout is an error naming the three layouts", "[data]") {
  TempDir tmp;
  write_file(tmp.path / "readme.txt", {'x'});
  REQUIRE_THROWS_WITH(dl::data::load_dataset(tmp.path.string(), Split::train),
                      Contains(tmp.path.string()) && Contains("no dataset found") &&
                          Contains("data_batch_1.bin") && Contains("scripts/get_cifar10.sh") &&
                          Contains("<root>/<train|test>/<class>") &&
                          Contains("train-images-idx3-ubyte"));
  // The folder above a data set gets a hint naming the folder to pass instead.
  fs::create_directories(tmp.path / "cifar10" / "train");
  REQUIRE_THROWS_WITH(
      dl::data::load_dataset(tmp.path.string(), Split::train),
      Contains("no dataset found") && Contains((tmp.path / "cifar10").string() + " holds one"));
  REQUIRE_THROWS_WITH(dl::data::load_dataset((tmp.path / "nope").string(), Split::train),
                      Contains((tmp.path / "nope").string()) && Contains("no such"));
}

TEST_CASE("the dataset cache is reused while the sources are unchanged", "[data]") {
  const uint64_t seed = dl::test::fresh_seed();
  INFO("seed " << seed);
  dl::Generator gen(seed);
  TempDir tmp;
  const fs::path cache = tmp.path / "cache";

  SECTION("CIFAR: reused, then invalidated by a newer source file") {
    const fs::path root = tmp.path / "cifar";
    const fs::path batch = root / "test_batch.bin";
    write_cifar_batch(batch, gen, 4);
    const ImageDataset first =
        dl::data::load_dataset_cached(root.string(), Split::test, cache.string());
    require_same(first, dl::data::load_dataset(root.string(), Split::test));
    const fs::path file = only_cache_file(cache);
    REQUIRE(read_file(file).size() > 4);
    REQUIRE(std::string(reinterpret_cast<const char*>(read_file(file).data()), 4) == "DLDS");

    // A newer source file invalidates the cache; the rebuilt file keeps the name.
    const auto mtime = fs::last_write_time(batch);
    write_cifar_batch(batch, gen, 4);
    fs::last_write_time(batch, mtime + std::chrono::seconds(10));
    const ImageDataset changed = dl::data::load_dataset(root.string(), Split::test);
    REQUIRE(changed.pixels != first.pixels);
    require_same(dl::data::load_dataset_cached(root.string(), Split::test, cache.string()),
                 changed);
    require_same(dl::data::load_dataset_cached(root.string(), Split::test, cache.string()),
                 changed);
    REQUIRE(only_cache_file(cache) == file);
  }
  SECTION("image folder: adding a file invalidates; a damaged cache is rebuilt") {
    const fs::path root = tmp.path / "folder";
    write_png(root / "train" / "a" / "1.png", 3, 2, 3, random_bytes(gen, 18));
    write_png(root / "train" / "b" / "1.png", 3, 2, 3, random_bytes(gen, 18));
    const auto cached = [&] {
      return dl::data::load_dataset_cached(root.string(), Split::train, cache.string());
    };
    require_same(cached(), dl::data::load_dataset(root.string(), Split::train));
    const fs::path file = only_cache_file(cache);
    const std::vector<uint8_t> good = read_file(file);

    write_png(root / "train" / "b" / "2.png", 3, 2, 3, random_bytes(gen, 18));
    const ImageDataset grown = cached();
    REQUIRE(grown.size() == 3);
    require_same(grown, dl::data::load_dataset(root.string(), Split::train));
    const std::vector<uint8_t> rebuilt = read_file(file);
    REQUIRE(rebuilt != good);

    // The file ends with the pixels and then a CRC-32: byte 10 from the end is a pixel.
    const std::vector<uint8_t> flipped = flip_byte(rebuilt, rebuilt.size() - 10);
    std::vector<uint8_t> cut(rebuilt.begin(), rebuilt.begin() + rebuilt.size() / 2);
    for (const auto& damaged : {flipped, cut, std::vector<uint8_t>{'j', 'u', 'n', 'k'}}) {
      write_file(file, damaged);
      require_same(cached(), grown);
      REQUIRE(read_file(file) == rebuilt);
    }
  }
  SECTION("an empty cache folder name disables the cache") {
    write_cifar_batch(tmp.path / "cifar" / "test_batch.bin", gen, 1);
    dl::data::load_dataset_cached((tmp.path / "cifar").string(), Split::test, "");
    REQUIRE_FALSE(fs::exists(cache));
  }
}

TEST_CASE("subset is deterministic and balanced over classes", "[data]") {
  const uint64_t seed = dl::test::fresh_seed();
  INFO("seed " << seed);
  dl::Generator gen(seed);
  ImageDataset d;
  d.height = 2;
  d.width = 1;
  d.channels = 1;
  d.classes = {"a", "b", "c"};
  for (int i = 0; i < 40; ++i) d.labels.push_back(i < 3 ? i : static_cast<int64_t>(gen.below(3)));
  for (int i = 0; i < 40; ++i) d.labels.push_back(i % 2);  // class 2 has few images
  const int64_t n_images = d.size();
  for (int64_t i = 0; i < n_images; ++i) {
    d.pixels.push_back(static_cast<uint8_t>(i));  // the first byte identifies the source image
    d.pixels.push_back(static_cast<uint8_t>(gen.below(256)));
  }

  for (int64_t n : {1, 2, 3, 7, 12, 30}) {
    INFO("n " << n);
    const ImageDataset s = dl::data::subset(d, n);
    require_same(s, dl::data::subset(d, n));
    REQUIRE(s.classes == d.classes);
    std::map<int64_t, int64_t> per_class;
    int64_t next = 0;  // images are kept in their original order
    for (int64_t i = 0; i < s.size(); ++i) {
      const int64_t src = s.image(i)[0];
      REQUIRE(src >= next);
      next = src + 1;
      REQUIRE(s.labels[i] == d.labels[src]);
      REQUIRE(s.image(i)[1] == d.image(src)[1]);
      ++per_class[s.labels[i]];
    }
    const int64_t cap = (n + 2) / 3;
    for (const auto& [label, count] : per_class) REQUIRE(count <= cap);
    const int64_t class2 = std::count(d.labels.begin(), d.labels.end(), 2);
    REQUIRE(s.size() == std::min(n, 2 * cap + std::min(cap, class2)));
  }
  require_same(dl::data::subset(d, 0), d);
  require_same(dl::data::subset(d, n_images), d);
  require_same(dl::data::subset(d, n_images + 5), d);
}

TEST_CASE("the dataset cache notices new content of the same size and modification time",
          "[data]") {
  const uint64_t seed = dl::test::fresh_seed();
  INFO("seed " << seed);
  dl::Generator gen(seed);
  TempDir tmp;
  const fs::path root = tmp.path / "cifar", batch = root / "test_batch.bin";
  const fs::path cache = tmp.path / "cache";
  write_cifar_batch(batch, gen, 4);
  // A cached load and the line it writes to stderr.
  const auto load = [&] {
    std::ostringstream err;
    struct Restore {
      std::streambuf* saved;
      ~Restore() { std::cerr.rdbuf(saved); }
    } restore{std::cerr.rdbuf(err.rdbuf())};
    ImageDataset d = dl::data::load_dataset_cached(root.string(), Split::test, cache.string());
    return std::pair(std::move(d), err.str());
  };
  const auto ctime = [&batch] {
    struct stat st {};
    REQUIRE(::stat(batch.c_str(), &st) == 0);
    return std::pair(st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
  };

  const auto [first, wrote] = load();
  const std::string file = only_cache_file(cache).string();
  REQUIRE(wrote == "cache: wrote " + file + "\n");
  const auto [again, read] = load();
  require_same(again, first);
  REQUIRE(read == "cache: read " + file + "\n");

  // What `cp -p other.bin test_batch.bin` does: new content, same size, the old mtime restored.
  const auto size = fs::file_size(batch);
  const auto mtime = fs::last_write_time(batch);
  const auto old_ctime = ctime();
  write_cifar_batch(tmp.path / "other.bin", gen, 4);
  fs::copy_file(tmp.path / "other.bin", batch, fs::copy_options::overwrite_existing);
  fs::last_write_time(batch, mtime);
  // A coarse file-system clock can leave the ctime as it was: restore the mtime until it moves.
  for (int i = 0; i < 300 && ctime() == old_ctime; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    fs::last_write_time(batch, mtime);
  }
  REQUIRE(ctime() != old_ctime);
  REQUIRE(fs::file_size(batch) == size);
  REQUIRE(fs::last_write_time(batch) == mtime);
  const ImageDataset changed = dl::data::load_dataset(root.string(), Split::test);
  REQUIRE(changed.pixels != first.pixels);

  const auto [rebuilt, stale] = load();
  require_same(rebuilt, changed);
  REQUIRE(stale == "cache: " + file + " is stale (source files changed: status-change time), " +
                       "rebuilt\n");
  const auto [reused, read_again] = load();
  require_same(reused, changed);
  REQUIRE(read_again == "cache: read " + file + "\n");
}
