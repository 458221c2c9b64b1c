"""Importance criteria against brute force, selection rules, and the pass's options."""

from __future__ import annotations

import numpy as np
import pytest
from prune_helpers import GraphBuilder

from slimcc.errors import PipelineError
from slimcc.ir.calibration import CalibrationData
from slimcc.ir.cost import model_cost
from slimcc.ir.model import load_model
from slimcc.ir.verify import run_onnxruntime
from slimcc.models.zoo import build
from slimcc.passes.base import PassContext
from slimcc.passes.canonicalize import Canonicalize
from slimcc.passes.pipeline import parse_pipeline
from slimcc.passes.prune.apply import mask_channels
from slimcc.passes.prune.channels import analyze_channels
from slimcc.passes.prune.importance import CriterionUnavailable, compute_scores, normalize_scores
from slimcc.passes.prune.plan import MacsEstimator
from slimcc.passes.prune.selection import kept_count, select_by_ratio


def _calib(shape, n=2):
    return CalibrationData.from_arrays([{"x": np.random.default_rng(i).standard_normal(shape).astype(np.float32)}
                                        for i in range(n)])


@pytest.mark.parametrize("stride", [1, 2])
def test_hessian_score_equals_measured_reconstruction_error(stride):
    b = GraphBuilder(c=3, hw=9)
    a = b.conv("x", 3, 5)
    y = b.conv(a, 5, 4, stride=stride)
    model = load_model(b.model(y))
    an = analyze_channels(model.graph)
    calib = _calib([1, 3, 9, 9])
    scores = compute_scores(model, an, "hessian", calib)
    base = [run_onnxruntime(model, batch)[y] for batch in calib]
    for k in range(5):
        comp = int(an.element_component[a][k])
        masked = model.copy()
        mask_channels(masked.graph, an, {comp})
        # the consumer output changes by exactly the dropped channel's contribution (bias unchanged)
        err = np.mean([np.sum((run_onnxruntime(masked, batch)[y].astype(np.float64) - ref) ** 2)
                       for batch, ref in zip(calib, base)])
        assert scores[comp] == pytest.approx(err, rel=1e-3)


def test_l1_and_activation_scores_match_definitions():
    b = GraphBuilder(c=3, hw=6)
    a = b.conv("x", 3, 4)
    y = b.conv(b.op("Relu", [a])[0], 4, 2)
    model = load_model(b.model(y))
    an = analyze_channels(model.graph)
    w = np.asarray(model.graph.nodes[0].inputs[1].values)
    l1 = compute_scores(model, an, "l1")
    calib = _calib([1, 3, 6, 6])
    act = compute_scores(model, an, "activation", calib)
    outs = [run_onnxruntime(model.copy(), batch) for batch in calib]  # noqa: F841 (runs the model)
    from slimcc.ir.calibration import collect_activations
    values = collect_activations(model, calib, [a], progress=False)[a]
    for k in range(4):
        comp = int(an.element_component[a][k])
        assert l1[comp] == pytest.approx(np.abs(w[k]).sum(), rel=1e-6)
        assert act[comp] == pytest.approx(np.mean([np.abs(v[:, k]).mean() for v in values]), rel=1e-5)


def test_bn_criterion_uses_gamma_and_is_skipped_after_folding():
    model = load_model(build("vgg"))
    an = analyze_channels(model.graph)
    scores = compute_scores(model, an, "bn")
    bn = next(n for n in model.graph.nodes if n.op == "BatchNormalization")
    comp = int(an.element_component[bn.inputs[0].name][2])
    assert scores[comp] == pytest.approx(abs(float(bn.inputs[1].values[2])), rel=1e-6)
    Canonicalize().run(model)
    with pytest.raises(CriterionUnavailable, match="BatchNormalization"):
        compute_scores(model, analyze_channels(model.graph), "bn")
    result = parse_pipeline("prune-channels{ratio=0.5,criterion=bn}")[0].run(model)
    assert not result.modified and "BatchNormalization" in result.stats["skipped"]


def test_kept_count_rounds_caps_and_never_empties():
    assert kept_count(64, 20, round_to=8) == 48  # 44 -> nearest multiple of 8
    assert kept_count(64, 64, round_to=8, max_ratio=0.9) == 8  # cap: keep >= 6.4 -> 8
    # 17..31 units: a count one past a multiple of 8 drops to it (17 channels cost onnxruntime's
    # NCHWc convs the vector blocks of 24); others stay as asked, and 16-unit groups are left alone
    assert kept_count(24, 7, round_to=8) == 16 and kept_count(24, 1, round_to=8) == 23
    assert kept_count(24, 4, round_to=8) == 20 and kept_count(16, 7, round_to=8) == 9
    assert kept_count(24, 24, round_to=8, max_ratio=0.99) == 1  # never empty
    assert kept_count(12, 5, round_to=8) == 7  # < 16 units: no rounding
    assert kept_count(10, 3, round_to=8) == 7
    assert kept_count(40, 1, round_to=8) == 40


def test_ratio_selection_removes_lowest_scores_per_group():
    model = load_model(build("resnet-basic"))
    an = analyze_channels(model.graph)
    scores = compute_scores(model, an, "l2")
    sel = select_by_ratio(an, scores, 0.5, round_to=1)
    for group in an.prunable_groups():
        ids = np.array(group.components)
        gone = np.array([c in sel.removed for c in ids])
        assert gone.sum() == len(ids) // 2
        assert scores[ids[gone]].max() <= scores[ids[~gone]].min()
    norm = normalize_scores(an, scores)
    assert all(np.mean(norm[g.components]) == pytest.approx(1.0) for g in an.prunable_groups())


@pytest.mark.parametrize("target", [0.3, 0.6])
def test_macs_target_is_met_and_estimator_is_exact_for_convs(target):
    model = load_model(build("mobilenetv2", size=32, width=16))
    Canonicalize().run(model)
    before = model_cost(model).macs
    p = parse_pipeline(f"prune-channels{{macs={target}}}")[0]
    an = analyze_channels(model.graph)
    estimate = MacsEstimator(model.graph, an).macs(p.select(model, an).removed)
    p.run(model)
    after = model_cost(model).macs
    assert after / before <= target + 0.02
    assert after / before >= target - 0.1
    assert estimate == pytest.approx(after, rel=0.02)


def test_options_and_calibration_need():
    assert not parse_pipeline("prune-channels{ratio=0.3}")[0].needs_calibration
    assert parse_pipeline("prune-channels{ratio=0.3,criterion=hessian}")[0].needs_calibration
    assert parse_pipeline("prune-channels{macs=0.5,criterion=activation}")[0].needs_calibration
    for bad in ("prune-channels{ratio=0.3,macs=0.5}", "prune-channels{ratio=1.5}", "prune-channels{round=0}",
                "prune-channels{criterion=magic}"):
        with pytest.raises(PipelineError):
            parse_pipeline(bad)


def test_hessian_pass_with_calibration_context():
    model = load_model(build("c2f"))
    before = model_cost(model).macs
    p = parse_pipeline("prune-channels{macs=0.5,criterion=hessian}")[0]
    result = p.run(model, PassContext(calibration=_calib([1, 3, 32, 32]), progress=False))
    assert result.modified
    assert model_cost(model).macs <= 0.52 * before
