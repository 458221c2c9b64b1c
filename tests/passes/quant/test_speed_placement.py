"""Speed-aware placement: int8 only where the measured kernel times say it pays, switches counted."""

from __future__ import annotations

import itertools

import pytest
from quant_helpers import calib_context, canonical_zoo

from slimcc.passes.quant.layer_times import OTHER
from slimcc.passes.quant.qdq_insert import QDQInsert
from slimcc.passes.quant.speed_placement import fastest_subset, placement_time, transition_cost


def _times(pairs: dict[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    return {name: {"fp32": f, "int8": q} for name, (f, q) in pairs.items()}


def test_a_slower_int8_layer_between_fast_ones_stays_int8_when_switching_costs_more():
    order = ["a", "b", "c"]
    times = _times({"a": (100, 40), "b": (50, 60), "c": (100, 40)})
    # b as float saves 10 but costs two switches
    assert fastest_subset(order, set(order), times, transition=20) == {"a", "b", "c"}
    assert fastest_subset(order, set(order), times, transition=2) == {"a", "c"}


def test_nothing_int8_when_int8_is_slower_everywhere():
    order = ["a", "b"]
    assert fastest_subset(order, set(order), _times({"a": (10, 30), "b": (10, 12)}), transition=0) == set()


def test_fastest_subset_is_the_best_of_every_allowed_subset():
    order = ["a", "b", "c", "d", "e"]
    times = _times({"a": (30, 50), "b": (80, 35), "c": (20, 28), "d": (90, 30), "e": (15, 40)})
    allowed = {"a", "b", "c", "d"}  # e must stay float (the error budget)
    for transition in (0.0, 5.0, 25.0):
        best = min(placement_time(order, set(s), times, transition)
                   for r in range(len(allowed) + 1) for s in itertools.combinations(sorted(allowed), r))
        chosen = fastest_subset(order, allowed, times, transition)
        assert chosen <= allowed
        assert placement_time(order, chosen, times, transition) == pytest.approx(best)


def test_transition_cost_is_half_the_extra_unattributed_time():
    assert transition_cost({OTHER: {"fp32": 100.0, "int8": 160.0}}) == 30.0
    assert transition_cost({OTHER: {"fp32": 100.0, "int8": 90.0}}) == 0.0


def test_auto_placement_reports_the_measured_times_and_keeps_the_budget():
    model = canonical_zoo("resnet-basic")
    ctx, _ = calib_context(count=4)
    stats = QDQInsert(placement="auto", budget=0.05, speed="onnxruntime").run(model, ctx).stats
    speed = stats["placement"]["speed"]
    layers = set(stats["placement"]["sensitivity"])
    assert set(speed["kernel_times_us"]) == layers | {OTHER}
    assert stats["placement"]["error"] <= 0.05
    assert set(speed["float_for_speed"]) <= set(stats["placement"]["float_layers"])
    estimate = speed["estimated_us"]
    assert estimate["chosen"] <= estimate["error_budget"] + 1e-6
    for name in speed["float_for_speed"]:
        assert stats["skipped"][name].startswith("int8 not faster")


def test_speed_is_weighed_only_when_asked():
    model = canonical_zoo("resnet-basic")
    ctx, _ = calib_context(count=4)
    assert "speed" not in QDQInsert(placement="auto", budget=0.05).run(model, ctx).stats["placement"]
