"""qdq-propagate: move DequantizeLinear below layout-only ops and drop clamps the int range already applies.

All rewrites are exact:
- DQ -> Reshape/Transpose/Flatten/(Un)Squeeze/Slice  ==  op on integers -> DQ (per-tensor DQ:
  DQ is element-wise and these ops only move or select elements);
- DQ -> MaxPool  ==  MaxPool on integers -> DQ when the scale is positive (DQ is increasing);
- Concat of DQs with identical (dtype, scale, zero point)  ==  Concat of integers -> DQ;
- Relu/Clip(lo, hi) -> Q  ==  Q alone when Q's integer range already clamps at lo and hi:
  round(lo / s) + z <= qmin and round(hi / s) + z >= qmax.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.passes.base import register_pass
from slimcc.passes.pattern import Any, Match, Pattern, RewritePass, Rule, constant_value
from slimcc.passes.quant.qdq_graph import fresh, qdq_info

LAYOUT_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice")
QMIN_QMAX = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def _dq_single_use(tensor: gs.Tensor) -> bool:
    return len(tensor.outputs) == 1


def _check_move(match: Match) -> str | None:
    dq = match.nodes["dq"]
    info = qdq_info(dq)
    if info is None:
        return "DequantizeLinear scale/zero point are not constants"
    if info.scale.size != 1:
        return "per-channel DequantizeLinear does not commute with layout ops"
    if match.root.op == "MaxPool":
        if not float(info.scale.reshape(())) > 0:
            return "MaxPool commutes with DQ only for a positive scale"
        if len(match.root.outputs) > 1:
            return "MaxPool with an Indices output"
    if info.dtype not in QMIN_QMAX:
        return f"DequantizeLinear of {info.dtype} is not supported"
    return None


def _move_below(graph: gs.Graph, match: Match) -> None:
    """Run the op on the integer tensor and dequantize its output instead."""
    op, dq = match.root, match.nodes["dq"]
    float_out = op.outputs[0]
    int_in = dq.inputs[0]
    int_out = gs.Variable(fresh(graph, f"{float_out.name}_int"), dtype=int_in.dtype, shape=float_out.shape)
    op.inputs[0] = int_in
    op.outputs[0] = int_out
    # the float tensor keeps its name (a graph output stays one; later passes match tensors by name)
    graph.nodes.append(gs.Node("DequantizeLinear", fresh(graph, f"{op.name}_dq"), dict(dq.attrs),
                               [int_out, *dq.inputs[1:]], [float_out]))


MOVE_LAYOUT = Rule("dq-below-layout-op",
                   Pattern(LAYOUT_OPS + ("MaxPool",), [Pattern("DequantizeLinear", capture="dq", single_use=True)]),
                   rewrite=_move_below, check=_check_move)


def _check_concat(match: Match) -> str | None:
    infos = []
    for tensor in match.root.inputs:
        node = tensor.inputs[0] if len(tensor.inputs) == 1 else None
        if node is None or node.op != "DequantizeLinear":
            return "a Concat input is not dequantized"
        if len(tensor.outputs) != 1:
            return "a Concat input's DequantizeLinear has other consumers"
        info = qdq_info(node)
        if info is None or info.scale.size != 1:
            return "a Concat input has non-constant or per-channel parameters"
        infos.append(info)
    if not all(info.same_as(infos[0]) for info in infos[1:]):
        return "Concat inputs have different scales/zero points (qdq-insert gives them one shared scale)"
    return None


def _concat_ints(graph: gs.Graph, match: Match) -> None:
    concat = match.root
    dqs = [t.inputs[0] for t in concat.inputs]
    float_out = concat.outputs[0]
    int_out = gs.Variable(fresh(graph, f"{float_out.name}_int"), dtype=dqs[0].inputs[0].dtype, shape=float_out.shape)
    for i, dq in enumerate(dqs):
        concat.inputs[i] = dq.inputs[0]
    concat.outputs[0] = int_out
    graph.nodes.append(gs.Node("DequantizeLinear", fresh(graph, f"{concat.name}_dq"), dict(dqs[0].attrs),
                               [int_out, *dqs[0].inputs[1:]], [float_out]))


CONCAT = Rule("dq-below-concat", Pattern("Concat"), rewrite=_concat_ints, check=_check_concat)


def clamp_is_absorbed(lo: float, hi: float, scale: float, zero_point: int, dtype) -> bool:
    """True when Q(clip(x, lo, hi)) == Q(x) for every x (Q saturates at or inside [lo, hi])."""
    qmin, qmax = QMIN_QMAX[np.dtype(dtype)]
    below = lo == -np.inf or np.round(np.float32(lo) / np.float32(scale)) + zero_point <= qmin
    above = hi == np.inf or np.round(np.float32(hi) / np.float32(scale)) + zero_point >= qmax
    return bool(below and above)


def _clamp_bounds(node: gs.Node) -> tuple[float, float] | None:
    if node.op == "Relu":
        return 0.0, np.inf
    bounds = []
    for index, default in ((1, -np.inf), (2, np.inf)):
        if len(node.inputs) > index and not node.inputs[index].is_empty():
            value = constant_value(node.inputs[index])
            if value is None or value.size != 1:
                return None
            bounds.append(float(value.reshape(())))
        else:
            bounds.append(default)
    return bounds[0], bounds[1]


def _check_clamp(match: Match) -> str | None:
    clamp = match.nodes["clamp"]
    bounds = _clamp_bounds(clamp)
    if bounds is None:
        return "Clip bounds are not constants"
    info = qdq_info(match.root)
    if info is None or info.scale.size != 1:
        return "QuantizeLinear parameters are not per-tensor constants"
    if info.dtype not in QMIN_QMAX:
        return f"QuantizeLinear to {info.dtype} is not supported"
    if not clamp_is_absorbed(*bounds, float(info.scale.reshape(())), int(info.zero_point.reshape(())), info.dtype):
        return "the quantized range does not clamp exactly where the activation does"
    return None


def _drop_clamp(graph: gs.Graph, match: Match) -> None:
    match.root.inputs[0] = match["x"]


DROP_CLAMP = Rule("drop-absorbed-clamp",
                  Pattern("QuantizeLinear", [Pattern(("Relu", "Clip"), [Any(capture="x")], capture="clamp",
                                                     single_use=True)]),
                  rewrite=_drop_clamp, check=_check_clamp)


@register_pass("qdq-propagate")
class QDQPropagate(RewritePass):
    """Move DequantizeLinear below layout ops/MaxPool/Concat; drop Relu/Clip the int8 range absorbs."""

    rules = (MOVE_LAYOUT, CONCAT, DROP_CLAMP)
