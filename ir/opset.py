"""Raise a model's default-domain opset with onnx.version_converter (kept inside slimcc.ir).

Passes call `convert_opset(model, 17)`; it replaces `model.graph` in place, so callers
must re-read `model.graph` afterwards.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from slimcc.errors import SlimccError
from slimcc.ir.graphcopy import materialize_constants
from slimcc.ir.model import Model, first_line

# the lowest IR version that may carry a given default-domain opset (onnx/helper.py VERSION_TABLE)
_MIN_IR_FOR_OPSET = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10, 22: 10}


def convert_opset(model: Model, target: int) -> bool:
    """Convert `model` to default-domain opset `target` in place; returns False if already there.

    Lowering is refused (only upgrades are semantics-preserving in practice). Failures of the
    converter are re-raised as SlimccError naming the opset pair.
    """
    current = model.opset
    if current == target:
        return False
    if current > target:
        raise SlimccError(f"model uses opset {current}; slimcc will not lower it to {target}")
    proto = model.to_proto()
    try:
        converted = version_converter.convert_version(proto, target)
    except Exception as exc:  # the converter raises plain RuntimeError/ValidationError
        raise SlimccError(f"cannot convert the model from opset {current} to {target}: {first_line(exc)}") from None
    converted.ir_version = max(converted.ir_version, _MIN_IR_FOR_OPSET.get(target, onnx.IR_VERSION))
    try:
        graph = gs.import_onnx(converted)
    except Exception as exc:
        raise SlimccError(f"opset {target} model cannot be imported: {first_line(exc)}") from None
    # the converter keeps metadata in the proto; Model.to_proto() adds model.metadata again
    materialize_constants(graph)
    model.graph = graph
    return True
