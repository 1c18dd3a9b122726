#!/usr/bin/env bash
# Times ConvMixer-256/8 (k 5, p 2, batch 64) training steps on this machine's CPU with the engine
# and, when PyTorch is installed, with PyTorch in the same run, and prints the ratio.
#   THREADS (default 2), STEPS (default 5), WARMUP (default 2), PYTHON (default python3); other
#   arguments (--dim --depth --kernel --patch --batch) go to both sides.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target bench_model -j "$(nproc)"

threads=${THREADS:-2}
steps=${STEPS:-5}
warmup=${WARMUP:-2}
common=(--threads "$threads" --steps "$steps" --warmup "$warmup" "$@")
ours=$(build/examples/bench_model "${common[@]}" | tee /dev/stderr |
       sed -n 's/^train_img_per_s=//p')
py=${PYTHON:-python3}
if "$py" -c 'import torch' 2>/dev/null; then
  theirs=$(OMP_NUM_THREADS=$threads "$py" scripts/pytorch_reference.py bench "${common[@]}" |
             tee /dev/stderr | sed -n 's/^train_img_per_s=//p')
  "$py" -c "print(f'engine/pytorch images-per-second ratio: {$ours / $theirs:.2f}')"
else
  # PYTHON picks the interpreter; say so, and name /usr/bin/python3 when it has PyTorch.
  where=$(command -v "$py" || true)
  hint="set PYTHON to a python3 that has it, or apt install python3-torch"
  if [[ $where != /usr/bin/python3 ]] && /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    hint="/usr/bin/python3 has it: PYTHON=/usr/bin/python3 scripts/bench.sh"
  fi
  echo "PyTorch not found by PYTHON=$py (${where:-not on PATH}): engine figure only; $hint"
fi
echo "train_img_per_s=$ours"
