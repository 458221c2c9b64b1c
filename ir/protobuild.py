"""Models built from scratch as onnx protobufs (the model zoo, benches, tests).

Builders outside `slimcc.ir` name their tensors, give weights as numpy arrays and attributes as
keywords; this module makes the protobuf messages, so only `slimcc.ir` touches them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OnnxModel = onnx.ModelProto  # what builders return: an onnx.ModelProto
OnnxNode = onnx.NodeProto
OnnxTensor = onnx.TensorProto


def make_node(op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> OnnxNode:
    """One default-domain node; attributes are given as Python values (ints, floats, lists, strings)."""
    return helper.make_node(op, inputs, outputs, name=name, **attrs)


def make_initializer(name: str, array: np.ndarray) -> OnnxTensor:
    """A weight tensor holding `array` (copied, in C order)."""
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def make_float_model(nodes: list[OnnxNode], initializers: list[OnnxTensor], graph_name: str,
                     inputs: dict[str, list[int]], outputs: dict[str, list[int]], *, opset: int,
                     ir_version: int, producer: str) -> OnnxModel:
    """A model with float32 graph inputs and outputs of the given static shapes, default-domain `opset`."""
    graph = helper.make_graph(
        nodes, graph_name,
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs.items()],
        initializer=initializers)
    model = helper.make_model(graph, producer_name=producer, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def probe_float_tensors(model: OnnxModel, names: list[str], feeds: dict[str, np.ndarray],
                        swap: dict[str, tuple[str, list[str], dict]] | None = None) -> list[np.ndarray]:
    """The float tensors `names` (any intermediate ones) of one onnxruntime run of a copy of `model`
    in which each node named in `swap` is replaced by (op, inputs, attributes) with the same outputs."""
    from slimcc.ir.verify import run_onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    swap = swap or {}
    for node in probe.graph.node:
        if node.name in swap:
            op, inputs, attrs = swap[node.name]
            node.CopyFrom(helper.make_node(op, inputs, list(node.output), name=node.name, **attrs))
    probe.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names)
    values = run_onnxruntime(probe, feeds)
    return [values[name] for name in names]


def set_initializers(model: OnnxModel, arrays: dict[str, np.ndarray]) -> None:
    """Replace the values of the named initializers of `model`'s main graph, in place."""
    for tensor in model.graph.initializer:
        if tensor.name in arrays:
            tensor.CopyFrom(make_initializer(tensor.name, arrays[tensor.name]))
