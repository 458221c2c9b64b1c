"""qdq-lower: integer operator form for runtimes without QDQ fusion.

DQ(x) -> Conv(DQ(w), DQ(b)) -> Q(y)  becomes  QLinearConv(x_q, ..., y_scale, y_zp, b_int32);
DQ(a) -> MatMul(DQ(b)) -> Q(y)       becomes  QLinearMatMul. The bias must be int32 with
zero point 0 and scale x_s * w_s (what qdq-insert writes), otherwise the rewrite is refused.
QLinearConv computes exactly what the Q/DQ graph describes up to the single requantize
rounding (see `slimcc.passes.quant.intref`).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.passes.base import register_pass
from slimcc.passes.pattern import Any, Match, Pattern, RewritePass, Rule, constant_value
from slimcc.passes.quant.qdq_graph import fresh, qdq_info

CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _dq(capture: str) -> Pattern:
    return Pattern("DequantizeLinear", [Any(capture=f"{capture}_q")], capture=capture)


def _check_common(match: Match, layer: gs.Node) -> str | None:
    x, w, q = qdq_info(match.nodes["x_dq"]), qdq_info(match.nodes["w_dq"]), qdq_info(match.root)
    if x is None or w is None or q is None:
        return "scale or zero point is not a constant"
    if x.scale.size != 1 or q.scale.size != 1:
        return "activation quantization is not per-tensor"
    if constant_value(match["w_dq_q"]) is None:
        return "weight is not a constant"
    if len(layer.outputs[0].outputs) != 1:
        return "layer output has other consumers than the QuantizeLinear"
    return None


def _check_conv(match: Match) -> str | None:
    conv = match.nodes["layer"]
    reason = _check_common(match, conv)
    if reason:
        return reason
    w = qdq_info(match.nodes["w_dq"])
    if w.scale.size > 1 and w.axis != 0:
        return "per-channel weight scale is not on the output-channel axis"
    if len(conv.inputs) > 2 and not conv.inputs[2].is_empty():
        bias_node = conv.inputs[2].inputs[0] if len(conv.inputs[2].inputs) == 1 else None
        if bias_node is None or bias_node.op != "DequantizeLinear":
            return "bias is not a dequantized int32 constant"
        b = qdq_info(bias_node)
        if b is None or b.dtype != np.int32 or np.any(b.zero_point != 0):
            return "bias is not int32 with zero point 0"
        x = qdq_info(match.nodes["x_dq"])
        expected = (np.float32(x.scale.reshape(())) * w.scale.reshape(-1)).astype(np.float32)
        if not np.array_equal(np.broadcast_to(b.scale.reshape(-1), expected.shape), expected):
            return "bias scale is not input scale x weight scale"
    return None


def _lower(graph: gs.Graph, match: Match, op: str) -> None:
    layer, q = match.nodes["layer"], match.root
    x_dq, w_dq = match.nodes["x_dq"], match.nodes["w_dq"]
    inputs = [x_dq.inputs[0], *x_dq.inputs[1:3], w_dq.inputs[0], *w_dq.inputs[1:3], *q.inputs[1:3]]
    attrs = {}
    if op == "QLinearConv":
        attrs = {k: v for k, v in layer.attrs.items() if k in CONV_ATTRS}
        if len(layer.inputs) > 2 and not layer.inputs[2].is_empty():
            inputs.append(layer.inputs[2].inputs[0].inputs[0])
    out = q.outputs[0]
    q.outputs.clear()
    layer.outputs.clear()
    graph.nodes.append(gs.Node(op, fresh(graph, f"{layer.name}_{op}"), attrs, inputs, [out]))


CONV = Rule("lower-qlinearconv",
            Pattern("QuantizeLinear", [Pattern("Conv", [_dq("x_dq"), _dq("w_dq")], capture="layer")]),
            rewrite=lambda g, m: _lower(g, m, "QLinearConv"), check=_check_conv)


def _check_matmul(match: Match) -> str | None:
    reason = _check_common(match, match.nodes["layer"])
    if reason:
        return reason
    w = qdq_info(match.nodes["w_dq"])
    weight = constant_value(match["w_dq_q"])
    if weight.ndim != 2:
        return "MatMul weight is not 2-D"
    if w.scale.size > 1 and w.axis not in (1, -1):
        return "per-channel MatMul weight scale is not per column"
    return None


MATMUL = Rule("lower-qlinearmatmul",
              Pattern("QuantizeLinear", [Pattern("MatMul", [_dq("x_dq"), _dq("w_dq")], capture="layer")]),
              rewrite=lambda g, m: _lower(g, m, "QLinearMatMul"), check=_check_matmul)


@register_pass("qdq-lower")
class QDQLower(RewritePass):
    """Lower DQ->Conv->Q / DQ->MatMul->Q into QLinearConv / QLinearMatMul (integer operator form)."""

    exact = False
    rules = (CONV, MATMUL)
