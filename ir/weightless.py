"""Weightless copies of a model for the onnx checker and shape inference.

The checker and shape inference need the graph, the dtypes and the dims of the weights,
not their values. `strip_weights` copies a ModelProto with every large float weight
replaced by an external-data stub (name, dtype, dims, and a location that names an empty
file); `check_stripped` runs the checker on such a copy in a folder that holds the empty
file, and `restore_weights` puts the inferred graph back around the original weights.

A weight is stubbed only when that cannot change what the checker or shape inference
report: a main-graph initializer of a float type whose only value field is `raw_data` of
exactly the size its dims and dtype call for, read only by ops whose shape inference never
looks at input values (Conv, Gemm, MatMul, BatchNormalization, element-wise arithmetic...),
and not referenced from a subgraph. Anything else (a hostile tensor, a Reshape shape, a
Resize scale) travels with its values, so refusals and inferred shapes stay the same.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import onnx

from slimcc.errors import SlimccError
from slimcc.ir.protofields import is_repeated

MIN_STUB_BYTES = 4096
STUB_FILE = "slimcc-weights-stay-in-parent.bin"
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                         onnx.TensorProto.BFLOAT16})
# default-domain ops whose type/shape inference reads only the dtype and dims of these inputs
VALUE_BLIND_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization",
    "LayerNormalization", "GroupNormalization", "Add", "Sub", "Mul", "Div", "PRelu", "Sum", "Max", "Min",
    "Where", "LSTM", "GRU", "RNN", "Einsum", "DequantizeLinear", "QuantizeLinear", "Identity",
})
_VALUE_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_IR_RANGE = (4, onnx.IR_VERSION)


def _nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the dims and dtype of a float tensor call for (None for a negative dim)."""
    count = 1
    for dim in tensor.dims:
        if dim < 0:
            return None
        count *= int(dim)
    itemsize = 8 if tensor.data_type == onnx.TensorProto.DOUBLE else 4 if tensor.data_type == onnx.TensorProto.FLOAT \
        else 2
    return count * itemsize


def _subgraph_names(graph: onnx.GraphProto) -> set[str]:
    """Every name a nested subgraph (If/Loop/Scan body) mentions as a node input."""
    names: set[str] = set()
    stack = [attr for node in graph.node for attr in node.attribute]
    while stack:
        attr = stack.pop()
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for node in sub.node:
                names.update(node.input)
                stack.extend(node.attribute)
    return names


def stubbable(proto: onnx.ModelProto, min_bytes: int = MIN_STUB_BYTES, *, trusted: bool = False,
              external: dict | None = None) -> set[str]:
    """Names of the main-graph initializers `strip_weights` replaces by stubs (see the module doc).

    `trusted` (a proto slimcc exported itself from a checked model) skips measuring `raw_data`,
    which costs a copy of the weights. Export stubs whose arrays are in `external` count as
    weights of the right size.
    """
    graph = proto.graph
    if not _IR_RANGE[0] <= proto.ir_version <= _IR_RANGE[1]:
        return set()
    blocked = _subgraph_names(graph) | {o.name for o in graph.output}
    consumers: dict[str, bool] = {}
    for node in graph.node:
        blind = node.domain in ("", "ai.onnx") and node.op_type in VALUE_BLIND_OPS
        for name in node.input:
            consumers[name] = consumers.get(name, True) and blind
    seen: set[str] = set()
    chosen: set[str] = set()
    for tensor in graph.initializer:
        name = tensor.name
        if name in seen:  # duplicates: leave every copy alone, the checker names them
            chosen.discard(name)
            continue
        seen.add(name)
        if tensor.data_type not in FLOAT_TYPES or name in blocked or not consumers.get(name, True):
            continue
        stub = external is not None and name in external and tensor.data_location == onnx.TensorProto.EXTERNAL
        if not stub and (tensor.data_location != onnx.TensorProto.DEFAULT or len(tensor.external_data)
                         or tensor.HasField("segment") or not tensor.HasField("raw_data")
                         or any(len(getattr(tensor, f)) for f in _VALUE_FIELDS)):
            continue
        expected = _nbytes(tensor)
        if expected is None or expected < max(min_bytes, 1) or (
                not (trusted or stub) and len(tensor.raw_data) != expected):
            continue
        chosen.add(name)
    return chosen


