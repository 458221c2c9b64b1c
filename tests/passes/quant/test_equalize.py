"""cross-layer-equalize: exact in float (onnxruntime), ranges equalized, non-homogeneous activations refused."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper
from quant_helpers import F, canonical_zoo, qdq_model, vi

from slimcc.ir.model import load_model
from slimcc.ir.verify import compare_models, random_feeds
from slimcc.passes.pattern import constant_value
from slimcc.passes.quant.equalize import CrossLayerEqualize, equalizable_pairs


def _chain(activation: list, group2: int = 1, seed: int = 0):
    """x -> Conv(8 -> 16) -> activation -> Conv(16 -> 16, group2) with wildly different channel ranges."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * np.logspace(-2, 1, 16, dtype=np.float32)[:, None, None, None]
    w2 = rng.standard_normal((16, 16 // group2, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
             numpy_helper.from_array(w2, "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    tensor = "c1"
    for op, extra in activation:
        inits.extend(extra)
        nodes.append(helper.make_node(op, [tensor] + [e.name for e in extra], ["a"], name="act"))
        tensor = "a"
    nodes.append(helper.make_node("Conv", [tensor, "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1], group=group2))
    return load_model(qdq_model(nodes, inits, [vi("x", F, [1, 8, 10, 10])], [vi("y", F, [1, 16, 10, 10])]))


def _exact(before, after) -> None:
    feeds = [random_feeds(before, seed=s) for s in range(3)]
    report = compare_models(before, after, feeds)
    assert max(o.max_rel for o in report.outputs) < 1e-5


def test_relu_pair_is_exact_and_channel_ranges_become_equal():
    model = _chain([("Relu", [])])
    before = model.copy()
    result = CrossLayerEqualize().run(model)
    assert result.stats["pairs"] == 1
    _exact(before, model)
    conv1, conv2 = (n for n in model.graph.nodes if n.op == "Conv")
    r1 = np.abs(constant_value(conv1.inputs[1])).reshape(16, -1).max(1)
    r2 = np.abs(constant_value(conv2.inputs[1])).transpose(1, 0, 2, 3).reshape(16, -1).max(1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    old = np.abs(constant_value(next(n for n in before.graph.nodes if n.name == "conv1").inputs[1]))
    assert old.reshape(16, -1).max(1).max() / old.reshape(16, -1).max(1).min() > 100
    assert r1.max() / r1.min() < old.reshape(16, -1).max(1).max() / old.reshape(16, -1).max(1).min() / 10


def test_depthwise_and_identity_pairs_are_exact():
    for chain, group in (([("Relu", [])], 16), ([], 1), ([], 4)):
        model = _chain(chain, group2=group)
        before = model.copy()
        assert CrossLayerEqualize().run(model).stats["pairs"] == 1
        _exact(before, model)


def test_relu6_is_refused_not_approximated():
    bounds = [numpy_helper.from_array(np.float32(0.0), "lo"), numpy_helper.from_array(np.float32(6.0), "hi")]
    model = _chain([("Clip", bounds)])
    assert equalizable_pairs(model.graph) == []
    assert not CrossLayerEqualize().run(model).modified


def test_zoo_models_stay_exact_under_the_verified_gate():
    from slimcc.passes.verified import run_verified

    for name in ("resnet-basic", "shufflenet-v1"):
        model = canonical_zoo(name)
        outcome = run_verified(model, [CrossLayerEqualize()], None)
        assert outcome.exact and outcome.report.records[0].result.stats["pairs"] > 0


@pytest.mark.parametrize("sweeps", [0, 65, 10**9])
def test_sweeps_out_of_range_is_a_pipeline_error(sweeps):
    from slimcc.errors import PipelineError
    from slimcc.passes.quant.equalize import CrossLayerEqualize

    with pytest.raises(PipelineError, match="sweeps"):
        CrossLayerEqualize(sweeps=sweeps)
