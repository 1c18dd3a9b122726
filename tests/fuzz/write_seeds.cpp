// Writes the seed corpus of the fuzz targets, corpus/<target>/<seed>, with the engine's own
// writers: small valid files, and damaged copies that a reader must refuse. Run it after changing
// a format:  cmake --build build --target fuzz_write_seeds && build/tests/fuzz/fuzz_write_seeds
// tests/fuzz/corpus
// Regression seeds for findings are added by hand (docs/untrusted_input.md lists them).
#include <stb_image_write.h>
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "models/registry.h"
#include "tests/fuzz/fuzz_input.h"

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

namespace {

fs::path corpus;

void seed(const std::string& target, const std::string& name, const Bytes& bytes) {
  dl::fuzz::write_file(corpus / target / name, bytes);
}

Bytes text(const std::string& s) {
  return Bytes(s.begin(), s.end());
}

Bytes read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(in)), {});
}

Bytes first(const Bytes& bytes, size_t n) {
  return Bytes(bytes.begin(), bytes.begin() + n);
}

Bytes flipped(Bytes bytes, size_t at) {
  bytes.at(at) ^= 0x40;
  return bytes;
}

Bytes gzip(const Bytes& bytes, const fs::path& scratch) {
  const fs::path path = scratch / "gzip.gz";
  gzFile file = gzopen(path.c_str(), "wb");
  gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(file);
  return read(path);
}

Bytes encode_image(bool jpeg, int w, int h, int comp) {
  Bytes pixels(static_cast<size_t>(w * h * comp));
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i * 37);
  Bytes out;
  const auto append = [](void* context, void* data, int size) {
    auto* bytes = static_cast<Bytes*>(context);
    bytes->insert(bytes->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
  };
  if (jpeg)
    stbi_write_jpg_to_func(append, &out, w, h, comp, pixels.data(), 90);
  else
    stbi_write_png_to_func(append, &out, w, h, comp, pixels.data(), w * comp);
  return out;
}

Bytes be32(std::initializer_list<uint32_t> values) {
  Bytes out;
  for (uint32_t v : values)
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
  return out;
}

Bytes concat(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

void json_seeds() {
  seed("json", "object.json",
       text(R"({"a": [1, -2.5e3, true, false, null, "x\u00e9\n\ud83d\ude00"], "b": {"c": {}}})"));
  seed("json", "numbers.json",
       text("[0, -0, 1e308, 9223372036854775807, -9223372036854775808, "
            "18446744073709551616, 0.1, 5e-324]"));
  seed("json", "duplicate_key.json", text(R"({"a": 1, "a": 2})"));
  seed("json", "truncated.json", text(R"({"a": [1, 2)"));
  seed("json", "lone_surrogate.json", text(R"("\ud800")"));
  seed("json", "too_deep.json", text(std::string(70, '[') + std::string(70, ']')));
  seed("json", "bad_utf8.json", Bytes{'"', 0xC3, 0x28, '"'});
}

void safetensors_seeds(const fs::path& scratch) {
  const fs::path path = scratch / "tensors.safetensors";
  dl::io::save_safetensors(
      path.string(),
      {{"weight", dl::Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3})},
       {"steps", dl::Tensor::from_vector(std::vector<int64_t>{7, 8}, {2})}},
      {{"note", "seed"}});
  const Bytes file = read(path);
  seed("safetensors", "valid.safetensors", file);
  seed("safetensors", "truncated.safetensors", first(file, file.size() / 2));
  seed("safetensors", "damaged_data.safetensors", flipped(file, file.size() - 1));
  const auto with_header = [](const std::string& header, const Bytes& data) {
    Bytes out;
    for (int shift = 0; shift < 64; shift += 8)
      out.push_back(static_cast<uint8_t>(uint64_t{header.size()} >> shift));
    return concat(concat(out, text(header)), data);
  };
  seed("safetensors", "offsets_past_end.safetensors",
       with_header(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", Bytes(8)));
  seed("safetensors", "header_array.safetensors", with_header("[1, 2, 3]", {}));
  seed("safetensors", "huge_shape.safetensors",
       with_header(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}})",
                   {}));
  // The JSON seeds' most realistic input: a header the engine wrote.
  const size_t header_size = file[0] | size_t{file[1]} << 8;
  seed("json", "safetensors_header.json", Bytes(file.begin() + 8, file.begin() + 8 + header_size));
}

void checkpoint_seeds(const fs::path& scratch) {
  const auto write = [&](const dl::models::ModelSpec& spec, const dl::models::ModelSpec& described,
                         bool with_optimizer) {
    dl::Generator gen(1);
    const auto model = dl::models::make_model(spec, gen);
    dl::optim::AdamW optimizer(model->parameters());
    std::map<std::string, std::string> metadata = described.to_metadata();
    metadata["data.height"] = "4";
    metadata["data.width"] = "4";
    metadata["data.classes"] = "cat,dog";
    metadata["data.mean"] = "0.5";
    metadata["data.std"] = "0.25";
    metadata["flags"] = R"({"dim":"2","depth":"1"})";
    const fs::path path = scratch / "checkpoint.safetensors";
    dl::io::save_checkpoint(path.string(), *model, with_optimizer ? &optimizer : nullptr,
                            dl::io::TrainingPosition{.epoch = 1, .batch = 2, .step = 3}, metadata);
    return read(path);
  };
  dl::models::ModelSpec convmixer{.name = "convmixer",
                                  .dim = 2,
                                  .depth = 1,
                                  .kernel = 3,
                                  .patch = 2,
                                  .classes = 2,
                                  .in_channels = 1};
  const Bytes valid = write(convmixer, convmixer, true);
  seed("checkpoint", "convmixer.safetensors", valid);
  seed("checkpoint", "convmixer_model_only.safetensors", write(convmixer, convmixer, false));
  seed("checkpoint", "truncated.safetensors", first(valid, valid.size() - 10));
  dl::models::ModelSpec resnet{
      .name = "resnet", .dim = 1, .depth = 0, .classes = 2, .in_channels = 1};
  seed("checkpoint", "resnet.safetensors", write(resnet, resnet, false));
  // Metadata that describes another model than the tensors hold.
  dl::models::ModelSpec deeper = convmixer;
  deeper.depth = 2;
  seed("checkpoint", "metadata_mismatch.safetensors", write(convmixer, deeper, false));
}

