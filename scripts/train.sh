#!/usr/bin/env bash
# The main job: train ConvMixer-256/8 on CIFAR-10 with the recipe's defaults (--device auto: the
# GPU when the build found CUDA and cuDNN and a GPU is present, else the CPU). Extra arguments go
# to the trainer (see `train --help`), e.g. scripts/train.sh --epochs 5 --subset 2000, or
# --precision bf16 on a GPU.
# Data: $DATA, else data/cifar-10-batches-bin (scripts/get_cifar10.sh), else data/cifar10
# (image folders), else this workplace's ../shared/data/cifar10-jpeg.tar.gz extracted into data/.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target train predict -j "$(nproc)"

data=${DATA:-}
if [[ -z $data ]]; then
  if [[ -d data/cifar-10-batches-bin ]]; then
    data=data/cifar-10-batches-bin
  elif [[ -d data/cifar10/train ]]; then
    data=data/cifar10
  elif [[ -f ../shared/data/cifar10-jpeg.tar.gz ]]; then
    echo "extracting ../shared/data/cifar10-jpeg.tar.gz into data/ (ignored by git)"
    mkdir -p data && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C data
    data=data/cifar10
  else
    echo "no CIFAR-10 found. Run scripts/get_cifar10.sh (downloads the official binary set into" >&2
    echo "data/), or point DATA at a cifar-10-batches-bin folder or an image-folder root." >&2
    exit 1
  fi
fi
exec build/examples/train --data "$data" --cache-dir data/cache "$@"
