"""Shape helpers shared by the canonicalization passes."""

from __future__ import annotations

import onnx_graphsurgeon as gs


def forget_unknown_output_shapes(graph: gs.Graph) -> None:
    """Turn declared graph-output dims of -1 (e.g. [-1, 2]) into unknown dims (None).

    ONNX reads -1 as a fixed dim value: once a pass makes the shape computable, shape
    inference would report a conflict instead of filling it in. The rank is kept because
    the checker requires graph outputs to carry a shape.
    """
    for tensor in graph.outputs:
        if tensor.shape is not None and any(isinstance(d, int) and d < 0 for d in tensor.shape):
            tensor.shape = [None if isinstance(d, int) and d < 0 else d for d in tensor.shape]


def dynamic_tensor_names(graph: gs.Graph) -> list[str]:
    """Names of activation tensors whose shape is unknown or has a non-static dim."""
    return [t.name for t in graph.tensors().values()
            if isinstance(t, gs.Variable) and not t.is_empty()
            and (t.shape is None or any(not isinstance(d, int) or d < 0 for d in t.shape))]
