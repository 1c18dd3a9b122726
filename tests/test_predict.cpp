// The predict binary's command line: a run directory as --checkpoint, and the reasons it gives for
// images it cannot read (the others are still classified). A tiny run is trained with the train
// binary first; test_trainer compares predict's logits with the model in process.
#include <stb_image_write.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/io/checkpoint.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "models/registry.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Catch::Contains;

namespace {

struct TempDir {
  fs::path path =
      fs::temp_directory_path() / ("dl_test_predict_" + std::to_string(dl::test::fresh_seed()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

struct Result {
  int status = -1;
  std::string out, err;
};

// Runs a binary with arguments (each quoted), capturing stdout and stderr.
Result run(const fs::path& tmp, const std::string& binary, const std::vector<std::string>& args) {
  std::string cmd = binary;
  for (const std::string& a : args) cmd += " '" + a + "'";
  cmd += " > " + (tmp / "out.txt").string() + " 2> " + (tmp / "err.txt").string();
  const int status = std::system(cmd.c_str());
  REQUIRE(WIFEXITED(status));
  return {WEXITSTATUS(status), read_text(tmp / "out.txt"), read_text(tmp / "err.txt")};
}

}  // namespace

TEST_CASE("predict takes a run directory and names why an image cannot be read") {
  dl::Generator gen(dl::test::fresh_seed());
  TempDir tmp;
  // CIFAR-10 binary batches of 4 random images each, and one epoch of a tiny ConvMixer on them.
  const fs::path data = tmp.path / "cifar", run_dir = tmp.path / "run";
  fs::create_directories(data);
  for (const std::string name : {"data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                 "data_batch_5", "test_batch"}) {
    std::ofstream out(data / (name + ".bin"), std::ios::binary);
    for (int i = 0; i < 4 * 3073; ++i)
      out.put(static_cast<char>(i % 3073 == 0 ? gen.below(10) : gen.below(256)));
  }
  const Result trained =
      run(tmp.path, DL_TRAIN_BIN,
          {"--data",    data.string(), "--dim",      "8",   "--depth",          "1",
           "--kernel",  "3",           "--patch",    "4",   "--epochs",         "1",
           "--batch",   "8",           "--ra-n",     "0",   "--device",         "cpu",
           "--threads", "2",           "--progress", "off", "--checkpoint-dir", run_dir.string()});
  INFO(trained.out << trained.err);
  REQUIRE(trained.status == 0);

  std::vector<uint8_t> pixels(32 * 32 * 3);
  for (auto& p : pixels) p = static_cast<uint8_t>(gen.below(256));
  const fs::path png = tmp.path / "img.png";
  REQUIRE(stbi_write_png(png.c_str(), 32, 32, 3, pixels.data(), 32 * 3) != 0);

  SECTION("a run directory stands for its last.safetensors") {
    const Result by_dir =
        run(tmp.path, DL_PREDICT_BIN, {"--checkpoint", run_dir.string(), "--json", png.string()});
    INFO(by_dir.err);
    REQUIRE(by_dir.status == 0);
    const Result by_file =
        run(tmp.path, DL_PREDICT_BIN,
            {"--checkpoint", (run_dir / "last.safetensors").string(), "--json", png.string()});
    REQUIRE(by_file.status == 0);
    REQUIRE_THAT(by_dir.out, Contains(png.string()));
    REQUIRE(by_dir.out == by_file.out);
  }
  SECTION("a directory without a checkpoint is named") {
    const fs::path empty = tmp.path / "empty-run";
    fs::create_directories(empty);
    const Result r = run(tmp.path, DL_PREDICT_BIN, {"--checkpoint", empty.string(), png.string()});
    REQUIRE(r.status == 2);
    REQUIRE_THAT(r.err, Contains((empty / "last.safetensors").string() + ": no such file"));
  }
  SECTION("unreadable images are named with the reason; the others are classified") {
    const fs::path missing = tmp.path / "missing.png", notes = tmp.path / "notes.png";
    std::ofstream(notes) << "not an image";
    const Result r = run(tmp.path, DL_PREDICT_BIN,
                         {"--checkpoint", run_dir.string(), missing.string(), png.string(),
                          data.string(), notes.string()});
    INFO(r.err);
    REQUIRE(r.status == 1);
    REQUIRE_THAT(r.err, Contains("cannot read " + missing.string() + ": no such file\n"));
    REQUIRE_THAT(r.err, Contains("cannot read " + data.string() + ": is a directory\n"));
    REQUIRE_THAT(r.err, Contains("cannot read " + notes.string() + ": not a PNG or JPEG file\n"));
    REQUIRE_THAT(r.err, Contains("3 of 4 images could not be read"));
    REQUIRE(r.out.rfind(png.string() + ":", 0) == 0);  // the one good image, on one line
    REQUIRE(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  }
  SECTION("without a GPU, --device cuda is refused with the flag that runs on the CPU") {
    if (dl::resolve_device("auto").is_cuda()) return;
    const std::vector<std::pair<std::string, std::vector<std::string>>> runs = {
        {DL_PREDICT_BIN, {"--checkpoint", run_dir.string(), "--device", "cuda", png.string()}},
        {DL_TRAIN_BIN,
         {"--data", data.string(), "--device", "cuda", "--checkpoint-dir",
          (tmp.path / "cuda-run").string()}},
        {DL_TRAIN_BIN, {"--resume", (run_dir / "last.safetensors").string(), "--device", "cuda"}}};
    for (const auto& [binary, args] : runs) {
      const Result r = run(tmp.path, binary, args);
      INFO(binary << " " << args.front() << ": " << r.err);
      CHECK(r.status != 0);
      CHECK_THAT(r.err, Contains("device cuda:0 is not available") &&
                            Contains("HINT: --device cpu runs on any machine"));
    }
  }
}

TEST_CASE("predict refuses hostile checkpoint metadata with one message, before building") {
  TempDir tmp;
  std::vector<uint8_t> pixels(32 * 32 * 3, 128);
  const fs::path png = tmp.path / "img.png", checkpoint = tmp.path / "model.safetensors";
  REQUIRE(stbi_write_png(png.c_str(), 32, 32, 3, pixels.data(), 32 * 3) != 0);
  const dl::models::ModelSpec spec{.dim = 4, .depth = 1, .kernel = 3, .patch = 2};
  const auto predict_with = [&](const std::map<std::string, std::string>& edits) {
    std::map<std::string, std::string> metadata = spec.to_metadata();
    metadata.insert({{"data.height", "32"},
                     {"data.width", "32"},
                     {"data.classes", "a,b,c,d,e,f,g,h,i,j"},
                     {"data.mean", "0.5,0.5,0.5"},
                     {"data.std", "0.25,0.25,0.25"}});
    for (const auto& [key, value] : edits) metadata[key] = value;
    dl::Generator gen(0);
    dl::io::save_checkpoint(checkpoint.string(), *dl::models::make_model(spec, gen), nullptr, {},
                            metadata);
    return run(tmp.path, DL_PREDICT_BIN, {"--checkpoint", checkpoint.string(), png.string()});
  };
  REQUIRE(predict_with({}).status == 0);

  SECTION("a 2^31 patch in a file with no tensors (it built a 2^62-element weight)") {
    std::map<std::string, std::string> metadata = spec.to_metadata();
    metadata["model.patch"] = std::to_string(int64_t{1} << 31);
    metadata["model.dim"] = metadata["model.in_channels"] = "1";
    metadata["model.depth"] = "0";
    metadata["format"] = dl::io::kCheckpointFormat;
    metadata["format_version"] = std::to_string(dl::io::kCheckpointVersion);
    dl::io::save_safetensors(checkpoint.string(), {}, metadata);
    const Result r =
        run(tmp.path, DL_PREDICT_BIN, {"--checkpoint", checkpoint.string(), png.string()});
    REQUIRE(r.status == 2);
    REQUIRE_THAT(r.err, Contains(checkpoint.string() + ": ") &&
                            Contains("ConvMixer patch must be in [1, 1024]"));
  }
  SECTION("a FIFO as checkpoint is refused, not waited on (predict and train --resume hung)") {
    const fs::path fifo = tmp.path / "fifo.safetensors";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    // timeout(1) ends a hang with status 124 instead of hanging the test.
    Result r = run(tmp.path, std::string("timeout 60 ") + DL_PREDICT_BIN,
                   {"--checkpoint", fifo.string(), png.string()});
    REQUIRE(r.status == 2);
    REQUIRE_THAT(r.err, Contains(fifo.string() + ": not a regular file"));
    r = run(tmp.path, std::string("timeout 60 ") + DL_TRAIN_BIN,
            {"--resume", fifo.string(), "--device", "cpu"});
    REQUIRE(r.status == 1);
    REQUIRE_THAT(r.err, Contains(fifo.string() + ": not a regular file"));
  }
  SECTION("a depth the tensors do not hold") {
    const Result r = predict_with({{"model.depth", "5"}});
    REQUIRE(r.status == 2);
    REQUIRE_THAT(r.err, Contains("but its model tensors hold"));
  }
  SECTION("image sizes are bounded and must fit the patch") {
    Result r = predict_with({{"data.height", "100000"}, {"data.width", "100000"}});
    REQUIRE(r.status == 2);
    REQUIRE_THAT(r.err, Contains("100000x100000, over the limit of 89478485 pixels"));
    r = predict_with({{"data.height", "33"}});
    REQUIRE(r.status == 2);
    REQUIRE_THAT(r.err, Contains("not a multiple of its model's patch 2"));
  }
  SECTION("a malformed number names the key and the file") {
    Result r = predict_with({{"data.height", "32px"}});
    REQUIRE(r.status == 2);
    REQUIRE_THAT(r.err, Contains(checkpoint.string() +
                                 ": the checkpoint's metadata 'data.height' is '32px', not an "
                                 "integer in [1, 89478485]"));
    r = predict_with({{"data.mean", "0.5,x,0.5"}});
    REQUIRE(r.status == 2);
    REQUIRE_THAT(r.err, Contains("'data.mean' is '0.5,x,0.5', not a comma-separated list"));
  }
  SECTION("a zero or non-finite std (NaN probabilities before)") {
    for (const std::string std_dev : {"0.25,0,0.25", "0.25,-1,0.25", "nan,0.25,0.25"}) {
      const Result r = predict_with({{"data.std", std_dev}});
      INFO(r.out << r.err);
      REQUIRE(r.status == 2);
      REQUIRE_THAT(r.err, Contains(checkpoint.string() +
                                   ": the checkpoint's metadata 'data.std' is '" + std_dev + "'"));
    }
  }
}
