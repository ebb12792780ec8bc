#!/usr/bin/python3
"""Writes one small ONNX model per op case for the CUDA op tests (python3-onnx's helper API).

Each model reads x and has every other operand as a trainable initializer, so one backward pass
exercises the gradient of every input. The list of names goes to ops.txt, one per line.
"""
import sys
import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto

out_dir = sys.argv[1]
rng = np.random.default_rng(7)
names = []


def init(name, shape):
    return numpy_helper.from_array(rng.uniform(-0.5, 0.5, size=shape).astype(np.float32), name)


def save(name, x_shape, nodes, inits, y_shape, opset=13):
    """y_shape None: taken from ONNX shape inference."""
    def build(y):
        g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)], inits)
        m = helper.make_model(g, producer_name="partime-tests", opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 7
        return m
    if y_shape is None:
        inferred = onnx.shape_inference.infer_shapes(build(None), strict_mode=True)
        y_shape = [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    model = build(y_shape)
    onnx.checker.check_model(model)
    onnx.save(model, f"{out_dir}/{name}.onnx")
    names.append(name)


def conv(name, x_shape, w_shape, bias=True, **attrs):
    inputs = ["x", "w"] + (["b"] if bias else [])
    inits = [init("w", w_shape)] + ([init("b", [w_shape[0]])] if bias else [])
    save(name, x_shape, [helper.make_node("Conv", inputs, ["y"], **attrs)], inits, None)


def conv_t(name, x_shape, w_shape, **attrs):
    inits = [init("w", w_shape), init("b", [w_shape[1] * attrs.get("group", 1)])]
    save(name, x_shape, [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)], inits, None)


conv("conv_3x3", [1, 3, 12, 12], [8, 3, 3, 3], pads=[1, 1, 1, 1])
conv("conv_stride_nobias", [2, 4, 11, 9], [6, 4, 3, 3], bias=False, strides=[2, 2], pads=[1, 0, 1, 0])
conv("conv_dilated", [1, 4, 13, 13], [4, 4, 3, 3], dilations=[2, 2], pads=[2, 2, 2, 2])
conv("conv_grouped", [1, 8, 10, 10], [8, 4, 3, 3], group=2, pads=[1, 1, 1, 1])
conv("conv_depthwise", [1, 6, 9, 9], [6, 1, 3, 3], group=6, pads=[1, 1, 1, 1])
conv("conv_same_upper", [1, 3, 8, 8], [5, 3, 2, 2], auto_pad="SAME_UPPER")
conv("conv_asym_pads", [1, 2, 7, 6], [3, 2, 3, 3], pads=[0, 1, 2, 0], strides=[1, 2])
conv("conv_5x5", [1, 8, 16, 16], [8, 8, 5, 5], pads=[2, 2, 2, 2])
conv_t("convt_stride2", [1, 4, 5, 5], [4, 3, 3, 3], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
conv_t("convt_grouped", [1, 4, 6, 6], [4, 2, 2, 2], strides=[2, 2], group=2)
conv_t("convt_asym", [1, 3, 5, 4], [3, 2, 3, 3], strides=[2, 1], pads=[0, 1, 1, 0])


def gemm(name, a_shape, b_shape, c_shape, **attrs):
    inputs = ["x", "w"] + (["c"] if c_shape is not None else [])
    inits = [init("w", b_shape)] + ([init("c", c_shape)] if c_shape is not None else [])
    save(name, a_shape, [helper.make_node("Gemm", inputs, ["y"], **attrs)], inits, None)


gemm("gemm_row_bias", [3, 7], [5, 7], [5], transB=1)
gemm("gemm_plain_full_c", [4, 6], [6, 5], [4, 5], alpha=0.7, beta=1.3)
gemm("gemm_transA_scalar", [6, 4], [6, 3], [1], transA=1, beta=0.5)
gemm("gemm_both_col", [5, 2], [3, 5], [2, 1], transA=1, transB=1)
gemm("gemm_no_c", [2, 9], [9, 4], None)


def matmul(name, x_shape, w_shape):
    save(name, x_shape, [helper.make_node("MatMul", ["x", "w"], ["y"])], [init("w", w_shape)], None)


matmul("matmul_2d", [5, 7], [7, 3])
matmul("matmul_batched", [3, 4, 5], [3, 5, 2])
matmul("matmul_broadcast_b", [2, 3, 4, 6], [6, 5])
matmul("matmul_broadcast_a", [4, 6], [3, 6, 2])

for op in ["Add", "Sub", "Mul", "Div"]:
    save(f"{op.lower()}_full", [2, 3, 4], [helper.make_node(op, ["x", "w"], ["y"])],
         [numpy_helper.from_array(rng.uniform(0.5, 1.5, size=[2, 3, 4]).astype(np.float32), "w")], None)
    save(f"{op.lower()}_broadcast", [2, 3, 4, 5], [helper.make_node(op, ["x", "w"], ["y"])],
         [numpy_helper.from_array(rng.uniform(0.5, 1.5, size=[3, 1, 5]).astype(np.float32), "w")], None)

# unary ops behind a trainable Mul so the input gradient flows through a parameter
for op, attrs in [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("Tanh", {})]:
    save(op.lower(), [2, 3, 5, 5], [helper.make_node("Mul", ["x", "s"], ["t"]),
                                    helper.make_node(op, ["t"], ["y"], **attrs)],
         [init("s", [3, 1, 1])], None)


def pool(name, x_shape, op, **attrs):
    save(name, x_shape, [helper.make_node("Mul", ["x", "s"], ["t"]), helper.make_node(op, ["t"], ["y"], **attrs)],
         [init("s", [x_shape[1], 1, 1])], None)


pool("maxpool_2x2", [1, 4, 8, 8], "MaxPool", kernel_shape=[2, 2], strides=[2, 2])
pool("maxpool_pad", [1, 3, 9, 9], "MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
pool("maxpool_ceil", [1, 3, 8, 8], "MaxPool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
pool("maxpool_asym", [1, 2, 7, 7], "MaxPool", kernel_shape=[2, 2], pads=[0, 0, 1, 1])
pool("maxpool_dilated", [1, 2, 9, 9], "MaxPool", kernel_shape=[2, 2], dilations=[2, 2])
pool("avgpool_include", [1, 3, 8, 8], "AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
pool("avgpool_exclude", [1, 3, 8, 8], "AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
pool("avgpool_asym", [1, 2, 6, 6], "AveragePool", kernel_shape=[2, 2], pads=[1, 1, 0, 0])
pool("global_avgpool", [2, 5, 6, 7], "GlobalAveragePool")

save("batchnorm", [2, 4, 5, 5], [helper.make_node("BatchNormalization", ["x", "g", "b", "mu", "var"], ["y"], epsilon=1e-3)],
     [init("g", [4]), init("b", [4]), init("mu", [4]),
      numpy_helper.from_array(rng.uniform(0.5, 2.0, size=[4]).astype(np.float32), "var")], None)
for op in ["Softmax", "LogSoftmax"]:
    save(op.lower(), [3, 10], [helper.make_node("Mul", ["x", "s"], ["t"]), helper.make_node(op, ["t"], ["y"], axis=1)],
         [init("s", [10])], None)
    save(op.lower() + "_inner", [2, 4, 3], [helper.make_node("Mul", ["x", "s"], ["t"]), helper.make_node(op, ["t"], ["y"], axis=1)],
         [init("s", [4, 3])], None)
save("concat", [2, 3, 4], [helper.make_node("Mul", ["x", "s"], ["t"]),
                           helper.make_node("Concat", ["x", "w", "t"], ["y"], axis=1)],
     [init("s", [3, 4]), init("w", [2, 2, 4])], None)
save("resize_nearest", [1, 2, 3, 4], [helper.make_node("Mul", ["x", "s"], ["t"]),
                                      helper.make_node("Resize", ["t", "", "scales"], ["y"], mode="nearest")],
     [init("s", [2, 1, 1]), numpy_helper.from_array(np.array([1, 1, 2, 3], dtype=np.float32), "scales")], None)
save("flatten_gemm", [2, 3, 2, 2], [helper.make_node("Flatten", ["x"], ["f"], axis=1),
                                    helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)],
     [init("w", [4, 12]), init("b", [4])], None)

with open(f"{out_dir}/ops.txt", "w") as f:
    f.write("\n".join(names) + "\n")
