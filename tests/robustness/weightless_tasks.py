"""Sandbox tasks for test_weightless: the checker + shape inference with all weights, and weightless."""

from __future__ import annotations

import onnx

from slimcc.ir.model import check_and_infer_stripped
from slimcc.ir.sandbox import sandbox_task
from slimcc.ir.weightless import restore_weights, strip_weights


def _parse(payload: bytes) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    proto.ParseFromString(payload)
    return proto


@sandbox_task
def with_weights(payload: bytes) -> bytes:
    """What loading did before weights stayed in the parent: the checker and inference see every value."""
    return check_and_infer_stripped(_parse(payload)).SerializeToString(deterministic=True)


@sandbox_task
def weightless(payload: bytes) -> bytes:
    """Every stubbable weight (any size) stubbed, checked and inferred, then the weights put back."""
    proto = _parse(payload)
    inferred = check_and_infer_stripped(strip_weights(proto, min_bytes=1))
    return restore_weights(inferred, proto).SerializeToString(deterministic=True)
