"""Pruning plans as data: coverage of conv MACs and MACs estimates for a set of removed components."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.cost import node_macs
from slimcc.passes.prune.channels import ChannelAnalysis, Group

CONV_OPS = ("Conv", "ConvTranspose")
REDUCING_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def mixes_channels(node: gs.Node) -> bool:
    """True when the node's MACs scale with its kept input channels too (not depthwise-like)."""
    if node.op not in REDUCING_OPS:
        return False
    groups = int(node.attrs.get("group", 1))
    if groups == 1:
        return True
    return node.op == "Conv" and len(node.inputs) > 1 and (node.inputs[1].shape or [0, 0])[1] > 1


def cuttable(analysis: ChannelAnalysis, group: Group) -> bool:
    """A group can actually lose channels: it is prunable and has more than one unit."""
    return group.prunable and len(group.components) > 1


def why_not_cut(analysis: ChannelAnalysis, group: Group) -> list[str]:
    """The reasons a group cannot lose channels (its blocked reasons, or its single unit)."""
    if group.blocked:
        return list(group.blocked)
    if len(group.components) <= 1:
        units = sum(len(m) for m in analysis.components[group.components[0]].members.values())
        return [f"single unit: couplings tie all channels of {group.tensors[0]} together ({units} tensor channels)"]
    return []


def _cut_fraction(analysis: ChannelAnalysis, tensor: str, reasons: dict[str, float], weight: float) -> float:
    """Share of `tensor`'s units in cuttable groups; adds `weight` x the rest's share to each reason."""
    comps = analysis.element_component.get(tensor)
    if comps is None or not len(comps):
        return 0.0
    groups = [analysis.groups[analysis.components[c].group] for c in comps.tolist()]
    ok = [cuttable(analysis, g) for g in groups]
    for g, good in zip(groups, ok):
        if not good:
            for reason in why_not_cut(analysis, g):
                reasons[reason] = reasons.get(reason, 0.0) + weight / len(comps)
    return float(np.mean(ok))


def conv_coverage(graph: gs.Graph, analysis: ChannelAnalysis) -> dict:
    """Share of conv MACs that pruning can actually reduce, and what blocks the rest.

    A conv counts with the larger of the cuttable fractions of its output and (for
    channel-mixing convs) its input channels: either side shrinks its MACs. A unit is
    cuttable when its group is prunable and has more than one unit. `blockers` lists each
    reason with the share of conv MACs it holds back (a conv's uncovered MACs split over the
    reasons of its uncut channels).
    """
    total = covered = 0.0
    layers = []
    blockers: dict[str, float] = {}
    for node in graph.nodes:
        if node.op not in CONV_OPS:
            continue
        macs = node_macs(node) or 0
        reasons_out: dict[str, float] = {}
        reasons_in: dict[str, float] = {}
        f_out = _cut_fraction(analysis, node.outputs[0].name, reasons_out, 1.0)
        f_in = _cut_fraction(analysis, node.inputs[0].name, reasons_in, 1.0) if mixes_channels(node) else 0.0
        share = max(f_out, f_in)
        reasons = reasons_out if f_out >= f_in else reasons_in
        weight = sum(reasons.values())
        for reason, w in reasons.items():
            blockers[reason] = blockers.get(reason, 0.0) + macs * (1.0 - share) * w / weight
        total += macs
        covered += macs * share
        layers.append({"node": node.name, "macs": int(macs), "prunable_share": round(share, 4)})
    ranked = sorted(blockers.items(), key=lambda kv: -kv[1])
    return {"coverage": covered / total if total else 0.0, "conv_macs": int(total), "layers": layers,
            "blockers": [{"reason": r, "macs_share": round(m / total, 4)} for r, m in ranked if total and m > 0]}


class MacsEstimator:
    """Estimates total MACs after removing components without rewriting the graph.

    Channel-mixing ops scale with kept inputs x kept outputs; every other op with kept outputs.
    """

    def __init__(self, graph: gs.Graph, analysis: ChannelAnalysis):
        self.analysis = analysis
        self.rows = []
        for node in graph.nodes:
            macs = node_macs(node) or 0
            if not macs:
                continue
            out = node.outputs[0].name if node.outputs else None
            mixed = mixes_channels(node)
            inp = node.inputs[0].name if mixed and node.inputs else None
            if node.op == "MatMul" and inp in analysis.spaces and out in analysis.spaces and \
                    analysis.spaces[inp].axis != len(node.inputs[0].shape or ()) - 1:
                inp = None
            self.rows.append((macs, out, inp))
        self.total = sum(r[0] for r in self.rows)

    def _fraction(self, tensor: str | None, removed_mask: np.ndarray) -> float:
        comps = self.analysis.element_component.get(tensor) if tensor else None
        if comps is None or not len(comps):
            return 1.0
        return 1.0 - float(np.mean(removed_mask[comps]))

    def macs(self, removed: set[int]) -> float:
        """Estimated MACs with components `removed` pruned."""
        mask = np.zeros(len(self.analysis.components), dtype=bool)
        if removed:
            mask[list(removed)] = True
        total = 0.0
        for macs, out, inp in self.rows:
            total += macs * self._fraction(out, mask) * (self._fraction(inp, mask) if inp else 1.0)
        return total
