// JSON parser/serializer and safetensors reader/writer: round trips, the exact byte layout against
// hand-built bytes, and one hand-built malformed file per validation rule.
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

#include "engine/error.h"
#include "engine/io/checkpoint.h"
#include "engine/io/json.h"
#include "engine/io/safetensors.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using Catch::Contains;
using dl::DType;
using dl::Tensor;
using dl::io::JsonValue;
using dl::io::parse_json;
using dl::io::to_json;

namespace {

// A unique file path under the temp directory; the file is removed when this goes out of scope.
class TempPath {
 public:
  TempPath() {
    const std::string name = "dl_test_" + std::to_string(::getpid()) + "_" +
                             std::to_string(dl::test::fresh_seed()) + ".safetensors";
    path_ = (fs::temp_directory_path() / name).string();
  }
  ~TempPath() {
    std::error_code ec;
    fs::remove(path_, ec);
  }
  const std::string& str() const { return path_; }

 private:
  std::string path_;
};

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string bytes_of(const Tensor& t) {
  const Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.raw_data()), c.nbytes());
}

// A file with this header text and `data_bytes` zero bytes of data.
std::string st_file(const std::string& header, size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\0');
}

// Writes `bytes` to a temp file and requires loading it to fail naming the file and `problem`.
void require_load_error(const std::string& bytes, const std::string& problem) {
  TempPath tmp;
  write_file(tmp.str(), bytes);
  INFO("file bytes: " << bytes.substr(0, 200));
  REQUIRE_THROWS_AS(dl::io::load_safetensors(tmp.str()), dl::Error);
  REQUIRE_THROWS_WITH(dl::io::load_safetensors(tmp.str()),
                      Contains(tmp.str() + ": ") && Contains(problem));
}

}  // namespace

TEST_CASE("json: values, numbers, escapes and key order", "[json]") {
  const JsonValue v = parse_json(R"( {"b": [1, -2, 3.5, 1e3, true, false, null], "a": "x"} )");
  REQUIRE(v.as_object().size() == 2);
  CHECK(v.as_object()[0].first == "b");
  CHECK(v.as_object()[1].first == "a");
  const auto& arr = v.find("b")->as_array();
  CHECK(arr[0].as_int() == 1);
  CHECK(arr[1].as_int() == -2);
  CHECK(!arr[2].is_int());
  CHECK(arr[2].as_double() == 3.5);
  CHECK(arr[3].as_int() == 1000);
  CHECK((arr[4].as_bool() && !arr[5].as_bool() && arr[6].is_null()));
  CHECK(v.find("a")->as_string() == "x");
  CHECK(v.find("missing") == nullptr);
  CHECK_THROWS_WITH(v.find("a")->as_int(), Contains("expected number, got string"));

  CHECK(parse_json("9007199254740993").as_int() == 9007199254740993);  // not exact as a double
  CHECK(parse_json("-9223372036854775808").as_int() == INT64_MIN);
  CHECK(!parse_json("9223372036854775808").is_int());
  CHECK(parse_json("-0").as_int() == 0);
  CHECK(parse_json("-12.5e-1").as_double() == -1.25);
  CHECK(parse_json("2.0").as_int() == 2);

  CHECK(parse_json(R"("\"\\\/\b\f\n\r\t")").as_string() == "\"\\/\b\f\n\r\t");
  CHECK(parse_json(R"("\u0041\u00e9\u20AC")").as_string() == "A\xC3\xA9\xE2\x82\xAC");
  CHECK(parse_json(R"("\ud83d\ude00")").as_string() == "\xF0\x9F\x98\x80");
  CHECK(parse_json("\"caf\xC3\xA9 \xF0\x9F\x98\x80\"").as_string() ==
        "caf\xC3\xA9 \xF0\x9F\x98\x80");
  CHECK(parse_json(R"("\u0000")").as_string() == std::string(1, '\0'));

  const int depth = dl::io::kMaxJsonDepth;
  CHECK(parse_json(std::string(depth, '[') + std::string(depth, ']')).is_array());
  CHECK_THROWS_WITH(parse_json(std::string(depth + 1, '[') + std::string(depth + 1, ']')),
                    Contains("nesting deeper than 64") && Contains("at byte 64"));
  CHECK_THROWS_WITH(parse_json(std::string(100000, '[')), Contains("nesting deeper"));
}

