#!/bin/bash
# The network cut into two stages on two CPU cores, a pipeline over time: each frame leaves one
# frame later, and the two halves run at the same time on consecutive frames. The first message
# shows where the cut fell; the element adds one frame to the pipeline latency.
#
#   ./pipelines/two-stage-cpu.sh
set -euo pipefail
. "$(dirname "$0")/_common.sh"

num_buffers=${NUM_BUFFERS:-300}

gst-launch-1.0 -m \
  videotestsrc num-buffers="$num_buffers" ! video/x-raw,width=64,height=64,framerate=30/1 ! \
  partimenet stages=2 devices=cpu,cpu balance=auto post-messages=true \
    message-interval=${MESSAGE_INTERVAL:-50} ! \
  fakesink |
  sed -n -e 's/.*partimenet-model, \(.*\)/model: \1/p' \
         -e 's/.*partimenet, frame=(guint64)\([0-9]*\).*loss=(double)\([^,]*\),.*stages=(int)\([0-9]*\), latency=(guint64)\([0-9]*\).*/frame \1: loss \2, \3 stages, \4 ns added latency/p' \
         -e 's/^Got EOS.*/end of stream/p'
