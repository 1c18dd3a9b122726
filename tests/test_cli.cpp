// The example binaries' flag parser (examples/cli.h): value forms, boolean flags next to file
// names, and one clear error for each kind of bad input.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/ops.h"
#include "examples/cli.h"
#include "examples/runtime.h"

using namespace dl;
using Catch::Contains;

namespace {

// Parses `args` (without the program name) into flags --json (bool), --top, --lr, --scale.
cli::Flags parsed(std::vector<std::string> args) {
  cli::Flags f("prog", "test");
  f.add("json", "false", "");
  f.add("top", "3", "");
  f.add("lr", "0.05", "");
  f.add("scale", "0.08,1", "");
  f.allow_positional("IMAGE");
  args.insert(args.begin(), "prog");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  REQUIRE(f.parse(static_cast<int>(argv.size()), argv.data()));
  return f;
}

}  // namespace

TEST_CASE("A boolean flag takes the next argument only when it is a boolean word") {
  SECTION("followed by a file name: true, and the file stays positional") {
    const auto f = parsed({"--top", "2", "--json", "cat.png", "dog.png"});
    CHECK(f.boolean("json"));
    CHECK(f.positional() == std::vector<std::string>{"cat.png", "dog.png"});
  }
  SECTION("followed by a boolean word") {
    const auto f = parsed({"--json", "false", "cat.png"});
    CHECK_FALSE(f.boolean("json"));
    CHECK(f.positional() == std::vector<std::string>{"cat.png"});
  }
  SECTION("last, or followed by another flag, or with =") {
    CHECK(parsed({"--json"}).boolean("json"));
    CHECK(parsed({"--json", "--top", "1"}).boolean("json"));
    CHECK_FALSE(parsed({"--json=off"}).boolean("json"));
    CHECK_FALSE(parsed({}).given("json"));
  }
}

TEST_CASE("Numbers and ranges are read whole, and bad ones name the flag") {
  CHECK(parsed({"--top=7"}).integer("top") == 7);
  CHECK(parsed({"--top", "7"}).integer("top", 1) == 7);
  CHECK_THROWS_WITH(parsed({"--top", "0"}).integer("top", 1),
                    Contains("--top must be at least 1, got 0"));
  CHECK_THROWS_WITH(parsed({"--top", "5"}).integer("top", 1, 4),
                    Contains("--top must be at most 4, got 5"));
  CHECK_THROWS_WITH(parsed({"--top", "7x"}).integer("top"), Contains("'7x' is not an integer"));
  CHECK_THROWS_WITH(parsed({"--top", "9223372036854775808"}).integer("top"),
                    Contains("--top: 9223372036854775808 is out of range"));
  CHECK_THROWS_WITH(parsed({"--top", "+-1"}).integer("top"), Contains("is not an integer"));
  CHECK(parsed({"--top", "+5"}).integer("top") == 5);  // as std::stoll reads it
  CHECK(parsed({"--top", " 6"}).integer("top") == 6);
  CHECK(cli::parse_real("lr", parsed({"--lr", "1e-3"}).str("lr")) == 1e-3);
  for (const char* bad : {"nan", "inf", "0.1.2", ""})
    CHECK_THROWS_WITH(cli::parse_real("lr", parsed({"--lr", bad}).str("lr")),
                      Contains("is not a finite number"));
  CHECK(cli::parse_real_range("scale", parsed({}).str("scale"), 1.0) ==
        std::pair<double, double>(0.08, 1.0));
  CHECK(cli::parse_real_range("scale", parsed({"--scale", "0.35"}).str("scale"), 1.0) ==
        std::pair<double, double>(0.35, 1.0));
  CHECK(cli::parse_real_range("scale", parsed({"--scale=0.2,0.5"}).str("scale"), 1.0) ==
        std::pair<double, double>(0.2, 0.5));
  CHECK_THROWS_WITH(cli::parse_real_range("scale", parsed({"--scale", "0.2,"}).str("scale"), 1.0),
                    Contains("--scale: '0.2,' is not MIN or MIN,MAX"));
  CHECK_THROWS_WITH(parsed({"--json=maybe"}).boolean("json"),
                    Contains("--json: 'maybe' is not a boolean"));
}

TEST_CASE("Unknown flags, missing values and stray arguments are refused") {
  cli::Flags f("prog", "test");
  f.add("top", "3", "");
  std::string prog = "prog", unknown = "--tpo", top = "--top", extra = "x.png";
  char* a1[] = {prog.data(), unknown.data()};
  CHECK_THROWS_WITH(f.parse(2, a1), Contains("unknown flag --tpo"));
  char* a2[] = {prog.data(), top.data()};
  CHECK_THROWS_WITH(f.parse(2, a2), Contains("flag --top needs a value"));
  char* a3[] = {prog.data(), extra.data()};
  CHECK_THROWS_WITH(f.parse(2, a3), Contains("unexpected argument 'x.png'"));
}

TEST_CASE("A word after a boolean flag, where no file names are taken, is a bad boolean") {
  cli::Flags f("prog", "test");
  f.add("hflip", "true", "");
  std::string prog = "prog", hflip = "--hflip", maybe = "maybe";
  char* args[] = {prog.data(), hflip.data(), maybe.data()};
  CHECK_THROWS_WITH(f.parse(3, args), Contains("flag --hflip: 'maybe' is not a boolean"));
}

TEST_CASE("After --, every argument is a file name, also one that starts with --") {
  const auto f = parsed({"--top", "2", "--", "--json", "cat.png"});
  CHECK_FALSE(f.boolean("json"));
  CHECK(f.integer("top") == 2);
  CHECK(f.positional() == std::vector<std::string>{"--json", "cat.png"});
}

TEST_CASE("Where no file names are taken, '--' after a bare boolean leaves a stray argument") {
  std::string prog = "prog", json = "--json", dashes = "--", file = "x.png";
  cli::Flags g("prog", "test");
  g.add("json", "false", "");
  char* args[] = {prog.data(), json.data(), dashes.data(), file.data()};
  CHECK_THROWS_WITH(g.parse(4, args), Contains("unexpected argument 'x.png'"));
}

TEST_CASE("A device the machine cannot run names the flag that chooses the CPU") {
  if (resolve_device("auto").is_cuda()) {
    CHECK(examples::resolve_device("cuda").is_cuda());
    return;
  }
  CHECK(examples::resolve_device("auto") == Device::cpu());
  // No GPU, or no CUDA path in this build: the engine's reason, then the flag.
  const std::string hint = "; use the CPU device. HINT: --device cpu runs on any machine";
  REQUIRE_THROWS_WITH(examples::resolve_device("cuda"),
                      Contains("device cuda:0 is not available") && Catch::EndsWith(hint));
  REQUIRE_THROWS_WITH(examples::setup_runtime("cuda", 1, examples::Precision::fp32, false),
                      Contains("device cuda:0 is not available") && Catch::EndsWith(hint));
  REQUIRE_THROWS_WITH(examples::resolve_device("gpu"),
                      Contains("bad device 'gpu'") && Contains("HINT: --device cpu"));
}
