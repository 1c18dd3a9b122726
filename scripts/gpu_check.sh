#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build for its architecture, run the whole test suite (the CUDA
# tests execute there instead of reporting skipped), run compute-sanitizer (memcheck and
# racecheck) over the CUDA tests, benchmark our kernels against cuDNN and training steps against
# PyTorch, train the recipe with both when DATA names CIFAR-10, and print a short summary last.
# SKIP_SANITIZER=1, SKIP_KERNEL_BENCH=1 and SKIP_STEP_BENCH=1 leave those parts out.
#
# On this workplace's lent GPU (a bare image: no Catch2, stb, oneDNN, MPI or system cuDNN and
# NCCL): scripts/gpu_carry.sh here fills .carry/ with the Debian packages and the CIFAR-10 archive;
# then the device tool runs, with carry [".carry"], from the repository root:
#   mkdir -p /tmp/deps /tmp/data && for f in .carry/*.deb; do dpkg -x $f /tmp/deps; done
#   tar xzf .carry/cifar10-jpeg.tar.gz -C /tmp/data
#   TIER=quick TIME_LIMIT=540 DEPS_PREFIX=/tmp/deps DATA=/tmp/data/cifar10 OUT=/tmp/gc \
#     RESULTS=$OUT scripts/gpu_check.sh
# Logs go to OUT (default gpu_check_out/); RESULTS, when set, receives the summary and the logs as
# one archive (the device tool brings back only a few files). TIER=quick (about 8 minutes) leaves
# out compute-sanitizer and the recipe's training; TIER=full (the default) runs everything.
# DEPS_PREFIX names a prefix of unpacked packages for CMake (and OpenMPI, when it holds one: the
# distributed tests run with it); without a system cuDNN or NCCL, the ones PyTorch's wheels ship
# are used. Each step is limited to STEP_TIMEOUT seconds (default 300), each test to 180; with
# TIME_LIMIT (seconds) the steps that would start past it are skipped and the summary still comes.
# Seen on an H100: build about 1 min, tests 0.5 min, 25 epochs 1.5 min (engine) and 2.5 min
# (PyTorch), bench_kernels 1 min; TIER=full does not fit one 10-minute call: run TIER=quick first.
set -uo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-gpu_check_out}
mkdir -p "$out"
if [[ ${TIER:-full} == quick ]]; then
  SKIP_SANITIZER=1 SKIP_TRAIN=1
elif [[ ${TIER:-full} != full ]]; then
  echo "gpu_check: TIER must be quick or full, got '$TIER'" >&2
  exit 2
