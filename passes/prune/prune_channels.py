"""The `prune-channels` pass: filter pruning propagated as channel pruning through every coupling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from slimcc.errors import PipelineError
from slimcc.ir.cost import model_cost
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.prune.apply import prune_model
from slimcc.passes.prune.channels import analyze_channels
from slimcc.passes.prune.importance import CriterionUnavailable, compute_scores, normalize_scores
from slimcc.passes.prune.plan import MacsEstimator, conv_coverage
from slimcc.passes.prune.selection import Selection, select_by_macs, select_by_ratio, select_global_ratio
from slimcc.passes.prune.sensitivity import allocate, measure_curves, sensitivity_selection

DATA_CRITERIA = ("activation", "hessian", "reconstruction")


class _CriterionNeedsData:
    """`needs_calibration` that depends on the configured criterion (False on the class itself)."""

    def __get__(self, instance, owner) -> bool:
        return instance is not None and (instance.criterion in DATA_CRITERIA or instance.allocation == "sensitivity")


@register_pass("prune-channels")
@dataclass(frozen=True)
class PruneChannels(Pass):
    """Remove the least important channels (ratio per group, global ratio or a MACs target) everywhere they flow.

    criterion=activation|hessian|reconstruction needs calibration data (--calib); l1, l2 and bn do not.
    reconstruction removes, per group, the channels the next layers best rebuild by least squares
    from the rest (greedy, ThiNet-style); follow it with recover-lstsq to apply that refit.
    allocation=sensitivity (with macs=) measures each group's output-error curve on the
    calibration data and spends the MACs budget where it hurts least; allocation=score ranks
    the criterion's scores of all groups against one threshold.
    """

    ratio: float = 0.0
    macs: float = 0.0
    criterion: Literal["l1", "l2", "bn", "activation", "hessian", "reconstruction"] = "l1"
    scope: Literal["layer", "global"] = "layer"
    round: int = 8
    max_ratio: float = 0.9
    allocation: Literal["score", "sensitivity"] = "score"

    exact: ClassVar[bool] = False

    def __post_init__(self):
        if self.ratio and self.macs:
            raise PipelineError("prune-channels: give either ratio= or macs=, not both")
        if not 0.0 <= self.ratio < 1.0:
            raise PipelineError(f"prune-channels: ratio={self.ratio} must be in [0, 1)")
        if not 0.0 <= self.macs <= 1.0:
            raise PipelineError(f"prune-channels: macs={self.macs} must be in (0, 1] (share of MACs to keep)")
        if self.round < 1:
            raise PipelineError(f"prune-channels: round={self.round} must be >= 1")
        if self.allocation == "sensitivity" and not self.macs:
            raise PipelineError("prune-channels: allocation=sensitivity spends a MACs budget; give macs=")
        if not 0.0 < self.max_ratio < 1.0:
            raise PipelineError(f"prune-channels: max_ratio={self.max_ratio} must be in (0, 1)")

    needs_calibration: ClassVar = _CriterionNeedsData()

    def select(self, model, analysis, ctx: PassContext | None = None) -> Selection:
        """Score the components and choose what to remove (no rewriting)."""
        ctx = ctx or PassContext()
        if self.ratio == 0.0 and self.macs in (0.0, 1.0):
            return Selection(set())
        record: dict = {}
        scores = compute_scores(model, analysis, self.criterion, ctx.calibration, progress=ctx.progress,
                                record=record)
        if self.allocation == "sensitivity":
            selection = self._by_sensitivity(model, analysis, scores, ctx)
        elif self.macs:
            selection = select_by_macs(analysis, normalize_scores(analysis, scores),
                                       MacsEstimator(model.graph, analysis), self.macs, round_to=self.round,
                                       max_ratio=self.max_ratio)
        elif self.scope == "global":
            selection = select_global_ratio(analysis, normalize_scores(analysis, scores), self.ratio,
                                            round_to=self.round, max_ratio=self.max_ratio)
        else:
            selection = select_by_ratio(analysis, scores, self.ratio, round_to=self.round, max_ratio=self.max_ratio)
        if record:
            selection.analysis = {**(selection.analysis or {}), "reconstruction": record}
        return selection

    def _by_sensitivity(self, model, analysis, scores, ctx: PassContext) -> Selection:
        """Measure every group's error curve on the calibration data and spend the MACs budget on it."""
        if ctx.calibration is None:
            raise CriterionUnavailable("allocation=sensitivity needs calibration data; give --calib DATA")
        estimator = MacsEstimator(model.graph, analysis)
        curves = measure_curves(model, analysis, scores, ctx.calibration, estimator, round_to=self.round,
                                max_ratio=self.max_ratio, progress=ctx.progress)
        depth = allocate(curves, estimator, self.macs, round_to=self.round, max_ratio=self.max_ratio)
        selection = sensitivity_selection(analysis, curves, depth)
        selection.analysis = {"sensitivity": selection.analysis}
        return selection

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        """Analyze, score, select and physically remove channels; stats report MACs/params before and after."""
        analysis = analyze_channels(model.graph)
        before = model_cost(model)
        coverage = conv_coverage(model.graph, analysis)["coverage"]
        try:
            selection = self.select(model, analysis, ctx)
        except CriterionUnavailable as exc:
            return PassResult(False, {"skipped": str(exc), "coverage": coverage})
        stats = {"coverage": round(coverage, 4), "groups": len(analysis.groups),
                 "prunable_groups": len(analysis.prunable_groups()), "removed_units": len(selection.removed)}
        if not selection.removed:
            return PassResult(False, stats)
        prune_model(model, analysis, selection.removed)
        if ctx is not None:
            # which original channels each pruned tensor kept, for the recover-* passes
            total = {name: space.units * space.unit for name, space in analysis.spaces.items()}
            kept = analysis.kept_elements(selection.removed)
            ctx.notes.setdefault("channel_map", {}).update(
                {name: idx for name, idx in kept.items() if len(idx) != total[name]})
        after = model_cost(model)
        stats.update({"macs_before": before.macs, "macs_after": after.macs,
                      "macs_ratio": round(after.macs / before.macs, 4) if before.macs else None,
                      "params_before": before.params, "params_after": after.params})
        return PassResult(True, stats)
