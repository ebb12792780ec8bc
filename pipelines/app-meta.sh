#!/bin/bash
# Runs the C example pipelines/app-meta.c: it teaches the built-in classifier which of three
# test patterns it sees, attaching the class to each input frame as a GstPartimenetTargetMeta,
# and reads the results back from the GstPartimenetMeta on the output frames.
#
# Build it with meson (it is the app-meta target), or by hand:
#   cc pipelines/app-meta.c -o app-meta $(pkg-config --cflags --libs gstreamer-partimenet-1.0)
set -euo pipefail
. "$(dirname "$0")/_common.sh"

app=${PARTIMENET_APP_META:-}
if [ -z "$app" ] && [ -n "${PARTIMENET_BUILD:-}" ]; then
  app="$PARTIMENET_BUILD/tests/check/app-meta"
fi
app=${app:-app-meta}
"$app" "${NUM_BUFFERS:-300}"
