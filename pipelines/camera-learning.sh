#!/bin/bash
# Continual learning from a live camera: the autoencoder learns the scene and reports every
# frame's anomaly score; its weights are checkpointed every 300 frames and when the pipeline
# stops, and resumed at the next start. Frames that arrive while the network is late are passed
# on without results (overload=drop) so the camera never stalls.
#
#   ./pipelines/camera-learning.sh                      (v4l2src on /dev/video0)
#   DEVICE=/dev/video2 ./pipelines/camera-learning.sh
#   SOURCE="videotestsrc is-live=true" ./pipelines/camera-learning.sh
#   CHECKPOINT=~/scene.onnx SINK=autovideosink ./pipelines/camera-learning.sh
set -euo pipefail
. "$(dirname "$0")/_common.sh"

source=${SOURCE:-v4l2src device=${DEVICE:-/dev/video0}}
sink=${SINK:-fakesink}
checkpoint=${CHECKPOINT:-${XDG_CACHE_HOME:-$HOME/.cache}/partimenet/camera.onnx}
mkdir -p "$(dirname "$checkpoint")"
if [ -n "${NUM_BUFFERS:-}" ]; then
  source="$source num-buffers=$NUM_BUFFERS"
fi

# shellcheck disable=SC2086 # SOURCE and SINK are pipeline fragments
gst-launch-1.0 -e -m \
  $source ! videoconvert ! videoscale ! video/x-raw,width=320,height=240 ! \
  partimenet model=builtin:autoencoder optimizer=adam learning-rate=0.001 overload=drop \
    checkpoint="$checkpoint" checkpoint-interval=300 \
    post-messages=true message-interval=${MESSAGE_INTERVAL:-30} ! \
  videoconvert ! $sink |
  sed -n -e 's/.*partimenet, frame=(guint64)\([0-9]*\).*loss=(double)\([^,]*\),.*step=(gint64)\([0-9]*\).*/frame \1: anomaly score \2 (update \3)/p' \
         -e 's/^Got EOS.*/end of stream/p'
echo "weights saved in $checkpoint"