TEST_CASE("json: malformed input is rejected with the byte offset", "[json]") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "unexpected end of input at byte 0"},
      {"   ", "unexpected end of input at byte 3"},
      {"{", "expected a string key at byte 1"},
      {"[1,]", "expected a value at byte 3"},
      {R"({"a":1,})", "expected a string key at byte 7"},
      {R"({"a" 1})", "expected ':' after an object key at byte 5"},
      {R"({"a":1 "b":2})", "expected ',' or '}' in an object at byte 7"},
      {"[1 2]", "expected ',' or ']' in an array at byte 3"},
      {"{a:1}", "expected a string key at byte 1"},
      {"01", "unexpected trailing characters at byte 1"},
      {"1.", "expected digits after '.' at byte 2"},
      {"1e", "expected digits in the exponent at byte 2"},
      {"-", "expected a value at byte 0"},
      {"+1", "expected a value at byte 0"},
      {"NaN", "expected a value at byte 0"},
      {"tru", "invalid literal at byte 0"},
      {"1e999", "number out of range at byte 0"},
      {"[1] 2", "unexpected trailing characters at byte 4"},
      {R"("abc)", "unterminated string at byte 4"},
      {R"("\x")", "invalid escape at byte 2"},
      {R"("\u12")", "truncated \\u escape at byte 3"},
      {R"("\ud800")", "high surrogate without a low surrogate"},
      {R"("\ud800\u0041")", "high surrogate without a low surrogate"},
      {R"("\udc00")", "lone low surrogate"},
      {"\"a\x01\"", "control character in string at byte 2"},
      {"\"\xFF\"", "invalid UTF-8 at byte 1"},
      {"\"\xC0\xAF\"", "invalid UTF-8 at byte 1"},      // overlong '/'
      {"\"\xED\xA0\x80\"", "invalid UTF-8 at byte 1"},  // encoded surrogate
      {"\"\xE2\x82\"", "invalid UTF-8 at byte 1"},      // truncated sequence
      {R"({"a":1,"a":2})", "duplicate key \"a\" at byte 7"},
  };
  for (const auto& [text, message] : cases) {
    INFO("input: " << text);
    CHECK_THROWS_AS(parse_json(text), dl::Error);
    CHECK_THROWS_WITH(parse_json(text), Contains("JSON: ") && Contains(message));
  }
}

TEST_CASE("json: a document's memory is bounded by a limit on its values", "[json]") {
  CHECK_THROWS_WITH(parse_json("[" + std::string(2'000'000, '[') + "]"), Contains("nesting"));
  std::string many = "[0";
  for (int64_t i = 1; i < dl::io::kMaxJsonValues - 1; ++i) many += ",0";
  REQUIRE(parse_json(many + "]").as_array().size() == size_t(dl::io::kMaxJsonValues - 1));
  CHECK_THROWS_WITH(parse_json(many + ",0]"), Contains("JSON: more than 1000000 values at byte " +
                                                       std::to_string(many.size() + 1)));
  std::string members = "{\"k0\":0";
  for (int64_t i = 1; i < dl::io::kMaxJsonValues; ++i)
    members += ",\"k" + std::to_string(i) + "\":0";
  CHECK_THROWS_WITH(parse_json(members + "}"), Contains("more than 1000000 values"));

  // A 10 MB safetensors header of a JSON array (5 million values) took about 150 bytes a value
  // (750 MB) before its error; it now stops at the limit.
  std::string header = "[0";
  for (int i = 1; i < 5'000'000; ++i) header += ",0";
  header += "]";
  TempPath file;
  write_file(file.str(), le64(header.size()) + header);
  header = {};
  const dl::test::ChildResult baseline = dl::test::run_in_child(60, [] {});
  const dl::test::ChildResult loaded =
      dl::test::run_in_child(60, [&] { dl::io::load_safetensors(file.str()); });
  REQUIRE(loaded.finished);
  CHECK_THAT(loaded.error, Contains(file.str() + ": header is not valid JSON: JSON: more than "
                                                 "1000000 values at byte"));
  CHECK(loaded.peak_rss_kib - baseline.peak_rss_kib < 256 * 1024);
}

