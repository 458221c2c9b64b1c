"""Write a ModelProto whose weights are numpy arrays without building one protobuf message.

`Model.to_proto(external=...)` gives the graph with its large weights as stubs and their arrays
beside it. Serializing a real ModelProto would copy every weight twice (into protobuf, then into
the serialized bytes); this writes the same protobuf wire format piece by piece, each array
straight from its memory. A reader sees an ordinary ONNX file: the graph field simply comes last.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np
import onnx

_LEN = 2  # wire type of length-delimited fields
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int) -> bytes:
    return _varint(field << 3 | _LEN)


def _raw(array: np.ndarray) -> memoryview:
    """The little-endian bytes of `array` (a view when it is already contiguous and little-endian)."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return memoryview(np.asarray(array, order="C")).cast("B")


def is_stub_of(tensor: onnx.TensorProto, external: dict[str, np.ndarray]) -> bool:
    """True when `tensor` is an export stub whose values are `external[tensor.name]`."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.name in external


def write_inline(handle: BinaryIO, proto: onnx.ModelProto, external: dict[str, np.ndarray]) -> int:
    """Write `proto` with every stub's array as its raw_data; returns the bytes written."""
    head = onnx.ModelProto()
    head.CopyFrom(proto)  # the graph holds stubs only: small
    head.ClearField("graph")
    rest = onnx.GraphProto()
    rest.CopyFrom(proto.graph)
    rest.ClearField("initializer")
    parts: list[bytes | memoryview] = [rest.SerializeToString()]
    for tensor in proto.graph.initializer:
        if not is_stub_of(tensor, external):
            body = tensor.SerializeToString()
            parts += [_key(_GRAPH_INITIALIZER), _varint(len(body)), body]
            continue
        meta = onnx.TensorProto()
        meta.CopyFrom(tensor)
        meta.ClearField("data_location")
        meta.ClearField("external_data")
        body, data = meta.SerializeToString(), _raw(external[tensor.name])
        raw_head = _key(_TENSOR_RAW_DATA) + _varint(data.nbytes)
        parts += [_key(_GRAPH_INITIALIZER), _varint(len(body) + len(raw_head) + data.nbytes), body, raw_head, data]
    graph_size = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
    written = handle.write(head.SerializeToString()) + handle.write(_key(_MODEL_GRAPH) + _varint(graph_size))
    for part in parts:
        written += handle.write(part)
    return written


def write_external(data_handle: BinaryIO, proto: onnx.ModelProto, external: dict[str, np.ndarray],
                   location: str) -> None:
    """Write every stub's array into `data_handle` and point the stub there (location, offset, length)."""
    for tensor in proto.graph.initializer:
        if not is_stub_of(tensor, external):
            continue
        offset = data_handle.tell()
        length = data_handle.write(_raw(external[tensor.name]))
        del tensor.external_data[:]
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    data_handle.flush()
    os.fsync(data_handle.fileno())
