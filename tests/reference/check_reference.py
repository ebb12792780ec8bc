#!/usr/bin/python3
"""Checks libpartime against PyTorch, through the `partime` tool.

Usage: check_reference.py PARTIME [WORKDIR]

make_reference.py dumps small networks and what PyTorch computes for them; for each network this
script then runs the tool on the same frames and compares, tensor by tensor, with the relative
error max|ours - torch| / max|torch| <= 1e-4:

  gradients   one frame, SGD with lr 1 and no momentum: the saved weights are w0 - dL/dw
  sgd         5 frames of online SGD with momentum (lr 0.01, momentum 0.9): every frame's output
              (before that frame's update), every loss, and the weights after the 5 updates
              and the total update w5 - w0 on its own scale
  adam        the same with Adam (lr 1e-3)

Initializers that are not parameters (batch-norm statistics, Resize scales) must come back
unchanged. Prints the worst error of every tensor and "N passed, N failed".
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_reference  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from checks import check, summary  # noqa: E402

TOL = 1e-4


def rel_err(ours, ref):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        return np.inf
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-12)
    return float(np.max(np.abs(ours - ref))) / scale if ref.size else 0.0


def compare(label, ours, ref, tol=TOL):
    err = rel_err(ours, ref)
    ok = err <= tol
    shape = "x".join(str(d) for d in np.shape(ref))
    print(f"  {label:<44} {shape:<12} rel err {err:.2e} {'ok' if ok else 'FAIL'}")
    check(ok, f"{label}: relative error {err:.3e} > {tol:g}"
          + (f" (shape {np.shape(ours)} vs {np.shape(ref)})" if np.shape(ours) != np.shape(ref) else ""))


def initializers(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}


def read_trace(path, n):
    with open(path) as f:
        lines = f.read().splitlines()
    check(lines and lines[0] == "frame,loss", f"{path}: header is {lines[:1]}")
    rows = [line.split(",") for line in lines[1:]]
    check(len(rows) == n and [int(r[0]) for r in rows] == list(range(n)),
          f"{path}: expected frames 0..{n - 1}, got {[r[0] for r in rows]}")
    return np.array([float(r[1]) for r in rows], dtype=np.float64)


def run_tool(partime, args):
    r = subprocess.run([partime] + args, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"  partime {' '.join(args)}\n  exited {r.returncode}: {r.stderr.strip()}")
    check(r.returncode == 0, f"partime {' '.join(args)} exited {r.returncode}")
    return r.returncode == 0


def check_net(partime, work, name, meta):
    d = os.path.join(work, name)
    model = os.path.join(work, name + ".onnx")
    frames = np.load(os.path.join(d, "frames.npy"))
    n = meta["frames"]
    loss = meta["loss"]
    params = meta["params"]
    init0 = initializers(model)
    consts = [k for k in init0 if k not in params]
    loss_args = ["--loss", loss]
    if loss != "reconstruction":
        loss_args += ["--targets", os.path.join(d, "targets.npy")]
    print(f"{name}: loss {loss}, {len(params)} parameters, "
          f"{len(consts)} constant initializers")

    # Gradients: one frame, w1 = w0 - 1.0 * dL/dw.
    np.save(os.path.join(d, "frame0.npy"), frames[:1])
    args = ["run", model, "--input", os.path.join(d, "frame0.npy"), "--train",
            "--optimizer", "sgd", "--lr", "1", "--momentum", "0",
            "--save", os.path.join(d, "grad.onnx"), "--output", os.path.join(d, "grad_out.npy"),
            "--trace", os.path.join(d, "grad_trace.csv")] + loss_args
    if loss != "reconstruction":
        t = np.load(os.path.join(d, "targets.npy"))
        np.save(os.path.join(d, "target0.npy"), t[:1])
        args[args.index(os.path.join(d, "targets.npy"))] = os.path.join(d, "target0.npy")
    if run_tool(partime, args):
        w1 = initializers(os.path.join(d, "grad.onnx"))
        for p in params:
            ref = np.load(os.path.join(d, "grad", p + ".npy"))
            compare(f"grad {p}", init0[p] - w1.get(p, np.full_like(init0[p], np.nan)), ref)
        ref_out = np.load(os.path.join(d, "sgd", "outputs.npy"))
        compare("forward output, frame 0", np.load(os.path.join(d, "grad_out.npy")), ref_out[:1])
        losses = read_trace(os.path.join(d, "grad_trace.csv"), 1)
        compare("loss, frame 0", losses, np.load(os.path.join(d, "sgd", "losses.npy"))[:1])

    for opt, kw in make_reference.OPTIMIZERS.items():
        od = os.path.join(d, opt)
        args = ["run", model, "--input", os.path.join(d, "frames.npy"), "--train",
                "--optimizer", opt, "--lr", repr(kw["lr"]),
                "--save", os.path.join(od, "ours.onnx"), "--output", os.path.join(od, "ours.npy"),
                "--trace", os.path.join(od, "ours.csv")] + loss_args
        if "momentum" in kw:
            args += ["--momentum", repr(kw["momentum"])]
        if not run_tool(partime, args):
            continue
        compare(f"{opt} outputs, {n} frames", np.load(os.path.join(od, "ours.npy")),
                np.load(os.path.join(od, "outputs.npy")))
        compare(f"{opt} losses, {n} frames", read_trace(os.path.join(od, "ours.csv"), n),
                np.load(os.path.join(od, "losses.npy")))
        w = initializers(os.path.join(od, "ours.onnx"))
        for p in params:
            ref = np.load(os.path.join(od, "weights", p + ".npy"))
            ours = w.get(p, np.full_like(ref, np.nan))
            compare(f"{opt} {p}", ours, ref)
            # The update itself, so a small error in it is not hidden by the weight's size.
            compare(f"{opt} {p} update", ours - init0[p], ref - init0[p])
        for c in consts:
            same = c in w and np.array_equal(w[c], init0[c])
            check(same, f"{opt}: constant initializer {c} changed or went missing")


def main():
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    partime = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="pt-reference-") as tmp:
        work = sys.argv[2] if len(sys.argv) == 3 else tmp
        os.makedirs(work, exist_ok=True)
        for seed, (name, cls) in enumerate(make_reference.NETS.items()):
            meta = make_reference.make(work, name, cls, seed + 1)
            check_net(partime, work, name, meta)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