TEST_CASE("json: serializer escapes strings and round-trips", "[json]") {
  const JsonValue v(JsonValue::Object{
      {"s", "q\"b\\n\nt\tc\x01\x1f u\xC3\xA9"},
      {"n", JsonValue::Array{0, -7, 0.1, -2.5, 1e300, int64_t{9007199254740993}}},
      {"o", JsonValue::Object{{"t", true}, {"f", false}, {"z", nullptr}}},
      {"e", JsonValue::Array{}},
  });
  const std::string text = to_json(v);
  CHECK(text ==
        "{\"s\":\"q\\\"b\\\\n\\nt\\tc\\u0001\\u001f u\xC3\xA9\","
        "\"n\":[0,-7,0.1,-2.5,1e+300,9007199254740993],"
        "\"o\":{\"t\":true,\"f\":false,\"z\":null},\"e\":[]}");
  const JsonValue back = parse_json(text);
  CHECK(to_json(back) == text);
  CHECK(back.find("s")->as_string() == v.find("s")->as_string());
  CHECK(back.find("n")->as_array()[5].as_int() == 9007199254740993);
  CHECK_THROWS_WITH(to_json(JsonValue(std::nan(""))), Contains("is not valid JSON"));
}

TEST_CASE("safetensors: round trip of several dtypes and shapes", "[safetensors]") {
  const uint64_t seed = dl::test::fresh_seed();
  INFO("seed " << seed);
  dl::Generator gen(seed);
  std::mt19937_64 rng(seed);

  Tensor i64 = Tensor::empty({2, 3}, DType::i64);
  for (int64_t i = 0; i < 6; ++i) i64.data<int64_t>()[i] = static_cast<int64_t>(rng());
  Tensor i32 = Tensor::empty({2, 2, 2}, DType::i32);
  for (int64_t i = 0; i < 8; ++i) i32.data<int32_t>()[i] = static_cast<int32_t>(rng());
  Tensor u8 = Tensor::empty({7}, DType::u8);
  for (int64_t i = 0; i < 7; ++i) u8.data<uint8_t>()[i] = static_cast<uint8_t>(rng());
  const Tensor wide = Tensor::randn({4, 6}, gen);

  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"z.weight", Tensor::randn({3, 4}, gen)},
      {"a.bf16", Tensor::randn({5}, gen).to(DType::bf16)},
      {"ids", i64},
      {"i32", i32},
      {"bytes", u8},
      {"scalar", Tensor::randn({}, gen)},
      {"empty", Tensor::empty({0, 3})},
      {"strided", wide.slice(1, 1, 4)},
  };
  REQUIRE(!tensors.back().second.is_contiguous());
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"seed", std::to_string(seed)}, {"odd \"key\"", "line\nbreak caf\xC3\xA9"}};

  TempPath tmp;
  dl::io::save_safetensors(tmp.str(), tensors, metadata);
  const dl::io::SafetensorsFile loaded = dl::io::load_safetensors(tmp.str());
  CHECK(loaded.metadata == metadata);
  REQUIRE(loaded.tensors.size() == tensors.size());
  for (size_t i = 1; i < loaded.tensors.size(); ++i)
    CHECK(loaded.tensors[i - 1].first < loaded.tensors[i].first);
  for (const auto& [name, original] : tensors) {
    INFO("tensor " << name);
    const Tensor* t = loaded.find(name);
    REQUIRE(t != nullptr);
    CHECK(t->dtype() == original.dtype());
    CHECK(t->shape() == original.shape());
    CHECK(t->is_contiguous());
    CHECK(bytes_of(*t) == bytes_of(original));
  }
  CHECK(loaded.find("scalar")->numel() == 1);
  CHECK(loaded.find("nope") == nullptr);

  dl::io::save_safetensors(tmp.str(), {});
  const dl::io::SafetensorsFile none = dl::io::load_safetensors(tmp.str());
  CHECK((none.tensors.empty() && none.metadata.empty()));
  const std::string empty_header = R"({"__metadata__":{"engine.data_crc32":"00000000"}})";
  CHECK(read_file(tmp.str()) == le64(56) + empty_header + std::string(56 - 49, ' '));
}

