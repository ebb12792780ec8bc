#!/usr/bin/python3
"""Writes the small ONNX models the engine tests run (python3-onnx's helper API).

scalar_D.onnx   x (1) -> Mul(w_1) -> ... -> Mul(w_D): the scalar stages of the lag property.
convnet.onnx    a 12-node conv net on 1x3x16x16 with a 10-way head.
convnet_split.onnx  the same with its last convolution written as two halves and a Concat.
three.onnx      three equally heavy conv-relu layers.
residual.onnx   conv blocks whose skip connections cross any cut between them.
smallnet.onnx   conv 3->16, four conv 16->16 (3x3, each with a ReLU) and a 1x1 head to 10 on
                1x3x32x32: the layer kinds of bench/make_models.py's `small` (a direct first
                layer, F(4x4, 3x3) layers handing over pixel-major, a direct head).
"""
import sys
import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto

out_dir = sys.argv[1]
rng = np.random.default_rng(1234)


def save(graph, name):
    model = helper.make_model(graph, producer_name="partime-tests",
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, f"{out_dir}/{name}")


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def conv_w(oc, c, k):
    bound = 1.0 / np.sqrt(c * k * k)
    return rng.uniform(-bound, bound, size=(oc, c, k, k)).astype(np.float32)


for D in range(1, 7):
    nodes, inits = [], []
    prev = "x"
    for j in range(D):
        inits.append(init(f"w{j}", [1.0]))
        nodes.append(helper.make_node("Mul", [prev, f"w{j}"], [f"a{j}"], name=f"mul{j}"))
        prev = f"a{j}"
    g = helper.make_graph(nodes, f"scalar{D}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1])], inits)
    save(g, f"scalar_{D}.onnx")

# convnet: conv-relu x4 (one strided), maxpool, flatten, gemm, relu, gemm
conv_specs = [(8, 1), (8, 2), (16, 1), (16, 1)]
conv_ws, c = [], 3
for oc, s in conv_specs:
    conv_ws.append((conv_w(oc, c, 3), rng.uniform(-0.1, 0.1, oc)))
    c = oc
fc1 = rng.uniform(-0.1, 0.1, (32, 256))
fc2 = rng.uniform(-0.2, 0.2, (10, 32))


def convnet(split_last):
    """convnet; with split_last, its last convolution written as two halves of 8 output channels
    (each with its Relu) joined by a Concat, as a stream runs it with balance "6+8,-1"."""
    nodes, inits = [], []
    prev = "x"
    for i, (oc, s) in enumerate(conv_specs):
        w, b = conv_ws[i]
        attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[s, s])
        if split_last and i == len(conv_specs) - 1:
            halves = []
            for h, rows in enumerate([slice(0, 8), slice(8, oc)]):
                sfx = f"/split{h}"
                inits += [init(f"c{i}.w" + sfx, w[rows]), init(f"c{i}.b" + sfx, b[rows])]
                nodes.append(helper.make_node("Conv", [prev, f"c{i}.w" + sfx, f"c{i}.b" + sfx],
                                              [f"c{i}" + sfx], name=f"conv{i}" + sfx, **attrs))
                nodes.append(helper.make_node("Relu", [f"c{i}" + sfx], [f"r{i}" + sfx],
                                              name=f"relu{i}" + sfx))
                halves.append(f"r{i}" + sfx)
            nodes.append(helper.make_node("Concat", halves, [f"r{i}"], name=f"conv{i}/join", axis=1))
        else:
            inits += [init(f"c{i}.w", w), init(f"c{i}.b", b)]
            nodes.append(helper.make_node("Conv", [prev, f"c{i}.w", f"c{i}.b"], [f"c{i}"],
                                          name=f"conv{i}", **attrs))
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        prev = f"r{i}"
    nodes.append(helper.make_node("MaxPool", [prev], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
    nodes.append(helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1))
    inits += [init("fc1.w", fc1), init("fc1.b", np.zeros(32))]
    nodes.append(helper.make_node("Gemm", ["f", "fc1.w", "fc1.b"], ["h"], name="fc1", transB=1))
    nodes.append(helper.make_node("Relu", ["h"], ["hr"], name="relu_fc"))
    inits += [init("fc2.w", fc2), init("fc2.b", np.zeros(10))]
    nodes.append(helper.make_node("Gemm", ["hr", "fc2.w", "fc2.b"], ["y"], name="fc2", transB=1))
    return helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)


