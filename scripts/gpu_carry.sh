#!/usr/bin/env bash
# Fills .carry/ (ignored by git) with what the workplace's lent GPU lacks, for the device tool's
# `carry: [".carry"]`: the Debian packages the build needs (Catch2, stb, oneDNN, zlib and libjpeg
# headers), OpenMPI's packages with the libraries and plugins it loads (so that the distributed
# tests run there: mpirun -np 1 with NCCL, -np 2 on the CPU), and the CIFAR-10 JPEG archive
# (CIFAR10_TARBALL, default ../shared/data/cifar10-jpeg.tar.gz; none when the file is absent).
# About 30 MB. On the device, scripts/gpu_check.sh with DEPS_PREFIX (see its header) uses them.
set -euo pipefail
cd "$(dirname "$0")/.."

build_debs=(catch2 libstb-dev libstb0 libdnnl-dev libdnnl2 ocl-icd-libopencl1 zlib1g-dev
  libjpeg62-turbo-dev libjpeg62-turbo)
# libopenmpi3's run-time closure beyond glibc, libstdc++ and zlib (measured with the system's
# copies hidden: mpirun -np 2 runs from the unpacked prefix with these alone).
mpi_debs=(openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libhwloc15
  libhwloc-plugins libevent-core-2.1-7 libevent-pthreads-2.1-7 libfabric1 libucx0 libibverbs1
  librdmacm1 libnl-3-200 libnl-route-3-200 libpsm2-2 libpsm-infinipath1 libnuma1 libltdl7
  libmunge2 libpciaccess0 libxnvctrl0)

mkdir -p .carry
rm -f .carry/*.deb
(cd .carry && apt-get download "${build_debs[@]}" "${mpi_debs[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed')
tarball=${CIFAR10_TARBALL:-../shared/data/cifar10-jpeg.tar.gz}
if [[ -f $tarball ]]; then
  cp "$tarball" .carry/cifar10-jpeg.tar.gz
else
  echo "gpu_carry: no CIFAR-10 archive at $tarball: the device run trains nothing (DATA unset)" >&2
fi
echo "gpu_carry: .carry holds $(du -sh .carry | cut -f1) (the device tool carries at most 64 MiB)"