TEST_CASE("safetensors: byte layout matches hand-built bytes", "[safetensors]") {
  TempPath tmp;
  dl::io::save_safetensors(tmp.str(),
                           {{"b", Tensor::from_vector(std::vector<float>{1.0f, -2.0f}, {2})},
                            {"a", Tensor::from_vector(std::vector<int64_t>{258}, {})}},
                           {{"k", "v"}});
  // The CRC-32 of the 16 data bytes, from Python's binascii.crc32.
  const std::string header = R"({"__metadata__":{"engine.data_crc32":"74454ce1","k":"v"},)"
                             R"("a":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
  const std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  const std::string data = std::string("\x02\x01\0\0\0\0\0\0", 8) +   // int64 258
                           std::string("\0\0\x80\x3f\0\0\0\xc0", 8);  // 1.0f, -2.0f
  const std::string bytes = read_file(tmp.str());
  CHECK(bytes == le64(padded.size()) + padded + data);

  REQUIRE(bytes.size() >= 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  CHECK(n % 8 == 0);
  CHECK(n + 8 + 16 == bytes.size());
  const JsonValue parsed = parse_json(bytes.substr(8, n));
  CHECK(parsed.find("a")->find("data_offsets")->as_array()[1].as_int() == 8);
  CHECK(parsed.find("b")->find("data_offsets")->as_array()[0].as_int() == 8);
  CHECK(parsed.find("b")->find("data_offsets")->as_array()[1].as_int() == 16);

  // A file from another writer: other key order, whitespace, metadata last, buffer not sorted.
  const std::string foreign_header =
      R"( { "y" : {"shape": [1], "data_offsets": [0, 4], "dtype": "I32"},)"
      R"( "x": {"data_offsets": [4, 6], "dtype": "BF16", "shape": []},)"
      R"( "__metadata__": {"who": "else"} }   )";
  write_file(tmp.str(),
             le64(foreign_header.size()) + foreign_header + std::string("\x05\0\0\0\x80\x3f", 6));
  const dl::io::SafetensorsFile f = dl::io::load_safetensors(tmp.str());
  REQUIRE(f.tensors.size() == 2);
  CHECK(f.tensors[0].first == "y");
  CHECK(f.tensors[0].second.data<int32_t>()[0] == 5);
  CHECK(f.find("x")->dtype() == DType::bf16);
  CHECK(f.find("x")->item() == 1.0f);
  CHECK(f.metadata.at("who") == "else");
}

TEST_CASE("safetensors: reads the PyTorch reference fixture", "[safetensors]") {
  const std::string fixture = std::string(DL_FIXTURE_DIR) + "/convmixer_reference.safetensors";
  const dl::io::SafetensorsFile f = dl::io::load_safetensors(fixture);
  CHECK(!f.tensors.empty());
  CHECK(!f.metadata.empty());
  // Re-saving gives the same data buffer and the same header entries.
  TempPath tmp;
  dl::io::save_safetensors(tmp.str(), f.tensors, f.metadata);
  const std::string ours = read_file(tmp.str()), theirs = read_file(fixture);
  const auto header_of = [](const std::string& b) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(b[i]);
    return std::make_pair(parse_json(b.substr(8, n)), 8 + n);
  };
  const auto [our_header, our_start] = header_of(ours);
  const auto [their_header, their_start] = header_of(theirs);
  CHECK(ours.substr(our_start) == theirs.substr(their_start));
  REQUIRE(our_header.as_object().size() == their_header.as_object().size());
  CHECK(dl::io::load_safetensors(tmp.str()).metadata == f.metadata);
  for (const auto& [name, entry] : their_header.as_object()) {
    if (name == "__metadata__") continue;
    INFO("entry " << name);
    REQUIRE(our_header.find(name) != nullptr);
    CHECK(to_json(*our_header.find(name)) == to_json(entry));
  }
}