void cifar_seeds() {
  Bytes record(3073);
  for (size_t i = 0; i < record.size(); ++i) record[i] = static_cast<uint8_t>(i * 7);
  record[0] = 3;
  std::string names;
  for (const char* name :
       {"plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"})
    names += std::string(name) + "\n";
  using dl::fuzz::join_parts;
  seed("cifar", "one_record", join_parts({record}));
  seed("cifar", "with_meta", join_parts({record, text(names)}));
  seed("cifar", "partial_record", join_parts({first(record, 3000)}));
  Bytes bad_label = record;
  bad_label[0] = 12;
  seed("cifar", "bad_label", join_parts({bad_label}));
  seed("cifar", "nine_names", join_parts({record, text("a\nb\nc\nd\ne\nf\ng\nh\ni\n")}));
}

void idx_seeds(const fs::path& scratch) {
  const Bytes images = concat(be32({0x803, 2, 2, 2}), Bytes{1, 2, 3, 4, 5, 6, 7, 8});
  const Bytes labels = concat(be32({0x801, 2}), Bytes{0, 9});
  using dl::fuzz::join_parts;
  seed("idx", "plain", join_parts({images, labels}));
  seed("idx", "gzip", join_parts({gzip(images, scratch), gzip(labels, scratch)}));
  seed("idx", "count_mismatch", join_parts({images, concat(be32({0x801, 3}), Bytes{0, 1, 2})}));
  seed("idx", "bad_label", join_parts({images, concat(be32({0x801, 2}), Bytes{0, 10})}));
  seed("idx", "huge_dims", join_parts({be32({0x803, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}), labels}));
  seed("idx", "truncated_gzip",
       join_parts({first(gzip(images, scratch), 12), gzip(labels, scratch)}));
}

void image_seeds() {
  const Bytes png = encode_image(false, 3, 2, 3);
  const Bytes jpeg = encode_image(true, 8, 8, 3);
  seed("image", "rgb.png", png);
  seed("image", "grey_alpha.png", encode_image(false, 2, 2, 2));
  seed("image", "rgb.jpg", jpeg);
  seed("image", "grey.jpg", encode_image(true, 4, 4, 1));
  seed("image", "truncated.jpg", first(jpeg, jpeg.size() / 2));
  seed("image", "truncated.png", first(png, png.size() - 12));
  seed("image", "bad_crc.png", flipped(png, png.size() - 20));
  // Formats stb_image would have read (issue 12): a 16-bit PGM with too little data, a BMP
  // header claiming 16000x16000 pixels.
  seed("image", "pgm16", text("P5 3 5 512\n\x01\x02"));
  Bytes bmp = text("BM");
  bmp.resize(54);
  bmp[10] = 54, bmp[14] = 40, bmp[18] = 0x80, bmp[19] = 0x3E, bmp[22] = 0x80, bmp[23] = 0x3E;
  bmp[26] = 1, bmp[28] = 24;
  seed("image", "bmp_huge", bmp);

  using dl::fuzz::join_parts;
  const auto place = [](uint8_t where, const Bytes& bytes) { return concat(Bytes{where}, bytes); };
  const Bytes jpeg_3x2 = encode_image(true, 3, 2, 3);
  // Bits 0-1 the class folder, 2-3 the extension (0 .png, 1 .jpg), 4 a hidden name.
  seed("image_folder", "two_classes",
       join_parts({place(0, png), place(1, png), place(0 | 1 << 2, jpeg_3x2)}));
  seed("image_folder", "hidden_junk", join_parts({place(0, png), place(1 << 4, text("junk"))}));
  seed("image_folder", "sizes_differ",
       join_parts({place(0, png), place(1 | 1 << 2, encode_image(true, 8, 8, 3))}));
  seed("image_folder", "text_file", join_parts({place(0, png), place(3 << 2, text("notes"))}));
  seed("image_folder", "damaged", join_parts({place(0, png), place(1, first(png, 20))}));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: fuzz_write_seeds CORPUS_FOLDER (tests/fuzz/corpus)\n";
    return 2;
  }
  corpus = argv[1];
  const fs::path scratch = dl::fuzz::fresh_scratch_folder();
  json_seeds();
  safetensors_seeds(scratch);
  checkpoint_seeds(scratch);
  cifar_seeds();
  idx_seeds(scratch);
  image_seeds();
  std::cout << "seeds written to " << corpus.string() << "\n";
  return 0;
}
