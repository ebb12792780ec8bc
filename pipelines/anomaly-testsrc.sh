#!/bin/bash
# Label-free continual learning on a test source: the built-in autoencoder learns to reconstruct
# the video and its per-frame reconstruction loss is an anomaly score: it falls as the network
# learns what the scene (a moving ball) looks like, and would jump at anything it has not seen.
#
#   PARTIMENET_BUILD=build ./pipelines/anomaly-testsrc.sh      (uninstalled: the meson build dir)
#   cd build && ../pipelines/anomaly-testsrc.sh                (the same, from the build dir)
#   ./pipelines/anomaly-testsrc.sh                             (installed plugin)
#   NUM_BUFFERS=600 MESSAGE_INTERVAL=1 ./pipelines/anomaly-testsrc.sh
set -euo pipefail
. "$(dirname "$0")/_common.sh"

num_buffers=${NUM_BUFFERS:-300}
interval=${MESSAGE_INTERVAL:-10}

echo "A moving ball, $num_buffers frames at 160x120; the built-in autoencoder learns it on every frame."
echo "Score of every ${interval}th frame (its reconstruction loss: high = unfamiliar):"
gst-launch-1.0 -m \
  videotestsrc pattern=ball num-buffers="$num_buffers" ! \
  video/x-raw,width=160,height=120,framerate=30/1 ! \
  partimenet model=builtin:autoencoder optimizer=adam learning-rate=0.001 \
    post-messages=true message-interval="$interval" ! \
  fakesink |
  awk '
    # the value of field `name` in a message line: " name=(type)value," (or ";" at the end)
    function field(s, name,   i, v) {
      i = index(s, " " name "=(")
      if (!i) return ""
      v = substr(s, i + length(name) + 3)
      v = substr(v, index(v, ")") + 1)
      sub(/[,;].*$/, "", v)
      return v
    }
    function num(v) { return v ~ /^-?[0-9]/ }
    / partimenet-model, / {
      printf "model %s: input %s, output %s, %s stage(s), loss %s, %s parameters\n",
        field($0, "model"), field($0, "input-shape"), field($0, "output-shape"),
        field($0, "stages"), field($0, "loss"), field($0, "parameters")
      next
    }
    / partimenet, frame=/ {
      f = field($0, "frame"); l = field($0, "loss"); t = field($0, "timestamp")
      if (num(l)) { if (first == "") first = l; last = l; score = sprintf("%.5f", l) }
      else score = "-"
      printf "frame %5d  %7.3f s  anomaly score %s  (update %s)\n", f, t / 1e9, score,
        field($0, "step")
      fflush()
      next
    }
    /^Got EOS/ {
      print "end of stream"
      if (first != "")
        printf "anomaly score %.5f at the first frame, %.5f at the last reported one\n",
          first, last
    }
  '