TEST_CASE("safetensors: save replaces atomically and leaves no temp file", "[safetensors]") {
  TempPath tmp;
  write_file(tmp.str(), "old contents that are not a safetensors file");
  dl::io::save_safetensors(tmp.str(), {{"w", Tensor::ones({2})}});
  CHECK(dl::io::load_safetensors(tmp.str()).find("w")->to_vector() == std::vector<float>{1, 1});
  const std::string prefix = fs::path(tmp.str()).filename().string() + ".tmp.";
  for (const auto& entry : fs::directory_iterator(fs::temp_directory_path()))
    CHECK(entry.path().filename().string().rfind(prefix, 0) == std::string::npos);

  const std::string bad_dir = tmp.str() + ".missing_dir/model.safetensors";
  CHECK_THROWS_WITH(
      dl::io::save_safetensors(bad_dir, {{"w", Tensor::ones({2})}}),
      Contains(bad_dir + ": cannot save: creating") && Contains("No such file or directory"));
}

TEST_CASE("safetensors: save rejects bad tensor names", "[safetensors]") {
  TempPath tmp;
  const Tensor t = Tensor::ones({1});
  CHECK_THROWS_WITH(dl::io::save_safetensors(tmp.str(), {{"a", t}, {"a", t}}),
                    Contains(tmp.str()) && Contains("tensor name 'a' appears twice"));
  CHECK_THROWS_WITH(dl::io::save_safetensors(tmp.str(), {{"", t}}),
                    Contains("cannot save a tensor named ''"));
  CHECK_THROWS_WITH(dl::io::save_safetensors(tmp.str(), {{"__metadata__", t}}),
                    Contains("cannot save a tensor named '__metadata__'"));
  CHECK_THROWS_WITH(dl::io::save_safetensors(tmp.str(), {{"u", Tensor()}}),
                    Contains("tensor 'u': it is undefined"));
  CHECK(!fs::exists(tmp.str()));
}

