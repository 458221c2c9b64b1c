"""Tiny hand-built ONNX models for the IR tests (throwaway protos are fine in tests)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_proto(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    """Wrap nodes into a checked model; outputs declared without a shape get the inferred one."""
    graph = helper.make_graph(list(nodes), "t", list(inputs), [],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(initializers).items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
    for out in outputs:
        has_shape = out.type.tensor_type.HasField("shape")
        proto.graph.output.append(out if has_shape or out.name not in inferred else inferred[out.name])
    onnx.checker.check_model(proto)
    return proto


def branchy_model(seed: int = 0) -> onnx.ModelProto:
    """x -> Conv -> Relu -> (Add with x-conv, Mul) -> y; also an int64 Shape output `s`."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "c"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "r"], ["y"], name="mul"),
        helper.make_node("Shape", ["r"], ["s"], name="shape"),
    ]
    return make_proto(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8]),
                       helper.make_tensor_value_info("s", TensorProto.INT64, [4])],
                      {"w": w, "b": b})
