#!/usr/bin/python3
"""Side-by-side benchmark: the same ONNX networks run one frame at a time (batch 1) by PyTorch eager,
onnxruntime, the partime tool and the partimenet GStreamer element, for inference and online
training.

Every peer configuration runs in several separate processes and the best is kept, because PyTorch's
batch-1 speed on small networks varies several-fold from one process to the next; partime's and the
element's runs are summarised by their median with min and max. The runs go in rounds, each
contender once per round, so that ratios can also be taken between runs made side by side. Each
round also times two independent one-stage partime streams at once, one per core: the most the
two cores give together, which the two-stage pipeline is held against. The table gives frames/s,
latency, GFLOP/s and the share of this machine's one-core sgemm rate (measured at the start) that
each configuration reaches on the cores it uses; a goals block closes the report.

usage: compare.py [--build DIR] [--models small,large,residual] [--frames N] [--runs R] [--quick]
                  [--csv PATH] [--plot PATH] [--no-install]
       compare.py --worker ...   (internal: one timed configuration in a process of its own)
"""
import argparse
import csv
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# --no-install: use only what is already importable (here or in the bench environment)
NO_INSTALL = False
ROOT = os.path.dirname(HERE)
MODELS = ("small", "large", "residual")
WARMUP = 10
# The training step costs about three forwards (forward, input gradient, weight gradient).
FLOP_FACTOR = {"inference": 1, "training": 3}
TRAIN_LR = 1e-4
SGEMM_N = 1024
# onnxruntime is not packaged by Debian, matplotlib may be missing: what this interpreter cannot
# import is installed from PyPI into a virtual environment that sees the system packages, kept
# across runs.
BENCH_VENV = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                        "partimenet-bench-venv")


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


def worker_sgemm():
    """GFLOP/s of one SGEMM_N^3 single-precision product on one core: the best of five calls of
    each library at hand (OpenBLAS, which partime calls, and oneDNN's dnnl_sgemm), the faster of
    the two. OpenBLAS picks its kernels by CPU model when it loads; on a model newer than its
    release it falls back to generic SSE kernels (its core name says so), where oneDNN, which
    picks by instruction set, still reaches the machine's rate."""
    import ctypes
    import ctypes.util
    import numpy as np
    n = SGEMM_N
    a, b = (np.random.default_rng(1).standard_normal((n, n)).astype(np.float32) for _ in range(2))
    c = np.empty((n, n), np.float32)
    fp = ctypes.POINTER(ctypes.c_float)
    pa, pb, pc = (x.ctypes.data_as(fp) for x in (a, b, c))
    gemms, core = [], None
    name = ctypes.util.find_library("openblas")
    if name:
        # The library partime's convolutions call, with the thread count they use.
        blas = ctypes.CDLL(name)
        blas.openblas_set_num_threads(1)
        blas.openblas_get_corename.restype = ctypes.c_char_p
        core = blas.openblas_get_corename().decode()
        blas.cblas_sgemm.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, fp, ctypes.c_int, fp,
                                                          ctypes.c_int, ctypes.c_float, fp,
                                                          ctypes.c_int]
        # row major, no transposes
        gemms.append((f"OpenBLAS cblas_sgemm ({core} kernels)",
                      lambda: blas.cblas_sgemm(101, 111, 111, n, n, n, 1.0, pa, n, pb, n, 0.0,
                                               pc, n)))
    name = ctypes.util.find_library("dnnl")
    if name:
        # one thread: the worker runs with OMP_NUM_THREADS=1
        dnnl = ctypes.CDLL(name)
        i64 = ctypes.c_int64
        dnnl.dnnl_sgemm.argtypes = [ctypes.c_char, ctypes.c_char, i64, i64, i64, ctypes.c_float,
                                    fp, i64, fp, i64, ctypes.c_float, fp, i64]
        gemms.append(("oneDNN dnnl_sgemm",
                      lambda: dnnl.dnnl_sgemm(b"N", b"N", n, n, n, 1.0, pa, n, pb, n, 0.0,
                                              pc, n)))
    if not gemms:
        gemms.append(("numpy matmul", lambda: np.matmul(a, b, out=c)))
    rates = []
    for source, gemm in gemms:
        gemm()
        best = math.inf
        for _ in range(5):
            t0 = time.perf_counter()
            gemm()
            best = min(best, time.perf_counter() - t0)
        rates.append((2.0 * n ** 3 / best / 1e9, source))
    return {"rates": rates, "openblas_core": core}


