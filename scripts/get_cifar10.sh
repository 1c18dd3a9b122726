#!/usr/bin/env bash
# Downloads the official CIFAR-10 binary release, checks its MD5 and extracts it into data/
# (data/cifar-10-batches-bin/). Offline, it says how to place the files by hand. An archive that
# fails the check never blocks a rerun: a fresh download is deleted, one already in place is moved
# to <archive>.damaged.XXXXXX; either way the next run downloads again.
# CIFAR10_URL names a mirror (any URL curl reads, file:// too; wget, used without curl, reads no
# file:// URL); DEST another folder than data/ (a relative one is taken from the repository root).
set -euo pipefail
cd "$(dirname "$0")/.."

url=${CIFAR10_URL:-https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz}
md5=c32a1d4ab5d03f1284b67883e8d87530
dest=${DEST:-data}
archive=$dest/cifar-10-binary.tar.gz
mkdir -p "$dest"
if [[ -f $dest/cifar-10-batches-bin/test_batch.bin ]]; then
  echo "$dest/cifar-10-batches-bin already present"
  exit 0
fi
# Whether $1 has the release's MD5; says what it has when not.
check() {
  local got
  got=$(md5sum <"$1" | cut -d' ' -f1)
  [[ $got == "$md5" ]] && return
  echo "$archive is damaged (MD5 mismatch: $got, expected $md5)" >&2
  return 1
}

if [[ -f $archive ]]; then
  # Placed by hand or left by an older version of this script: kept, under a name of its own.
  if ! check "$archive"; then
    bad=$(mktemp "$archive.damaged.XXXXXX")
    mv -f "$archive" "$bad"
    echo "moved it to $bad; run again to download it afresh" >&2
    exit 1
  fi
else
  fetch=(curl -fL --retry 2 -o "$archive.part" "$url")
  command -v curl >/dev/null || fetch=(wget -O "$archive.part" "$url")
  if ! "${fetch[@]}"; then
    rm -f "$archive.part"
    cat >&2 <<MSG
could not download $url (offline?).
Place the files by hand: download cifar-10-binary.tar.gz on a connected machine, copy it to
$archive and run this script again; or extract it so that $dest/cifar-10-batches-bin/ holds
data_batch_1.bin ... data_batch_5.bin and test_batch.bin.
MSG
    exit 1
  fi
  if ! check "$archive.part"; then
    rm -f "$archive.part"
    echo "deleted the download from $url; run again to download it afresh" >&2
    echo "(CIFAR10_URL names another mirror)" >&2
    exit 1
  fi
  mv "$archive.part" "$archive"
fi
tar xzf "$archive" -C "$dest"
echo "CIFAR-10 ready in $dest/cifar-10-batches-bin"
