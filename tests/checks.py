"""Pass/fail counting for the Python test scripts: check() prints FAIL and what was wrong, and
summary() prints the closing "N passed, N failed" line that scripts/test_summary.py reads and
returns the script's exit status."""
passed = 0
failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}", flush=True)
    return ok


def summary():
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0
