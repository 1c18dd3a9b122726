#!/usr/bin/env bash
# tests/consumer, a project of a user's, built the ways it can take the engine:
#   1. add_subdirectory of this source tree, in a fresh build directory, with the CPU-only engine
#      (-DDL_ENABLE_CUDA=OFF, and the consumer's empty build type: no optimisation, the quickest
#      build): only the engine's libraries are built (no example binary, no test) and it runs;
#   2. that build installed (cmake --install) to a temporary prefix, and the consumer configured
#      afresh with find_package(convmixer_engine) from there, which builds only its main.cpp;
#   3. when a build directory of the engine is given (CTest gives the one under test, with the
#      CUDA path when this machine has nvcc and cuDNN), that build installed and used the same way
#      (with the CUDA path, the consumer must hold the CUDA ops).
# usage: tests/test_consumer.sh [ENGINE_BUILD_DIR]
set -euo pipefail
source_dir=$(cd "$(dirname "$0")/.." && pwd)
engine_build=${1:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
jobs=$(nproc)

# Configures tests/consumer in $1 with the remaining CMake arguments, builds it and runs it.
build_and_run() {
  local dir=$1
  shift
  cmake -S "$source_dir/tests/consumer" -B "$dir" -G Ninja "$@" >"$dir.configure.log" 2>&1 ||
    fail "configure $dir: $(tail -n 20 "$dir.configure.log")"
  cmake --build "$dir" -j "$jobs" >"$dir.build.log" 2>&1 ||
    fail "build $dir: $(tail -n 30 "$dir.build.log")"
  "$dir/consumer" "$dir/net.safetensors" || fail "the consumer built in $dir failed"
}

SECONDS=0
build_and_run "$tmp/subdirectory" -DCONVMIXER_ENGINE_SOURCE_DIR="$source_dir" -DDL_ENABLE_CUDA=OFF
targets=$(ninja -C "$tmp/subdirectory" -t targets all)
grep -q 'libdl_engine\.a' <<<"$targets" || fail "add_subdirectory: no libdl_engine.a target"
example_or_test='(^|/)(train|predict|bench_model|bench_kernels|dl_trainer|dl_cli|test_[a-z_]+):'
if built=$(grep -E "$example_or_test" <<<"$targets"); then
  fail "add_subdirectory built more than the libraries: $built"
fi
echo "add_subdirectory: the libraries alone, consumer ran ($SECONDS s)"

SECONDS=0
cmake --install "$tmp/subdirectory" --prefix "$tmp/prefix" >"$tmp/install.log" ||
  fail "cmake --install: $(cat "$tmp/install.log")"
[[ -f $tmp/prefix/include/engine/tensor.h && -f $tmp/prefix/include/models/convmixer.h ]] ||
  fail "cmake --install: the headers are not under $tmp/prefix/include"
[[ ! -e $tmp/prefix/include/engine/cuda ]] || fail "CPU-only install holds the CUDA headers"
build_and_run "$tmp/package" -DCMAKE_PREFIX_PATH="$tmp/prefix"
grep -q 'convmixer_engine_HAS_CUDA=OFF' "$tmp/package.configure.log" ||
  fail "the CPU-only package does not say convmixer_engine_HAS_CUDA=OFF"
echo "find_package (CPU-only engine): consumer ran ($SECONDS s)"

if [[ -n $engine_build ]]; then
  SECONDS=0
  cmake --install "$engine_build" --prefix "$tmp/prefix-engine" >"$tmp/install-engine.log" ||
    fail "cmake --install $engine_build: $(cat "$tmp/install-engine.log")"
  build_and_run "$tmp/package-engine" -DCMAKE_PREFIX_PATH="$tmp/prefix-engine"
  # The CUDA ops come with dl::engine alone: nothing in the consumer names them.
  if grep -q 'convmixer_engine_HAS_CUDA=ON' "$tmp/package-engine.configure.log"; then
    nm -C "$tmp/package-engine/consumer" >"$tmp/consumer.nm"
    grep -q 'vtable for .*::CudaOps$' "$tmp/consumer.nm" ||
      fail "the consumer linked against the CUDA-path engine holds no CUDA ops"
  fi
  echo "find_package ($engine_build, $(grep -o 'convmixer_engine_HAS_CUDA=[A-Z]*' \
    "$tmp/package-engine.configure.log")): consumer ran ($SECONDS s)"
fi