TEST_CASE("safetensors: malformed files are rejected naming the file and the problem",
          "[safetensors]") {
  const auto entry = [](const std::string& fields) { return R"({"w":{)" + fields + "}}"; };
  const std::string ok_fields = R"("dtype":"F32","shape":[2,2],"data_offsets":[0,16])";
  const std::string good = st_file(entry(ok_fields), 16);

  SECTION("missing file") {
    const std::string path = TempPath().str();
    CHECK_THROWS_WITH(dl::io::load_safetensors(path), Contains(path + ": no such file"));
  }
  SECTION("a directory") {
    const std::string dir = fs::temp_directory_path().string();
    CHECK_THROWS_WITH(dl::io::load_safetensors(dir), Contains(dir + ": is a directory"));
  }
  SECTION("a FIFO is refused, not waited on (predict and train --resume hung on one)") {
    const TempPath fifo;
    REQUIRE(::mkfifo(fifo.str().c_str(), 0600) == 0);
    const dl::test::ChildResult loaded =
        dl::test::run_in_child(20, [&] { dl::io::load_safetensors(fifo.str()); });
    REQUIRE(loaded.finished);
    CHECK(loaded.error == fifo.str() + ": not a regular file");
  }
  SECTION("too short") {
    require_load_error("", "file is 0 bytes, too short");
    require_load_error(std::string("\x10\0\0", 3), "file is 3 bytes, too short");
  }
  SECTION("truncated in the header") {
    require_load_error(good.substr(0, 20), "runs past the end of the file");
  }
  SECTION("truncated in the data") {
    require_load_error(good.substr(0, good.size() - 3),
                       "data_offsets [0, 16] run past the end of the data buffer (13 bytes)");
  }
  SECTION("header length beyond the file or absurd") {
    require_load_error(le64(1000) + "{}", "header length 1000 runs past the end of the file");
    require_load_error(le64(uint64_t{1} << 40) + "{}", "over the 100000000-byte limit");
    require_load_error(le64(~uint64_t{0}) + "{}", "over the 100000000-byte limit");
  }
  SECTION("bad JSON") {
    require_load_error(st_file(R"({"w":{"dtype":"F32",)", 0),
                       "header is not valid JSON: JSON: expected a string key at byte 20");
    require_load_error(st_file(std::string(200, '['), 0), "nesting deeper than 64");
    require_load_error(st_file("[1,2]", 0), "header is a JSON array, expected an object");
  }
  SECTION("entry fields missing or of the wrong type") {
    require_load_error(st_file(R"({"w":3})", 0), "tensor 'w': entry is a number");
    require_load_error(st_file(entry(R"("shape":[],"data_offsets":[0,4])"), 4),
                       "tensor 'w': \"dtype\" is missing");
    require_load_error(st_file(entry(R"("dtype":"F32","data_offsets":[0,4])"), 4),
                       "tensor 'w': \"shape\" is missing");
    require_load_error(st_file(entry(R"("dtype":"F32","shape":[])"), 4),
                       "tensor 'w': \"data_offsets\" is missing");
    require_load_error(st_file(entry(R"("dtype":1,"shape":[],"data_offsets":[0,4])"), 4),
                       "\"dtype\" is missing or not a string");
    require_load_error(st_file(entry(R"("dtype":"F32","shape":"2","data_offsets":[0,8])"), 8),
                       "\"shape\" is missing or not an array");
    require_load_error(st_file(entry(R"("dtype":"F32","shape":[1.5],"data_offsets":[0,4])"), 4),
                       "\"shape\" holds a non-integer");
    require_load_error(st_file(entry(R"("dtype":"F32","shape":[1],"data_offsets":[0])"), 4),
                       "not an array of two integers");
    require_load_error(st_file(entry(R"("dtype":"F32","shape":[1],"data_offsets":[-4,0])"), 4),
                       "\"data_offsets\" must be non-negative integers");
  }
  SECTION("unknown dtype") {
    require_load_error(st_file(entry(R"("dtype":"F8_E4M3","shape":[],"data_offsets":[0,1])"), 1),
                       "tensor 'w': unknown dtype 'F8_E4M3'");
    require_load_error(st_file(entry(R"("dtype":"XYZ","shape":[],"data_offsets":[0,1])"), 1),
                       "tensor 'w': unknown dtype 'XYZ'");
  }
  SECTION("negative or huge shape") {
    require_load_error(st_file(entry(R"("dtype":"F32","shape":[-1,4],"data_offsets":[0,0])"), 0),
                       "tensor 'w': \"shape\" has a negative dimension -1");
    require_load_error(
        st_file(entry(R"("dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0])"), 0),
        "shape [4294967296, 4294967296] is too large");
  }
  SECTION("offsets out of range or inconsistent with the shape") {
    require_load_error(st_file(entry(R"("dtype":"F32","shape":[2,2],"data_offsets":[0,64])"), 16),
                       "data_offsets [0, 64] run past the end of the data buffer (16 bytes)");
    require_load_error(st_file(entry(R"("dtype":"F32","shape":[2,2],"data_offsets":[16,0])"), 16),
                       "data_offsets [16, 0] have begin > end");
    require_load_error(st_file(entry(R"("dtype":"F32","shape":[2,2],"data_offsets":[0,12])"), 12),
                       "data_offsets [0, 12] span 12 bytes but F32 shape [2, 2] needs 16");
  }
  SECTION("overlaps, gaps and trailing bytes") {
    const std::string two = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[%B,%E]}})";
    const auto with = [&](const std::string& b, const std::string& e) {
      std::string s = two;
      s.replace(s.find("%B"), 2, b);
      s.replace(s.find("%E"), 2, e);
      return s;
    };
    require_load_error(st_file(with("4", "12"), 12), "tensor 'b' overlaps tensor 'a'");
    require_load_error(st_file(with("12", "20"), 20),
                       "data buffer bytes [8, 12) belong to no tensor (gap before tensor 'b')");
    require_load_error(st_file(entry(ok_fields), 20),
                       "data buffer is 20 bytes but the tensors cover 16 (trailing bytes)");
  }
  SECTION("metadata not strings") {
    require_load_error(st_file(R"({"__metadata__":{"k":1}})", 0),
                       "__metadata__ value for key 'k' is a number, expected a string");
    require_load_error(st_file(R"({"__metadata__":["k"]})", 0), "__metadata__ is not an object");
  }
  SECTION("duplicate tensor names") {
    require_load_error(st_file(R"({"w":{},"w":{}})", 0), "duplicate key \"w\"");
  }
}

