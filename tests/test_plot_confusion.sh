#!/usr/bin/env bash
# scripts/plot_confusion.py: a file that is not an evaluation is one line on stderr and exit status
# 1, not a traceback; an evaluation becomes a PNG (that check needs matplotlib: exit 77, skipped,
# without it); it runs under the interpreter scripts/find_python.sh picks (PYTHON, else python3,
# else /usr/bin/python3).
set -uo pipefail
script=$(dirname "$0")/../scripts/plot_confusion.py
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The refusals below need no matplotlib: any interpreter does when none has it.
py=$(bash "$(dirname "$0")/../scripts/find_python.sh" matplotlib 2>"$tmp/no-matplotlib") ||
  py=${PYTHON:-python3}
fail() { echo "FAIL: $*"; exit 1; }

refused() {
  local expected=$1
  shift
  "$py" "$script" "$@" >"$tmp/out" 2>"$tmp/err"
  local status=$?
  [[ $status == 1 ]] || fail "plot_confusion $* exited with $status: $(cat "$tmp/err")"
  [[ $(wc -l <"$tmp/err") == 1 ]] || fail "plot_confusion $*: not one line: $(cat "$tmp/err")"
  grep -qF "$expected" "$tmp/err" || fail "plot_confusion $*: '$expected' missing: $(cat "$tmp/err")"
}

refused "plot_confusion: $tmp/no-such.json: no such file" "$tmp/no-such.json"
printf 'not json' >"$tmp/text.json"
refused "not JSON" "$tmp/text.json"
printf '{"classes": ["a", "b"], "confusion": [[1, 2]], "accuracy": 0.5}' >"$tmp/ragged.json"
refused "not an evaluation written by evaluate --json" "$tmp/ragged.json"

if [[ -s $tmp/no-matplotlib ]]; then
  echo "SKIP: the plotting check did not run: $(cat "$tmp/no-matplotlib")"
  exit 77
fi
printf '{"checkpoint": "runs/x/last.safetensors", "split": "test", "images": 5, "accuracy": 0.6,
 "classes": ["cat", "dog"], "confusion": [[2, 1], [1, 1]]}' >"$tmp/evaluation.json"
"$py" "$script" "$tmp/evaluation.json" >"$tmp/out" 2>"$tmp/err" || fail "$(cat "$tmp/err")"
[[ -s $tmp/evaluation.png ]] || fail "no $tmp/evaluation.png"
echo "plot_confusion.py: one-line errors, and a PNG from an evaluation"
