#!/usr/bin/env bash
# The project's test command: install dependencies, configure, build, run every test under CTest.
# CUDA tests report "skipped" on a machine without a GPU.
#   BUILD_DIR (default build), JOBS (default: all cores), extra CMake flags as arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
build_dir=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$build_dir" -j "$jobs"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$jobs} ctest --test-dir "$build_dir" --output-on-failure -j 1
