#!/usr/bin/env bash
# scripts/pytorch_reference.py predict against the engine's predict on a tiny run: a run directory
# as --checkpoint, unreadable images named on stderr in one line each (the others classified, exit
# status 1 at the end), and the same logits for an RGB PNG and a 16-bit grey PNG (stb_image keeps
# the high byte of 16-bit samples; PIL's convert would clip them). Arguments: the train and predict
# binaries. Needs PyTorch, Pillow and NumPy (exit 77, skipped, without them), under the interpreter
# scripts/find_python.sh picks (PYTHON, else python3, else /usr/bin/python3).
set -uo pipefail
train=$1 predict=$2
script=$(dirname "$0")/../scripts/pytorch_reference.py
if ! py=$(bash "$(dirname "$0")/../scripts/find_python.sh" numpy PIL torch 2>&1); then
  echo "SKIP: $py"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# CIFAR-10 binary batches of 4 random images each, an RGB PNG and a 16-bit grey PNG (61x45, so
# both sides resize it).
"$py" - "$tmp" <<'PY' || fail "could not write the test data"
import os, sys
import numpy as np
from PIL import Image
tmp = sys.argv[1]
rng = np.random.default_rng(0)
os.makedirs(f"{tmp}/cifar")
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    records = rng.integers(0, 256, size=(4, 3073), dtype=np.uint8)
    records[:, 0] %= 10
    records.tofile(f"{tmp}/cifar/{name}.bin")
Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(f"{tmp}/rgb.png")
Image.fromarray(rng.integers(0, 65536, size=(45, 61), dtype=np.uint16)).save(f"{tmp}/grey16.png")
PY
"$train" --data "$tmp/cifar" --dim 8 --depth 1 --kernel 3 --patch 4 --epochs 1 --batch 8 \
  --ra-n 0 --device cpu --threads 2 --progress off --checkpoint-dir "$tmp/run" >"$tmp/log" 2>&1 ||
  fail "train: $(cat "$tmp/log")"
echo "not an image" >"$tmp/notes.png"
mkdir "$tmp/folder.png" "$tmp/empty-run"
images=("$tmp/missing.png" "$tmp/rgb.png" "$tmp/folder.png" "$tmp/notes.png" "$tmp/grey16.png")

"$py" "$script" predict --checkpoint "$tmp/run" "${images[@]}" >"$tmp/reference.jsonl" 2>"$tmp/err"
status=$?
[[ $status == 1 ]] || fail "reference predict exited with $status: $(cat "$tmp/err")"
grep -q Traceback "$tmp/err" && fail "a traceback: $(cat "$tmp/err")"
for expected in "cannot read $tmp/missing.png: no such file" \
  "cannot read $tmp/folder.png: is a directory" \
  "cannot read $tmp/notes.png: cannot decode the image" "3 of 5 images could not be read"; do
  grep -qF "$expected" "$tmp/err" || fail "'$expected' missing: $(cat "$tmp/err")"
done
[[ $(wc -l <"$tmp/err") == 4 ]] || fail "not one line per image: $(cat "$tmp/err")"

"$predict" --checkpoint "$tmp/run" --json "${images[@]}" >"$tmp/engine.jsonl" 2>"$tmp/err"
[[ $? == 1 ]] || fail "engine predict: $(cat "$tmp/err")"
"$py" - "$tmp/engine.jsonl" "$tmp/reference.jsonl" <<'PY' || fail "the logits differ"
import json, sys
engine, reference = ([json.loads(line) for line in open(path)] for path in sys.argv[1:])
assert [e["image"] for e in engine] == [r["image"] for r in reference], "different images"
assert len(engine) == 2, f"{len(engine)} images classified, expected 2"
for e, r in zip(engine, reference):
    diff = max(abs(a - b) for a, b in zip(e["logits"], r["logits"]))
    print(f"{e['image']}: largest logit difference {diff:.2g}")
    assert diff <= 1e-5, e["image"]
PY

"$py" "$script" predict --checkpoint "$tmp/empty-run" "$tmp/rgb.png" >/dev/null 2>"$tmp/err"
status=$?
[[ $status == 1 ]] || fail "a directory without a checkpoint exited with $status: $(cat "$tmp/err")"
grep -qF "$tmp/empty-run/last.safetensors: no such file" "$tmp/err" ||
  fail "a directory without a checkpoint: $(cat "$tmp/err")"
echo "pytorch_reference.py predict: run directories, unreadable images and 16-bit PNGs behave"
