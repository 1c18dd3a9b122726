#!/usr/bin/env bash
# The main job: train ConvMixer-256/8 on CIFAR-10 with the recipe's defaults (--device auto: the
# GPU when the build found CUDA and cuDNN and a GPU is present, else the CPU). Extra arguments go
# to the trainer (see `train --help`), e.g. scripts/train.sh --epochs 5 --subset 2000, or
# --precision bf16 on a GPU. --help (-h) prints this script's usage and the trainer's flags only.
# Data: $DATA, else data/cifar-10-batches-bin (scripts/get_cifar10.sh), else data/cifar10
# (image folders), else this workplace's ../shared/data/cifar10-jpeg.tar.gz extracted into data/.
# GPUS=all (or a number) trains data-parallel on this machine's GPUs, one rank each (mpirun).
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
usage: [DATA=<data set>] [GPUS=all|N] scripts/train.sh [trainer flags]

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

GPUS=all (or a number N) trains data-parallel on all (N) GPUs of this machine, one rank each:

  mpirun --bind-to none --mca odls_base_sigkill_timeout 10 -np <GPUs> build/examples/train \\
    --data <data set> --cache-dir $cache --device cuda [trainer flags]

Ctrl-C then stops every rank after its step, with a checkpoint, about 10 s later (OpenMPI's
SIGTERM comes after that grace, SIGKILL 10 s after it).

--batch stays the global batch, split over the GPUs (the trainer's --help, the README).

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

# GPUS: how many ranks (0: no mpirun), checked before anything is installed or built.
ranks=0
if [[ -n ${GPUS:-} ]]; then
  if [[ $GPUS == all ]]; then
    # The GPUs this process may use: CUDA_VISIBLE_DEVICES's list when set, else nvidia-smi's.
    if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
      IFS=, read -ra visible <<<"$CUDA_VISIBLE_DEVICES"
      ranks=${#visible[@]}
    else
      ranks=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    fi
    if [[ $ranks -eq 0 ]]; then
      echo "GPUS=all: nvidia-smi lists no GPU on this machine" >&2
      exit 1
    fi
  elif [[ $GPUS =~ ^[1-9][0-9]{0,3}$ ]]; then
    ranks=$GPUS
  else
    echo "GPUS must be 'all' or a number of GPUs, got '$GPUS'" >&2
    exit 1
  fi
fi

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
if [[ $ranks -eq 0 ]]; then
  exec build/examples/train --data "$data" --cache-dir "$cache" "$@"
fi
if ! command -v mpirun >/dev/null 2>&1; then
  echo "GPUS=$GPUS needs mpirun (openmpi-bin), which scripts/setup.sh did not find" >&2
  exit 1
fi
# OpenMPI refuses root unless told twice; a user who set GPUS asked for the launch.
if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
echo "training on $ranks GPUs: mpirun -np $ranks build/examples/train ..."
# No binding: each rank's data-loading threads use its share of every core. Ctrl-C reaches mpirun
# alone (each rank has a process group of its own); OpenMPI then sends the ranks SIGTERM after
# odls_base_sigkill_timeout seconds and SIGKILL as long after that. Its default, 1 s, can kill a
# rank before the checkpoint that SIGTERM asks for is written; 10 s covers a step and the write.
exec mpirun --bind-to none --mca odls_base_sigkill_timeout 10 -np "$ranks" build/examples/train \
  --data "$data" --cache-dir "$cache" --device cuda "$@"
