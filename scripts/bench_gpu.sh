#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: times ConvMixer-256/8 (k 5, p 2) training steps on synthetic
# data at batch 512 with the engine (examples/bench_model --device cuda) and with PyTorch
# (scripts/pytorch_reference.py bench --device cuda), eager and torch.compile'd, in fp32 (true
# fp32: TF32 off on both sides) and bf16 mixed precision, then prints one table.
#
#   scripts/bench_gpu.sh [BUILD_DIR]      BUILD_DIR (default build-gpu) must already hold
#                                         examples/bench_model built with CUDA
#
# Environment: PYTHON (default python3), BATCH (512), STEPS (30), WARMUP (5), PRECISIONS
# ("fp32 bf16"), TF32=1 (allow TF32 on both sides), CUDNN_BENCHMARK (default 1: PyTorch runs with
# cudnn.benchmark on, its fastest eager setting for fixed shapes, ~13% faster in fp32 on an H100;
# 0: PyTorch's own default, off), PART_TIMEOUT (seconds per run, default 600).
# A part that fails (no build, no PyTorch, torch.compile unavailable...) is reported and the
# rest still runs; its cells in the table show '-', and the script exits with 1.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

build=${1:-build-gpu}
py=${PYTHON:-python3}
batch=${BATCH:-512}
steps=${STEPS:-30}
warmup=${WARMUP:-5}
precisions=${PRECISIONS:-fp32 bf16}
part_timeout=${PART_TIMEOUT:-600}
bench=$build/examples/bench_model

common=(--dim 256 --depth 8 --kernel 5 --patch 2 --batch "$batch" --warmup "$warmup"
        --steps "$steps" --device cuda)
ours_extra=()
torch_extra=()
if [[ ${TF32:-0} == 1 ]]; then
  ours_extra+=(--tf32)
  torch_extra+=(--tf32)
fi
cudnn_benchmark=${CUDNN_BENCHMARK:-1}
[[ $cudnn_benchmark == 1 ]] && torch_extra+=(--cudnn-benchmark)

if command -v nvidia-smi >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
else
  gpu="unknown GPU (no nvidia-smi)"
fi
echo "bench_gpu: ConvMixer-256/8 k5 p2, batch $batch, warmup $warmup, steps $steps on $gpu;" \
     "tf32 ${TF32:-0}, pytorch cudnn.benchmark $cudnn_benchmark"
[[ -x $bench ]] || echo "bench_gpu: $bench not found: build it first" \
                        "(cmake --build $build --target bench_model)" >&2

# field KEY TEXT: the value of the last KEY=value line of TEXT (empty if none).
field() { sed -n "s/^$1=//p" <<<"$2" | tail -n 1; }
# run_part LABEL COMMAND...: runs with a time limit, echoes the output indented; sets part_out
# and part_rc.
run_part() {
  local label=$1
  shift
  echo "--- $label: $*"
  part_out=$(timeout "$part_timeout" "$@" 2>&1)
  part_rc=$?
  sed 's/^/    /' <<<"$part_out" | tail -n 20
  if ((part_rc != 0)); then
    echo "    ($label failed, exit status $part_rc)"
    failed_parts=$((failed_parts + 1))
  fi
}
failed_parts=0
# ratio A B: A / B to two decimals, or '-' when either is missing.
ratio() {
  if [[ -n $1 && -n $2 ]]; then awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'
  else printf -- "-"; fi
}
or_dash() { if [[ -n $1 ]]; then printf "%s" "$1"; else printf -- "-"; fi; }

rows=()
for precision in $precisions; do
  ours_ips="" ours_ms="" ours_mb="" eager_ips="" eager_ms="" eager_mb="" compile_ips=""
  run_part "ours $precision" "$bench" "${common[@]}" --precision "$precision" \
    ${ours_extra[@]+"${ours_extra[@]}"}
  if ((part_rc == 0)); then
    ours_ips=$(field train_img_per_s "$part_out")
    ours_ms=$(field step_ms "$part_out")
    ours_mb=$(field peak_mem_mb "$part_out")
  fi
  run_part "pytorch eager $precision" "$py" scripts/pytorch_reference.py bench "${common[@]}" \
    --precision "$precision" ${torch_extra[@]+"${torch_extra[@]}"}
  if ((part_rc == 0)); then
    eager_ips=$(field train_img_per_s "$part_out")
    eager_ms=$(field step_ms "$part_out")
    eager_mb=$(field peak_mem_mb "$part_out")
  fi
  run_part "pytorch compile $precision" "$py" scripts/pytorch_reference.py bench "${common[@]}" \
    --precision "$precision" --compile ${torch_extra[@]+"${torch_extra[@]}"}
  if ((part_rc == 0)); then
    compile_ips=$(field train_img_per_s "$part_out")
  fi
  [[ -n $compile_ips ]] || echo "compile: failed ($precision)"
  rows+=("$(printf '%-9s %10s %8s %8s | %10s %8s %8s | %10s | %7s %7s' "$precision" \
    "$(or_dash "$ours_ips")" "$(or_dash "$ours_ms")" "$(or_dash "$ours_mb")" \
    "$(or_dash "$eager_ips")" "$(or_dash "$eager_ms")" "$(or_dash "$eager_mb")" \
    "$(or_dash "$compile_ips")" "$(ratio "$ours_ips" "$eager_ips")" \
    "$(ratio "$ours_ips" "$compile_ips")")")
done

echo
echo "ConvMixer-256/8 k5 p2 training step, batch $batch ($gpu); img/s = images per second,"
echo "ms = milliseconds per step, MB = peak device memory (MiB); ratios are of img/s"
printf '%-9s %10s %8s %8s | %10s %8s %8s | %10s | %7s %7s\n' "precision" "ours" "ours" "ours" \
  "eager" "eager" "eager" "compile" "ours/" "ours/"
printf '%-9s %10s %8s %8s | %10s %8s %8s | %10s | %7s %7s\n' "" "img/s" "ms" "MB" \
  "img/s" "ms" "MB" "img/s" "eager" "compile"
printf '%s\n' "${rows[@]}"
((failed_parts == 0))