# OpenBLAS's kernels without AVX: what it falls back to on a CPU model it does not know.
OPENBLAS_GENERIC = ("Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Katmai",
                    "Coppermine", "Northwood", "Banias")


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_sgemm():
    """The machine's one-core sgemm rate, the limit the GFLOP/s columns are read against. Where
    OpenBLAS fell back to generic kernels on a CPU with AVX-512 or AVX2, its own kernels for that
    instruction set are timed too (OPENBLAS_CORETYPE), so the limit is the machine's, not that of
    OpenBLAS's CPU table."""
    res = run_worker("sgemm")
    rates = [tuple(r) for r in res["rates"]]
    flags = cpu_flags()
    core = ("SkylakeX" if {"avx512f", "avx512vl", "avx512bw"} <= flags
            else "Haswell" if "avx2" in flags else None)
    if core and res["openblas_core"] in OPENBLAS_GENERIC:
        rates += [(g, f"{src} with OPENBLAS_CORETYPE={core}")
                  for g, src in run_worker("sgemm", env={"OPENBLAS_CORETYPE": core})["rates"]
                  if src.startswith("OpenBLAS")]
    rates.sort(reverse=True)
    return {"gflops": rates[0][0],
            "source": "; ".join(f"{src} {g:.1f}" for g, src in rates) + " GFLOP/s"}


def worker_element(build, onnx_path, mode, stages, frames, width, height, out_len):
    """Runs the partimenet element in a pipeline and times it from its own src pad.

    The clock starts when the last warm-up frame leaves the element and stops when EOS leaves it
    (after the drain), so start-up, model loading and the cut's measurement stay out. Python runs
    on the streaming thread only during the warm-up: the probe removes itself. Training feeds
    frames from appsrc because the mse target travels on each buffer as a GstPartimenetTargetMeta,
    which a launch line cannot attach."""
    import gi
    gi.require_version("Gst", "1.0")
    from gi.repository import Gst
    Gst.init(None)
    if Gst.ElementFactory.find("partimenet") is None:
        raise RuntimeError(f"no partimenet element in {os.path.join(build, 'gst')}")
    total = WARMUP + frames
    caps = f"video/x-raw,format=RGB,width={width},height={height},framerate=30/1"
    net = (f"partimenet name=net model={onnx_path} stages={stages}")
    if mode == "inference":
        desc = (f"videotestsrc num-buffers={total} ! {caps} ! "
                f"{net} train=false loss=none ! fakesink sync=false")
    else:
        # An unbounded queue: every frame (a reference to one of eight buffers) is queued while
        # the sink prerolls, before the pipeline plays, so no Python runs while the clock does.
        desc = (f"appsrc name=src format=time max-bytes=0 caps={caps} ! "
                f"{net} train=true loss=mse optimizer=adam "
                f"learning-rate={TRAIN_LR} ! fakesink sync=false")
    pipe = Gst.parse_launch(desc)
    el = pipe.get_by_name("net")
    clock = {"buffers": 0, "t0": None, "t1": None}

    def on_buffer(_pad, _info):
        clock["buffers"] += 1
        if clock["buffers"] == WARMUP:
            clock["t0"] = time.perf_counter()
            return Gst.PadProbeReturn.REMOVE
        return Gst.PadProbeReturn.OK

    def on_event(_pad, info):
        if info.get_event().type == Gst.EventType.EOS:
            clock["t1"] = time.perf_counter()
            return Gst.PadProbeReturn.REMOVE
        return Gst.PadProbeReturn.OK

    srcpad = el.get_static_pad("src")
    srcpad.add_probe(Gst.PadProbeType.BUFFER, on_buffer)
    srcpad.add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, on_event)
    if pipe.set_state(Gst.State.PAUSED) == Gst.StateChangeReturn.FAILURE:
        raise RuntimeError(f"cannot start {desc}")
    if mode == "training":
        import ctypes
        import numpy as np
        # The library the plugin links: loaded now, it is the copy the element already uses.
        meta = ctypes.CDLL("libgstpartimenetmeta-1.0.so.0")
        add = meta.gst_buffer_add_partimenet_target_meta
        add.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_size_t]
        add.restype = ctypes.c_void_p
        # A zero target, as `partime bench` uses; eight frames, cycled like the tool's.
        zeros = np.zeros(out_len, np.float32)
        rng = np.random.default_rng(1)
        bufs = []
        for _ in range(8):
            buf = Gst.Buffer.new_wrapped(
                rng.integers(0, 256, 3 * width * height, dtype=np.uint8).tobytes())
            # hash() of a PyGObject boxed wrapper is the address of the GstBuffer.
            if not add(hash(buf), -1, zeros.ctypes.data, out_len):
                raise RuntimeError("cannot attach the training target")
            bufs.append(buf)
        src = pipe.get_by_name("src")
        for i in range(total):
            if src.emit("push-buffer", bufs[i % len(bufs)]) != Gst.FlowReturn.OK:
                raise RuntimeError(f"appsrc refused frame {i}")
        src.emit("end-of-stream")
    if pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        raise RuntimeError(f"cannot play {desc}")
    msg = pipe.get_bus().timed_pop_filtered(600 * Gst.SECOND,
                                            Gst.MessageType.EOS | Gst.MessageType.ERROR)
    trained = el.get_property("frames-trained")
    pipe.set_state(Gst.State.NULL)
    if msg is None:
        raise RuntimeError(f"no EOS after 600 s: {desc}")
    if msg.type == Gst.MessageType.ERROR:
        err, dbg = msg.parse_error()
        raise RuntimeError(f"{err.message} ({dbg})")
    if clock["t0"] is None or clock["t1"] is None:
        raise RuntimeError(f"{clock['buffers']} buffers left the element, EOS "
                           f"{'seen' if clock['t1'] else 'not seen'}")
    if mode == "training" and trained != total:
        raise RuntimeError(f"the element learned from {trained} of {total} frames")
    return frames / (clock["t1"] - clock["t0"])


