#!/bin/bash
# Installs what is missing, builds with warnings as errors and runs the whole test suite.
# The last line printed is "N passed, N failed" (tests counted from meson's test log); the exit
# status is non-zero when anything failed.
#
# Usage: scripts/test.sh [BUILD_DIR [MESON_SETUP_OPTION...]]     (BUILD_DIR defaults to "build")
#   e.g. scripts/test.sh build-asan -Db_sanitize=address,undefined -Db_lundef=false
# PT_TEST_ARGS adds arguments to `meson test` (e.g. "--suite tool" or "--no-suite element");
# PT_TEST_TIMEOUT_MULTIPLIER stretches every test's timeout (sanitized builds are slower).
set -euo pipefail
cd "$(dirname "$0")/.."

build=${1:-build}
if [ $# -gt 0 ]; then shift; fi
opts=("$@")
case " ${opts[*]-} " in
  *" -Dwerror="*) ;;
  *) opts+=(-Dwerror=true) ;;
esac

scripts/deps.sh

setup=(meson setup)
[ -d "$build/meson-private" ] && setup+=(--reconfigure)
status=0
if ! "${setup[@]}" "$build" "${opts[@]}"; then
  echo "configuration failed"
  echo "0 passed, 1 failed"
  exit 1
fi
rm -f "$build/meson-logs/testlog.json"
if ninja -C "$build"; then
  # shellcheck disable=SC2086 # PT_TEST_ARGS is a list of words
  meson test -C "$build" --print-errorlogs --num-processes "$(nproc)" \
    ${PT_TEST_TIMEOUT_MULTIPLIER:+--timeout-multiplier "$PT_TEST_TIMEOUT_MULTIPLIER"} \
    ${PT_TEST_ARGS:-} || status=1
  python3 scripts/test_summary.py "$build" || status=1
else
  echo "build failed"
  echo "0 passed, 1 failed"
  status=1
fi
exit $status
