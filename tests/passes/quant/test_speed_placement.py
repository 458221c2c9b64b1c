"""Speed-aware placement: int8 only where the measured kernel times say it pays, switches counted."""

from __future__ import annotations

import itertools

import pytest
from quant_helpers import calib_context, canonical_zoo

from slimcc.passes.quant.layer_times import OTHER, conversion_cost
from slimcc.passes.quant.qdq_insert import QDQInsert
from slimcc.passes.quant.speed_placement import fastest_subset, layer_edges, placement_time


def _chain(convs: int):
    """A plain chain of 3x3 convs with Relus on 8 channels at 16x16 (every conv a candidate)."""
    import numpy as np
    from onnx import TensorProto, helper

    from slimcc.ir.model import load_model

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(convs):
        w = helper.make_tensor(f"w{i}", TensorProto.FLOAT, [8, 8, 3, 3], rng.normal(0, 0.2, 576).tolist())
        inits.append(w)
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    model = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return model, [f"conv{i}" for i in range(convs)]


def _times(pairs: dict[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    return {name: {"fp32": f, "int8": q} for name, (f, q) in pairs.items()}


ELEMENTS = 8 * 16 * 16  # every tensor of the chain


def test_a_slower_int8_layer_between_fast_ones_stays_int8_when_converting_costs_more():
    model, order = _chain(3)
    times = _times({"conv0": (100, 40), "conv1": (50, 60), "conv2": (100, 40)})
    # conv1 as float saves 10 but costs two conversions of its 2048-element input and output
    assert fastest_subset(model.graph, order, set(order), times, 20 / ELEMENTS) == set(order)
    assert fastest_subset(model.graph, order, set(order), times, 2 / ELEMENTS) == {"conv0", "conv2"}


def test_nothing_int8_when_int8_is_slower_everywhere():
    model, order = _chain(2)
    times = _times({"conv0": (10, 30), "conv1": (10, 12)})
    assert fastest_subset(model.graph, order, set(order), times, 0.0) == set()


def test_fastest_subset_is_the_best_of_every_allowed_subset():
    model, order = _chain(5)
    times = _times(dict(zip(order, [(30, 50), (80, 35), (20, 28), (90, 30), (15, 40)])))
    allowed = set(order[:4])  # conv4 must stay float (the error budget)
    for per_element in (0.0, 5.0 / ELEMENTS, 25.0 / ELEMENTS):
        best = min(placement_time(model.graph, order, set(s), times, per_element)
                   for r in range(len(allowed) + 1) for s in itertools.combinations(sorted(allowed), r))
        chosen = fastest_subset(model.graph, order, allowed, times, per_element)
        assert chosen <= allowed
        assert placement_time(model.graph, order, chosen, times, per_element) == pytest.approx(best)


def test_layer_edges_follow_the_data_flow_of_a_branching_model():
    model = canonical_zoo("resnet-basic")
    order = QDQInsert().candidates(model.graph)
    edges, to_float = layer_edges(model.graph, order)
    # a residual block's first conv reads what the block's shortcut also carries: one conv feeds two
    fan_out = {a for a, _ in edges if sum(1 for e in edges if e[0] == a) >= 2}
    assert fan_out and all(a in order and b in order for a, b in edges)
    assert all(size > 0 for size in edges.values())


def test_conversion_cost_is_per_element_of_the_profiled_q_dq_kernels():
    model = canonical_zoo("resnet-basic")
    ctx, feeds = calib_context(count=2)
    QDQInsert().run(model, ctx)
    q = next(n for n in model.graph.nodes if n.op == "QuantizeLinear" and n.inputs[0].shape)
    elements = 1
    for d in q.inputs[0].shape:
        elements *= d
    assert conversion_cost({q.name: ("QuantizeLinear", 10.0), "Conv_token_1": ("QLinearConv", 99.0)}, model) \
        == pytest.approx(2 * 10.0 / elements)
    assert conversion_cost({}, model) == 0.0


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
