#!/usr/bin/python3
"""Counts the tests of meson test runs from their JSON logs.

Usage: test_summary.py BUILD_DIR|LOG.json...   A build directory stands for its
meson-logs/testlog.json (a run with --wrapper or --setup writes testlog-NAME.json instead: pass
that file). Prints the failing and skipped tests, then, as its last
line, "N passed, N failed" (every test counts once; a skip is neither). Exits 1 on a failure or
when a directory has no test log."""
import json
import os
import sys

PASS = {"OK", "EXPECTEDFAIL"}
SKIP = {"SKIP"}

passed = failed = 0
for build in sys.argv[1:]:
    log = build if build.endswith(".json") else os.path.join(build, "meson-logs", "testlog.json")
    if not os.path.exists(log):
        print(f"{build}: no test log (the build or the test run did not happen)")
        failed += 1
        continue
    with open(log) as f:
        for line in f:
            if not line.strip():
                continue
            t = json.loads(line)
            res = t.get("result", "ERROR")
            if res in PASS:
                passed += 1
            elif res in SKIP:
                print(f"{build}: skipped: {t.get('name')}")
            else:
                failed += 1
                print(f"{build}: {res}: {t.get('name')}")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
