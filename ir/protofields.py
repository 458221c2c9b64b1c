"""Generic walking of protobuf fields that never touches weight bytes."""

from __future__ import annotations

import onnx


def is_repeated(descriptor) -> bool:
    """True for a repeated protobuf field (works with old and new protobuf descriptor APIs)."""
    repeated = getattr(descriptor, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return descriptor.label == descriptor.LABEL_REPEATED


def set_fields(message) -> list:
    """(descriptor, value) of every set field, like ListFields, but a TensorProto's raw_data is left out
    (reading it from protobuf copies the weight bytes)."""
    if not isinstance(message, onnx.TensorProto):
        return message.ListFields()
    fields = []
    for descriptor in message.DESCRIPTOR.fields:
        if descriptor.name == "raw_data":
            continue
        value = getattr(message, descriptor.name)
        if (len(value) if is_repeated(descriptor) else message.HasField(descriptor.name)):
            fields.append((descriptor, value))
    return fields
