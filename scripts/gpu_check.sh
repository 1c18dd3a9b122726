#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build for its architecture, run the whole test suite (the CUDA
# tests execute there instead of reporting skipped), run compute-sanitizer (memcheck and
# racecheck) over the CUDA tests, and print a short summary last. Logs go to $OUT (default
# gpu_check_out/). Dependencies the image lacks can be unpacked into a prefix named by
# DEPS_PREFIX (e.g. Debian packages extracted with dpkg -x): it is passed to CMake.
set -uo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-gpu_check_out}
mkdir -p "$out"
summary=()
step() {  # step NAME COMMAND...: runs, logs to $out/NAME.log, records pass/fail
  local name=$1
  shift
  if "$@" >"$out/$name.log" 2>&1; then
    summary+=("PASS  $name")
  else
    summary+=("FAIL  $name (see $out/$name.log)")
  fi
}

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi fails); run scripts/test.sh instead" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
build=build-gpu
cmake_args=(-S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch")
[[ -n ${DEPS_PREFIX:-} ]] && cmake_args+=(-DCMAKE_PREFIX_PATH="$DEPS_PREFIX/usr"
                                          -DCMAKE_INCLUDE_PATH="$DEPS_PREFIX/usr/include")

step configure cmake "${cmake_args[@]}"
step build cmake --build "$build" -j "$(nproc)"
step tests ctest --test-dir "$build" --output-on-failure
# The CUDA tests must have run, not skipped.
if grep -q "test_cuda_kernels .*Passed" "$out/tests.log"; then
  summary+=("PASS  cuda tests executed")
else
  summary+=("FAIL  cuda tests did not pass on the GPU (skipped or failed)")
fi
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    step "sanitizer-$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$build/tests/test_cuda_kernels"
  done
else
  summary+=("FAIL  compute-sanitizer not found")
fi

{
  echo "gpu_check summary ($(date -u +%Y-%m-%dT%H:%MZ), sm_$arch, $(cat "$out/device.txt"))"
  printf '  %s\n' "${summary[@]}"
} | tee "$out/summary.txt"
! grep -q "^  FAIL" "$out/summary.txt"
