#!/usr/bin/env bash
# Fuzzes one reader of untrusted bytes with libFuzzer:
#   scripts/fuzz.sh TARGET [MINUTES] [libFuzzer flags...]
# TARGET: safetensors, checkpoint, json, cifar, idx, image or image_folder (tests/fuzz/fuzz_*.cpp);
# MINUTES defaults to 1. Builds the target in its own build folder (FUZZ_BUILD_DIR, default
# build-fuzz) with clang (FUZZ_CXX, default the first clang++ found), AddressSanitizer,
# UndefinedBehaviorSanitizer and libFuzzer's coverage, CPU path only; then fuzzes from the
# committed seeds (tests/fuzz/corpus/TARGET, left unchanged), keeping the inputs it finds
# interesting in FUZZ_BUILD_DIR/corpus/TARGET for the next run. A finding stops it with a non-zero
# exit status and the input saved as FUZZ_BUILD_DIR/findings/TARGET-crash-* (or leak-, timeout-,
# oom-); FUZZ_BUILD_DIR/tests/fuzz/fuzz_TARGET FILE replays it. Once fixed, add the file to
# tests/fuzz/corpus/TARGET: every build replays that folder as a test.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(safetensors checkpoint json cifar idx image image_folder)
usage="usage: scripts/fuzz.sh TARGET [MINUTES] [libFuzzer flags...]; TARGET: ${targets[*]}"
[[ $# -ge 1 ]] || { echo "$usage" >&2; exit 2; }
target=$1
minutes=${2:-1}
shift $(($# >= 2 ? 2 : 1))
[[ " ${targets[*]} " == *" $target "* ]] || { echo "fuzz: unknown target '$target'; $usage" >&2; exit 2; }
[[ $minutes =~ ^[0-9]+$ && $minutes -ge 1 ]] || { echo "fuzz: MINUTES must be a whole number >= 1" >&2; exit 2; }

cxx=${FUZZ_CXX:-}
if [[ -z $cxx ]]; then
  for candidate in clang++ $(compgen -c clang++- | sort -rV); do
    if command -v "$candidate" >/dev/null; then cxx=$candidate; break; fi
  done
fi
if [[ -z $cxx ]]; then
  echo "fuzz: no clang++ found (libFuzzer comes with clang: apt install clang; or set FUZZ_CXX)" >&2
  exit 1
fi

build_dir=${FUZZ_BUILD_DIR:-build-fuzz}
scripts/setup.sh
CXX=$cxx cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDL_FUZZ=ON \
  -DDL_ENABLE_CUDA=OFF >/dev/null
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}" --target "fuzz_$target"

corpus=$build_dir/corpus/$target
findings=$build_dir/findings
mkdir -p "$corpus" "$findings"
echo "fuzz: fuzz_$target for $minutes minute(s); new inputs in $corpus, findings in $findings"
# One thread for the readers' OpenMP loops: findings reproduce, and the run takes one core.
# -timeout: an input that takes 25 s is a finding too (a reader must not hang on small input).
OMP_NUM_THREADS=1 "$build_dir/tests/fuzz/fuzz_$target" -max_total_time=$((minutes * 60)) \
  -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$findings/$target-" \
  "$@" "$corpus" "tests/fuzz/corpus/$target"
