# Shared setup of the example pipelines: sourced by them, not run on its own.
#
#   PARTIMENET_BUILD=DIR  use the plugin of the meson build in DIR instead of an installed one
#                         (run from inside a build dir, that build is used without it)
#   NUM_BUFFERS=N         stop after N frames (the tests use a small number)

if [ -z "${PARTIMENET_BUILD:-}" ] && [ -f build.ninja ] && [ -f gst/libgstpartimenet.so ]; then
  PARTIMENET_BUILD=.
fi
if [ -n "${PARTIMENET_BUILD:-}" ]; then
  if [ ! -f "$PARTIMENET_BUILD/gst/libgstpartimenet.so" ]; then
    echo "$0: no plugin in $PARTIMENET_BUILD/gst: build it first (ninja -C $PARTIMENET_BUILD)" >&2
    exit 1
  fi
  pt_build=$(cd "$PARTIMENET_BUILD" && pwd)
  # GST_PLUGIN_PATH_1_0 wins over GST_PLUGIN_PATH when set: extend whichever is in use
  if [ -n "${GST_PLUGIN_PATH_1_0:-}" ]; then
    export GST_PLUGIN_PATH_1_0="$pt_build/gst:$GST_PLUGIN_PATH_1_0"
  else
    export GST_PLUGIN_PATH="$pt_build/gst${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
  fi
fi

if ! gst-inspect-1.0 partimenet >/dev/null 2>&1; then
  echo "$0: the partimenet element is not installed; run with PARTIMENET_BUILD=<meson build dir>" >&2
  exit 1
fi

# A scratch directory removed on exit.
pt_tmp=$(mktemp -d "${TMPDIR:-/tmp}/partimenet-XXXXXX")
trap 'rm -rf "$pt_tmp"' EXIT
