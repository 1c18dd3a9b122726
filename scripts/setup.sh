#!/usr/bin/env bash
# Installs the build and test dependencies from the platform's packages (Debian/Ubuntu).
# Idempotent: installs only what is missing and says what it installs.
#   --test-extras  also what the PyTorch-reference and plotting tests need (python3-torch,
#                  python3-matplotlib, python3-pil: about 200 MB to download, 900 MB installed);
#                  without it those tests report "skipped". Other arguments: more packages.
set -euo pipefail

packages=(build-essential cmake ninja-build catch2 libstb-dev libdnnl-dev zlib1g-dev libjpeg-dev
          libopenmpi-dev openmpi-bin)
for arg in "$@"; do
  if [[ $arg == --test-extras ]]; then
    packages+=(python3-torch python3-matplotlib python3-pil)
  else
    packages+=("$arg")
  fi
done

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "setup: this script needs a Debian/Ubuntu system (apt, dpkg). Install by hand:" >&2
  echo "  ${packages[*]}" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup: all dependencies present (${packages[*]})"
  exit 0
fi

echo "setup: installing ${missing[*]}"
if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "setup: missing packages and no root or sudo to install them. Run as root:" >&2
  echo "  apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; then
  echo "setup: apt-get install failed; refreshing the package lists and retrying" >&2
  "${sudo[@]}" apt-get update
  "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi
