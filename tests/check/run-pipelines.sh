#!/bin/bash
# Runs every example in the given pipelines/ directory to end of stream with a few frames each.
# Files starting with "_" are shared helpers and C files are sources, not examples. The camera
# example runs on a test source; it also runs on the real camera when /dev/video0 exists.
set -uo pipefail

dir=${1:?usage: run-pipelines.sh PIPELINES_DIR}
export NUM_BUFFERS=${NUM_BUFFERS:-20}
export MESSAGE_INTERVAL=5
scratch=$(mktemp -d "${TMPDIR:-/tmp}/partimenet-pipelines-XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# nothing written to the user's cache
export XDG_CACHE_HOME="$scratch/cache"
failed=0
ran=0

run() {
  local name=$1
  shift
  local log="$scratch/$(basename "$name").log"
  echo "=== $name"
  if timeout 120 "$@" >"$log" 2>&1 && grep -q "end of stream" "$log"; then
    tail -n 3 "$log"
    echo "--- ok"
  else
    cat "$log"
    echo "--- FAILED: $name"
    failed=$((failed + 1))
  fi
  ran=$((ran + 1))
}

for f in "$dir"/*; do
  base=$(basename "$f")
  case "$base" in
    _*|*.c|*.h|*.txt|*.md) continue ;;
  esac
  case "$base" in
    *.py) run "$base" "${PYTHON3:-/usr/bin/python3}" "$f" ;;
    camera-*)
      SOURCE="videotestsrc is-live=true" CHECKPOINT="$scratch/camera.onnx" \
        run "$base (videotestsrc)" bash "$f"
      # a restart resumes from the checkpoint the first run left
      if [ -f "$scratch/camera.onnx" ]; then
        SOURCE="videotestsrc is-live=true" CHECKPOINT="$scratch/camera.onnx" \
          run "$base (videotestsrc, resumed)" bash "$f"
      else
        echo "--- FAILED: $base left no checkpoint"
        failed=$((failed + 1))
      fi
      if [ -e /dev/video0 ]; then
        CHECKPOINT="$scratch/camera-real.onnx" run "$base (/dev/video0)" bash "$f"
      else
        echo "=== $base (/dev/video0): skipped, no camera"
      fi
      ;;
    *) run "$base" bash "$f" ;;
  esac
done

echo "$ran runs, $failed failed"
[ "$ran" -gt 0 ] && [ "$failed" -eq 0 ]
