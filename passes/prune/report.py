"""The pruning plan as JSON data: groups, blocked reasons, chosen channels, coverage, MACs."""

from __future__ import annotations

from slimcc.ir.cost import model_cost
from slimcc.passes.prune.channels import ChannelAnalysis
from slimcc.passes.prune.plan import MacsEstimator, conv_coverage
from slimcc.passes.prune.selection import Selection


def plan_report(model, analysis: ChannelAnalysis, selection: Selection, *, layers: bool = False) -> dict:
    """Everything `slimcc prune-plan` shows: per group its members, whether and why it is blocked,
    the units kept/removed; the top-level `coverage` (share of conv MACs in groups that can lose
    channels) and `blockers` (each reason with the share of conv MACs it holds back)."""
    coverage = conv_coverage(model.graph, analysis)
    cost = model_cost(model)
    estimator = MacsEstimator(model.graph, analysis)
    data = analysis.as_dict()
    for group, entry in zip(analysis.groups, data["groups"]):
        removed = [c for c in group.components if c in selection.removed]
        entry["removed_units"] = len(removed)
        entry["kept_units"] = len(group.components) - len(removed)
        first = group.tensors[0]
        entry["removed_channels"] = sorted(u for c in removed for u in analysis.components[c].members[first])
    estimated = estimator.macs(selection.removed)
    data.update({
        "coverage": round(coverage["coverage"], 4),
        "blockers": coverage["blockers"],
        "conv_macs": coverage["conv_macs"],
        "macs": cost.macs,
        "params": cost.params,
        "macs_after_estimate": int(estimated),
        "macs_ratio_estimate": round(estimated / estimator.total, 4) if estimator.total else None,
        "removed_units": len(selection.removed),
        "blocked_reasons": sorted({r for g in analysis.groups for r in g.blocked}),
    })
    if selection.analysis:
        data["criterion_analysis"] = selection.analysis
    if layers:
        data["conv_layers"] = coverage["layers"]
    return data
