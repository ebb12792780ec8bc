#!/bin/bash
# Builds the libFuzzer targets (clang, ASan + UBSan) and runs each for SECONDS.
#
# Usage: tests/fuzz/run.sh BUILD_DIR SECONDS
#
# The ONNX corpus is seeded from the ONNX conformance models (Debian libonnx-testdata), the .npy
# corpus from arrays numpy writes, and both from the regression inputs. A crash, leak, timeout or
# out-of-memory fails the run, and the input that caused it is copied to
# tests/fuzz/regressions/, where the fuzz-regressions test of the normal suite replays it through
# both parsers. The last line is "N passed, N failed" (one per target).
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 BUILD_DIR SECONDS" >&2
  exit 2
fi
build=$1
seconds=$2
src=$(cd "$(dirname "$0")/../.." && pwd)
testdata=${PT_ONNX_TESTDATA:-/usr/share/libonnx-testdata/data}

# The library is instrumented for coverage (fuzzer-no-link); the targets link libFuzzer.
if { [ -f "$build/build.ninja" ] ||
  CC=clang meson setup "$build" "$src" -Dfuzz=true -Dtests=disabled -Dgst=disabled \
    -Dcuda=disabled -Db_sanitize=address,undefined -Db_lundef=false \
    -Dc_args="-fsanitize=fuzzer-no-link -fno-sanitize-recover=all"; } &&
  ninja -C "$build" tests/fuzz/fuzz_onnx tests/fuzz/fuzz_npy; then
  :
else
  echo "fuzz: the fuzz build failed"
  echo "0 passed, 1 failed"
  exit 1
fi

work=$build/fuzz-work
rm -rf "$work/seeds" "$work/artifacts"
mkdir -p "$work/seeds/onnx" "$work/seeds/npy" "$work/corpus/onnx" "$work/corpus/npy" \
  "$work/artifacts"

# ONNX seeds: every small conformance model (the node tests are a few hundred bytes each).
n=0
for m in "$testdata"/node/*/model.onnx "$testdata"/pytorch-converted/*/model.onnx \
  "$testdata"/simple/*/model.onnx; do
  [ -f "$m" ] || continue
  [ "$(stat -c %s "$m")" -le 65536 ] || continue
  cp "$m" "$work/seeds/onnx/$(basename "$(dirname "$m")").onnx"
  n=$((n + 1))
done
echo "fuzz: $n ONNX seeds from $testdata"

# .npy seeds: what numpy writes, in every version and dtype the reader accepts.
python=/usr/bin/python3
[ -x "$python" ] || python=python3
"$python" - "$work/seeds/npy" <<'PY'
import sys
import numpy as np
from numpy.lib import format as fmt
out = sys.argv[1]
arrays = {
    "f4": np.arange(12, dtype="<f4").reshape(3, 4), "f8": np.ones((2, 1, 3)),
    "i8": np.arange(5, dtype="<i8"), "i4": np.array(7, dtype="<i4"),
    "u1": np.zeros((2, 2, 3), dtype=np.uint8), "empty": np.zeros((0, 4), dtype="<f4"),
}
for name, a in arrays.items():
    for v in [(1, 0), (2, 0), (3, 0)]:
        with open(f"{out}/{name}_v{v[0]}.npy", "wb") as f:
            fmt.write_array(f, a, version=v)
PY
# Every known regression seeds both fuzzers, so one that is not fixed yet fails the run at once.
for r in "$src"/tests/fuzz/regressions/*; do
  [ "$(basename "$r")" = README ] && continue
  cp "$r" "$work/seeds/npy/"
  cp "$r" "$work/seeds/onnx/"
done

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
passed=0
failed=0
for target in onnx npy; do
  echo "fuzz: fuzz_$target for ${seconds}s"
  rc=0
  "$build/tests/fuzz/fuzz_$target" "$work/corpus/$target" "$work/seeds/$target" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -print_final_stats=1 -artifact_prefix="$work/artifacts/$target-" \
    >"$work/fuzz_$target.log" 2>&1 || rc=$?
  tail -n 25 "$work/fuzz_$target.log"
  found=0
  for a in "$work"/artifacts/"$target"-*; do
    [ -f "$a" ] || continue
    name=$(basename "$a")
    kind=${name#"$target"-}
    kind=${kind%%-*}
    dest="$src/tests/fuzz/regressions/$target-$kind-$(sha1sum "$a" | cut -c1-12)"
    cp "$a" "$dest"
    echo "fuzz: fuzz_$target found a $kind: saved as $dest"
    found=1
  done
  if [ $rc -eq 0 ] && [ $found -eq 0 ]; then
    passed=$((passed + 1))
  else
    echo "fuzz: fuzz_$target FAILED (exit $rc)"
    failed=$((failed + 1))
  fi
done
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