def worker_main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["torch", "ort", "sgemm", "element", "plot"],
                    required=True)
    ap.add_argument("--out", help="plot: the PNG to write (the rows come as JSON on stdin)")
    ap.add_argument("--name")
    ap.add_argument("--onnx")
    ap.add_argument("--mode", default="inference")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--build")
    ap.add_argument("--size", help="element: WIDTHxHEIGHT of the frames")
    ap.add_argument("--out-len", type=int, help="element: floats in the model's output")
    a = ap.parse_args(argv)
    if a.worker == "torch":
        res = {"fps": worker_torch(a.name, a.onnx, a.mode, a.threads, a.frames)}
    elif a.worker == "ort":
        res = {"fps": worker_ort(a.onnx, a.threads, a.frames)}
    elif a.worker == "sgemm":
        res = worker_sgemm()
    elif a.worker == "plot":
        draw_plot(json.load(sys.stdin), a.out)
        return
    else:
        w, h = (int(v) for v in a.size.split("x"))
        res = {"fps": worker_element(a.build, a.onnx, a.mode, a.threads, a.frames, w, h,
                                     a.out_len)}
    print(json.dumps(res))


def run_worker(kind, threads=1, python=None, env=None, **args):
    cmd = [python or sys.executable, os.path.abspath(__file__), "--worker", kind,
           "--threads", str(threads)]
    for k, v in args.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               **(env or {}))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {' '.join(cmd)} failed: {last_line(out)}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# onnxruntime: this interpreter's, or one installed from PyPI into BENCH_VENV.

def last_line(out):
    lines = (out.stderr or out.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {out.returncode}"


def venv_python(module, version_of):
    """Returns (a python that imports `module`, its version) or (None, why not): this interpreter,
    or the bench environment, where it is installed from PyPI (package `module`) when missing."""
    py = os.path.join(BENCH_VENV, "bin", "python")
    for python in (sys.executable, py):
        version = version_of(python)
        if version:
            return python, version
    if NO_INSTALL:
        return None, f"not importable here nor in {BENCH_VENV}, and --no-install"
    print(f"{module}: not importable; installing it from PyPI into {BENCH_VENV}", flush=True)
    if not os.access(py, os.X_OK):
        out = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", BENCH_VENV],
                             capture_output=True, text=True)
        if out.returncode != 0:
            return None, f"{sys.executable} -m venv failed: {last_line(out)}" \
                " (Debian: apt-get install python3-venv)"
    out = subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check",
                          "--retries", "1", "--timeout", "30", module],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None, f"pip install {module} failed: {last_line(out)}"
    version = version_of(py)
    return (py, version) if version else (None, "installed, but it does not import")