def strip_weights(proto: onnx.ModelProto, *, min_bytes: int = MIN_STUB_BYTES, trusted: bool = False) -> onnx.ModelProto:
    """A copy of `proto` whose stubbable weights (`stubbable`) keep name, dtype and dims but no values."""
    chosen = stubbable(proto, min_bytes, trusted=trusted)

    def stub_location(stub: onnx.TensorProto, tensor: onnx.TensorProto) -> None:
        location = stub.external_data.add()
        location.key, location.value = "location", STUB_FILE

    return copy_with_stubs(proto, chosen, stub_location)


def inline_read_values(proto: onnx.ModelProto, external: dict) -> onnx.ModelProto:
    """Make an export with stubs (`Model.to_proto(external=...)`) weightless by the rules of `stubbable`:
    a stub whose values the checker or shape inference may read gets them back inline (and leaves
    `external`). Returns `proto`, changed in place."""
    from onnx import numpy_helper

    keep = stubbable(proto, 1, trusted=True, external=external)
    for tensor in proto.graph.initializer:
        if tensor.name in external and tensor.name not in keep and tensor.data_location == onnx.TensorProto.EXTERNAL:
            tensor.CopyFrom(numpy_helper.from_array(external.pop(tensor.name), tensor.name))
    return proto


def copy_with_stubs(proto: onnx.ModelProto, chosen: set[str], fill: Callable) -> onnx.ModelProto:
    """A copy of `proto` whose main-graph initializers named in `chosen` become external-data tensors
    without values; `fill(stub, tensor)` adds their external_data entries. Other weights are copied."""
    stripped = onnx.ModelProto()
    for descriptor, value in proto.ListFields():
        if descriptor.name != "graph":
            _copy_field(stripped, descriptor, value)
    graph = stripped.graph
    for descriptor, value in proto.graph.ListFields():
        if descriptor.name != "initializer":
            _copy_field(graph, descriptor, value)
    for tensor in proto.graph.initializer:
        if tensor.name not in chosen:
            graph.initializer.add().CopyFrom(tensor)
            continue
        stub = graph.initializer.add()
        stub.name, stub.data_type = tensor.name, tensor.data_type
        stub.dims.extend(tensor.dims)
        if tensor.doc_string:
            stub.doc_string = tensor.doc_string
        for entry in tensor.metadata_props:
            stub.metadata_props.add().CopyFrom(entry)
        stub.data_location = onnx.TensorProto.EXTERNAL
        fill(stub, tensor)
    return stripped


def _copy_field(target, descriptor, value) -> None:
    if is_repeated(descriptor):
        getattr(target, descriptor.name).extend(value)
    elif descriptor.type == descriptor.TYPE_MESSAGE:
        getattr(target, descriptor.name).CopyFrom(value)
    else:
        setattr(target, descriptor.name, value)


def has_stubs(proto: onnx.ModelProto) -> bool:
    """True when some main-graph initializer is a `strip_weights` stub."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL and any(e.value == STUB_FILE for e in t.external_data)
               for t in proto.graph.initializer)


def check_stripped(stripped: onnx.ModelProto) -> None:
    """onnx.checker.check_model on a (possibly) stripped model; stubs point at an empty file it can see.

    Raises what the checker raises (ValidationError and C++-level errors).
    """
    if not has_stubs(stripped):
        onnx.checker.check_model(stripped)
        return
    with tempfile.TemporaryDirectory(prefix="slimcc-check-") as folder:
        Path(folder, STUB_FILE).touch()
        path = os.path.join(folder, "model.onnx")
        with open(path, "wb") as handle:
            handle.write(stripped.SerializeToString())
        onnx.checker.check_model(path)


def restore_weights(inferred: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """`original` with the graph of `inferred` (nodes, inputs, outputs, value_info) taken over.

    `inferred` is the checker/shape-inference result of `strip_weights(original)`: it differs
    from `original` only in inferred types and shapes. The weights of `original` are not copied.
    """
    source, target = inferred.graph, original.graph
    if [t.name for t in source.initializer] != [t.name for t in target.initializer]:
        raise SlimccError("shape inference changed the model's weights (internal error)")
    for field in ("node", "input", "output", "value_info"):
        target.ClearField(field)
        getattr(target, field).extend(getattr(source, field))
    return original