TEST_CASE("safetensors: random corruption never crashes", "[safetensors]") {
  const uint64_t seed = dl::test::fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  dl::Generator gen(seed);
  TempPath tmp;
  dl::io::save_safetensors(
      tmp.str(),
      {{"a", Tensor::randn({3, 2}, gen)}, {"b", Tensor::randn({4}, gen).to(DType::bf16)}},
      {{"k", "v"}});
  const std::string good = read_file(tmp.str());
  for (int trial = 0; trial < 300; ++trial) {
    std::string bytes = good;
    if (trial % 3 == 0) {
      bytes.resize(rng() % bytes.size());
    } else {
      for (int k = 0; k < 1 + trial % 4; ++k)
        bytes[rng() % std::min<size_t>(bytes.size(), 150)] = static_cast<char>(rng());
    }
    write_file(tmp.str(), bytes);
    try {
      dl::io::load_safetensors(tmp.str());
    } catch (const dl::Error& e) {
      CHECK_THAT(e.what(), Contains(tmp.str() + ": "));
    }
  }
}

TEST_CASE("safetensors: a changed data byte is caught by the recorded CRC-32", "[safetensors]") {
  const uint64_t seed = dl::test::fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  dl::Generator gen(seed);
  TempPath tmp;
  dl::io::save_safetensors(tmp.str(), {{"w", Tensor::randn({64}, gen)}}, {{"k", "v"}});
  const std::string good = read_file(tmp.str());
  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, good.data(), 8);
  const size_t data_start = 8 + header_bytes;
  REQUIRE(good.size() == data_start + 64 * 4);

  std::string bytes = good;
  const size_t at = data_start + rng() % (64 * 4);
  bytes[at] = static_cast<char>(bytes[at] ^ (1 << (rng() % 8)));  // one flipped bit
  write_file(tmp.str(), bytes);
  CHECK_THROWS_WITH(dl::io::load_safetensors(tmp.str()),
                    Contains(tmp.str() + ": the tensor data is damaged"));

  CHECK_THROWS_WITH(dl::io::save_safetensors(tmp.str(), {}, {{"engine.data_crc32", "0"}}),
                    Contains("is the writer's own"));

  // A file without the key (another writer's) is read as it is, changed bytes and all.
  const std::string key = R"("engine.data_crc32":)";
  const size_t key_at = bytes.find(key);
  REQUIRE(key_at != std::string::npos);
  bytes.replace(key_at, key.size(), std::string(R"("engine.data_crc3X":)"));
  write_file(tmp.str(), bytes);
  const auto loaded = dl::io::load_safetensors(tmp.str());
  CHECK(loaded.metadata.at("engine.data_crc3X").size() == 8);
  CHECK(loaded.metadata.at("k") == "v");
}

