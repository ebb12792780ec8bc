#!/bin/bash
# The main job: installs what is missing, builds, and streams a synthetic clip through the
# built-in autoencoder with learning on, printing how the reconstruction loss falls.
# Usage: scripts/demo.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}

scripts/deps.sh
if [ ! -d "$build/meson-private" ]; then
  meson setup "$build"
fi
ninja -C "$build"
"$build/tools/partime" run builtin:autoencoder --synthetic 300 --train --optimizer adam
