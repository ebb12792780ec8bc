#!/usr/bin/python3
"""numpy reads what pt_npy_save writes, and pt_npy_load reads what numpy writes.

Usage: npy_interop.py NPY_COPY  (the npy_copy program: loads with pt_npy_load, saves with
pt_npy_save). Each array below is written by numpy in several format versions, copied by the
C side, and the copy must load in numpy with the expected dtype, shape and values."""
import os
import subprocess
import sys
import tempfile

import numpy as np
from numpy.lib import format as npformat

copier = sys.argv[1]
rng = np.random.default_rng(3)
cases = {
    "f4_scalar": np.array(3.5, dtype="<f4"),
    "f4_vec": rng.standard_normal(7).astype("<f4"),
    "f4_frames": rng.standard_normal((4, 3, 5, 6)).astype("<f4"),
    "f4_empty": np.zeros((0, 3), dtype="<f4"),
    "f4_specials": np.array([np.inf, -np.inf, -0.0, 1e-45, 3.4e38], dtype="<f4"),
    "f8": rng.standard_normal((2, 9)),
    "i8": np.array([0, -1, 2**62, -(2**63), 9], dtype="<i8"),
    "i4": np.array([[1, -2], [2**31 - 1, -(2**31)]], dtype="<i4"),
    "u1": np.arange(256, dtype=np.uint8).reshape(16, 16),
    "f4_8d": rng.standard_normal((2, 1, 2, 1, 3, 1, 2, 2)).astype("<f4"),
}
failed = 0
passed = 0
with tempfile.TemporaryDirectory() as tmp:
    for name, arr in cases.items():
        for version in [(1, 0), (2, 0), (3, 0)]:
            src = os.path.join(tmp, f"{name}_v{version[0]}.npy")
            dst = os.path.join(tmp, f"{name}_v{version[0]}_copy.npy")
            with open(src, "wb") as f:
                npformat.write_array(f, arr, version=version)
            r = subprocess.run([copier, src, dst], capture_output=True, text=True)
            if r.returncode != 0:
                print(f"FAIL {name} v{version}: npy_copy exited {r.returncode}: {r.stderr}")
                failed += 1
                continue
            # mmap exercises numpy's own header checks (alignment, padding).
            got = np.load(dst, mmap_mode="r")
            want_dtype = np.float32 if arr.dtype.kind in "fu" else np.int64
            want = arr.astype(want_dtype)
            ok = (got.dtype == want_dtype and got.shape == arr.shape
                  and np.array_equal(np.asarray(got), want, equal_nan=True)
                  and np.array_equal(np.signbit(np.asarray(got)), np.signbit(want)))
            with open(dst, "rb") as f:
                head = f.read(10)
            hlen = int.from_bytes(head[8:10], "little")
            ok = ok and head[6:8] == b"\x01\x00" and (10 + hlen) % 64 == 0
            if ok:
                passed += 1
            else:
                print(f"FAIL {name} v{version}: got {got.dtype} {got.shape}, want {want_dtype} "
                      f"{arr.shape}")
                failed += 1
    # A Fortran-order array is refused with a message naming the file.
    src = os.path.join(tmp, "fortran.npy")
    np.save(src, np.asfortranarray(np.ones((3, 4), dtype="<f4")))
    r = subprocess.run([copier, src, src + ".out"], capture_output=True, text=True)
    if r.returncode == 1 and "fortran.npy" in r.stderr and "Fortran" in r.stderr:
        passed += 1
    else:
        print(f"FAIL fortran: exit {r.returncode}, {r.stderr!r}")
        failed += 1
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
