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


def recurrent_model(kind: str = "LSTM", direction: str = "forward", *, seq: int = 5, batch: int = 2,
                    size: int = 3, hidden: int = 4, bias: bool = True, initial: str = "none",
                    peepholes: bool = False, outputs: tuple[int, ...] = (0, 1, 2), seed: int = 0,
                    **attrs) -> onnx.ModelProto:
    """One LSTM or GRU node with seeded weights. `initial`: "none", "constant" (initializers) or
    "input" (graph inputs h0/c0); `outputs`: which of Y, Y_h, Y_c become graph outputs; `attrs`
    go to the node (layout=1 makes x batch-major)."""
    rng = np.random.default_rng(seed)
    dirs, gates = (2 if direction == "bidirectional" else 1), (4 if kind == "LSTM" else 3)
    weights = {"W": rng.standard_normal((dirs, gates * hidden, size)).astype(np.float32) * 0.5,
               "R": rng.standard_normal((dirs, gates * hidden, hidden)).astype(np.float32) * 0.5}
    layout = attrs.get("layout", 0)
    state_shape = [batch, dirs, hidden] if layout else [dirs, batch, hidden]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, size] if layout
                                                  else [seq, batch, size])]
    names = ["x", "W", "R", "B" if bias else "", ""]
    if bias:
        weights["B"] = rng.standard_normal((dirs, 2 * gates * hidden)).astype(np.float32) * 0.5
    states = ["h0", "c0"] if kind == "LSTM" else ["h0"]
    for state in states:
        names.append(state if initial != "none" else "")
        if initial == "constant":
            weights[state] = rng.standard_normal(state_shape).astype(np.float32)
        elif initial == "input":
            graph_inputs.append(helper.make_tensor_value_info(state, TensorProto.FLOAT, state_shape))
    if peepholes:
        names.append("P")
        weights["P"] = rng.standard_normal((dirs, 3 * hidden)).astype(np.float32)
    while names and not names[-1]:
        names.pop()
    out_names = ["y", "y_h", "y_c"][:len(states) + 1]
    node_outputs = [name if k in outputs else "" for k, name in enumerate(out_names)]
    while not node_outputs[-1]:
        node_outputs.pop()
    node = helper.make_node(kind, names, node_outputs, name=kind.lower(), hidden_size=hidden, direction=direction,
                            **attrs)
    return make_proto([node], graph_inputs,
                      [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in node_outputs if n], weights)
