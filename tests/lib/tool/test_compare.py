#!/usr/bin/python3
"""Smoke test of bench/compare.py, the side-by-side benchmark: it runs end to end on the build
tree and its report has the rows and goal lines it promises. It asserts no speed.

Usage: test_compare.py SOURCE_ROOT BUILD_ROOT

Runs `compare.py --quick --models small,residual --no-install` (20 frames, one round; nothing
installed from PyPI, so onnxruntime and the chart appear only where they are importable
already) and checks the CSV and the goals block. Prints "N passed, N failed"."""
import csv
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from checks import check, summary  # noqa: E402


def main():
    src, build = (os.path.abspath(p) for p in sys.argv[1:3])
    with tempfile.TemporaryDirectory(prefix="pt-compare-") as tmp:
        out_csv = os.path.join(tmp, "c.csv")
        cmd = [sys.executable, os.path.join(src, "bench", "compare.py"), "--build", build,
               "--quick", "--models", "small,residual", "--no-install", "--csv", out_csv,
               "--plot", os.path.join(tmp, "c.png")]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        text = r.stdout + r.stderr
        check(r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{text[-3000:]}")
        if r.returncode != 0:
            return summary()
        with open(out_csv, newline="") as f:
            rows = list(csv.DictReader(f))

    def find(model, mode, contender, n, devices=""):
        return [x for x in rows if x["model"] == model and x["mode"] == mode
                and x["contender"] == contender and x["threads_stages"] == str(n)
                and x["devices"] == devices]

    for model in ("small", "residual"):
        for mode in ("inference", "training"):
            for contender, n, devices in (("pytorch", 1, ""), ("pytorch", 2, ""),
                                          ("partime", 1, ""), ("partime", 2, ""),
                                          ("partime", 2, "cpu,cpu"), ("independent", 2, "")):
                got = find(model, mode, contender, n, devices)
                check(len(got) == 1 and float(got[0]["fps"]) > 0,
                      f"{model} {mode}: one {contender} {n} {devices} row with frames/s: {got}")
            two, ind = find(model, mode, "partime", 2), find(model, mode, "independent", 2)
            if two and ind:
                check(float(two[0]["vs_one_stage"]) > 0 and float(ind[0]["vs_one_stage"]) > 0,
                      f"{model} {mode}: two stages and the ceiling against one stage:"
                      f" {two[0]['vs_one_stage']!r}, {ind[0]['vs_one_stage']!r}")

    goals = text[text.find("\ngoals\n"):]
    check("\ngoals\n" in text, "a goals block")
    check("small inference: partime" in goals and "vs pytorch" in goals
          and "round by round: median" in goals, f"peer goal lines: {goals!r}")
    for mode in ("inference", "training"):
        check(f"residual {mode}: partime 2 stages" in goals,
              f"residual {mode}: the two-stage goal line")
    check(goals.count("the two cores' ceiling, 2 independent 1-stage streams at once") == 2
          and goals.count("2 stages reach median") == 2,
          f"a ceiling line after each two-stage goal: {goals!r}")
    # onnxruntime: measured when importable, otherwise said to be skipped
    ort_rows = [x for x in rows if x["contender"] == "onnxruntime"]
    check(bool(ort_rows) or "onnxruntime: unavailable" in text,
          "onnxruntime rows, or a line saying why it was skipped")
    # the element: measured when the plugin and a way to time it exist, otherwise said why not
    el_rows = [x for x in rows if x["contender"] == "partimenet"]
    check(bool(el_rows) or "partimenet element: unavailable" in text,
          "element rows, or a line saying why it was skipped")
    for x in el_rows:
        check(float(x["fps"]) > 0 and float(x["vs_tool"]) > 0, f"element row: {x}")
    return summary()


if __name__ == "__main__":
    sys.exit(main())
