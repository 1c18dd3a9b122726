#!/usr/bin/env bash
# The project's test command: install dependencies, configure, build, run every test under CTest.
# CUDA tests report "skipped" on a machine without a GPU.
#   BUILD_DIR (default build), JOBS (default: all cores), TEST_EXTRAS=1 (install what the
#   PyTorch-reference and plotting tests need: scripts/setup.sh --test-extras), extra CMake flags
#   as arguments (-DDL_SANITIZE=ON: the AddressSanitizer and UndefinedBehaviorSanitizer build).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${TEST_EXTRAS:-0} == 1 ]]; then scripts/setup.sh --test-extras; else scripts/setup.sh; fi
build_dir=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$build_dir" -j "$jobs"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$jobs} ctest --test-dir "$build_dir" --output-on-failure -j 1