TEST_CASE("copy_checked: copies matching tensors and names mismatches", "[safetensors]") {
  Tensor dst = Tensor::zeros({3, 2});
  const Tensor src = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {3, 2});
  dl::io::copy_checked(dst, src, "w", "m.safetensors");
  CHECK(dst.to_vector() == src.to_vector());
  CHECK_THROWS_WITH(dl::io::copy_checked(dst, Tensor::zeros({2, 3}), "w", "m.safetensors"),
                    "m.safetensors: tensor 'w' has shape [2, 3] but the model expects [3, 2]");
  CHECK_THROWS_WITH(
      dl::io::copy_checked(dst, Tensor::zeros({3, 2}, DType::bf16), "w", "m.safetensors"),
      "m.safetensors: tensor 'w' has dtype BF16 but the model expects F32");
}

TEST_CASE("checkpoint metadata: values are read whole; errors name the file and the key",
          "[checkpoint]") {
  const std::map<std::string, std::string> metadata = {{"n", "42"},
                                                       {"big", "99999999999999999999"},
                                                       {"list", "0.5,-1,2e3"},
                                                       {"bad", "0.5,,1"},
                                                       {"inf", "inf"},
                                                       {"flags", R"({"dim":"8","lr":"0.1"})"},
                                                       {"array", R"(["8"])"},
                                                       {"cut", R"({"dim":)"}};
  using namespace dl::io;
  CHECK(metadata_integer(metadata, "n", 0, 100, "ckpt") == 42);
  CHECK_THROWS_WITH(metadata_integer(metadata, "n", 0, 10, "ckpt"),
                    "ckpt: the checkpoint's metadata 'n' is '42', not an integer in [0, 10]");
  CHECK_THROWS_WITH(metadata_integer(metadata, "big", 0, INT64_MAX, "ckpt"),
                    Contains("ckpt: the checkpoint's metadata 'big' is '99999999999999999999'"));
  CHECK_THROWS_WITH(metadata_integer(metadata, "missing", 0, 1, "ckpt"),
                    "ckpt: the checkpoint's metadata has no 'missing'");
  CHECK(metadata_floats(metadata, "list", "ckpt") == std::vector<float>{0.5f, -1.0f, 2000.0f});
  for (const char* key : {"bad", "inf"})
    CHECK_THROWS_WITH(metadata_floats(metadata, key, "ckpt"),
                      Contains(std::string("ckpt: the checkpoint's metadata '") + key) &&
                          Contains("not a comma-separated list of finite numbers"));
  using Members = std::vector<std::pair<std::string, std::string>>;
  CHECK(metadata_string_object(metadata, "flags", "ckpt") == Members{{"dim", "8"}, {"lr", "0.1"}});
  CHECK_THROWS_WITH(metadata_string_object(metadata, "array", "ckpt"),
                    "ckpt: the checkpoint's metadata 'array' is not a JSON object of strings "
                    "(JSON: expected object, got array)");
  CHECK_THROWS_WITH(metadata_string_object(metadata, "cut", "ckpt"),
                    Contains("ckpt: the checkpoint's metadata 'cut' is not a JSON object") &&
                        Contains("unexpected end of input at byte 7"));
}
