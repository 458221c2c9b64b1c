"""fold-batchnorm: BatchNormalization after Conv/ConvTranspose/Gemm folded into its weights."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.passes.base import register_pass
from slimcc.passes.canonicalize._affine import AFFINE_HOSTS, affine_refusal, fold_affine, output_channels
from slimcc.passes.pattern import Const, Match, Pattern, RewritePass, Rule

BN_AFTER_HOST = Pattern("BatchNormalization",
                        [Pattern(AFFINE_HOSTS, capture="host", single_use=True),
                         Const("scale"), Const("bias"), Const("mean"), Const("var")],
                        capture="bn")


def _scale_shift(match: Match) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (s, t) with BN(y) = y*s + t, in float64."""
    eps = float(match.root.attrs.get("epsilon", 1e-5))
    scale, bias, mean, var = (match.values[k].astype(np.float64).reshape(-1)
                              for k in ("scale", "bias", "mean", "var"))
    s = scale / np.sqrt(var + eps)
    return s, bias - mean * s


def check_fold(match: Match) -> str | None:
    """Refuse training-mode BNs, used running-stat outputs, and hosts whose weights cannot absorb it."""
    bn, host = match.root, match.nodes["host"]
    if int(bn.attrs.get("training_mode", 0)) != 0:
        return "BatchNormalization is in training mode"
    graph_outputs = {id(t) for t in match.graph.outputs}
    if any(t.outputs or id(t) in graph_outputs for t in bn.outputs[1:]):
        return "BatchNormalization running-statistics outputs are used"
    reason = affine_refusal(host)
    if reason:
        return reason
    channels = output_channels(host)
    sizes = {match.values[k].size for k in ("scale", "bias", "mean", "var")}
    if sizes != {channels}:
        return f"BatchNormalization has {sorted(sizes)} channels, {host.op} outputs {channels}"
    if np.any(match.values["var"].astype(np.float64) + float(bn.attrs.get("epsilon", 1e-5)) <= 0):
        return "BatchNormalization variance + epsilon is not positive"
    return None


def rewrite_fold(graph: gs.Graph, match: Match) -> None:
    """Scale the host's weights and bias by the BN's per-channel affine map; drop the BN."""
    scale, shift = _scale_shift(match)
    fold_affine(graph, match.nodes["host"], match.root, scale, shift)


FOLD_BATCHNORM = Rule("fold-batchnorm", BN_AFTER_HOST, rewrite=rewrite_fold, check=check_fold)


@register_pass("fold-batchnorm")
class FoldBatchNorm(RewritePass):
    """Fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm when its output has one consumer."""

    rules = (FOLD_BATCHNORM,)
