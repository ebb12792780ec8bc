#!/bin/bash
# Label-free continual learning on a test source: the built-in autoencoder learns to reconstruct
# the video and its per-frame reconstruction loss is an anomaly score: it falls as the network
# learns what the scene (a moving ball) looks like, and would jump at anything it has not seen.
#
#   ./pipelines/anomaly-testsrc.sh            (PARTIMENET_BUILD=build for an uninstalled build)
#   NUM_BUFFERS=600 ./pipelines/anomaly-testsrc.sh
set -euo pipefail
. "$(dirname "$0")/_common.sh"

num_buffers=${NUM_BUFFERS:-300}
interval=${MESSAGE_INTERVAL:-10}

gst-launch-1.0 -m \
  videotestsrc pattern=ball num-buffers="$num_buffers" ! \
  video/x-raw,width=160,height=120,framerate=30/1 ! \
  partimenet model=builtin:autoencoder optimizer=adam learning-rate=0.001 \
    post-messages=true message-interval="$interval" ! \
  fakesink |
  sed -n -e 's/.*partimenet, frame=(guint64)\([0-9]*\).*loss=(double)\([^,]*\),.*/frame \1: anomaly score \2/p' \
         -e 's/^Got EOS.*/end of stream/p'
