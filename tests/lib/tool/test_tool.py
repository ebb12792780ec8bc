#!/usr/bin/python3
"""End-to-end tests of the `partime` tool: its command-line contract, its files and its errors.

Usage: test_tool.py PARTIME

Runs the built tool the way a user or a benchmark script does: exports and inspects the built-in
models, streams generated .npy frames with --output and --trace, learns on a smooth synthetic
stream, saves and reloads checkpoints, and checks exit codes and messages on bad input. Prints
"N passed, N failed"."""
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from checks import check, summary  # noqa: E402

PARTIME = None
TMP = None


def tool(*args, timeout=300):
    r = subprocess.run([PARTIME] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout)
    return r


def ok_run(*args, timeout=300):
    r = tool(*args, timeout=timeout)
    check(r.returncode == 0, f"partime {' '.join(map(str, args))}: exit {r.returncode}, "
                             f"stderr: {r.stderr.strip()[-800:]}")
    return r


def path(name):
    return os.path.join(TMP, name)


def shape_of(value_info):
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def model_shapes(onnx_path):
    g = onnx.load(onnx_path).graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    return shape_of(inputs[0]), shape_of(g.output[0])


def smooth_frames(n, shape, seed=0, speed=0.05):
    """A smooth stream: a few colour blobs drifting slowly across the frame, in [0, 1]."""
    rng = np.random.default_rng(seed)
    c, h, w = shape[-3], shape[-2], shape[-1]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fx, fy, ph = rng.uniform(0.5, 2.0, 3), rng.uniform(0.5, 2.0, 3), rng.uniform(0, 6, 3)
    frames = np.empty((n, c, h, w), dtype=np.float32)
    for t in range(n):
        for ch in range(c):
            k = ch % 3
            frames[t, ch] = 0.5 + 0.4 * np.sin(2 * np.pi * (fx[k] * xx / w + fy[k] * yy / h)
                                               + ph[k] + speed * t)
    return frames


def read_trace(p):
    with open(p) as f:
        lines = f.read().splitlines()
    return lines[0], [line.split(",") for line in lines[1:]]


def test_help_version():
    r = tool("--help")
    check(r.returncode == 0 and "Usage" in r.stdout and "partime run" in r.stdout,
          f"--help: exit {r.returncode}")
    r = tool("--version")
    check(r.returncode == 0 and r.stdout.startswith("partime "), f"--version: {r.stdout!r}")
    r = tool("run", "--help")
    check(r.returncode == 0 and "--trace" in r.stdout, "run --help")


def test_export_inspect():
    models = {}
    for name in ["autoencoder", "classifier"]:
        out = path(f"{name}.onnx")
        ok_run("export", f"builtin:{name}", out)
        if not check(os.path.exists(out), f"export wrote {out}"):
            continue
        m = onnx.load(out)
        try:
            onnx.checker.check_model(m)
            check(True, "")
        except Exception as e:  # noqa: BLE001
            check(False, f"{out} fails onnx.checker: {e}")
        models[name] = out
        for spec in [f"builtin:{name}", out]:
            r = ok_run("inspect", spec)
            rows = [line.split() for line in r.stdout.splitlines()
                    if line.split() and line.split()[0].isdigit()]
            check(len(rows) == len(m.graph.node),
                  f"inspect {spec}: {len(rows)} node rows, the graph has {len(m.graph.node)}")
            ops = [row[2] for row in rows]
            check(ops == [n.op_type for n in m.graph.node],
                  f"inspect {spec}: ops {ops} differ from the graph's")
            check("total" in r.stdout and "parameters" in r.stdout and "GFLOPs" in r.stdout,
                  f"inspect {spec} prints totals")
            nparams = sum(int(np.prod(i.dims)) for i in m.graph.initializer)
            total = [line for line in r.stdout.splitlines() if line.startswith("total")]
            check(total and int(total[0].split()[3]) <= nparams,
                  f"inspect {spec}: parameter total {total} exceeds the initializers' {nparams}")
    return models


