#!/bin/bash
# Installs the Debian 12 packages partimenet needs to build and test, when any is missing.
# Runs apt-get as root, or through sudo for a normal user. Usage: scripts/deps.sh
set -euo pipefail

packages=(
  meson ninja-build pkg-config gcc clang libclang-rt-14-dev
  protobuf-c-compiler libprotobuf-c-dev libonnx-dev
  libopenblas-dev libdnnl-dev
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  python3 python3-torch python3-onnx python3-numpy python3-gi gir1.2-gstreamer-1.0
  libonnx-testdata check
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null; then
  sudo=(sudo)
else
  echo "deps.sh: missing packages (${missing[*]}) and no sudo to install them" >&2
  exit 1
fi
echo "deps.sh: installing ${missing[*]}"
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
