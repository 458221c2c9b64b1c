"""qdq-cancel: remove DequantizeLinear -> QuantizeLinear round trips so the network stays in integers.

- DQ(p) -> Q(p) with identical dtype, scale, zero point and axis is the identity on the
  integers: the Q's consumers read the DQ's input directly (exact). A DQ with several
  consumers keeps serving the others, which is what duplicating it per consumer and
  cancelling one copy gives.
- DQ(p1) -> Q(p2) with different parameters is a requantize; it stays one DQ -> Q pair
  (onnxruntime runs that pair as one requantize) and is counted as `requantize`.
- With `merge=true`, X -> Q1 -> DQ1 -> Q2 -> DQ2 (DQ1 used only by Q2) becomes one
  X -> Q -> DQ over the intersection of both ranges: one rounding instead of two, so this
  rule is NOT exact (the error stays within one step of the coarser scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.passes.base import PassContext, PassResult, register_pass
from slimcc.passes.pattern import Any, Match, Pattern, RewritePass, Rule, replace_uses
from slimcc.passes.quant.calibrate import QParams, qparams_for_range
from slimcc.passes.quant.qdq_graph import add_constant, qdq_info

DTYPE_NAME = {np.dtype(np.uint8): "u8", np.dtype(np.int8): "s8"}


def _check_identical(match: Match) -> str | None:
    dq, q = match.nodes["dq"], match.root
    a, b = qdq_info(dq), qdq_info(q)
    if a is None or b is None:
        return "scale or zero point is not a constant"
    if not a.same_as(b):
        return "requantize: DQ and Q parameters differ (kept as one DQ->Q pair)"
    if dq.inputs[0].dtype is not None and np.dtype(dq.inputs[0].dtype) != np.dtype(b.dtype):
        return "integer types differ"
    return None


def _cancel(graph: gs.Graph, match: Match) -> None:
    replace_uses(graph, match.root.outputs[0], match["q_in"])


CANCEL = Rule("cancel-dq-q",
              Pattern("QuantizeLinear", [Pattern("DequantizeLinear", [Any(capture="q_in")], capture="dq")]),
              rewrite=_cancel, check=_check_identical)


def _params(info) -> QParams | None:
    name = DTYPE_NAME.get(np.dtype(info.dtype))
    if name is None or info.scale.size != 1:
        return None
    return QParams(float(info.scale.reshape(())), int(info.zero_point.reshape(())), name)


def _check_merge(match: Match) -> str | None:
    infos = [qdq_info(match.nodes[k]) for k in ("q1", "dq1")] + [qdq_info(match.root)]
    if any(i is None for i in infos):
        return "scale or zero point is not a constant"
    params = [_params(i) for i in infos]
    if any(p is None for p in params):
        return "only per-tensor u8/s8 chains are merged"
    if params[0] != params[1]:
        return "Q1 and DQ1 parameters differ"
    lo, hi = max(params[0].lo, params[2].lo), min(params[0].hi, params[2].hi)
    if not lo <= 0.0 <= hi or lo == hi:
        return "the two ranges do not overlap around zero"
    return None


def _merge(graph: gs.Graph, match: Match) -> None:
    p1, p2 = _params(qdq_info(match.nodes["q1"])), _params(qdq_info(match.root))
    merged = qparams_for_range(max(p1.lo, p2.lo), min(p1.hi, p2.hi), p2.dtype)
    q2 = match.root
    zero_dtype = np.uint8 if merged.dtype == "u8" else np.int8
    scale = add_constant(graph, f"{q2.name}_merged_scale", np.float32(merged.scale))
    zero = add_constant(graph, f"{q2.name}_merged_zero_point", zero_dtype(merged.zero_point))
    q2.inputs.clear()
    q2.inputs.extend([match["x"], scale, zero])
    for dq2 in list(q2.outputs[0].outputs):
        if dq2.op == "DequantizeLinear":
            dq2.inputs[1], dq2.inputs[2] = scale, zero


def _check_merge_outputs(match: Match) -> str | None:
    reason = _check_merge(match)
    if reason:
        return reason
    users = match.root.outputs[0].outputs
    if not users or any(u.op != "DequantizeLinear" for u in users):
        return "Q2 feeds something other than DequantizeLinear"
    return None


MERGE = Rule("merge-q-dq-q-dq",
             Pattern("QuantizeLinear", [Pattern("DequantizeLinear", [Pattern("QuantizeLinear", [Any(capture="x")],
                                                                             capture="q1", single_use=True)],
                                                capture="dq1", single_use=True)]),
             rewrite=_merge, check=_check_merge_outputs)


@register_pass("qdq-cancel")
@dataclass(frozen=True)
class QDQCancel(RewritePass):
    """Remove identical DQ->Q round trips (exact); merge Q->DQ->Q->DQ chains with merge=true."""

    merge: bool = False

    def is_exact(self) -> bool:
        """Cancelling identical round trips is exact; merging two roundings into one is not."""
        return not self.merge

    def active_rules(self):
        return (CANCEL, MERGE) if self.merge else (CANCEL,)

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        result = super().run(model, ctx)
        requant = sum(1 for n in model.graph.nodes if n.op == "QuantizeLinear" and n.inputs[0].inputs
                      and n.inputs[0].inputs[0].op == "DequantizeLinear")
        result.stats["requantize"] = requant
        return result