save(convnet(False), "convnet.onnx")
save(convnet(True), "convnet_split.onnx")

def conv_relu_chain(conv, relu, channels_in, oc):
    """3x3 conv (pads 1, bias) + relu layers from input x, one per entry of channels_in (its
    input channels) to oc channels: conv i writes f"{conv}{i}", relu i f"{relu}{i}", the weights
    f"{conv}{i}.w" and .b. Returns the nodes, the initializers and the last output's name."""
    nodes, inits = [], []
    prev = "x"
    for i, c in enumerate(channels_in):
        inits += [init(f"{conv}{i}.w", conv_w(oc, c, 3)), init(f"{conv}{i}.b", rng.uniform(-0.1, 0.1, oc))]
        nodes.append(helper.make_node("Conv", [prev, f"{conv}{i}.w", f"{conv}{i}.b"], [f"{conv}{i}"],
                                      name=f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"{conv}{i}"], [f"{relu}{i}"], name=f"relu{i}"))
        prev = f"{relu}{i}"
    return nodes, inits, prev


# three: three equally heavy conv-relu layers, which two whole-layer stages cannot balance
nodes, inits, prev = conv_relu_chain("t", "u", [32, 32, 32], 32)
g = helper.make_graph(nodes, "three", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 24, 24])],
                      [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 32, 24, 24])], inits)
save(g, "three.onnx")

# residual: stem conv, then 3 blocks y = relu(x + conv(relu(conv(x)))), then a 1x1 conv head
nodes, inits = [], []
inits += [init("stem.w", conv_w(8, 3, 3)), init("stem.b", np.zeros(8))]
nodes.append(helper.make_node("Conv", ["x", "stem.w", "stem.b"], ["s"], name="stem", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
nodes.append(helper.make_node("Relu", ["s"], ["b0"], name="stem_relu"))
prev = "b0"
for i in range(3):
    inits += [init(f"b{i}.w1", conv_w(8, 8, 3)), init(f"b{i}.w2", conv_w(8, 8, 3))]
    nodes.append(helper.make_node("Conv", [prev, f"b{i}.w1"], [f"b{i}c1"], name=f"b{i}conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", [f"b{i}c1"], [f"b{i}r1"], name=f"b{i}relu1"))
    nodes.append(helper.make_node("Conv", [f"b{i}r1", f"b{i}.w2"], [f"b{i}c2"], name=f"b{i}conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Add", [f"b{i}c2", prev], [f"b{i}sum"], name=f"b{i}add"))
    nodes.append(helper.make_node("Relu", [f"b{i}sum"], [f"b{i + 1}"], name=f"b{i}relu2"))
    prev = f"b{i + 1}"
inits += [init("head.w", conv_w(3, 8, 1)), init("head.b", np.zeros(3))]
nodes.append(helper.make_node("Conv", [prev, "head.w", "head.b"], ["y"], name="head", kernel_shape=[1, 1]))
g = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 12, 12])], inits)
save(g, "residual.onnx")

# smallnet: `small`'s kinds of layer, for the no-allocation test with the default kernels
nodes, inits, prev = conv_relu_chain("s", "r", [3, 16, 16, 16, 16], 16)
inits += [init("head.w", conv_w(10, 16, 1)), init("head.b", np.zeros(10))]
nodes.append(helper.make_node("Conv", [prev, "head.w", "head.b"], ["y"], name="head", kernel_shape=[1, 1]))
g = helper.make_graph(nodes, "smallnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10, 32, 32])], inits)
save(g, "smallnet.onnx")
