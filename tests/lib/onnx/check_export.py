"""Checks the ONNX files libpartime writes with ONNX's own checker, and their numbers with PyTorch.

Usage: check_export.py EXPORT_BUILTIN_EXE

Runs the exporter into a temporary directory, then for each built-in model:
- onnx.checker.check_model (full check, strict shape inference) accepts the file, and the
  inferred output shape is the documented one;
- the file says IR version 7, opset 13, producer "partime";
- PyTorch, running the file's graph with the file's weights, gives what our executor gave;
- a checkpoint holds the current weights (0.5 * p + 0.25 of the original ones).
Exits 77 (skipped) when onnx or torch cannot be imported.
"""
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import onnx
    from onnx import checker, numpy_helper, shape_inference
    import torch
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover
    print("skipping:", e)
    sys.exit(77)

failures = 0


def check(cond, what):
    global failures
    if cond:
        print("ok:", what)
    else:
        print("FAIL:", what)
        failures += 1


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def run_torch(model, x):
    """A tiny interpreter for the ops the built-ins use."""
    env = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    env[model.graph.input[0].name] = torch.from_numpy(x)
    for n in model.graph.node:
        a = attrs(n)
        i = [env[k] if k else None for k in n.input]
        op = n.op_type
        if op in ("Conv", "ConvTranspose"):
            pads = a.get("pads", [0, 0, 0, 0])
            assert pads[0] == pads[2] and pads[1] == pads[3]
            f = F.conv2d if op == "Conv" else F.conv_transpose2d
            y = f(i[0], i[1], i[2] if len(i) > 2 else None, stride=a.get("strides", [1, 1]),
                  padding=pads[:2])
        elif op == "Relu":
            y = F.relu(i[0])
        elif op == "Sigmoid":
            y = torch.sigmoid(i[0])
        elif op == "MaxPool":
            y = F.max_pool2d(i[0], a["kernel_shape"], a.get("strides", a["kernel_shape"]))
        elif op == "Flatten":
            y = torch.flatten(i[0], a.get("axis", 1))
        elif op == "Gemm":
            w = i[1].t() if a.get("transB", 0) else i[1]
            y = i[0] @ w + i[2]
        else:
            raise RuntimeError("unexpected op " + op)
        env[n.output[0]] = y
    return env[model.graph.output[0].name].numpy()


def main():
    exe = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([exe, d], check=True)
        shapes = {"autoencoder": ([1, 3, 64, 64], [1, 3, 64, 64]),
                  "classifier": ([1, 3, 32, 32], [1, 10])}
        for name, (ishape, oshape) in shapes.items():
            path = os.path.join(d, name + ".onnx")
            m = onnx.load(path)
            try:
                checker.check_model(m, full_check=True)
                check(True, f"{name}: onnx.checker accepts the file")
            except Exception as e:  # the checker raises on any violation
                check(False, f"{name}: onnx.checker: {e}")
            check(m.ir_version == 7, f"{name}: ir_version {m.ir_version}")
            check([(o.domain, o.version) for o in m.opset_import] == [("", 13)],
                  f"{name}: opset 13")
            check(m.producer_name == "partime", f"{name}: producer {m.producer_name!r}")
            inf = shape_inference.infer_shapes(m, strict_mode=True)
            dims = [x.dim_value for x in inf.graph.output[0].type.tensor_type.shape.dim]
            check(dims == oshape, f"{name}: inferred output shape {dims}")
            names = [n.name for n in m.graph.node]
            check(all(names) and len(set(names)) == len(names), f"{name}: named nodes {names}")
            x = np.fromfile(os.path.join(d, name + ".in.f32"), dtype="<f4").reshape(ishape)
            ours = np.fromfile(os.path.join(d, name + ".out.f32"), dtype="<f4").reshape(oshape)
            with torch.no_grad():
                ref = run_torch(m, x)
            err = float(np.max(np.abs(ours - ref)))
            check(np.allclose(ours, ref, rtol=1e-4, atol=1e-5),
                  f"{name}: PyTorch agrees with our forward (max diff {err:.3g})")
        base = onnx.load(os.path.join(d, "classifier.onnx"))
        trained = onnx.load(os.path.join(d, "classifier_trained.onnx"))
        checker.check_model(trained, full_check=True)
        b = {t.name: numpy_helper.to_array(t) for t in base.graph.initializer}
        t = {t.name: numpy_helper.to_array(t) for t in trained.graph.initializer}
        check(sorted(b) == sorted(t), "checkpoint keeps every initializer")
        worst = max(float(np.max(np.abs(t[k] - (0.5 * b[k] + 0.25)))) for k in b)
        check(worst < 1e-6, f"checkpoint holds the current weights (max diff {worst:.3g})")
        check(len(trained.graph.node) == len(base.graph.node), "checkpoint keeps the graph")
    print(f"{failures} failures")
    sys.exit(1 if failures else 0)


main()
