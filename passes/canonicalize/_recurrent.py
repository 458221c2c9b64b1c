"""Read an ONNX LSTM/GRU node into plain numbers and numpy weights, or say why it cannot be lowered.

`read_recurrent` is the whole legality check of lower-recurrent: a node it returns a
`Recurrent` for is lowered exactly, anything else gets the reason back. The weights are
re-laid out here with numpy, as the unrolled graph multiplies them: one [I, G*H] matrix
per direction for the input projection and one [H, G*H] for the recurrence, gate columns
in ONNX order (LSTM i, o, f, c; GRU z, r, h).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.model import numpy_dtype
from slimcc.passes.pattern import constant_value

RECURRENT_OPS = ("LSTM", "GRU")
GATES = {"LSTM": 4, "GRU": 3}
DEFAULT_ACTIVATIONS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh")}
# input slots: X, W, R, B, sequence_lens, initial_h, then initial_c and P for LSTM
MAX_INPUTS = {"LSTM": 8, "GRU": 6}
MAX_OUTPUTS = {"LSTM": 3, "GRU": 2}
DIRECTIONS = {"forward": ("forward",), "reverse": ("reverse",), "bidirectional": ("forward", "reverse")}
MIN_OPSET = 13  # Split/Squeeze/Unsqueeze take their sizes and axes as inputs from opset 13 on


@dataclass
class Recurrent:
    """An LSTM/GRU node that can be lowered: sizes, re-laid-out weights and its graph tensors.

    `w_t` [D, I, G*H] and `r_t` [D, H, G*H] are W and R transposed per direction; `bias`
    [D, G*H] is what the input projection adds (Wb + Rb, except GRU's Rbh when
    linear_before_reset=1, which stays in `reset_bias` [D, H]). `peepholes` [D, 3H] (i, o, f)
    or None. `outputs[k]` is the node's k-th output when a consumer or the graph reads it.
    """

    kind: str
    directions: tuple[str, ...]
    seq: int
    batch: int
    hidden: int
    layout: int
    linear_before_reset: int
    w_t: np.ndarray
    r_t: np.ndarray
    bias: np.ndarray | None
    reset_bias: np.ndarray | None
    peepholes: np.ndarray | None
    x: gs.Tensor
    initial_h: gs.Tensor | None
    initial_c: gs.Tensor | None
    outputs: dict[int, gs.Tensor]

    @property
    def dtype(self) -> np.dtype:
        """The float type the node computes in (its weights')."""
        return self.w_t.dtype


def _optional_input(node: gs.Node, slot: int) -> gs.Tensor | None:
    """The tensor in input `slot`, or None when the optional input is absent."""
    if slot < len(node.inputs) and not node.inputs[slot].is_empty():
        return node.inputs[slot]
    return None


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _attribute_refusal(node: gs.Node, directions: int) -> str | None:
    """Why the node's attributes ask for something the lowering does not compute."""
    kind, attrs = node.op, node.attrs
    activations = attrs.get("activations")
    if activations is not None:
        names = tuple(_text(a).lower() for a in activations) if isinstance(activations, (list, tuple)) else ()
        if names != DEFAULT_ACTIVATIONS[kind] * directions:
            default = "/".join(a.capitalize() for a in DEFAULT_ACTIVATIONS[kind])
            return f"{kind} activations {list(activations)} are not the default {default}"
    for name in ("activation_alpha", "activation_beta"):
        if attrs.get(name):
            return f"{kind} {name} is given (only parameter-free default activations are lowered)"
    if attrs.get("clip") is not None:
        return f"{kind} cell clipping (clip={attrs['clip']}) is not lowered"
    if kind == "LSTM" and attrs.get("input_forget", 0) != 0:
        return "LSTM input_forget=1 (coupled input and forget gates) is not lowered"
    if attrs.get("layout", 0) not in (0, 1):
        return f"{kind} layout={attrs.get('layout')!r} is not 0 or 1"
    if kind == "GRU" and attrs.get("linear_before_reset", 0) not in (0, 1):
        return f"GRU linear_before_reset={attrs.get('linear_before_reset')!r} is not 0 or 1"
    return None


def _static_dims(tensor: gs.Tensor) -> list[int] | None:
    shape = tensor.shape
    if shape is None or any(not isinstance(d, int) or d <= 0 for d in shape):
        return None
    return list(shape)


def _constant(node: gs.Node, slot: int, label: str, shape: tuple[int, ...]) -> np.ndarray | str | None:
    """The constant in input `slot` with the expected shape; None when absent; a reason otherwise."""
    tensor = _optional_input(node, slot)
    if tensor is None:
        return None
    value = constant_value(tensor)
    if value is None:
        return f"{node.op} {label} is not a constant"
    if not np.issubdtype(value.dtype, np.floating):
        return f"{node.op} {label} is {value.dtype}, not floating point"
    if tuple(value.shape) != shape:
        return f"{node.op} {label} has shape {list(value.shape)}, expected {list(shape)}"
    return value


def _sequence_lens_refusal(node: gs.Node, seq: int, batch: int) -> str | None:
    tensor = _optional_input(node, 4)
    if tensor is None:
        return None
    value = constant_value(tensor)
    if value is None:
        return f"{node.op} sequence_lens is not a constant (per-sample lengths are not lowered)"
    if value.size != batch or not np.all(value == seq):
        return f"{node.op} sequence_lens {value.reshape(-1)[:8].tolist()} is not the sequence length {seq} everywhere"
    return None


def _state_refusal(node: gs.Node, slot: int, label: str, shape: tuple[int, ...]) -> str | None:
    """Why an initial state input does not have the static shape the lowering reshapes it from."""
    tensor = _optional_input(node, slot)
    if tensor is None:
        return None
    value = constant_value(tensor)
    dims = list(value.shape) if value is not None else _static_dims(tensor)
    if dims is None:
        return f"{node.op} {label} has no static shape"
    if tuple(dims) != shape:
        return f"{node.op} {label} has shape {dims}, expected {list(shape)}"
    return None


def _weights(node: gs.Node, directions: int, hidden: int, size: int) -> dict[str, np.ndarray | None] | str:
    """W, R (required), B and P (None when absent) as constants of their ONNX shapes and W's dtype."""
    d, gates = directions, GATES[node.op]
    values: dict[str, np.ndarray | None] = {}
    for slot, label, shape in ((1, "W", (d, gates * hidden, size)), (2, "R", (d, gates * hidden, hidden)),
                               (3, "B", (d, 2 * gates * hidden)), (7, "P", (d, 3 * hidden))):
        value = _constant(node, slot, label, shape) if slot < MAX_INPUTS[node.op] else None
        if isinstance(value, str):
            return value
        if value is None and label in ("W", "R"):
            return f"{node.op} {label} is missing"
        if value is not None and value.dtype != values.get("W", value).dtype:
            return f"{node.op} {label} is {value.dtype} but W is {values['W'].dtype}"
        values[label] = value
    return values


def read_recurrent(node: gs.Node, graph: gs.Graph, max_steps: int) -> Recurrent | str:
    """The node as a `Recurrent`, or the reason (one line) it cannot be lowered exactly."""
    kind, opset = node.op, int(graph.opset)
    if opset < MIN_OPSET:
        return f"opset {opset} < {MIN_OPSET}: run upgrade-opset first"
    if len(node.inputs) > MAX_INPUTS[kind] or len(node.outputs) > MAX_OUTPUTS[kind] or len(node.inputs) < 3:
        return f"{kind} has {len(node.inputs)} inputs and {len(node.outputs)} outputs"
    directions = DIRECTIONS.get(_text(node.attrs.get("direction", "forward")))
    if directions is None:
        return f"{kind} direction {node.attrs.get('direction')!r} is not forward, reverse or bidirectional"
    reason = _attribute_refusal(node, len(directions))
    if reason:
        return reason
    layout = int(node.attrs.get("layout", 0))
    dims = _static_dims(node.inputs[0])
    if dims is None or len(dims) != 3:
        return (f"{kind} input X has no static 3-D shape ({node.inputs[0].shape}): a dynamic sequence length or "
                "batch (fix the input shapes with --input-shape)")
    (batch, seq, size) = dims if layout else (dims[1], dims[0], dims[2])
    if seq > max_steps:
        return f"{kind} sequence length {seq} > max_steps={max_steps} (the unrolled graph would be too large)"
    r_value = constant_value(node.inputs[2])
    if r_value is None or r_value.ndim != 3:
        return f"{kind} R is not a constant 3-D tensor"
    d, hidden = len(directions), int(r_value.shape[2])
    if hidden < 1:
        return f"{kind} R has shape {list(r_value.shape)}: no hidden units"
    if node.attrs.get("hidden_size", hidden) != hidden:
        return f"{kind} hidden_size={node.attrs['hidden_size']} does not match R's shape {list(r_value.shape)}"
    values = _weights(node, d, hidden, size)
    if isinstance(values, str):
        return values
    state = (batch, d, hidden) if layout else (d, batch, hidden)
    reason = (_sequence_lens_refusal(node, seq, batch) or _state_refusal(node, 5, "initial_h", state)
              or (_state_refusal(node, 6, "initial_c", state) if kind == "LSTM" else None))
    if reason:
        return reason
    dtype = values["W"].dtype
    x_dtype = numpy_dtype(node.inputs[0].dtype)
    if x_dtype is not None and x_dtype != dtype:
        return f"{kind} X is {x_dtype} but W is {dtype}"
    lbr = int(node.attrs.get("linear_before_reset", 0)) if kind == "GRU" else 0
    bias, reset_bias = _biases(values["B"], GATES[kind], hidden, lbr)
    graph_outputs = {id(t) for t in graph.outputs}
    outputs = {k: t for k, t in enumerate(node.outputs) if not t.is_empty() and (t.outputs or id(t) in graph_outputs)}
    return Recurrent(kind, directions, seq, batch, hidden, layout, lbr,
                     np.ascontiguousarray(values["W"].transpose(0, 2, 1)),
                     np.ascontiguousarray(values["R"].transpose(0, 2, 1)),
                     None if bias is None else bias.astype(dtype),
                     None if reset_bias is None else reset_bias.astype(dtype),
                     None if values["P"] is None else values["P"].astype(dtype),
                     node.inputs[0], _optional_input(node, 5),
                     _optional_input(node, 6) if kind == "LSTM" else None, outputs)


def _biases(b: np.ndarray | None, gates: int, hidden: int, lbr: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(input-projection bias [D, G*H], GRU reset-gated bias [D, H] or None), summed in float64."""
    if b is None:
        return None, None
    w_b, r_b = b[:, :gates * hidden].astype(np.float64), b[:, gates * hidden:].astype(np.float64)
    if not lbr:
        return w_b + r_b, None
    r_b = r_b.copy()
    reset_bias = r_b[:, 2 * hidden:].copy()
    r_b[:, 2 * hidden:] = 0.0
    return w_b + r_b, reset_bias
