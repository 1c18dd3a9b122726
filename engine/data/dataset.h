// Image-classification datasets for the trainer: readers for the CIFAR-10 binary release, image
// folders (<root>/<split>/<class>/*.png|jpg|jpeg) and (Fashion-)MNIST IDX files, plus a
// binary cache of the decoded set. Every set is held decoded in memory as uint8 NHWC.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/data/image.h"

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
// sorted by name within a class. Files must be .png, .jpg or .jpeg (any case) and all of one
// size; they are decoded with decode_image into `channels` (1..4) components, in parallel. Hidden
// entries (names starting with '.') are skipped; any other file is an error.
ImageDataset load_image_folder(const std::string& root, Split split, int channels = 3);

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
