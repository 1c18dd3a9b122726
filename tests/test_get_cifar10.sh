#!/usr/bin/env bash
# scripts/get_cifar10.sh without a network: an unreachable URL says how to place the files by
# hand, a damaged archive is named as damaged, and neither leaves a partial download behind.
set -uo pipefail
script=$(dirname "$0")/../scripts/get_cifar10.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

out=$(DEST=$tmp/offline CIFAR10_URL=file://$tmp/no-such-archive.tar.gz "$script" 2>&1) &&
  fail "an unreachable URL succeeded"
grep -q "could not download" <<<"$out" || fail "offline message missing: $out"
grep -q "Place the files by hand" <<<"$out" || fail "no instructions: $out"
ls "$tmp/offline" | grep -q part && fail "a partial download was left behind"

mkdir -p "$tmp/damaged"
head -c 1000 /dev/urandom >"$tmp/damaged/cifar-10-binary.tar.gz"
out=$(DEST=$tmp/damaged "$script" 2>&1) && fail "a damaged archive succeeded"
grep -q "cifar-10-binary.tar.gz is damaged (MD5 mismatch)" <<<"$out" || fail "message: $out"
[[ -d $tmp/damaged/cifar-10-batches-bin ]] && fail "a damaged archive was extracted"
echo "get_cifar10.sh: offline and damaged-archive cases behave"
