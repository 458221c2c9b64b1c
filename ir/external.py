"""Confined loading of ONNX external data: files must live inside the model's folder."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import external_data_helper

from slimcc.errors import ModelLoadError


def _external_fields(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def resolve_external_file(base_dir: Path, location: str) -> Path:
    """Return the resolved path of an external-data file, refusing anything outside base_dir."""
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")):
        raise ModelLoadError(f"external data path {location!r} must be relative to the model's folder")
    parts = Path(location.replace("\\", "/")).parts
    if ".." in parts:
        raise ModelLoadError(f"external data path {location!r} leaves the model's folder")
    base = base_dir.resolve()
    candidate = base / Path(*parts)
    resolved = candidate.resolve()
    if base != resolved and base not in resolved.parents:
        raise ModelLoadError(f"external data path {location!r} resolves outside the model's folder")
    if not resolved.is_file():
        raise ModelLoadError(f"external data file {location!r} is missing next to the model")
    return resolved


def load_external_data(model: onnx.ModelProto, base_dir: Path | None) -> None:
    """Load every external tensor of `model` in place, after checking path and size bounds."""
    tensors = [t for t in external_data_helper._get_all_tensors(model) if external_data_helper.uses_external_data(t)]
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
        with open(path, "rb") as handle:
            handle.seek(offset)
            tensor.raw_data = handle.read(length)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
