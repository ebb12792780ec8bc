#!/bin/bash
# On a machine with NVIDIA GPUs: builds the real CUDA backend (-Dcuda=enabled, warnings as errors),
# runs the cuda test suite, where no test may skip, and benchmarks GPU stages against CPU stages
# with `partime bench`. Prints everything and writes it to BUILD_DIR/gpu-check.txt.
#
# Usage: scripts/gpu-check.sh [BUILD_DIR]     (default build-gpu)
#   CUDA_ROOT (default /usr/local/cuda) says where the toolkit, cuDNN, cuBLAS and NCCL live.
set -euo pipefail
cd "$(dirname "$0")/.."

build=${1:-build-gpu}
cuda_root=${CUDA_ROOT:-/usr/local/cuda}
scripts/deps.sh

setup=(meson setup)
[ -d "$build/meson-private" ] && setup+=(--reconfigure)
"${setup[@]}" "$build" -Dcuda=enabled -Dcuda-root="$cuda_root" -Dwerror=true
ninja -C "$build"

out="$build/gpu-check.txt"
exec > >(tee "$out") 2>&1

echo "=== GPUs"
nvidia-smi -L || true
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)

echo "=== cuda test suite"
rm -f "$build/meson-logs/testlog.json"
status=0
meson test -C "$build" --suite cuda --print-errorlogs || status=1
# on a GPU machine a skip means the device was not usable: count it as a failure
if grep -q '"result": "SKIP"' "$build/meson-logs/testlog.json"; then
  echo "a cuda test skipped on a machine with GPUs"
  status=1
fi
python3 scripts/test_summary.py "$build" || status=1

echo "=== frames straight from GPU memory (cudaupload ! partimenet devices=cuda:0)"
log=$(mktemp)
if GST_PLUGIN_PATH="$build/gst" GST_DEBUG=partimenet:5 gst-launch-1.0 videotestsrc num-buffers=100 ! \
    video/x-raw,format=BGRx,width=64,height=64 ! cudaupload ! partimenet devices=cuda:0 ! \
    fakesink >"$log" 2>&1 && grep -q "sharing cuda:0's primary context" "$log" &&
    ! grep -q "go through the host" "$log"; then
  echo "zero-copy input: ok"
else
  echo "zero-copy input: FAILED (log follows)"
  tail -n 40 "$log"
  status=1
fi
rm -f "$log"

echo "=== benchmarks (partime bench, 500 frames per configuration)"
models=$(mktemp -d)
trap 'rm -rf "$models"' EXIT
/usr/bin/python3 bench/make_models.py "$models" >/dev/null
devices=(cuda:0)
[ "${gpus:-0}" -ge 2 ] && devices+=(cuda:0,cuda:1)
for model in builtin:classifier "$models/large.onnx" "$models/residual.onnx"; do
  for train in "" --train; do
    "$build/tools/partime" bench "$model" --stages 1,2 --frames 500 $train --devices cpu,cpu
    for d in "${devices[@]}"; do
      "$build/tools/partime" bench "$model" --stages 1,2 --frames 500 $train --devices "$d"
    done
  done
done
echo "figures written to $out"
exit $status
