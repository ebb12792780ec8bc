#!/usr/bin/python3
"""Writes the tiny ONNX models the element tests use into tests/check/data/.

The built-in models cover the common cases; these cover the corners: a gray (1-channel) input, an
input video cannot feed (2 channels), an RGBA (4-channel) input and a classifier that ends in a
Softmax. Run with Debian's python3-onnx: /usr/bin/python3 tests/check/make-models.py
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
rng = np.random.default_rng(1234)


def conv_model(name, channels, size):
    w = (rng.standard_normal((channels, channels, 3, 3)) * 0.1).astype(np.float32)
    b = np.zeros(channels, np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["output"], pads=[1, 1, 1, 1],
                          kernel_shape=[3, 3], name="conv")],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, size, size])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return g


def softmax_classifier(name, size, classes):
    n = 3 * size * size
    w = (rng.standard_normal((classes, n)) * 0.05).astype(np.float32)
    b = np.zeros(classes, np.float32)
    g = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1, name="flatten"),
         helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1, name="fc"),
         helper.make_node("Softmax", ["logits"], ["output"], axis=1, name="softmax")],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return g


def save(graph, filename):
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                          producer_name="partimenet-tests")
    m.ir_version = 7
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(HERE, filename))


if __name__ == "__main__":
    os.makedirs(HERE, exist_ok=True)
    save(conv_model("gray", 1, 16), "gray16.onnx")
    save(conv_model("twochannels", 2, 8), "twochannels.onnx")
    save(conv_model("rgba", 4, 8), "rgba8.onnx")
    save(softmax_classifier("softmax", 8, 4), "softmax4.onnx")
