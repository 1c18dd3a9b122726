#!/usr/bin/env bash
# scripts/plot_metrics.py: a run directory stands for its metrics.jsonl; the plot is titled with
# the run's name and shows the learning rate and the best test accuracy when the lines record them;
# a missing file, a directory without metrics or an unwritable output is one line on stderr and
# exit status 1, not a traceback. The plotting checks need matplotlib (exit 77, skipped, without
# it); they run under the interpreter scripts/find_python.sh picks (PYTHON, else python3, else
# /usr/bin/python3).
set -uo pipefail
script=$(dirname "$0")/../scripts/plot_metrics.py
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The refusals below need no matplotlib: any interpreter does when none has it.
py=$(bash "$(dirname "$0")/../scripts/find_python.sh" matplotlib 2>"$tmp/no-matplotlib") ||
  py=${PYTHON:-python3}
fail() { echo "FAIL: $*"; exit 1; }

# Runs the script; fails unless it exits with 1 and says `expected` in one line on stderr.
refused() {
  local expected=$1
  shift
  "$py" "$script" "$@" >"$tmp/out" 2>"$tmp/err"
  local status=$?
  [[ $status == 1 ]] || fail "plot_metrics $* exited with $status: $(cat "$tmp/err")"
  [[ $(wc -l <"$tmp/err") == 1 ]] || fail "plot_metrics $*: not one line: $(cat "$tmp/err")"
  grep -qF "$expected" "$tmp/err" || fail "plot_metrics $*: '$expected' missing: $(cat "$tmp/err")"
}

mkdir -p "$tmp/empty-run" "$tmp/folder.png"
refused "plot_metrics: $tmp/no-such.jsonl: no such file" "$tmp/no-such.jsonl"
refused "plot_metrics: $tmp/empty-run/metrics.jsonl: no such file" "$tmp/empty-run"
printf '{"step": 1}\n' >"$tmp/other.jsonl"
refused "not a metrics line of train" "$tmp/other.jsonl"

if [[ -s $tmp/no-matplotlib ]]; then
  echo "SKIP: the plotting checks did not run: $(cat "$tmp/no-matplotlib")"
  exit 77
fi
# The PNG's text chunks (uncompressed) name what was drawn: the run's name as the title, the panels
# and the best test accuracy.
shows() {
  local png=$1 expected=$2
  grep -qaF "$expected" "$png" || fail "$png does not show '$expected'"
}
mkdir -p "$tmp/cifar-run" "$tmp/old-run"
printf '%s\n' \
  '{"epoch": 1, "train_loss": 2.1, "train_acc": 0.2, "lr": 0.01, "test_loss": 2, "test_acc": 0.3}' \
  '{"epoch": 2, "train_loss": 1.9, "train_acc": 0.3, "lr": 0.05}' \
  '{"epoch": 3, "train_loss": 2, "train_acc": 0.4, "lr": 0.02, "test_loss": 2, "test_acc": 0.375}' \
  '{"epoch": 4, "train_loss": 1.6, "train_acc": 0.5, "lr": 0, "test_loss": 1.9, "test_acc": 0.35}' \
  >"$tmp/cifar-run/metrics.jsonl"
"$py" "$script" "$tmp/cifar-run" >"$tmp/out" 2>"$tmp/err" ||
  fail "a run directory: $(cat "$tmp/err")"
[[ -s $tmp/cifar-run/metrics.png ]] || fail "a run directory: no $tmp/cifar-run/metrics.png"
shows "$tmp/cifar-run/metrics.png" "cifar-run"
shows "$tmp/cifar-run/metrics.png" "learning rate"
shows "$tmp/cifar-run/metrics.png" "best test 37.50% (epoch 3)"
# Lines written before the learning rate was recorded, and a test split not evaluated yet.
printf '%s\n' '{"epoch": 1, "train_loss": 2.1, "train_acc": 0.2}' >"$tmp/old-run/metrics.jsonl"
"$py" "$script" "$tmp/old-run/metrics.jsonl" >"$tmp/out" 2>"$tmp/err" ||
  fail "metrics without lr: $(cat "$tmp/err")"
shows "$tmp/old-run/metrics.png" "old-run"
! grep -qaE "learning rate|best test" "$tmp/old-run/metrics.png" ||
  fail "metrics without lr or test accuracy: the plot claims one"
refused "plot_metrics: $tmp/no-dir/curves.png: cannot write" "$tmp/cifar-run" \
  -o "$tmp/no-dir/curves.png"
refused "plot_metrics: $tmp/folder.png: cannot write" "$tmp/cifar-run" -o "$tmp/folder.png"
echo "plot_metrics.py: run directories, the plot's content and one-line errors behave"