def module_version(module):
    def version_of(python):
        if not os.access(python, os.X_OK):
            return None
        out = subprocess.run([python, "-c", f"import {module}; print({module}.__version__)"],
                             capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None
    return version_of


def find_onnxruntime():
    """Returns (python that imports onnxruntime, its version) or (None, why not)."""
    return venv_python("onnxruntime", module_version("onnxruntime"))


# ---------------------------------------------------------------------------------------------
# partime side.

def partime_gflops(tool, onnx_path):
    out = subprocess.run([tool, "inspect", onnx_path], capture_output=True, text=True, check=True)
    m = re.search(r"^total\b.*?([0-9.]+)\s+GFLOPs per frame", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"no total line in `partime inspect {onnx_path}`")
    return float(m.group(1))


def partime_bench(tool, onnx_path, frames, train, stages="1,2", devices=None,
                  independent=False):
    """Returns {stages: (fps, latency_ms)} from one `partime bench` run, and with `independent`
    also "indep": the same for two one-stage streams run at once, one per core."""
    cmd = [tool, "bench", onnx_path, "--stages", stages, "--frames", str(frames)]
    if devices:
        cmd += ["--devices", devices]
    if independent:
        cmd += ["--independent"]
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
        m = re.match(r"\s*\d+x1\s+independent\s+([0-9.]+)\s+([0-9.]+)\s", line)
        if m:
            rows["indep"] = (float(m.group(1)), float(m.group(2)))
    if independent and "indep" not in rows:
        raise RuntimeError(f"no independent row in the output of {' '.join(cmd)}:\n{out.stdout}")
    if not rows:
        raise RuntimeError(f"no result rows in the output of {' '.join(cmd)}:\n{out.stdout}")
    return rows


def plugin_path_env(build):
    """The environment that lets GStreamer find the element in the build tree."""
    var = "GST_PLUGIN_PATH_1_0" if os.environ.get("GST_PLUGIN_PATH_1_0") else "GST_PLUGIN_PATH"
    old = os.environ.get(var)
    return {var: os.path.join(build, "gst") + (os.pathsep + old if old else "")}


def element_launch_fps(build, onnx_path, stages, frames, width, height):
    """Inference frames/s of the element from gst-launch-1.0's wall time, the start-up taken out
    by a run of the warm-up frames alone. Used where PyGObject is missing; coarser than the
    probe."""
    env = dict(os.environ, **plugin_path_env(build))

    def wall(n):
        cmd = ["gst-launch-1.0", "-q", "videotestsrc", f"num-buffers={n}", "!",
               f"video/x-raw,format=RGB,width={width},height={height},framerate=30/1", "!",
               "partimenet", f"model={onnx_path}", f"stages={stages}", "train=false", "loss=none",
               "!", "fakesink", "sync=false"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout}{out.stderr}")
        return time.perf_counter() - t0

    dt = wall(WARMUP + frames) - wall(WARMUP)
    if dt <= 0:
        raise RuntimeError("start-up varied more than the timed frames took; use more --frames")
    return frames / dt


def element_backend(build):
    """How the element can be timed here: 'probe' (PyGObject), 'launch' (gst-launch-1.0 only,
    inference), or None with the reason."""
    plugin = os.path.join(build, "gst", "libgstpartimenet.so")
    if not os.path.exists(plugin):
        return None, f"no {plugin}: the GStreamer plugin is not built"
    try:
        import gi
        gi.require_version("Gst", "1.0")
        from gi.repository import Gst  # noqa: F401
        return "probe", None
    except (ImportError, ValueError):
        pass
    if subprocess.run(["sh", "-c", "command -v gst-launch-1.0"], capture_output=True).returncode:
        return None, "neither PyGObject (python3-gi, gir1.2-gstreamer-1.0) nor gst-launch-1.0"
    return "launch", None


def check_same_outputs(tool, name, onnx_path, tmp):
    """Runs one input through PyTorch and through `partime run`; returns the max abs difference,
    the input shape and the number of output values."""
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
    return float(np.max(np.abs(got - ref))), shape, ref.size


# ---------------------------------------------------------------------------------------------
# Report: table, CSV, plot, goals.

def config_label(r):
    if r["contender"] == "independent":
        return f"{r['threads_stages']} independent 1-stage streams"
    unit = "thread" if r["contender"] in ("pytorch", "onnxruntime") else "stage"
    n = r["threads_stages"]
    label = f"{r['contender']} {n} {unit}{'s' if n > 1 else ''}"
    return label + (f" {r['devices']}" if r["devices"] else "")


def print_table(rows):
    print()
    print("PyTorch and onnxruntime: best of the separate processes [min-max over them];"
          " partime and partimenet: median [min-max] of their runs")
    head = (f"{'model':9} {'mode':9} {'contender':11} {'thr/stg':>11} {'frames/s [min-max]':>26}"
            f" {'ms/frame':>9} {'latency_ms':>10} {'GFLOP/s':>8} {'%sgemm':>7} {'vs tool':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        spread = f"{r['fps']:.1f} [{r['fps_min']:.1f}-{r['fps_max']:.1f}]"
        par = str(r["threads_stages"]) + (f" ({r['devices']})" if r["devices"] else "")
        lat = f"{r['latency_ms']:.3f}" if r["latency_ms"] != "" else "-"
        pct = f"{r['pct_sgemm']:.1f}" if r["pct_sgemm"] != "" else "-"
        ratio = f"{r['vs_tool']:.3f}" if r["vs_tool"] != "" else ""
        print(f"{r['model']:9} {r['mode']:9} {r['contender']:11} {par:>11} {spread:>26}"
              f" {r['ms_per_frame']:>9.3f} {lat:>10} {r['gflops_per_s']:>8.2f} {pct:>7}"
              f" {ratio:>7}")


def write_plot(rows, path):
    """Draws the chart here, or, when this interpreter has no matplotlib, in the bench
    environment (installed there from PyPI), with the rows handed over as JSON."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        py, why = venv_python("matplotlib", module_version("matplotlib"))
        if py is None:
            print(f"plot: matplotlib unavailable ({why}), skipped (Debian: apt-get install"
                  " python3-matplotlib)")
            return
        out = subprocess.run([py, os.path.abspath(__file__), "--worker", "plot", "--out", path],
                             input=json.dumps(rows), capture_output=True, text=True)
        if out.returncode != 0:
            print(f"plot: failed in {py}: {last_line(out)}")
            return
        print(out.stdout.strip())
        return
    draw_plot(rows, path)


def draw_plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    modes = [m for m in FLOP_FACTOR if any(r["mode"] == m for r in rows)]
    # One colour per configuration across both panels, one legend below them.
    colour = {c: plt.cm.tab10(j % 10)
              for j, c in enumerate(dict.fromkeys(config_label(r) for r in rows))}
    fig, axes = plt.subplots(len(modes), 1, figsize=(12, 4 * len(modes) + 1), squeeze=False)
    for ax, mode in zip(axes[:, 0], modes):
        sel = [r for r in rows if r["mode"] == mode]
        models = list(dict.fromkeys(r["model"] for r in sel))
        configs = list(dict.fromkeys(config_label(r) for r in sel))
        width = 0.8 / len(configs)
        for j, cfg in enumerate(configs):
            xs, ys, lo, hi = [], [], [], []
            for i, model in enumerate(models):
                for r in sel:
                    if r["model"] == model and config_label(r) == cfg:
                        xs.append(i - 0.4 + (j + 0.5) * width)
                        ys.append(r["fps"])
                        lo.append(r["fps"] - r["fps_min"])
                        hi.append(r["fps_max"] - r["fps"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, color=colour[cfg])
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models)
        ax.set_yscale("log")
        ax.set_ylabel("frames/s (log)")
        ax.set_title(f"{mode}, batch 1, one frame at a time (bars: min-max)")
        ax.grid(axis="y", which="both", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colour.values()]
    fig.legend(handles, list(colour), loc="lower center", ncol=5, fontsize="small")
    fig.tight_layout(rect=(0, 0.08 if len(colour) > 5 else 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def runs_meeting(ratios, want):
    """How many of the runs' own ratios meet the goal: on a machine whose speed drifts, the
    median alone hides whether a goal holds in most runs or in few."""
    if not ratios or len(ratios) < 2:
        return ""
    return (f"; {sum(x >= want for x in ratios)} of {len(ratios)} runs do"
            f" ({min(ratios):.2f}-{max(ratios):.2f}x)")


def side_by_side(ratios, want):
    """The round-by-round view of a goal judged on the best runs: the median of the ratios of
    runs made in the same round, and how many rounds meet the goal."""
    if not ratios:
        return ""
    return (f"; round by round: median {statistics.median(ratios):.2f}x"
            f"{runs_meeting(ratios, want)}")


def goals(rows, have_ort, per_run):
    """The targets: small, best partime >= 3x PyTorch and >= 1.5x onnxruntime; large, >= 1x both;
    two stages >= 1.8x one on large and residual; the element within 5% of the tool."""
    def pick(model, mode, contender, stages=None):
        return [r for r in rows if r["model"] == model and r["mode"] == mode
                and r["contender"] == contender and not r["devices"]
                and (stages is None or r["threads_stages"] == stages)]

    lines = []

    def line(ok, text):
        lines.append(f"  {'met   ' if ok else 'missed'}  {text}")

    for model, factor in (("small", 3.0), ("large", 1.0)):
        for mode in FLOP_FACTOR:
            ours = pick(model, mode, "partime")
            if not ours:
                continue
            best = max(ours, key=lambda r: r["fps"])
            peers = [("pytorch", factor)]
            if mode == "inference":
                peers.append(("onnxruntime", 1.5 if model == "small" else 1.0))
            for peer, want in peers:
                theirs = pick(model, mode, peer)
                if not theirs:
                    why = "skipped" if peer == "onnxruntime" and not have_ort else "no rows"
                    lines.append(f"  n/a     {model} {mode}: partime >= {want:g}x {peer} ({why})")
                    continue
                other = max(theirs, key=lambda r: r["fps"])
                x = best["fps"] / other["fps"]
                line(x >= want, f"{model} {mode}: partime {best['fps']:.1f} frames/s"
                     f" ({best['threads_stages']} stg) vs {peer} {other['fps']:.1f}"
                     f" ({other['threads_stages']} thr) = {x:.2f}x, goal >= {want:g}x"
                     f"{side_by_side(per_run.get((model, mode, 'vs', peer)), want)}")
    for model in ("large", "residual"):
        for mode in FLOP_FACTOR:
            one, two = pick(model, mode, "partime", 1), pick(model, mode, "partime", 2)
            if one and two:
                x = two[0]["vs_one_stage"] or two[0]["fps"] / one[0]["fps"]
                line(x >= 1.8, f"{model} {mode}: partime 2 stages {two[0]['fps']:.1f} vs 1 stage"
                     f" {one[0]['fps']:.1f} frames/s, median of the runs' ratios {x:.2f}x,"
                     f" goal >= 1.8x{runs_meeting(per_run.get((model, mode, 2)), 1.8)}")
                ceil, frac = (per_run.get((model, mode, "ceiling")),
                              per_run.get((model, mode, "of ceiling")))
                if ceil and frac:
                    # What the two cores give at once with nothing passed between them: when
                    # that is below 1.8x one core, no pipeline on them can reach the goal.
                    lines.append(f"          the two cores' ceiling, 2 independent 1-stage streams"
                                 f" at once: median {statistics.median(ceil):.2f}x one stage"
                                 f"{runs_meeting(ceil, 1.8)}; 2 stages reach median"
                                 f" {100 * statistics.median(frac):.0f}% of it"
                                 f" ({100 * min(frac):.0f}-{100 * max(frac):.0f}%)")
    for r in rows:
        if r["contender"] == "partimenet" and r["vs_tool"] != "":
            tool = pick(r["model"], r["mode"], "partime", r["threads_stages"])[0]
            ratios = per_run.get((r["model"], r["mode"], "element", r["threads_stages"]))
            line(r["vs_tool"] >= 0.95, f"{r['model']} {r['mode']}: element {r['fps']:.1f} vs tool"
                 f" {tool['fps']:.1f} frames/s at {r['threads_stages']} stage(s) ="
                 f" {r['vs_tool']:.3f}x, goal >= 0.95x{runs_meeting(ratios, 0.95)}")
    print("\ngoals")
    print("\n".join(lines) if lines else "  none measured (run all models)")


# ---------------------------------------------------------------------------------------------

class Sizer:
    """Frames per timed run: at least --frames, and enough that a run lasts --min-seconds at the
    speed the same configuration showed before. A window of a few milliseconds (200 frames of
    `small` at 7000 frames/s last 28 ms) times how the kernel first places the threads more than
    the throughput. A configuration's first run, when it was too short, runs again long enough."""

    def __init__(self, frames, min_s):
        self.frames, self.min_s, self.n = frames, min_s, {}

    def run(self, key, fn):
        """fn(frames) returns (result, the fastest frames/s in it); gives back the result."""
        n = self.n.get(key, self.frames)
        res, fps = fn(n)
        want = max(self.frames, math.ceil(self.min_s * fps))
        if want > n and key not in self.n:
            res, fps = fn(want)
        self.n[key] = max(want, n)
        return res

    def summary(self):
        return ", ".join(f"{'/'.join(str(x) for x in k)} {v}" for k, v in self.n.items())


def summarise(values):
    return statistics.median(values), min(values), max(values)


def main():
    if "--worker" in sys.argv:
        worker_main(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"),
                    help="meson build directory holding tools/partime and gst/"
                    " (default: ROOT/build)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--frames", type=int, default=100, help="timed frames per run (default 100)")
    ap.add_argument("--runs", type=int, default=3, help="processes / runs per configuration")
    ap.add_argument("--min-seconds", type=float, default=0.5,
                    help="each timed run lasts at least this long: more frames where --frames"
                    " would take less (default 0.5)")
    ap.add_argument("--quick", action="store_true", help="20 frames, 1 run: a smoke test")
    ap.add_argument("--csv", default="bench-results.csv",
                    help="write the rows to this CSV file (default: bench-results.csv)")
    ap.add_argument("--plot", help="write the bar chart to this PNG (default: the CSV's path"
                    " with .png)")
    ap.add_argument("--no-install", action="store_true",
                    help="install nothing from PyPI: skip onnxruntime and the chart where they"
                    " are not importable already")
    a = ap.parse_args()
    global NO_INSTALL
    NO_INSTALL = a.no_install
    if a.quick:
        a.frames, a.runs, a.min_seconds = 20, 1, 0.0
    sizer = Sizer(a.frames, a.min_seconds)
    models = [m for m in a.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r} (known: {', '.join(MODELS)})")
    build = os.path.abspath(a.build)
    tool = os.path.join(build, "tools", "partime")
    if not os.access(tool, os.X_OK):
        ap.error(f"{tool} not found: build the project or pass --build")
    plot = a.plot or os.path.splitext(a.csv)[0] + ".png"

    sgemm = machine_sgemm()
    print(f"sgemm: {sgemm['gflops']:.1f} GFLOP/s on one core, the fastest of: {sgemm['source']}"
          f" ({SGEMM_N}^3, best of 5); {os.cpu_count()} cores", flush=True)
    import torch
    print(f"pytorch {torch.__version__} ({sys.executable})", flush=True)
    ort_python, what = find_onnxruntime()
    if ort_python is None:
        print(f"onnxruntime: unavailable ({what}), skipped", flush=True)
    else:
        print(f"onnxruntime {what} ({ort_python})", flush=True)
    element, why = element_backend(build)
    if element is None:
        print(f"partimenet element: unavailable ({why}), skipped", flush=True)
    elif element == "launch":
        print("partimenet element: PyGObject missing, timed from gst-launch-1.0's wall time"
              " (inference only)", flush=True)
    gst_env = plugin_path_env(build)

    tmp = tempfile.mkdtemp(prefix="pt_compare_")
    subprocess.run([sys.executable, os.path.join(HERE, "make_models.py"), tmp], check=True,
                   capture_output=True)
    rows = []
    # Each round's own ratios: (model, mode, 2) two stages over one; (model, mode, "ceiling") the
    # independent streams over one stage; (model, mode, "of ceiling") two stages over them;
    # (model, mode, "vs", peer) partime over a peer; (model, mode, "element", stages).
    per_run = {}

    def add(model, mode, contender, par, fps_list, gflop, latency=None, best=False, devices="",
            vs_tool=None, vs_one=None):
        med, lo, hi = summarise(fps_list)
        if best:
            med = hi
        gfs = gflop * FLOP_FACTOR[mode] * med
        r = {"model": model, "mode": mode, "contender": contender, "threads_stages": par,
             "devices": devices, "runs": len(fps_list),
             "fps": round(med, 1), "fps_min": round(lo, 1), "fps_max": round(hi, 1),
             "ms_per_frame": round(1000.0 / med, 3),
             "latency_ms": round(latency, 3) if latency is not None else "",
             "gflops_per_s": round(gfs, 2),
             "pct_sgemm": round(100.0 * gfs / (sgemm["gflops"] * par), 1),
             "vs_tool": "", "vs_one_stage": ""}
        if vs_tool is not None:
            r["vs_tool"] = round(vs_tool, 3)
        if vs_one is not None:
            r["vs_one_stage"] = round(vs_one, 3)
        if contender in ("pytorch", "onnxruntime"):
            r["latency_ms"] = r["ms_per_frame"]  # one frame at a time: the same thing
        rows.append(r)
        extra = f"  {r['vs_tool']:.3f}x the tool" if r["vs_tool"] != "" else ""
        print(f"  {model:9} {mode:9} {contender:11} {par:2} {devices:8} {med:9.1f} fps{extra}",
              flush=True)

    for model in models:
        path = os.path.join(tmp, f"{model}.onnx")
        gflop = partime_gflops(tool, path)
        diff, shape, out_len = check_same_outputs(tool, model, path, tmp)
        print(f"{model}: {gflop:.4f} GFLOPs/frame, PyTorch vs partime max |diff| {diff:.2e}",
              flush=True)
        if not diff <= 1e-4:
            sys.exit(f"{model}: PyTorch and partime outputs differ by {diff} (> 1e-4)")
        for mode in FLOP_FACTOR:
            train = mode == "training"
            peers = [("pytorch", 1), ("pytorch", 2)]
            if mode == "inference" and ort_python:
                peers += [("onnxruntime", 1), ("onnxruntime", 2)]
            # Every contender runs once per round and the rounds repeat, so that all of them meet
            # the same spells of a machine whose speed drifts: each round's own ratios (two
            # stages against one, partime against each peer, the element against the tool) are
            # taken side by side, and the goals report their median and how many rounds meet them.
            el_on = element is not None and not (element == "launch" and train)
            peer_fps = {p: [] for p in peers}
            runs, pinned, el = [], [], {1: [], 2: []}
            for _ in range(a.runs):
                for contender, threads in peers:
                    if contender == "pytorch":
                        res = sizer.run((model, mode, contender, threads), lambda n: (
                            r := run_worker("torch", threads, name=model, onnx=path, mode=mode,
                                            frames=n), r["fps"]))
                    else:
                        res = sizer.run((model, mode, contender, threads), lambda n: (
                            r := run_worker("ort", threads, python=ort_python, name=model,
                                            onnx=path, frames=n), r["fps"]))
                    peer_fps[(contender, threads)].append(res["fps"])

                def tool_run(*args, **kw):
                    return sizer.run((model, mode, "partime"), lambda n: (
                        r := partime_bench(tool, path, n, train, *args, **kw),
                        max(v[0] for v in r.values())))
                # The independent streams: two one-stage streams at once, the two cores' ceiling.
                runs.append(tool_run(independent=True))
                el_round = []
                for stages in (1, 2):
                    if not el_on or el[stages] is None:
                        continue
                    try:
                        if element == "probe":
                            fps = sizer.run((model, mode, "partimenet", stages), lambda n: (
                                f := run_worker("element", stages, env=gst_env, build=build,
                                                onnx=path, mode=mode, frames=n,
                                                size=f"{shape[3]}x{shape[2]}",
                                                out_len=out_len)["fps"], f))
                        else:
                            fps = sizer.run((model, mode, "partimenet", stages), lambda n: (
                                f := element_launch_fps(build, path, stages, n, shape[3],
                                                        shape[2]), f))
                        el_round.append((stages, fps))
                    except RuntimeError as e:
                        print(f"partimenet element: {model} {mode} {stages} stage(s) failed,"
                              f" skipped: {e}", flush=True)
                        el[stages] = None
                if el_round:
                    # The tool once more right after the element: each element run is held
                    # against the geometric mean of the tool's runs just before and just after
                    # it, which cancels a drift that is steady over the minute they take.
                    after = tool_run()
                    for stages, fps in el_round:
                        if el[stages] is not None:
                            el[stages].append((fps, math.sqrt(runs[-1][stages][0]
                                                              * after[stages][0])))
                # Each stage on a CPU device of its own, stated explicitly.
                pinned.append(tool_run("2", "cpu,cpu"))
            for contender, threads in peers:
                # The best process is the peer's real capability; the spread is shown beside it.
                add(model, mode, contender, threads, peer_fps[(contender, threads)], gflop,
                    best=True)
            # partime's best configuration against each peer's, round by round (the same rows
            # as the goal's best-of figures: default devices, one or two stages)
            ours = [max(r[1][0], r[2][0]) for r in runs]
            for peer in {c for c, _ in peers}:
                theirs = [max(peer_fps[(c, t)][i] for c, t in peers if c == peer)
                          for i in range(a.runs)]
                per_run[(model, mode, "vs", peer)] = [o / t for o, t in zip(ours, theirs)]
            # two stages against one: the median of each run's ratio (one process ran both)
            per_run[(model, mode, 2)] = [r[2][0] / r[1][0] for r in runs]
            per_run[(model, mode, "ceiling")] = [r["indep"][0] / r[1][0] for r in runs]
            per_run[(model, mode, "of ceiling")] = [r[2][0] / r["indep"][0] for r in runs]
            for stages in (1, 2):
                fps = [r[stages][0] for r in runs]
                lat = statistics.median(r[stages][1] for r in runs)
                add(model, mode, "partime", stages, fps, gflop, lat,
                    vs_one=statistics.median(per_run[(model, mode, 2)])
                    if stages == 2 else None)
            add(model, mode, "partime", 2, [r[2][0] for r in pinned], gflop,
                statistics.median(r[2][1] for r in pinned), devices="cpu,cpu")
            add(model, mode, "independent", 2, [r["indep"][0] for r in runs], gflop,
                statistics.median(r["indep"][1] for r in runs),
                vs_one=statistics.median(per_run[(model, mode, "ceiling")]))
            for stages in (1, 2):
                if el_on and el[stages]:
                    ratios = [f / t for f, t in el[stages]]
                    per_run[(model, mode, "element", stages)] = ratios
                    add(model, mode, "partimenet", stages, [f for f, _ in el[stages]], gflop,
                        vs_tool=statistics.median(ratios))

    print_table(rows)
    print(f"\nat least {a.frames} timed frames and {a.min_seconds:g} s per run, after {WARMUP}"
          f" warm-up frames, {a.runs} run(s) each (frames per run: {sizer.summary()});"
          f" %sgemm: GFLOP/s over {sgemm['gflops']:.1f} GFLOP/s x the cores the configuration uses"
          f" (threads or stages); vs tool: element / `partime bench` frames/s at the same stages"
          f" (the geometric mean of the tool's runs just before and just after the element's),"
          f" the median over the rounds")
    os.makedirs(os.path.dirname(os.path.abspath(a.csv)), exist_ok=True)
    with open(a.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {a.csv}")
    write_plot(rows, plot)
    goals(rows, ort_python is not None, per_run)


if __name__ == "__main__":
    main()
