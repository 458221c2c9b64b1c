"""Hand-built test graphs for the low-rank passes, and a helper to expose inner tensors as outputs."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from slimcc.ir.model import Model, load_model


def conv_model(cin=16, cout=24, kernel=(3, 3), size=(12, 12), seed=0, bias=True, relu=True, opset=17,
               **attrs) -> Model:
    """x -> Conv(attrs) [-> Relu] -> y, with a random (not low-rank) weight."""
    rng = np.random.default_rng(seed)
    group = attrs.get("group", 1)
    w = (rng.standard_normal((cout, cin // group, *kernel)) / np.sqrt(cin * np.prod(kernel))).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["c" if relu else "y"], name="conv", kernel_shape=list(kernel), **attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, *size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return load_model(proto)


def gemm_model(m=4, k=48, n=40, seed=0, op="Gemm", bias=True, **attrs) -> Model:
    """x -> Gemm(attrs) / MatMul with a constant B -> y."""
    rng = np.random.default_rng(seed)
    trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    inits = [numpy_helper.from_array(b, "B")]
    inputs = ["x", "B"]
    if op == "Gemm" and bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "C"))
        inputs.append("C")
    x_shape = ([k, m] if trans_a else [m, k]) if op == "Gemm" else [2, m, k]
    node = helper.make_node(op, inputs, ["y"], name="fc", **(attrs if op == "Gemm" else {}))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["d"] * len(x_shape))], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return load_model(proto)


def with_outputs(model: Model, names: list[str]) -> Model:
    """A copy of `model` whose graph outputs are the named tensors."""
    copy = model.copy()
    tensors = copy.graph.tensors()
    copy.graph.outputs = [tensors[name] for name in names]
    return copy


def ppocr_det(real_model_path) -> Model:
    """PP-OCRv4 det at 1x3x320x320 (weights held by Constant nodes, as shipped), via the conftest fixture."""
    return load_model(real_model_path("ppocr-det"), {"x": [1, 3, 320, 320]})


def relative_max_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |a|."""
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(float(np.max(np.abs(a))), 1e-12))
