#!/usr/bin/env bash
# The main job: train ConvMixer-256/8 on CIFAR-10 with the recipe's defaults (--device auto: the
# GPU when the build found CUDA and cuDNN and a GPU is present, else the CPU). Extra arguments go
# to the trainer (see `train --help`), e.g. scripts/train.sh --epochs 5 --subset 2000, or
# --precision bf16 on a GPU. --help (-h) prints this script's usage and the trainer's flags only.
# Data: $DATA, else data/cifar-10-batches-bin (scripts/get_cifar10.sh), else data/cifar10
# (image folders), else this workplace's ../shared/data/cifar10-jpeg.tar.gz extracted into data/.
set -euo pipefail
cd "$(dirname "$0")/.."

tarball=../shared/data/cifar10-jpeg.tar.gz
cache=data/cache

# Sets data to the data set to train on ("" when none is found) and extract to the tarball to
# unpack into data/ first ("" when none). Only looks: extracts nothing.
find_data() {
  data=${DATA:-} extract=
  if [[ -n $data ]]; then
    :
  elif [[ -d data/cifar-10-batches-bin ]]; then
    data=data/cifar-10-batches-bin
  elif [[ -d data/cifar10/train ]]; then
    data=data/cifar10
  elif [[ -f $tarball ]]; then
    data=data/cifar10 extract=$tarball
  fi
}

usage() {
  find_data
  local now=$data
  if [[ -z $now ]]; then
    now="none: run scripts/get_cifar10.sh or set DATA"
  elif [[ -n $extract ]]; then
    now+=" (extracted from $extract on the first run)"
  elif [[ ! -e $now ]]; then
    now+=" (does not exist)"
  fi
  cat <<USAGE
usage: [DATA=<data set>] scripts/train.sh [trainer flags]

Trains ConvMixer-256/8 on CIFAR-10 with the recipe's defaults (--device auto: the GPU when the
build has CUDA and cuDNN and a GPU is present, else the CPU). It installs missing packages
(scripts/setup.sh), builds build/examples/train, finds the data and runs

  build/examples/train --data <data set> --cache-dir $cache [trainer flags]

The data set is the first of:
  \$DATA                      a CIFAR-10 binary folder, an image-folder root
                             (<root>/{train,test}/<class>/*.png|jpg) or MNIST-style IDX files
  data/cifar-10-batches-bin  written by scripts/get_cifar10.sh
  data/cifar10               image folders (data/cifar10/train/<class>/...)
  $tarball  extracted into data/cifar10 on the first run
Here and now: $now

The decoded set is cached in $cache and reused while its source files are unchanged. Trainer
flags come after the two above and override them (--cache-dir '' turns the cache off). The script
runs from the repository's root: relative paths (DATA, --resume, --checkpoint-dir) are read from
there.
Recipes: --recipe convmixer-cifar10 (the default) or --recipe labml; the trainer's --help
says what each sets.
Example: scripts/train.sh --epochs 5 --subset 2000
USAGE
}

for arg in "$@"; do
  [[ $arg == -- ]] && break
  if [[ $arg == --help || $arg == -h ]]; then
    usage
    echo
    if [[ -x build/examples/train ]]; then
      echo "The trainer's flags (its own defaults; this script sets --data and --cache-dir):"
      echo
      exec build/examples/train --help
    fi
    echo "The trainer's flags: build/examples/train --help, once built (by this script's first run,"
    echo "or: scripts/setup.sh; cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release;"
    echo "cmake --build build --target train)."
    exit 0
  fi
done

scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target train predict -j "$(nproc)"

find_data
if [[ -z $data ]]; then
  echo "no CIFAR-10 found. Run scripts/get_cifar10.sh (downloads the official binary set into" >&2
  echo "data/), or point DATA at a cifar-10-batches-bin folder or an image-folder root." >&2
  exit 1
fi
if [[ -n $extract ]]; then
  echo "extracting $extract into data/ (ignored by git)"
  mkdir -p data && tar xzf "$extract" -C data
fi
exec build/examples/train --data "$data" --cache-dir "$cache" "$@"
