"""Copies of an onnx-graphsurgeon graph that share read-only weights instead of copying them.

Weights loaded from a model are read-only numpy arrays, so two graphs can hold the same array
safely: a pass that changes a weight must assign a new array. Everything a pass may edit in place
(node attributes, tensor shapes, writeable arrays it made itself) is copied.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx_graphsurgeon as gs


def materialize_constants(graph: gs.Graph) -> None:
    """Load every lazily-loaded weight of `graph` (its subgraphs and node attributes included) into
    a read-only array, once, so that copies share it; then nothing refers to the protobuf any more,
    and its memory is freed.

    numpy-native dtypes are read with one copy (onnx's `to_array`, read-only) instead of
    graphsurgeon's two; other dtypes stay lazy (graphsurgeon would cast them to another type).
    """
    for tensor in _all_tensors(graph):
        _materialize(tensor)
    for node in _all_nodes(graph):
        for value in node.attrs.values():
            if isinstance(value, gs.Constant):
                _materialize(value)
    if graph.import_domains is not None:
        graph.import_domains = [_own_copy(opset) for opset in graph.import_domains]


def _materialize(tensor) -> None:
    from onnx import numpy_helper
    from onnx_graphsurgeon.importers.onnx_importer import get_numpy_type

    lazy = getattr(tensor, "_values", None)
    if not isinstance(tensor, gs.Constant) or type(lazy) is not gs.ir.tensor.LazyValues:
        return
    dtype = get_numpy_type(lazy.dtype)
    if dtype is None or lazy.tensor.data_type == onnx.TensorProto.STRING:
        return  # no numpy dtype (bfloat16, float8...): stays lazy, so export writes the original tensor
    values = np.asarray(numpy_helper.to_array(lazy.tensor), dtype=dtype, order="C")
    values.flags.writeable = False
    tensor.values = values


def _own_copy(message):
    copied = type(message)()
    copied.CopyFrom(message)
    return copied


def share_weights_copy(graph: gs.Graph) -> gs.Graph:
    """An independent copy of `graph`; read-only weight arrays are shared, everything else is copied."""
    materialize_constants(graph)
    clone = graph.copy()
    clone.producer_name, clone.producer_version = graph.producer_name, graph.producer_version
    for source, tensor in _tensor_pairs(graph, clone):
        if isinstance(tensor, gs.Constant):
            if isinstance(tensor._values, np.ndarray) and tensor._values.flags.writeable:
                tensor._values = tensor._values.copy()
            tensor.data_location = source.data_location
        else:
            tensor.type = source.type  # Tensor.copy drops it: sequence and optional values would become tensors
            if tensor.shape is not None:
                tensor.shape = list(tensor.shape)
    for node in _all_nodes(clone):
        node.attrs = {k: _copy_attribute(v) for k, v in node.attrs.items()}
    return clone


def _tensor_pairs(graph: gs.Graph, clone: gs.Graph):
    """(original, copy) of every tensor of `graph` and its subgraphs, matched by position."""
    for source, copied in zip(graph.inputs + graph.outputs, clone.inputs + clone.outputs):
        yield source, copied
    for node, copied_node in zip(graph.nodes, clone.nodes):
        yield from zip(node.inputs + node.outputs, copied_node.inputs + copied_node.outputs)
        for key, value in node.attrs.items():
            if isinstance(value, gs.Graph):
                yield from _tensor_pairs(value, copied_node.attrs[key])


def _copy_attribute(value):
    if isinstance(value, gs.Graph):  # already copied by Graph.copy
        return value
    if isinstance(value, gs.Constant):
        copied = value.copy()
        if isinstance(copied._values, np.ndarray) and copied._values.flags.writeable:
            copied._values = copied._values.copy()
        return copied
    if isinstance(value, gs.Tensor):
        return value.copy()
    return copy.deepcopy(value)


def _all_nodes(graph: gs.Graph):
    yield from graph.nodes
    for sub in graph.subgraphs(recursive=True):
        yield from sub.nodes


def _all_tensors(graph: gs.Graph):
    yield from graph.tensors().values()
    for sub in graph.subgraphs(recursive=True):
        yield from sub.tensors().values()
