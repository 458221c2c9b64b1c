"""Pruning plans as data: coverage of conv MACs and MACs estimates for a set of removed components."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.cost import node_macs
from slimcc.passes.prune.channels import ChannelAnalysis

CONV_OPS = ("Conv", "ConvTranspose")
REDUCING_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _prunable_fraction(analysis: ChannelAnalysis, tensor: str) -> float:
    comps = analysis.element_component.get(tensor)
    if comps is None or not len(comps):
        return 0.0
    return float(np.mean([not analysis.components[c].blocked for c in comps.tolist()]))


def conv_coverage(graph: gs.Graph, analysis: ChannelAnalysis) -> dict:
    """Share of conv MACs that prunable groups can reduce.

    A conv counts with the larger of the prunable fractions of its output and (for
    channel-mixing convs) its input channels: either side shrinks its MACs.
    """
    total = covered = 0.0
    layers = []
    for node in graph.nodes:
        if node.op not in CONV_OPS:
            continue
        macs = node_macs(node) or 0
        f_out = _prunable_fraction(analysis, node.outputs[0].name)
        f_in = _prunable_fraction(analysis, node.inputs[0].name) if int(node.attrs.get("group", 1)) == 1 else 0.0
        share = max(f_out, f_in)
        total += macs
        covered += macs * share
        layers.append({"node": node.name, "macs": int(macs), "prunable_share": round(share, 4)})
    return {"coverage": covered / total if total else 0.0, "conv_macs": int(total), "layers": layers}


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
            mixed = node.op in REDUCING_OPS and int(node.attrs.get("group", 1)) == 1
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
