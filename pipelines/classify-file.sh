#!/bin/bash
# Classification of a video file on two CPU stages, with the top label of every frame on the bus.
# Without CLIP a short Ogg/Theora clip is made first; without LABELS a ten-line labels file.
#
#   CLIP=clip.ogv MODEL=net.onnx LABELS=labels.txt ./pipelines/classify-file.sh
set -euo pipefail
. "$(dirname "$0")/_common.sh"

num_buffers=${NUM_BUFFERS:-120}
model=${MODEL:-builtin:classifier}
clip=${CLIP:-}
labels=${LABELS:-}

if [ -z "$clip" ]; then
  clip="$pt_tmp/clip.ogv"
  gst-launch-1.0 -q videotestsrc pattern=smpte num-buffers="$num_buffers" ! \
    video/x-raw,width=320,height=240,framerate=30/1 ! theoraenc ! oggmux ! \
    filesink location="$clip"
fi
if [ -z "$labels" ]; then
  labels="$pt_tmp/labels.txt"
  printf '%s\n' airplane automobile bird cat deer dog frog horse ship truck > "$labels"
fi

gst-launch-1.0 -m \
  filesrc location="$clip" ! decodebin ! videoconvert ! \
  partimenet model="$model" labels="$labels" devices=cpu,cpu post-messages=true ! \
  fakesink |
  sed -n -e 's/.*partimenet, frame=(guint64)\([0-9]*\).*scores=(double){ \([^,]*\),.*labels=(string){ \([^,]*\),.*/frame \1: \3 (\2)/p' \
         -e 's/.*partimenet-model, \(.*\)/model: \1/p' \
         -e 's/^Got EOS.*/end of stream/p'
