#!/usr/bin/env bash
# Times ConvMixer-256/8 (k 5, p 2, batch 64) training steps on this machine's CPU with the engine
# and, when PyTorch is installed, with PyTorch eager (channels-last) and, on PyTorch 2, with
# torch.compile, in ROUNDS interleaved rounds (a shared machine drifts: each round runs all of
# them one after the other), and prints each round's images per second and ratios, then the range.
#   THREADS (default 2), STEPS (default 5), WARMUP (default 2), ROUNDS (default 3), PYTHON (default
#   python3: a virtual environment with the current PyTorch from the package index is the anchor);
#   EVAL=1 times evaluation batches (eval mode, no gradients) instead of training steps; other
#   arguments (--dim --depth --kernel --patch --batch, --precision bf16: the engine's bf16 path
#   against PyTorch's bf16 autocast, on a CPU with AVX512-BF16) go to every side.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target bench_model -j "$(nproc)"

threads=${THREADS:-2}
rounds=${ROUNDS:-3}
common=(--threads "$threads" --steps "${STEPS:-5}" --warmup "${WARMUP:-2}" "$@")
what=train
if [[ ${EVAL:-0} == 1 ]]; then
  common+=(--eval)
  what=eval
fi
py=${PYTHON:-python3}

# The <what>_img_per_s line of a run, its output on stderr.
img_per_s() { "$@" | tee /dev/stderr | sed -n "s/^${what}_img_per_s=//p"; }

sides=(engine)
if "$py" -c 'import torch' 2>/dev/null; then
  version=$("$py" -c 'import torch; print(torch.__version__)')
  sides+=(eager)
  [[ ${version%%.*} -ge 2 ]] && sides+=(compile)
  echo "PyTorch $version ($py), ${sides[*]}, $rounds rounds, $threads threads" >&2
else
  # PYTHON picks the interpreter; say so, and name /usr/bin/python3 when it has PyTorch.
  where=$(command -v "$py" || true)
  hint="set PYTHON to a python3 that has it, or apt install python3-torch"
  if [[ $where != /usr/bin/python3 ]] && /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    hint="/usr/bin/python3 has it: PYTHON=/usr/bin/python3 scripts/bench.sh"
  fi
  echo "PyTorch not found by PYTHON=$py (${where:-not on PATH}): engine figure only; $hint"
fi

results=()
for round in $(seq "$rounds"); do
  line="round $round:"
  for side in "${sides[@]}"; do
    case $side in
      engine) value=$(img_per_s build/examples/bench_model "${common[@]}") ;;
      eager) value=$(OMP_NUM_THREADS=$threads img_per_s "$py" scripts/pytorch_reference.py bench \
                       "${common[@]}") ;;
      # torch.compile needs a working compiler toolchain for Python: a failure is reported, not fatal.
      compile) value=$(OMP_NUM_THREADS=$threads img_per_s "$py" scripts/pytorch_reference.py \
                         bench "${common[@]}" --compile || true) ;;
    esac
    [[ -n $value ]] && line+=" $side=$value"
  done
  results+=("$line")
done

# Per round: images per second and the engine's ratio to each PyTorch side; then each ratio's range.
printf '%s\n' "${results[@]}" | awk '
{
  out = $1 " " $2
  split($3, e, "="); engine = e[2]
  for (i = 3; i <= NF; ++i) {
    split($i, kv, "=")
    out = out sprintf(" %s %.1f img/s", kv[1], kv[2])
    if (kv[1] != "engine") {
      r = engine / kv[2]
      out = out sprintf(" (engine/%s %.2f)", kv[1], r)
      if (!(kv[1] in lo) || r < lo[kv[1]]) lo[kv[1]] = r
      if (!(kv[1] in hi) || r > hi[kv[1]]) hi[kv[1]] = r
    }
  }
  print out
}
END { for (k in lo) printf "engine/%s: %.2f to %.2f over %d rounds\n", k, lo[k], hi[k], NR }'
echo "${what}_img_per_s=$(sed -n 's/.*engine=\([^ ]*\).*/\1/p' <<<"${results[-1]}")"
