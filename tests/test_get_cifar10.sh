#!/usr/bin/env bash
# scripts/get_cifar10.sh without a network: an unreachable URL says how to place the files by
# hand, a damaged archive is named as damaged, and none of them leaves a file behind that blocks
# the next run (a partial download, or an archive that failed the MD5 check).
set -uo pipefail
script=$(dirname "$0")/../scripts/get_cifar10.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

out=$(DEST=$tmp/offline CIFAR10_URL=file://$tmp/no-such-archive.tar.gz "$script" 2>&1) &&
  fail "an unreachable URL succeeded"
grep -q "could not download" <<<"$out" || fail "offline message missing: $out"
grep -q "Place the files by hand" <<<"$out" || fail "no instructions: $out"
compgen -G "$tmp/offline/*part*" >/dev/null && fail "a partial download was left behind"

# A damaged archive already in place is moved aside, each time under a new name, and the next run
# downloads (here: tries to, and finds the URL unreachable).
archive=$tmp/damaged/cifar-10-binary.tar.gz
mkdir -p "$tmp/damaged"
for run in 1 2; do
  head -c 1000 /dev/urandom >"$archive"
  out=$(DEST=$tmp/damaged "$script" 2>&1) && fail "a damaged archive succeeded"
  grep -q "cifar-10-binary.tar.gz is damaged (MD5 mismatch" <<<"$out" || fail "message: $out"
  grep -q "moved it to $archive.damaged." <<<"$out" || fail "not said where it went: $out"
  [[ -e $archive ]] && fail "the damaged archive is still in place"
  moved=$(find "$tmp/damaged" -name "cifar-10-binary.tar.gz.damaged.*" | wc -l)
  [[ $moved == "$run" ]] || fail "run $run: $moved archives moved aside, not $run"
done
[[ -d $tmp/damaged/cifar-10-batches-bin ]] && fail "a damaged archive was extracted"
out=$(DEST=$tmp/damaged CIFAR10_URL=file://$tmp/no-such-archive.tar.gz "$script" 2>&1) &&
  fail "an unreachable URL succeeded"
grep -q "could not download" <<<"$out" || fail "the next run did not download: $out"

# A damaged download is deleted, so running again downloads again (curl reads file:// URLs).
if command -v curl >/dev/null; then
  head -c 1000 /dev/urandom >"$tmp/mirror.tar.gz"
  for run in 1 2; do
    out=$(DEST=$tmp/download CIFAR10_URL=file://$tmp/mirror.tar.gz "$script" 2>&1) &&
      fail "a damaged download succeeded"
    grep -q "cifar-10-binary.tar.gz is damaged (MD5 mismatch" <<<"$out" || fail "message: $out"
    grep -q "deleted the download from file://$tmp/mirror.tar.gz" <<<"$out" ||
      fail "run $run did not download: $out"
    [[ -z $(ls -A "$tmp/download") ]] || fail "left behind: $(ls -A "$tmp/download")"
  done
else
  echo "curl missing: the damaged-download case is skipped (wget reads no file:// URL)"
fi
echo "get_cifar10.sh: offline, damaged-archive and damaged-download cases behave"
