// Image-classification datasets for the trainer: readers for the CIFAR-10 binary release, image
// folders (<root>/<split>/<class>/*.png|jpg|jpeg|bmp) and (Fashion-)MNIST IDX files, plus a
// binary cache of the decoded set. Every set is held decoded in memory as uint8 NHWC.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dl::data {

struct ImageDataset {
  int64_t height = 0, width = 0, channels = 0;
  std::vector<uint8_t> pixels;       // [size, height, width, channels], row-major (HWC per image)
  std::vector<int64_t> labels;       // [size], in [0, classes.size())
  std::vector<std::string> classes;  // class names, label i = classes[i]

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  int64_t image_bytes() const { return height * width * channels; }
  // The first byte of image i (HWC); i must be in [0, size()).
  const uint8_t* image(int64_t i) const;
};

enum class Split { train, test };
const char* split_name(Split split);  // "train" or "test"

// The CIFAR-10 binary release: dir holds data_batch_1.bin..data_batch_5.bin (train) and
// test_batch.bin (test), each a run of 3073-byte records (a label byte, then the 32x32 R, G and B
// planes, row-major), converted here to HWC. dir may also be the parent of cifar-10-batches-bin/.
// Class names come from batches.meta.txt when present, else the standard ten.
ImageDataset load_cifar10_binary(const std::string& dir, Split split);

// An image folder: <root>/<split>/<class>/<file>, classes sorted by name (label = rank), files
// sorted by name within a class. Files must be .png, .jpg, .jpeg or .bmp (any case) and all of one
// size; they are decoded with stb_image into `channels` (1..4) components, in parallel. Hidden
// entries (names starting with '.') are skipped; any other file is an error.
ImageDataset load_image_folder(const std::string& root, Split split, int channels = 3);

// The most pixels an image may have, PIL's limit (Image.MAX_IMAGE_PIXELS): checked from the
// file's header before it is decoded.
inline constexpr int64_t kMaxImagePixels = 89'478'485;

// One image file (PNG, JPEG, BMP, ... as stb_image reads them) decoded into `channels` (1..4)
// components; 16-bit images keep the high byte of each value.
struct DecodedImage {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;  // [height, width, channels]; empty on failure
  std::string error;            // why the file could not be read; empty on success
};
// Never throws for a bad file: error says "no such file", "is a directory", "not a regular
// file", "empty file", "cannot open (<reason>)" or "cannot decode the image (stb_image: <reason>)".
DecodedImage decode_image(const std::string& path, int channels);

// MNIST / Fashion-MNIST IDX files in dir, gzip'd or not: {train,t10k}-images-idx3-ubyte[.gz] and
// {train,t10k}-labels-idx1-ubyte[.gz]. One channel. Class names are Fashion-MNIST's when the
// directory's name, or its parent's (torchvision's FashionMNIST/raw), contains "fashion" in any
// case, else "0".."9".
ImageDataset load_idx(const std::string& dir, Split split);

// Picks the reader from what root holds: CIFAR-10 batch files (in root or
// root/cifar-10-batches-bin), train/ or test/ folders (image folder), or IDX files.
ImageDataset load_dataset(const std::string& root, Split split);

// load_dataset through a cache: the decoded set is kept in cache_dir as one file per (root, split,
// format), reused while the source files (and the folders walked) keep their count, total size,
// newest modification time and newest status-change time (st_ctime). Only stat(2) is used, no
// content is hashed: any rewrite or metadata change (chmod, touch, cp -p) of a source sets its
// ctime to now, which nothing can set back, so it invalidates the cache. One line on stderr says
// "cache: read <file>", "cache: wrote <file>" or "cache: <file> is stale (<why>), rebuilt"; a
// stale or damaged file is rebuilt, a failed write only warns. An empty cache_dir disables caching.
ImageDataset load_dataset_cached(const std::string& root, Split split,
                                 const std::string& cache_dir);

// A deterministic, class-balanced subset of n images: images are taken in order, at most
// ceil(n / classes) per class, until n are taken (fewer when some class runs short). n <= 0 or
// n >= size() returns d unchanged.
ImageDataset subset(const ImageDataset& d, int64_t n);

}  // namespace dl::data
