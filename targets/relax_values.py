"""Static facts of Relax expressions: shape, dtype and constant value (TVM 0.27 field names)."""

from __future__ import annotations

import numpy as np

UNSET_DTYPES = ("", "None", "void")  # how TVM 0.27 prints an out_dtype left to follow the inputs


def static_shape(expr) -> tuple[int, ...] | None:
    """The static shape of a Relax tensor expression, or None when it is not known."""
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    values = getattr(shape, "values", None)
    if values is None:
        return None
    try:
        return tuple(int(v) for v in values)
    except TypeError:
        return None


def tensor_dtype(expr) -> str | None:
    """The dtype of a Relax tensor expression, or None when it is not a tensor (TVM 0.27: `expr.ty`)."""
    dtype = getattr(getattr(expr, "ty", None), "dtype", None)
    return str(dtype) if dtype is not None else None


def constant_array(expr) -> np.ndarray:
    """The numpy value of a Relax constant (TVM 0.27 holds it in `.value`, older releases in `.data`)."""
    value = getattr(expr, "value", None)
    return (value if value is not None else expr.data).numpy()
