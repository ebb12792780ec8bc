#!/bin/bash
# The main job: installs what is missing, builds, and runs a real GStreamer pipeline with the
# partimenet element and its default model (the built-in autoencoder, learning by reconstruction
# on every frame), printing each frame's anomaly score as it falls; then the same clip through
# the partime tool with two pipeline stages.
# Usage: scripts/demo.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}

scripts/deps.sh
if [ ! -d "$build/meson-private" ]; then
  meson setup "$build"
fi
ninja -C "$build"
echo
echo "=== gst-launch-1.0 videotestsrc ! partimenet ! fakesink"
PARTIMENET_BUILD="$build" pipelines/anomaly-testsrc.sh
echo
echo "=== partime run builtin:autoencoder --synthetic 300 --train --stages 2"
"$build/tools/partime" run builtin:autoencoder --synthetic 300 --train --optimizer adam --stages 2