def test_run_files(models):
    """--output stacks each frame's output in frame order; --trace has one row per frame."""
    for name, model in models.items():
        in_shape, out_shape = model_shapes(model)
        n = 12
        frames = smooth_frames(n, in_shape, seed=1, speed=0.7)
        if in_shape[0] == 1:
            frames = frames.reshape((n,) + tuple(in_shape[1:]))
        np.save(path(f"{name}_frames.npy"), frames)
        ok_run("run", model, "--input", path(f"{name}_frames.npy"),
               "--output", path(f"{name}_out.npy"), "--trace", path(f"{name}_trace.csv"))
        if not os.path.exists(path(f"{name}_out.npy")):
            check(False, f"{name}: no output file")
            continue
        out = np.load(path(f"{name}_out.npy"))
        want = (n,) + tuple(out_shape[1:] if in_shape[0] == 1 and out_shape[0] == 1 else out_shape)
        check(out.shape == want and out.dtype == np.float32,
              f"{name}: output shape {out.shape} {out.dtype}, want {want} float32")
        check(np.all(np.isfinite(out)), f"{name}: non-finite outputs")
        header, rows = read_trace(path(f"{name}_trace.csv"))
        check(header == "frame,loss", f"{name}: trace header {header!r}")
        check([int(r[0]) for r in rows] == list(range(n)), f"{name}: trace frames {rows[:3]}...")
        check(all(r[1] == "nan" for r in rows), f"{name}: losses without training: {rows[:2]}")

        # Frame order: the same frames in a different order give the same rows, permuted.
        perm = np.random.default_rng(2).permutation(n)
        np.save(path(f"{name}_perm.npy"), frames[perm])
        ok_run("run", model, "--input", path(f"{name}_perm.npy"), "--output",
               path(f"{name}_perm_out.npy"))
        if os.path.exists(path(f"{name}_perm_out.npy")):
            pout = np.load(path(f"{name}_perm_out.npy"))
            check(pout.shape == out.shape and np.array_equal(pout, out[perm]),
                  f"{name}: output row t is not frame t's output")
        check(not np.allclose(out[0], out[n // 2]), f"{name}: outputs do not depend on the frame")

        # The full stacking form (N, *input_shape) works too and mirrors into the output.
        if in_shape[0] == 1:
            np.save(path(f"{name}_full.npy"), frames.reshape((n,) + tuple(in_shape)))
            ok_run("run", model, "--input", path(f"{name}_full.npy"), "--output",
                   path(f"{name}_full_out.npy"))
            if os.path.exists(path(f"{name}_full_out.npy")):
                fout = np.load(path(f"{name}_full_out.npy"))
                check(fout.shape == (n,) + tuple(out_shape) and
                      np.array_equal(fout.reshape(out.shape), out),
                      f"{name}: full-form output {fout.shape}")


def test_training(models):
    """Reconstruction learning on a smooth stream: the loss falls."""
    model = models.get("autoencoder")
    if not model:
        return
    in_shape, _ = model_shapes(model)
    n = 400
    frames = smooth_frames(n, in_shape, seed=3, speed=0.03)
    np.save(path("smooth.npy"), frames.reshape((n,) + tuple(in_shape[1:])))
    ok_run("run", model, "--input", path("smooth.npy"), "--train", "--loss", "reconstruction",
           "--optimizer", "adam", "--lr", "0.003", "--trace", path("train.csv"),
           "--save", path("trained.onnx"), timeout=600)
    if not os.path.exists(path("train.csv")):
        check(False, "training wrote no trace")
        return
    _, rows = read_trace(path("train.csv"))
    losses = np.array([float(r[1]) for r in rows])
    check(len(losses) == n and np.all(np.isfinite(losses)), f"training losses finite ({n} rows)")
    first, last = losses[:40].mean(), losses[-40:].mean()
    print(f"reconstruction loss: first 40 frames {first:.5f}, last 40 frames {last:.5f}")
    check(last < 0.5 * first, f"loss did not fall: {first:.5f} -> {last:.5f}")

    # The checkpoint loads again (in the tool and in onnx), with weights that changed.
    check(os.path.exists(path("trained.onnx")), "--save wrote a file")
    if os.path.exists(path("trained.onnx")):
        ok_run("inspect", path("trained.onnx"))
        onnx.checker.check_model(onnx.load(path("trained.onnx")))
        a = {i.name: numpy_helper.to_array(i) for i in onnx.load(model).graph.initializer}
        b = {i.name: numpy_helper.to_array(i)
             for i in onnx.load(path("trained.onnx")).graph.initializer}
        check(a.keys() == b.keys(), "checkpoint keeps the initializer names")
        check(any(not np.array_equal(a[k], b[k]) for k in a if k in b), "training changed weights")
        # Inference from the checkpoint reproduces a lower loss than the untrained model.
        ok_run("run", path("trained.onnx"), "--input", path("smooth.npy"), "--loss",
               "reconstruction", "--trace", path("eval.csv"))
        if os.path.exists(path("eval.csv")):
            _, rows = read_trace(path("eval.csv"))
            ev = [float(r[1]) for r in rows]
            if all(np.isfinite(ev)):
                check(np.mean(ev[-40:]) < first, "the checkpoint reconstructs better than at start")

    # NaN frames in the stream: the run goes on, their losses are nan, later frames learn again.
    nan_frames = frames[:60].copy()
    nan_frames[20:24] = np.nan
    np.save(path("nan.npy"), nan_frames.reshape((60,) + tuple(in_shape[1:])))
    ok_run("run", model, "--input", path("nan.npy"), "--train", "--trace", path("nan.csv"))
    if os.path.exists(path("nan.csv")):
        _, rows = read_trace(path("nan.csv"))
        ls = [float(r[1]) for r in rows]
        check(len(ls) == 60 and all(np.isnan(ls[20:24])) and all(np.isfinite(ls[30:])),
              f"NaN frames: losses {ls[18:32]}")

    # --save without training writes the same weights back.
    ok_run("run", model, "--input", path("smooth.npy"), "--save", path("same.onnx"))
    if os.path.exists(path("same.onnx")):
        a = {i.name: numpy_helper.to_array(i) for i in onnx.load(model).graph.initializer}
        b = {i.name: numpy_helper.to_array(i)
             for i in onnx.load(path("same.onnx")).graph.initializer}
        check(a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a),
              "--save without --train keeps the weights")


def test_targets(models):
    model = models.get("classifier")
    if not model:
        return
    in_shape, out_shape = model_shapes(model)
    n = 16
    frames = smooth_frames(n, in_shape, seed=4, speed=0.5).reshape((n,) + tuple(in_shape[1:]))
    np.save(path("cls_frames.npy"), frames)
    classes = int(np.prod(out_shape))
    np.save(path("cls_targets.npy"), (np.arange(n) % classes).astype(np.int64))
    ok_run("run", model, "--input", path("cls_frames.npy"), "--targets", path("cls_targets.npy"),
           "--train", "--trace", path("cls.csv"))
    if os.path.exists(path("cls.csv")):
        _, rows = read_trace(path("cls.csv"))
        losses = np.array([float(r[1]) for r in rows])
        check(len(rows) == n and np.all(np.isfinite(losses)) and np.all(losses > 0),
              f"cross-entropy losses: {losses[:4]}")
    # int32 targets are accepted too (numpy's default int on some platforms).
    np.save(path("cls_targets32.npy"), (np.arange(n) % classes).astype(np.int32))
    ok_run("run", model, "--input", path("cls_frames.npy"), "--targets",
           path("cls_targets32.npy"), "--train")
    # mse with float targets of the output's shape.
    np.save(path("mse_targets.npy"), np.zeros((n,) + tuple(out_shape[1:]), dtype=np.float32))
    ok_run("run", model, "--input", path("cls_frames.npy"), "--targets", path("mse_targets.npy"),
           "--train", "--loss", "mse", "--trace", path("mse.csv"))
    # Bad targets: out-of-range class, wrong count, wrong dtype.
    np.save(path("bad_class.npy"), np.full(n, classes, dtype=np.int64))
    np.save(path("short.npy"), np.zeros(n - 1, dtype=np.int64))
    for bad in ["bad_class.npy", "short.npy", "mse_targets.npy"]:
        r = tool("run", model, "--input", path("cls_frames.npy"), "--targets", path(bad),
                 "--train", "--loss", "cross-entropy")
        check(r.returncode == 1 and bad in r.stderr, f"targets {bad}: exit {r.returncode}, "
                                                     f"{r.stderr.strip()!r}")


def test_errors(models):
    model = models.get("autoencoder", "builtin:autoencoder")
    frames = path("autoencoder_frames.npy")
    usage_cases = [
        [],
        ["frobnicate"],
        ["run"],
        ["run", model],
        ["run", model, "--input"],
        ["run", model, "--input", frames, "--synthetic", "3"],
        ["run", model, "--input", frames, "--bogus"],
        ["run", model, "--input", frames, "--train", "--loss", "hinge"],
        ["run", model, "--input", frames, "--train", "--optimizer", "rmsprop"],
        ["run", model, "--input", frames, "--train", "--lr", "fast"],
        ["run", model, "--input", frames, "--train", "--lr", "-1"],
        ["run", model, "--input", frames, "--lr", "0.1"],
        ["run", model, "--input", frames, "--stages", "0"],
        ["run", model, "--input", frames, "--stages", "two"],
        ["run", model, "--input", frames, "--stages", "2", "--balance", "half"],
        ["run", model, "--input", frames, "--stages", "2", "--balance", "3,0"],
        ["run", model, "--input", frames, "--stages", "2", "--balance", "3+,-1"],
        ["run", model, "--input", frames, "extra"],
        ["run", model, "--input", frames, "--train", "--loss", "cross-entropy"],
        ["run", model, "--input", frames, "--frames", "3"],
        ["export", "builtin:classifier"],
        ["inspect"],
        ["balance", model],
        ["bench", model, "--stages", "1,x"],
    ]
    for args in usage_cases:
        r = tool(*args)
        check(r.returncode == 2 and "Usage" in r.stderr and r.stderr.startswith("partime"),
              f"partime {' '.join(args)}: exit {r.returncode} (want 2 with usage), "
              f"stderr {r.stderr[:200]!r}")
    # Run-time failures: exit 1 with a message naming the file.
    missing = path("no_such_model.onnx")
    r = tool("run", missing, "--input", frames)
    check(r.returncode == 1 and "no_such_model.onnx" in r.stderr,
          f"missing model: exit {r.returncode}, {r.stderr.strip()!r}")
    r = tool("inspect", missing)
    check(r.returncode == 1 and "no_such_model.onnx" in r.stderr, "inspect a missing model")
    with open(path("garbage.onnx"), "wb") as f:
        f.write(np.random.default_rng(5).bytes(3000))
    r = tool("inspect", path("garbage.onnx"))
    check(r.returncode == 1 and "garbage.onnx" in r.stderr,
          f"corrupt model: exit {r.returncode}, {r.stderr.strip()!r}")
    r = tool("run", model, "--input", path("no_frames.npy"))
    check(r.returncode == 1 and "no_frames.npy" in r.stderr, "missing frames file")
    np.save(path("wrong_shape.npy"), np.zeros((4, 2, 5, 5), dtype=np.float32))
    r = tool("run", model, "--input", path("wrong_shape.npy"))
    check(r.returncode == 1 and "wrong_shape.npy" in r.stderr,
          f"frames of the wrong shape: exit {r.returncode}, {r.stderr.strip()!r}")
    np.save(path("fortran.npy"), np.asfortranarray(np.zeros((4, 6), dtype=np.float32)))
    r = tool("run", model, "--input", path("fortran.npy"))
    check(r.returncode == 1 and "fortran.npy" in r.stderr, "Fortran-order frames refused")
    r = tool("run", model, "--input", frames, "--output", path("no/such/dir/out.npy"))
    check(r.returncode == 1 and "out.npy" in r.stderr, "unwritable output")
    r = tool("run", model, "--input", frames, "--devices", "abacus:7")
    check(r.returncode == 1 and "abacus" in r.stderr,
          f"unknown device: exit {r.returncode}, {r.stderr.strip()!r}")


def test_synthetic():
    r = ok_run("run", "builtin:autoencoder", "--synthetic", "60", "--train")
    check("frames" in r.stdout and "loss" in r.stdout and "frames/s" in r.stdout,
          f"synthetic summary: {r.stdout!r}")
    r = ok_run("run", "builtin:classifier", "--synthetic", "40", "--train")
    check("loss" in r.stdout, "classifier on the synthetic clip learns from its scene classes")


def test_stages(models):
    """--output and --trace do not depend on --devices; stages keep frame order."""
    for name, model in models.items():
        frames = path(f"{name}_frames.npy")
        for train in [False, True]:
            # training depends on where the cut falls, and auto measures timings that vary from
            # run to run: pin the cut so that only --devices differs
            extra = ["--train", "--lr", "0.01", "--balance", "3,-1"] if train else []
            if train and name == "classifier":
                extra += ["--loss", "mse", "--targets", path("mse_targets12.npy")]
                _, out_shape = model_shapes(model)
                np.save(path("mse_targets12.npy"),
                        np.full((12,) + tuple(out_shape[1:]), 0.1, dtype=np.float32))
            outs = []
            for devices in ["cpu", "cpu,cpu"]:
                tag = f"{name}_{int(train)}_{devices.replace(',', '_')}"
                ok_run("run", model, "--input", frames, "--stages", "2", "--devices", devices,
                       "--output", path(tag + ".npy"), "--trace", path(tag + ".csv"), *extra)
                if os.path.exists(path(tag + ".npy")) and os.path.exists(path(tag + ".csv")):
                    with open(path(tag + ".npy"), "rb") as f1, open(path(tag + ".csv"), "rb") as f2:
                        outs.append((f1.read(), f2.read()))
            if len(outs) == 2:
                check(outs[0] == outs[1],
                      f"{name} train={train}: --devices cpu and cpu,cpu differ with --stages 2")
            if not train:
                # An explicit partition gives the same outputs as the automatic one.
                ok_run("run", model, "--input", frames, "--stages", "2", "--balance", "2,-1",
                       "--output", path(f"{name}_bal.npy"))
                if outs and os.path.exists(path(f"{name}_bal.npy")):
                    with open(path(f"{name}_bal.npy"), "rb") as f:
                        check(f.read() == outs[0][0], f"{name}: --balance 2,-1 changes outputs")
            if not train and outs:
                # Inference with 2 stages equals 1 stage, row for row.
                one = np.load(path(f"{name}_out.npy"))
                two = np.load(path(f"{name}_0_cpu.npy"))
                check(np.array_equal(one, two), f"{name}: 2 stages give other outputs than 1")


def test_bench_balance():
    r = ok_run("balance", "builtin:classifier", "--stages", "2")
    rows = [line for line in r.stdout.splitlines() if line.split() and line.split()[0] in "01"]
    check(len(rows) == 2 and "predicted speedup" in r.stdout, f"balance output: {r.stdout!r}")
    r = ok_run("balance", "builtin:classifier", "--stages", "2", "--train")
    # a cut inside conv2 (node 3, 32 output channels): stage 0 also computes channels 0-15
    r = ok_run("balance", "builtin:classifier", "--stages", "2", "--balance", "3+16,-1")
    check("balance 3+16,-1: 3+16,7" in r.stdout
          and "stage 0 also runs output channels 0-15 of node 3" in r.stdout,
          f"balance with a split convolution: {r.stdout!r}")
    r = ok_run("balance", "builtin:classifier", "--stages", "2", "--balance", "0+8,-1")
    check("balance 0+8,-1: 0+8,10" in r.stdout, f"a stage of part of node 0: {r.stdout!r}")
    r = tool("balance", "builtin:classifier", "--stages", "2", "--balance", "2+16,-1")
    check(r.returncode != 0 and "node 2 ('pool1') cannot be split" in r.stderr
          and "not a convolution" in r.stderr, f"a split of a pool: {r.stderr!r}")
    r = ok_run("bench", "builtin:classifier", "--stages", "1,2", "--frames", "30")
    rows = [line.split() for line in r.stdout.splitlines()
            if line.split() and line.split()[0].isdigit()]
    check(len(rows) == 2 and rows[0][0] == "1" and rows[1][0] == "2",
          f"bench rows: {r.stdout!r}")
    if len(rows) == 2:
        check(float(rows[0][2]) > 0 and float(rows[1][2]) > 0 and rows[0][4] == "1.00x",
              f"bench figures: {rows}")
    ok_run("bench", "builtin:autoencoder", "--train", "--stages", "1,2", "--frames", "10")
    # --independent: after the 2-stage row, two one-stage streams at once, and their comparison
    r = ok_run("bench", "builtin:classifier", "--train", "--stages", "1,2", "--frames", "20",
               "--independent")
    lines = r.stdout.splitlines()
    ind = [i for i, line in enumerate(lines) if line.split()[:2] == ["2x1", "independent"]]
    two = [i for i, line in enumerate(lines) if line.split()[:2] == ["2", "cpu,cpu"]]
    check(len(ind) == 1 and len(two) == 1 and ind[0] == two[0] + 1,
          f"bench --independent rows: {r.stdout!r}")
    if ind:
        f = lines[ind[0]].split()
        check(float(f[2]) > 0 and f[4].endswith("x") and f[5].startswith("0:")
              and f[6].startswith("1:"), f"independent row: {f}")
    check(re.search(r"^2 stages: \d+% of 2 independent streams' frames/s; work per frame "
                    r"[0-9.]+x one stage's alone, the independent streams' [0-9.]+x$",
                    r.stdout, re.M) is not None, f"bench --independent summary: {r.stdout!r}")
    r = tool("bench", "builtin:classifier", "--stages", "2", "--devices", "cpu,cpu",
             "--independent")
    check(r.returncode == 2 and "leave out --devices" in r.stderr,
          f"--independent with --devices: {r.returncode} {r.stderr!r}")


def main():
    global PARTIME, TMP
    PARTIME = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="pt-tool-") as tmp:
        TMP = tmp
        test_help_version()
        models = test_export_inspect()
        test_run_files(models)
        test_errors(models)
        test_targets(models)
        test_synthetic()
        test_training(models)
        test_stages(models)
        test_bench_balance()
    return summary()


if __name__ == "__main__":
    sys.exit(main())
