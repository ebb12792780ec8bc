#!/usr/bin/python3
"""Side-by-side benchmark: the same ONNX networks run one frame at a time (batch 1) by PyTorch eager,
onnxruntime (when importable) and the partime tool, for inference and online training.

Every peer configuration runs in several separate processes and the best is kept, because PyTorch's
batch-1 speed on small networks varies several-fold from one process to the next; partime's runs
are summarised by their median with min and max.

usage: compare.py [--build DIR] [--models small,large,residual] [--frames N] [--runs R] [--quick]
                  [--csv PATH]
       compare.py --worker ...   (internal: one timed PyTorch or onnxruntime configuration)
"""
import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = ("small", "large", "residual")
WARMUP = 10
# The training step costs about three forwards (forward, input gradient, weight gradient).
FLOP_FACTOR = {"inference": 1, "training": 3}
TRAIN_LR = 1e-4


# ---------------------------------------------------------------------------------------------
# PyTorch side: rebuild the exported modules and load the ONNX weights into them.

def torch_module(name, onnx_path):
    """Returns (module, input shape) holding exactly the weights stored in onnx_path."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    import torch
    sys.path.insert(0, HERE)
    import make_models as mm
    builders = {"small": lambda: mm.plain(12, 16, 3, 32), "large": lambda: mm.plain(8, 32, 5, 64),
                "residual": mm.residual}
    net, shape = builders[name]()
    inits = {t.name: numpy_helper.to_array(t)
             for t in onnx.load(onnx_path).graph.initializer}
    state = net.state_dict()
    if set(state) <= set(inits):
        arrays = [inits[k] for k in state]
    else:
        # Exporters may rename initializers; they keep the parameter order, so fall back on it.
        arrays = list(inits.values())
        if len(arrays) != len(state):
            raise RuntimeError(f"{onnx_path}: {len(arrays)} initializers, module has {len(state)}")
    with torch.no_grad():
        for (k, v), a in zip(state.items(), arrays):
            if tuple(v.shape) != a.shape:
                raise RuntimeError(f"{onnx_path}: {k} is {tuple(v.shape)}, ONNX has {a.shape}")
            v.copy_(torch.from_numpy(np.array(a, dtype=np.float32)))
    net.load_state_dict(state)
    return net, shape


def time_loop(step, frames):
    for i in range(WARMUP):
        step(i)
    t0 = time.perf_counter()
    for i in range(frames):
        step(i)
    return frames / (time.perf_counter() - t0)


def worker_torch(name, onnx_path, mode, threads, frames):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    net, shape = torch_module(name, onnx_path)
    xs = [torch.randn(*shape) for _ in range(8)]
    if mode == "inference":
        net.eval()

        def step(i):
            with torch.no_grad():
                net(xs[i % 8])
    else:
        net.train()
        with torch.no_grad():
            target = torch.randn_like(net(xs[0]))
        opt = torch.optim.Adam(net.parameters(), lr=TRAIN_LR)
        loss_fn = torch.nn.MSELoss()

        def step(i):
            opt.zero_grad(set_to_none=True)
            loss_fn(net(xs[i % 8]), target).backward()
            opt.step()
    return time_loop(step, frames)


def worker_ort(onnx_path, threads, frames):
    import numpy as np
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(inp.shape).astype(np.float32) for _ in range(8)]

    def step(i):
        sess.run(None, {inp.name: xs[i % 8]})
    return time_loop(step, frames)


def worker_main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["torch", "ort"], required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--mode", default="inference")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=100)
    a = ap.parse_args(argv)
    if a.worker == "torch":
        fps = worker_torch(a.name, a.onnx, a.mode, a.threads, a.frames)
    else:
        fps = worker_ort(a.onnx, a.threads, a.frames)
    print(json.dumps({"fps": fps}))


def run_worker(kind, name, onnx_path, mode, threads, frames):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--name", name,
           "--onnx", onnx_path, "--mode", mode, "--threads", str(threads), "--frames", str(frames)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])["fps"]


# ---------------------------------------------------------------------------------------------
# partime side.

def partime_gflops(tool, onnx_path):
    out = subprocess.run([tool, "inspect", onnx_path], capture_output=True, text=True, check=True)
    m = re.search(r"^total\b.*?([0-9.]+)\s+GFLOPs per frame", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"no total line in `partime inspect {onnx_path}`")
    return float(m.group(1))


def partime_bench(tool, onnx_path, frames, train):
    """Returns {stages: (fps, latency_ms)} from one `partime bench` run."""
    cmd = [tool, "bench", onnx_path, "--stages", "1,2", "--frames", str(frames)]
    if train:
        # The same training step as the PyTorch contender: MSE loss, Adam, the same learning rate.
        cmd += ["--train", "--loss", "mse", "--optimizer", "adam", "--lr", str(TRAIN_LR)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout}{out.stderr}")
    rows = {}
    for line in out.stdout.splitlines():
        m = re.match(r"\s*(\d+)\s+\S+\s+([0-9.]+)\s+([0-9.]+)\s", line)
        if m:
            rows[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
    if not rows:
        raise RuntimeError(f"no result rows in the output of {' '.join(cmd)}:\n{out.stdout}")
    return rows


def check_same_outputs(tool, name, onnx_path, tmp):
    """Runs one input through PyTorch and through `partime run`; returns the max abs difference."""
    import numpy as np
    import torch
    torch.manual_seed(2)
    net, shape = torch_module(name, onnx_path)
    net.eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = net(x).numpy()
    xin, yout = os.path.join(tmp, f"{name}_x.npy"), os.path.join(tmp, f"{name}_y.npy")
    np.save(xin, x.numpy()[np.newaxis])
    subprocess.run([tool, "run", onnx_path, "--input", xin, "--output", yout],
                   capture_output=True, text=True, check=True)
    got = np.load(yout).reshape(ref.shape)
    return float(np.max(np.abs(got - ref)))


# ---------------------------------------------------------------------------------------------

def summarise(values):
    return statistics.median(values), min(values), max(values)


def main():
    if "--worker" in sys.argv:
        worker_main(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"),
                    help="meson build directory holding tools/partime (default: ROOT/build)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--frames", type=int, default=100, help="timed frames per run (default 100)")
    ap.add_argument("--runs", type=int, default=3, help="processes / runs per configuration")
    ap.add_argument("--quick", action="store_true", help="20 frames, 1 run: a smoke test")
    ap.add_argument("--csv", help="also write the rows to this CSV file")
    a = ap.parse_args()
    if a.quick:
        a.frames, a.runs = 20, 1
    models = [m for m in a.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r} (known: {', '.join(MODELS)})")
    tool = os.path.join(a.build, "tools", "partime")
    if not os.access(tool, os.X_OK):
        ap.error(f"{tool} not found: build the project or pass --build")
    try:
        import onnxruntime  # noqa: F401
        have_ort = True
    except ImportError:
        have_ort = False
        print("onnxruntime: not installed, skipped", flush=True)

    tmp = tempfile.mkdtemp(prefix="pt_compare_")
    subprocess.run([sys.executable, os.path.join(HERE, "make_models.py"), tmp], check=True,
                   capture_output=True)
    rows = []

    def add(model, mode, contender, par, fps_list, gflop, latency=None, best=False):
        med, lo, hi = summarise(fps_list)
        if best:
            med = hi
        rows.append({"model": model, "mode": mode, "contender": contender, "threads_stages": par,
                     "fps": round(med, 1), "fps_min": round(lo, 1), "fps_max": round(hi, 1),
                     "ms_per_frame": round(1000.0 / med, 3),
                     "latency_ms": round(latency if latency is not None else 1000.0 / med, 3),
                     "gflops_per_s": round(gflop * FLOP_FACTOR[mode] * med, 2)})
        print(f"  {model:9} {mode:9} {contender:12} {par:3} {med:9.1f} fps", flush=True)

    for model in models:
        path = os.path.join(tmp, f"{model}.onnx")
        gflop = partime_gflops(tool, path)
        diff = check_same_outputs(tool, model, path, tmp)
        print(f"{model}: {gflop:.4f} GFLOPs/frame, PyTorch vs partime max |diff| {diff:.2e}",
              flush=True)
        if not diff <= 1e-4:
            sys.exit(f"{model}: PyTorch and partime outputs differ by {diff} (> 1e-4)")
        for mode in ("inference", "training"):
            for threads in (1, 2):
                fps = [run_worker("torch", model, path, mode, threads, a.frames)
                       for _ in range(a.runs)]
                # The best process is the peer's real capability; the spread is shown beside it.
                add(model, mode, "pytorch", threads, fps, gflop, best=True)
            if mode == "inference" and have_ort:
                for threads in (1, 2):
                    fps = [run_worker("ort", model, path, mode, threads, a.frames)
                           for _ in range(a.runs)]
                    add(model, mode, "onnxruntime", threads, fps, gflop, best=True)
            runs = [partime_bench(tool, path, a.frames, mode == "training") for _ in range(a.runs)]
            for stages in (1, 2):
                fps = [r[stages][0] for r in runs]
                lat = statistics.median(r[stages][1] for r in runs)
                add(model, mode, "partime", stages, fps, gflop, lat)

    print()
    print("PyTorch and onnxruntime: best of the separate processes [min-max over them];"
          " partime: median [min-max] of its runs")
    head = (f"{'model':9} {'mode':9} {'contender':12} {'thr/stg':>7} {'frames/s [min-max]':>26}"
            f" {'ms/frame':>9} {'latency_ms':>10} {'GFLOP/s':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        spread = f"{r['fps']:.1f} [{r['fps_min']:.1f}-{r['fps_max']:.1f}]"
        print(f"{r['model']:9} {r['mode']:9} {r['contender']:12} {r['threads_stages']:>7}"
              f" {spread:>26} {r['ms_per_frame']:>9.3f} {r['latency_ms']:>10.3f}"
              f" {r['gflops_per_s']:>8.2f}")
    print(f"\n{a.frames} timed frames per run after {WARMUP} warm-up frames, {a.runs} run(s) each")
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {a.csv}")


if __name__ == "__main__":
    main()
