"""The constant behind a graph tensor: an initializer, or the output of a Constant node."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

_SCALAR_ATTRS = (("value_float", np.float32), ("value_floats", np.float32),
                 ("value_int", np.int64), ("value_ints", np.int64))


def constant_tensor(tensor) -> gs.Constant | None:
    """The gs.Constant behind a node input (an initializer, or a Constant node's `value`), else None."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return tensor
    source = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if source is not None and source.op == "Constant" and isinstance(source.attrs.get("value"), gs.Constant):
        return source.attrs["value"]
    return None


def constant_value(tensor) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output (`value`, or the scalar and
    list forms `value_float(s)` / `value_int(s)`); None for a computed tensor."""
    found = constant_tensor(tensor)
    if found is not None:
        return np.asarray(found.values)
    if tensor is None or len(tensor.inputs) != 1 or tensor.inputs[0].op != "Constant":
        return None
    attrs = tensor.inputs[0].attrs
    for key, dtype in _SCALAR_ATTRS:
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    return None
