"""The loop shared by the decomposition passes: plan each layer, gate it, rewrite it, refit, report.

Planning (rank choice, factors, predicted MACs, reconstruction error) is pure analysis;
only layers that pass the MACs-saving gate (and, with `measure`, the onnxruntime timing
gate) are rewritten. Refused and skipped layers are listed with their reasons in the stats.
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass, field
from typing import Callable

import onnx_graphsurgeon as gs

from slimcc.passes.base import PassContext, PassResult
from slimcc.passes.lowrank.emit import LastFactor, NameScope, batched_replacements
from slimcc.passes.lowrank.layers import Refusal
from slimcc.passes.lowrank.ranks import RankPolicy, parse_explicit_ranks, validate_policy

Rewrite = Callable[[gs.Graph, gs.Node, NameScope], LastFactor | None]


@dataclass
class Plan:
    """A planned decomposition of one node: ranks, predicted MACs, weight error and the rewrite."""

    ranks: list[int]
    macs_before: int
    macs_after: int
    rel_error: float
    rewrite: Rewrite
    details: dict = field(default_factory=dict)

    @property
    def saving(self) -> float:
        """Predicted fraction of the layer's MACs saved (negative when decomposition costs more)."""
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    def as_stats(self) -> dict:
        """The JSON-ready per-layer entry of PassResult.stats['layers']."""
        return {"ranks": self.ranks, "rel_error": round(self.rel_error, 6), "macs_before": self.macs_before,
                "macs_after": self.macs_after, "predicted_speedup": round(self.macs_before / max(self.macs_after, 1), 4),
                **self.details}


@dataclass(frozen=True)
class Gates:
    """When a planned layer is actually rewritten."""

    min_saving: float
    force: bool
    measure: bool
    exclude: frozenset[str]


def decompose_graph(model, ctx: PassContext | None, ops: tuple[str, ...], plan: Callable[[gs.Node], Plan | Refusal],
                    gates: Gates, refit: bool) -> PassResult:
    """Plan, gate and rewrite every node of type `ops`; refit with calibration data if given."""
    from slimcc.passes.lowrank.measure import measure_layer
    from slimcc.passes.lowrank.refit import refit_layers

    ctx = ctx or PassContext()
    graph = model.graph
    before = model.copy() if (refit and ctx.calibration is not None) else None
    scope = NameScope(graph)
    layers, refused, skipped, last_factors = {}, {}, {}, []
    macs_before = macs_after = 0
    batch = contextlib.nullcontext() if gates.measure else batched_replacements(graph)  # measuring copies the graph
    with batch:
        for node in list(graph.nodes):
            if node.op not in ops:
                continue
            name = node.name or node.outputs[0].name
            if name in gates.exclude:
                skipped[name] = "excluded by option"
                continue
            planned = plan(node)
            if isinstance(planned, Refusal):
                refused[name] = planned.reason
                continue
            if planned.saving < gates.min_saving and not gates.force:
                skipped[name] = (f"predicted MACs saving {planned.saving:.1%} < {gates.min_saving:.0%} "
                                 f"at ranks {planned.ranks}")
                continue
            entry = planned.as_stats()
            if gates.measure:
                timing = measure_layer(model, node, planned.rewrite)
                entry["measured_ms"] = timing
                if timing["decomposed"] >= timing["original"]:
                    skipped[name] = (f"measured slower on onnxruntime: {timing['decomposed']:.3f} ms decomposed "
                                     f"vs {timing['original']:.3f} ms original")
                    continue
            last = planned.rewrite(graph, node, scope)
            if last is not None:
                last_factors.append(last)
            layers[name] = entry
            macs_before += planned.macs_before
            macs_after += planned.macs_after
    graph.cleanup()
    stats = {"decomposed": len(layers), "layers": layers, "refused": refused, "skipped": skipped,
             "macs_before": macs_before, "macs_after": macs_after}
    if before is not None and last_factors:
        stats["refit"] = refit_layers(model, before, last_factors, ctx.calibration, progress=ctx.progress)
    return PassResult(modified=bool(layers), stats=stats)


class RankOptions:
    """What the decompose-* passes derive from their shared options (`speedup`, `rank`, `energy`,
    `evbmf`, `floor`, `ranks`, `multiple`, `min_saving`, `force`, `measure`, `exclude`), which each
    pass declares as its own dataclass fields so that its option order stays its own."""

    def validate_rank_options(self) -> None:
        """Raise PipelineError for an invalid rank rule or `ranks=` text."""
        validate_policy(self.name, self.speedup, self.rank, self.energy, self.evbmf, self.floor, self.multiple)
        parse_explicit_ranks(self.name, self.ranks)

    @property
    def policy(self) -> RankPolicy:
        """The rank rule these options select."""
        return RankPolicy(self.speedup, self.rank, self.energy, self.evbmf, self.floor, self.multiple)

    @property
    def explicit_ranks(self) -> dict:
        """Per-layer ranks given with `ranks=NAME=R;...`."""
        return parse_explicit_ranks(self.name, self.ranks)

    @property
    def gates(self) -> Gates:
        """The MACs-saving / measure / exclude gates these options select."""
        return Gates(self.min_saving, self.force, self.measure,
                     frozenset(filter(None, (e.strip() for e in self.exclude.split(";")))))
