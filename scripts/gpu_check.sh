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
multiarch=/usr/lib/x86_64-linux-gnu
if [[ -n ${DEPS_PREFIX:-} ]]; then
  # Debian packages unpacked with dpkg -x: their alternatives links are not set up, so name the
  # OpenMP OpenBLAS, its headers and the zlib shared object directly.
  blas_dir=$DEPS_PREFIX$multiarch/openblas-openmp
  cmake_args+=(-DCMAKE_PREFIX_PATH="$DEPS_PREFIX/usr" -DCMAKE_INCLUDE_PATH="$DEPS_PREFIX/usr/include"
               -DDL_OPENBLAS_OPENMP="$blas_dir/libopenblas.so"
               -DCBLAS_INCLUDE_DIR="$DEPS_PREFIX/usr/include/x86_64-linux-gnu/openblas-openmp")
  [[ -e $multiarch/libz.so ]] || cmake_args+=(-DZLIB_LIBRARY="$(ls /lib/x86_64-linux-gnu/libz.so.1 $multiarch/libz.so.1 2>/dev/null | head -1)"
                                              -DZLIB_INCLUDE_DIR="$DEPS_PREFIX/usr/include")
  export LD_LIBRARY_PATH="$blas_dir:$DEPS_PREFIX$multiarch${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# cuDNN: the system's if it has one, else the one PyTorch's wheels ship (nvidia-cudnn-*).
if ! ls /usr/include/cudnn.h /usr/include/*/cudnn.h /usr/local/cuda/include/cudnn.h >/dev/null 2>&1; then
  cudnn_dir=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null)
  if [[ -n $cudnn_dir ]]; then
    cmake_args+=(-DCUDNN_INCLUDE_DIR="$cudnn_dir/include"
                 -DCUDNN_LIBRARY="$(ls "$cudnn_dir"/lib/libcudnn.so* | head -1)")
    export LD_LIBRARY_PATH="$cudnn_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
fi

step configure cmake "${cmake_args[@]}"
step build cmake --build "$build" -j "$(nproc)"
step tests ctest --test-dir "$build" --output-on-failure -j 8
# The CUDA tests must have run, not skipped.
for bin in test_cuda_kernels test_cuda_kernels_more; do
  if grep -q "$bin .*Passed" "$out/tests.log"; then
    summary+=("PASS  $bin executed on the GPU")
  else
    summary+=("FAIL  $bin did not pass on the GPU (skipped or failed)")
  fi
done
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    for bin in test_cuda_kernels test_cuda_kernels_more; do
      step "sanitizer-$tool-$bin" timeout "${SANITIZER_TIMEOUT:-240}" compute-sanitizer \
        --tool "$tool" --error-exitcode 1 "$build/tests/$bin"
    done
  done
else
  summary+=("FAIL  compute-sanitizer not found")
fi

{
  echo "gpu_check summary ($(date -u +%Y-%m-%dT%H:%MZ), sm_$arch, $(cat "$out/device.txt"))"
  printf '  %s\n' "${summary[@]}"
} | tee "$out/summary.txt"
! grep -q "^  FAIL" "$out/summary.txt"
