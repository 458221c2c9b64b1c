"""allocation=sensitivity: error curves are what pruning one group really does, the budget goes to
the group that hurts least, the MACs target is met, prune-plan prints the curves."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prune_helpers import GraphBuilder

from slimcc.cli import main
from slimcc.errors import PipelineError
from slimcc.ir.calibration import CalibrationData
from slimcc.ir.cost import model_cost
from slimcc.ir.model import load_model, save_model
from slimcc.ir.verify import run_onnxruntime
from slimcc.models.data import zoo_inputs
from slimcc.models.zoo import build
from slimcc.passes.base import PassContext
from slimcc.passes.canonicalize import Canonicalize
from slimcc.passes.prune.apply import prune_model
from slimcc.passes.prune.channels import analyze_channels
from slimcc.passes.prune.importance import compute_scores
from slimcc.passes.prune.plan import MacsEstimator
from slimcc.passes.prune.prune_channels import PruneChannels
from slimcc.passes.prune.sensitivity import allocate, channel_means, compensate_bias, measure_curves, output_error


class _LinearMacs:
    """A stand-in estimator: every removed component saves 10 MACs of 100."""

    total = 100.0

    def macs(self, removed):
        return self.total - 10.0 * len(removed)


def test_budget_goes_where_the_curve_is_flat_and_meets_the_target():
    curves = [{"group": 0, "units": 4, "order": [0, 1, 2, 3], "points": [{"removed": 2, "error": 0.5},
                                                                         {"removed": 3, "error": 0.9}]},
              {"group": 1, "units": 4, "order": [4, 5, 6, 7], "points": [{"removed": 2, "error": 0.01},
                                                                         {"removed": 3, "error": 0.4}]}]
    depth = allocate(curves, _LinearMacs(), 0.75, round_to=1)
    assert depth == {0: 1, 1: 2}  # three cuts: two from the flat start of group 1, then group 0's 0.25 beats 0.39
    depth = allocate(curves, _LinearMacs(), 0.55, round_to=1)
    assert depth == {0: 2, 1: 3} and 100 - 10 * sum(depth.values()) <= 55


@pytest.fixture(scope="module")
def resnet():
    model = load_model(build("resnet-basic"))
    Canonicalize().run(model)
    return model


def test_curves_are_the_measured_error_of_each_cut_and_the_target_is_met(resnet):
    calib = CalibrationData(zoo_inputs(4, seed=1))
    analysis = analyze_channels(resnet.graph)
    pruner = PruneChannels(macs=0.6, allocation="sensitivity")
    assert pruner.needs_calibration
    selection = pruner.select(resnet, analysis, PassContext(calibration=calib, progress=False))
    data = selection.analysis["sensitivity"]
    json.dumps(data)
    assert len(data["groups"]) == sum(len(g.components) > 1 for g in analysis.prunable_groups())
    curve = data["groups"][0]
    group = analysis.groups[curve["group"]]
    point = curve["points"][1]
    assert len([c for c in selection.removed if c in group.components]) == curve["removed"]
    raw = compute_scores(resnet, analysis, "l1")  # the curve cuts the group's lowest-scored components first
    ids = np.array(group.components)
    alone = set(ids[np.argsort(raw[ids], kind="stable")][:point["removed"]].tolist())
    cut = resnet.copy()
    compensate_bias(cut.graph, analysis, alone, channel_means(resnet, analysis, calib))
    prune_model(cut, analysis, alone)
    batches = list(calib)
    measured = output_error([run_onnxruntime(resnet, b) for b in batches], [run_onnxruntime(cut, b) for b in batches])
    assert measured == pytest.approx(point["error"], rel=1e-3)
    assert measured > 0
    pruned = resnet.copy()
    result = pruner.run(pruned, PassContext(calibration=calib, progress=False))
    assert result.modified
    assert model_cost(pruned).macs <= 0.61 * model_cost(resnet).macs


def test_options_and_prune_plan_prints_curves(resnet, tmp_path, capsys):
    with pytest.raises(PipelineError):
        PruneChannels(ratio=0.3, allocation="sensitivity")
    path = tmp_path / "m.onnx"
    save_model(resnet, path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.concatenate([b["x"] for b in zoo_inputs(2, seed=1)]))
    assert main(["prune-plan", str(path), "--macs", "0.6", "--allocation", "sensitivity"]) == 2
    assert main(["--quiet", "prune-plan", str(path), "--macs", "0.6", "--allocation", "sensitivity",
                 "--calib", str(calib), "--json", str(tmp_path / "plan.json")]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["criterion_analysis"]["sensitivity"]["groups"]
    assert plan["macs_ratio_estimate"] <= 0.6
    capsys.readouterr()
    assert main(["prune-plan", str(path), "--macs", "0.6", "--allocation", "sensitivity", "--calib", str(calib)]) == 0
    assert "output error -" in capsys.readouterr().out


def test_curves_credit_the_bias_correction_a_recovery_would_make():
    """Channels with a large mean: cutting them costs little once their mean moves into the next bias."""
    b = GraphBuilder(c=3, hw=8, seed=2)
    shifted = b.op("Add", [b.op("Relu", [b.conv("x", 3, 8)])[0], b.const(np.float32(5.0))])[0]
    model = load_model(b.model(b.conv(shifted, 8, 4)))
    analysis = analyze_channels(model.graph)
    calib = CalibrationData([{"x": np.random.default_rng(i).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)}
                             for i in range(4)])
    scores = np.arange(len(analysis.components), dtype=float)
    estimator = MacsEstimator(model.graph, analysis)
    plain, corrected = (measure_curves(model, analysis, scores, calib, estimator, round_to=1, compensate=c)[0]
                        for c in (False, True))
    for p, q in zip(plain["points"], corrected["points"]):
        assert q["error"] < 0.5 * p["error"]


def test_the_error_sees_small_valued_channels_beside_large_ones():
    """A detector's output: box coordinates in pixels beside scores in [0, 1]. Erasing one score
    channel barely moves the whole-output L2, but the curves must see it."""
    rng = np.random.default_rng(0)
    reference = np.concatenate([rng.uniform(100, 600, (1, 1, 200)), rng.uniform(0, 1, (1, 4, 200))], axis=1)
    erased = reference.copy()
    erased[:, 3] = 0.0
    plain = float(np.sum((erased - reference) ** 2) / np.sum(reference ** 2))
    assert plain < 1e-5
    assert output_error([{"y": reference}], [{"y": erased}]) > 100 * plain
