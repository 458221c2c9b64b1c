"""fold-scale-bias: Mul/Add/Sub/Div by a per-channel constant after Conv/ConvTranspose/Gemm folded
into its weights and bias."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.passes.base import register_pass
from slimcc.passes.canonicalize._affine import (AFFINE_HOSTS, affine_refusal, channel_vector, fold_affine,
                                                output_channels, output_rank)
from slimcc.passes.pattern import Const, Match, Pattern, RewritePass, Rule


def _host() -> Pattern:
    return Pattern(AFFINE_HOSTS, capture="host", single_use=True)


def _per_channel(match: Match) -> np.ndarray | str:
    host = match.nodes["host"]
    return channel_vector(match.values["c"], output_rank(host), output_channels(host))


def check_fold(match: Match) -> str | None:
    """Legal when the host's weights are constant floats and the constant broadcasts only over channels."""
    reason = affine_refusal(match.nodes["host"])
    if reason:
        return reason
    value = match.values["c"]
    if not np.issubdtype(value.dtype, np.floating):
        return f"constant is {value.dtype}, not floating point"
    vector = _per_channel(match)
    if isinstance(vector, str):
        return vector
    if match.root.op == "Div" and np.any(vector == 0):
        return "division by a constant with zeros"
    if not np.all(np.isfinite(vector)):
        return "constant has non-finite values"
    return None


def rewrite_fold(graph: gs.Graph, match: Match) -> None:
    """y*c, y/c, y+c, y-c become one scale and one shift of the host's output channels."""
    vector = _per_channel(match)
    ones, zeros = np.ones_like(vector), np.zeros_like(vector)
    scale, shift = {"Mul": (vector, zeros), "Div": (1.0 / vector, zeros),
                    "Add": (ones, vector), "Sub": (ones, -vector)}[match.root.op]
    fold_affine(graph, match.nodes["host"], match.root, scale, shift)


FOLD_MUL_ADD = Rule("fold-mul-add", Pattern({"Mul", "Add"}, [_host(), Const("c")], capture="op"),
                    rewrite=rewrite_fold, check=check_fold)
FOLD_SUB_DIV = Rule("fold-sub-div", Pattern({"Sub", "Div"}, [_host(), Const("c")], capture="op"),
                    rewrite=rewrite_fold, check=check_fold)


@register_pass("fold-scale-bias")
class FoldScaleBias(RewritePass):
    """Fold Mul/Add/Sub/Div by per-channel constants into the preceding Conv/ConvTranspose/Gemm."""

    rules = (FOLD_MUL_ADD, FOLD_SUB_DIV)
