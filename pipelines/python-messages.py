#!/usr/bin/python3
"""Reads the partimenet element's results from bus messages with PyGObject, no C needed.

    PARTIMENET_BUILD=build ./pipelines/python-messages.py [NUM_BUFFERS]

Needs python3-gi and gir1.2-gstreamer-1.0 (Debian). The element posts a "partimenet" element
message per frame (post-messages=true); the top-k lists are GstValueList fields, read here with
Gst.Structure.get_list() so that the python3-gst-1.0 overrides are not required.
"""
import math
import os
import sys
import warnings

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402


def values(structure, field):
    """A list field as a Python list."""
    ok, array = structure.get_list(field)
    if not ok:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [array.get_nth(i) for i in range(array.n_values)]


def main():
    build = os.environ.get("PARTIMENET_BUILD")
    if build:
        path = os.path.join(os.path.abspath(build), "gst")
        var = "GST_PLUGIN_PATH_1_0" if os.environ.get("GST_PLUGIN_PATH_1_0") else "GST_PLUGIN_PATH"
        os.environ[var] = path + os.pathsep + os.environ.get(var, "")
    Gst.init(None)
    if Gst.ElementFactory.find("partimenet") is None:
        sys.stderr.write("the partimenet element is not installed; set PARTIMENET_BUILD\n")
        return 1

    n = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("NUM_BUFFERS", "100"))
    pipeline = Gst.parse_launch(
        f"videotestsrc pattern=snow num-buffers={n} ! "
        "partimenet model=builtin:classifier stages=2 post-messages=true top-k=3 ! fakesink")
    loop = GLib.MainLoop()
    seen = {"results": 0, "error": None}

    def on_message(_bus, msg):
        if msg.type == Gst.MessageType.ELEMENT:
            s = msg.get_structure()
            if s.has_name("partimenet-model"):
                print(f"model {s.get_string('model')}: {s.get_int('stages')[1]} stages, "
                      f"input {s.get_string('input-shape')}")
            elif s.has_name("partimenet"):
                seen["results"] += 1
                frame = s.get_uint64("frame")[1]
                loss = s.get_double("loss")[1]
                classes = values(s, "classes")
                scores = values(s, "scores")
                best = ", ".join(f"{c}:{p:.3f}" for c, p in zip(classes, scores))
                loss_s = "-" if math.isnan(loss) else f"{loss:.4f}"
                print(f"frame {frame}: top {best}  loss {loss_s}")
        elif msg.type == Gst.MessageType.ERROR:
            err, _dbg = msg.parse_error()
            seen["error"] = err.message
            loop.quit()
        elif msg.type == Gst.MessageType.EOS:
            loop.quit()
        return True

    bus = pipeline.get_bus()
    bus.add_watch(GLib.PRIORITY_DEFAULT, on_message)
    pipeline.set_state(Gst.State.PLAYING)
    try:
        loop.run()
    finally:
        pipeline.set_state(Gst.State.NULL)
        bus.remove_watch()
    if seen["error"]:
        sys.stderr.write(f"error: {seen['error']}\n")
        return 1
    print(f"end of stream: {seen['results']} results")
    return 0 if seen["results"] == n else 1


if __name__ == "__main__":
    sys.exit(main())