fi
summary=()
failed_logs=()
deadline=$((SECONDS + ${TIME_LIMIT:-100000}))
step() {  # step NAME COMMAND...: runs (a program under a time limit), logs to $out/NAME.log
  local name=$1 limit=() seconds=${STEP_TIMEOUT:-300}
  shift
  ((deadline - SECONDS < seconds)) && seconds=$((deadline - SECONDS))
  if ((seconds < 10)); then
    summary+=("SKIP  $name (TIME_LIMIT reached)")
    return
  fi
  [[ $(type -t "$1") == function ]] || limit=(timeout "$seconds")
  ${limit[@]+"${limit[@]}"} "$@" >"$out/$name.log" 2>&1
  local rc=$?
  if ((rc == 0)); then
    summary+=("PASS  $name")
  else
    local why="exit status $rc"
    ((rc == 124 && ${#limit[@]} > 0)) && why="stopped after $seconds s"
    summary+=("FAIL  $name ($why; see $out/$name.log)")
    failed_logs+=("$out/$name.log")
  fi
}
# Prints the summary (and the end of each failed step's log), hands the results over, and exits:
# 0 when nothing failed.
finish() {
  local log
  for log in ${failed_logs[@]+"${failed_logs[@]}"}; do
    echo "=== last lines of $log"
    tail -n 25 "$log"
  done
  {
    echo "gpu_check summary ($(date -u +%Y-%m-%dT%H:%MZ), sm_${arch:-?}, $(cat "$out/device.txt"))"
    printf '  %s\n' "${summary[@]}"
  } | tee "$out/summary.txt"
  if [[ -n ${RESULTS:-} ]]; then
    mkdir -p "$RESULTS"
    cp "$out/summary.txt" "$RESULTS/"
    tar czf "$RESULTS/gpu_check_logs.tgz" -C "$(dirname "$out")" --exclude='*.safetensors' \
      --exclude='predict-pngs' "$(basename "$out")"
  fi
  ! grep -q "^  FAIL" "$out/summary.txt"
  exit $?
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
  # Debian packages unpacked with dpkg -x: their links to shared objects in /lib are not set up,
  # so name the zlib shared object directly.
  cmake_args+=(-DCMAKE_PREFIX_PATH="$DEPS_PREFIX/usr" -DCMAKE_INCLUDE_PATH="$DEPS_PREFIX/usr/include")
  [[ -e $multiarch/libz.so ]] || cmake_args+=(-DZLIB_LIBRARY="$(ls /lib/x86_64-linux-gnu/libz.so.1 $multiarch/libz.so.1 2>/dev/null | head -1)"
                                              -DZLIB_INCLUDE_DIR="$DEPS_PREFIX/usr/include")
  export LD_LIBRARY_PATH="$DEPS_PREFIX$multiarch:$DEPS_PREFIX/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # Multiarch headers (libjpeg's jconfig.h) beside the plain ones.
  export CPATH="$DEPS_PREFIX/usr/include/x86_64-linux-gnu${CPATH:+:$CPATH}"
  # OpenMPI unpacked there: its programs, libraries, plugins and help files are found through
  # OPAL_PREFIX (PMIx's and hwloc's through their own variables).
  mpi=$DEPS_PREFIX/usr
  if [[ -x $mpi/bin/mpirun.openmpi ]]; then
    export OPAL_PREFIX=$mpi PATH="$mpi/bin:$PATH"
    export LD_LIBRARY_PATH="$mpi/lib/x86_64-linux-gnu/openmpi/lib:$LD_LIBRARY_PATH"
    export PMIX_INSTALL_PREFIX=$mpi/lib/x86_64-linux-gnu/pmix2
    export PMIX_MCA_mca_base_component_path=$PMIX_INSTALL_PREFIX/lib/pmix
    export HWLOC_PLUGINS_PATH=$mpi/lib/x86_64-linux-gnu/hwloc
    # Ranks start on this machine only: no ssh/rsh launcher is needed (the image may have none).
    export OMPI_MCA_plm=isolated
    cmake_args+=(-DMPI_CXX_COMPILER="$mpi/bin/mpicxx.openmpi"
                 -DMPIEXEC_EXECUTABLE="$mpi/bin/mpirun.openmpi")
  fi
fi
# NCCL: the system's if it has one, else the one PyTorch's wheels ship (nvidia-nccl-*).
if ! ls /usr/include/nccl.h /usr/local/cuda/include/nccl.h >/dev/null 2>&1; then
  nccl_h=$(python3 -c 'import glob, os, nvidia
print(next((h for p in nvidia.__path__
            for h in glob.glob(os.path.join(p, "**", "include", "nccl.h"), recursive=True)), ""))' \
    2>/dev/null)
  if [[ -n $nccl_h ]]; then
    nccl_lib=$(ls "$(dirname "$(dirname "$nccl_h")")"/lib/libnccl.so* 2>/dev/null | head -1)
    cmake_args+=(-DNCCL_INCLUDE_DIR="$(dirname "$nccl_h")" -DNCCL_LIBRARY="$nccl_lib")
    export LD_LIBRARY_PATH="$(dirname "$nccl_lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
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
[[ ${summary[-1]} == PASS* ]] || finish
step build cmake --build "$build" -j "$(nproc)"
[[ ${summary[-1]} == PASS* ]] || finish
# Every test (test_consumer, which configures separate projects without this script's prefixes,
# runs in CI). The CUDA ones must have run, not skipped.
step tests ctest --test-dir "$build" --output-on-failure -j 8 --timeout 180 -E '^test_consumer$'
cuda_tests=(test_cuda_kernels test_cuda_kernels_more test_cuda_ops test_cuda_trainer test_cuda_augment
            test_distributed_cuda)
for bin in "${cuda_tests[@]}"; do
  if grep -q "$bin .*Passed" "$out/tests.log"; then
    summary+=("PASS  $bin executed on the GPU")
  else
    summary+=("FAIL  $bin did not pass on the GPU (skipped or failed)")
  fi
done
# When DATA names CIFAR-10 as image folders: train RECIPE (default convmixer-cifar10; or labml)
# for EPOCHS (default 1) with the engine and with PyTorch (scripts/pytorch_reference.py train, the
# same recipe) on this GPU, one after the other.
if [[ -n ${DATA:-} && ${SKIP_TRAIN:-0} != 1 ]]; then
  epochs=${EPOCHS:-1}
  recipe=${RECIPE:-convmixer-cifar10}
  workers=$(($(nproc) - 2))
  step train-engine timeout "${TRAIN_TIMEOUT:-600}" "$build/examples/train" --data "$DATA" \
    --recipe "$recipe" --device cuda --epochs "$epochs" --workers "$workers" --progress off \
    --checkpoint-dir "$out/engine-run"
  step train-pytorch timeout "${TRAIN_TIMEOUT:-600}" python3 scripts/pytorch_reference.py train \
    --recipe "$recipe" --data "$DATA" --device cuda --epochs "$epochs" --workers "$workers" \
    --metrics "$out/pytorch-metrics.jsonl"
fi
# A run checkpointed on the GPU continues on the CPU and back, and predict names the same classes
# on both devices (a small model on a subset: seconds).
cross_device() {
  local dir=$out/cross-run images
  "$build/examples/train" --data "$DATA" --device cuda --subset 1000 --test-subset 200 \
    --epochs 2 --dim 64 --depth 2 --batch 128 --stop-after-steps 3 --progress off \
    --checkpoint-dir "$dir"
  [[ $? == 130 ]] || return 1
  "$build/examples/train" --resume "$dir" --device cpu --stop-after-steps 5 --progress off
  [[ $? == 130 ]] || return 1
  "$build/examples/train" --resume "$dir" --device cuda --progress off || return 1
  mapfile -t images < <(find "$DATA/test" -name '*.jpg' | sort | head -50)
  for dev in cpu cuda; do
    "$build/examples/predict" --checkpoint "$dir/last.safetensors" --top 1 --device "$dev" \
      "${images[@]}" | awk '{print $1, $2}' >"$out/predict-$dev.txt" || return 1
  done
  diff "$out/predict-cpu.txt" "$out/predict-cuda.txt" && echo "predict: same classes on cpu and cuda"
}
[[ -n ${DATA:-} ]] && step cross-device cross_device
# predict and scripts/pytorch_reference.py predict give the same logits for PNGs of the model's
# size and of other sizes (the resize is the same filter on both sides), on the cross-device run's
# checkpoint. PNGs because JPEG decoders (stb_image, libjpeg) differ by a level or two.
predict_parity() {
  local pngs=$out/predict-pngs images
  mkdir -p "$pngs"
  mapfile -t images < <(find "$DATA/test" -name '*.jpg' | sort | head -6)
  ((${#images[@]} > 0)) || { echo "no test JPEGs under $DATA/test"; return 1; }
  python3 - "$pngs" "${images[@]}" <<'PY' || return 1
import sys
from PIL import Image
for i, path in enumerate(sys.argv[2:]):
    image = Image.open(path).convert("RGB")
    image.save(f"{sys.argv[1]}/{i}-original.png")
    image.resize((61, 45), Image.BICUBIC).save(f"{sys.argv[1]}/{i}-61x45.png")
    image.resize((20, 24), Image.BICUBIC).save(f"{sys.argv[1]}/{i}-20x24.png")
PY
  local ckpt=$out/cross-run/last.safetensors
  "$build/examples/predict" --checkpoint "$ckpt" --json "$pngs"/*.png >"$out/predict-engine.jsonl" &&
    python3 scripts/pytorch_reference.py predict --checkpoint "$ckpt" "$pngs"/*.png \
      >"$out/predict-pytorch.jsonl" || return 1
  python3 - "$out/predict-engine.jsonl" "$out/predict-pytorch.jsonl" <<'PY'
import json, sys
engine, torch = ([json.loads(line) for line in open(p)] for p in sys.argv[1:])
worst = max(abs(a - b) for e, t in zip(engine, torch) for a, b in zip(e["logits"], t["logits"]))
print(f"{len(engine)} images, largest logit difference {worst:.2e} (allowed 1e-4)")
sys.exit(0 if len(engine) == len(torch) > 0 and worst <= 1e-4 else 1)
PY
}
[[ -n ${DATA:-} ]] && step predict-parity predict_parity
# Under the sanitizers: the kernel and op tests (the trainer test's thousands of launches would take
# longer than the sanitizer's timeout, and it runs the same kernels).
sanitized_tests=(test_cuda_kernels test_cuda_kernels_more test_cuda_ops test_cuda_augment)
if [[ ${SKIP_SANITIZER:-0} == 1 ]]; then
  summary+=("SKIP  compute-sanitizer (SKIP_SANITIZER=1)")
elif command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    for bin in "${sanitized_tests[@]}"; do
      step "sanitizer-$tool-$bin" timeout "${SANITIZER_TIMEOUT:-240}" compute-sanitizer \
        --tool "$tool" --error-exitcode 1 "$build/tests/$bin"
    done
  done
else
  summary+=("FAIL  compute-sanitizer not found")
fi

# Figures: our kernels against cuDNN, and whole training steps against PyTorch on this GPU.
if [[ ${SKIP_KERNEL_BENCH:-0} != 1 && -x $build/examples/bench_kernels ]]; then
  step bench-kernels "$build/examples/bench_kernels" --csv "$out/kernels.csv"
  python3 scripts/plot_kernel_bench.py "$out/kernels.csv" -o "$out/kernel_speedups.png" \
    >/dev/null 2>&1 || true
fi
# Augmentation on the GPU (issue 16's bar: 200k images/s at 32x32, RandAugment N 2 M 12).
step bench-augment "$build/tests/test_cuda_augment" "[.bench]"
summary+=("      $(grep -h 'images/s' "$out/bench-augment.log" | head -1)")
# Issue 14's bar: a step with the NCCL gradient sum within 2% of one without (one rank).
if [[ -x $build/tests/test_distributed_cuda ]]; then
  mpiexec=$(sed -n 's/^MPIEXEC_EXECUTABLE:FILEPATH=//p' "$build/CMakeCache.txt")
  step bench-nccl env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    "$mpiexec" -np 1 "$build/tests/test_distributed_cuda" "[.bench]"
  while read -r line; do summary+=("      $line"); done < <(grep -h ' round ' "$out/bench-nccl.log")
fi
if [[ ${SKIP_STEP_BENCH:-0} != 1 ]]; then
  step bench-step scripts/bench_gpu.sh "$build"
  # Where a step's time goes, op by op (each op synchronized: see engine/profile.h).
  for precision in fp32 bf16; do
    step "profile-$precision" "$build/examples/bench_model" --device cuda --batch 512 \
      --warmup 3 --steps 10 --precision "$precision" --profile
  done
fi

finish
