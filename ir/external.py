"""Confined loading of ONNX external data: files must live inside the model's folder.

A model file is untrusted input. Its external-data entries name files by relative path;
slimcc reads them only from inside the model's folder (no `..`, no absolute paths, no
symlinks that lead out, no devices or FIFOs), and checks offset and length against the
file's size (and the tensor's declared size) before reading a single byte.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from slimcc.errors import ModelLoadError


def _external_fields(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def resolve_external_file(base_dir: Path, location: str) -> Path:
    """Return the resolved path of an external-data file, refusing anything outside base_dir."""
    if not location or "\x00" in location:
        raise ModelLoadError(f"external data path {location!r} is empty or malformed")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise ModelLoadError(f"external data path {location!r} must be relative to the model's folder")
    parts = Path(location.replace("\\", "/")).parts
    if ".." in parts:
        raise ModelLoadError(f"external data path {location!r} leaves the model's folder")
    try:
        base = base_dir.resolve()
        resolved = (base / Path(*parts)).resolve()
    except (OSError, RuntimeError, ValueError):  # symlink loops, over-long names
        raise ModelLoadError(f"external data path {location!r} cannot be resolved") from None
    if base == resolved or base not in resolved.parents:
        raise ModelLoadError(f"external data path {location!r} resolves outside the model's folder")
    try:
        mode = resolved.stat().st_mode
    except OSError:
        raise ModelLoadError(f"external data file {location!r} is missing next to the model") from None
    if not stat.S_ISREG(mode):
        raise ModelLoadError(f"external data path {location!r} is not a regular file")
    return resolved


def iter_all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of a model: initializers, sparse initializers and attribute tensors,
    in the main graph, every nested subgraph (If/Loop/Scan bodies) and every function."""
    graphs: list = [model.graph, *model.functions]
    while graphs:
        graph = graphs.pop()
        if isinstance(graph, onnx.GraphProto):
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield sparse.values
                yield sparse.indices
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("sparse_tensor"):
                    yield attribute.sparse_tensor.values
                    yield attribute.sparse_tensor.indices
                for sparse in attribute.sparse_tensors:
                    yield sparse.values
                    yield sparse.indices
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)


def declared_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's dims and dtype call for, or None when the dtype has no fixed width."""
    try:
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError, TypeError):
        return None
    if dtype == np.dtype(object) or tensor.data_type == onnx.TensorProto.STRING:
        return None
    count = 1
    for dim in tensor.dims:
        if dim < 0:
            raise ModelLoadError(f"tensor {tensor.name!r} has a negative dimension {dim}")
        count *= int(dim)
    bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(tensor.data_type)
    if bits is None and hasattr(onnx.TensorProto, "FLOAT4E2M1") and tensor.data_type == onnx.TensorProto.FLOAT4E2M1:
        bits = 4
    if bits is not None:
        return (count * bits + 7) // 8
    return count * dtype.itemsize


def load_external_data(model: onnx.ModelProto, base_dir: Path | None) -> None:
    """Load every external tensor of `model` in place, after checking path and size bounds."""
    try:
        tensors = [t for t in iter_all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    except RecursionError:
        raise ModelLoadError("model nests subgraphs too deeply") from None
    if not tensors:
        return
    if base_dir is None:
        raise ModelLoadError("model uses external data but was given without a folder; load it from a path")
    for tensor in tensors:
        fields = _external_fields(tensor)
        path = resolve_external_file(base_dir, fields.get("location", ""))
        size = path.stat().st_size
        try:
            offset = int(fields.get("offset", "0"))
            length = int(fields["length"]) if "length" in fields else size - offset
        except ValueError:
            raise ModelLoadError(f"external data of tensor {tensor.name!r} has a non-integer offset/length") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelLoadError(
                f"external data of tensor {tensor.name!r} asks for bytes {offset}..{offset + length} "
                f"of a {size}-byte file"
            )
        expected = declared_nbytes(tensor)
        if expected is not None and expected != length:
            raise ModelLoadError(f"external data of tensor {tensor.name!r} has {length} bytes but its shape "
                                 f"and type need {expected}")
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
        if len(data) != length:
            raise ModelLoadError(f"external data file {fields.get('location')!r} changed while reading")
        tensor.raw_data = data
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


EXTERNAL_MIN_BYTES = 1024


def save_external(proto: onnx.ModelProto, data_path: Path, location: str) -> onnx.ModelProto:
    """Write the raw weights of `proto`'s main graph (each >= 1 KiB) into `data_path`, one after another,
    and return a copy of `proto` whose tensors point there (`location`, offset, length).

    Each weight is written straight from the model; `proto` itself is left unchanged.
    """
    from slimcc.ir.weightless import copy_with_stubs

    chosen = {t.name for t in proto.graph.initializer
              if t.HasField("raw_data") and (declared_nbytes(t) or 0) >= EXTERNAL_MIN_BYTES}
    spans: dict[str, tuple[int, int]] = {}
    with open(data_path, "wb") as handle:
        for tensor in proto.graph.initializer:
            if tensor.name in chosen and tensor.name not in spans:
                offset = handle.tell()
                length = handle.write(tensor.raw_data)
                spans[tensor.name] = (offset, length)
        handle.flush()
        os.fsync(handle.fileno())

    def point(stub: onnx.TensorProto, tensor: onnx.TensorProto) -> None:
        offset, length = spans[tensor.name]
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = stub.external_data.add()
            entry.key, entry.value = key, value

    return copy_with_stubs(proto, chosen, point)
