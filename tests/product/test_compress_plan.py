"""The pipeline planner behind `slimcc compress`, `slimcc.compress` and the demo."""

from __future__ import annotations

import pytest

import numpy as np

from slimcc.compress_plan import DEFAULT_MACS, PRUNING_CALIBRATION_SAMPLES, calibration_notes, plan, plan_pipeline
from slimcc.ir.calibration import CalibrationData
from slimcc.errors import PipelineError
from slimcc.passes.pipeline import format_pipeline, parse_pipeline


def test_default_is_pruning_without_recovery_when_there_is_no_data():
    result = plan()
    assert result.steps == ["canonicalize", f"prune-channels{{macs={DEFAULT_MACS:g}}}"]
    assert any("--calib" in note for note in result.notes)


def test_full_plan_orders_prune_refit_decompose_quantize_then_bias():
    text = plan_pipeline(macs=0.5, rank_speedup=2, int8=True, has_calibration=True)
    names = [p.name for p in parse_pipeline(text)]
    assert names == ["canonicalize", "prune-channels", "recover-lstsq", "decompose-tucker", "qdq-insert",
                     "qdq-propagate", "qdq-cancel", "qdq-align-channels", "recover-bias"]
    assert format_pipeline(parse_pipeline(text)).startswith(
        "canonicalize,prune-channels{macs=0.5,criterion=reconstruction,allocation=sensitivity}")


def test_few_calibration_samples_for_pruning_get_a_note():
    pruning, int8_only = plan(macs=0.7, has_calibration=True), plan(int8=True, has_calibration=True)
    few = CalibrationData([{"x": np.zeros((2, 3, 8, 8), np.float32)}, {"x": np.zeros((1, 3, 8, 8), np.float32)}])
    assert few.samples == 3
    (note,) = calibration_notes(pruning, few.samples)
    assert "3 sample(s)" in note and str(PRUNING_CALIBRATION_SAMPLES) in note
    assert calibration_notes(pruning, PRUNING_CALIBRATION_SAMPLES) == []
    assert calibration_notes(int8_only, 3) == []  # activation ranges need far less


def test_without_calibration_pruning_ranks_by_weights_alone():
    assert plan_pipeline(macs=0.5) == "canonicalize,prune-channels{macs=0.5}"


def test_macs_one_means_no_pruning():
    assert "prune-channels" not in plan_pipeline(macs=1.0, rank_speedup=3)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"macs": 0.0}, "--macs"), ({"macs": 1.5}, "--macs"), ({"macs": float("nan")}, "--macs"),
    ({"rank_speedup": 1.0}, "--rank-speedup"), ({"int8": True}, "--calib"),
])
def test_bad_wishes_are_refused_in_one_line(kwargs, fragment):
    with pytest.raises(PipelineError) as info:
        plan(**kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_missing_pass_is_left_out_with_a_note(monkeypatch):
    import slimcc.compress_plan as module
    from slimcc.passes.base import registry

    present = {k: v for k, v in registry().items() if k != "recover-lstsq"}
    monkeypatch.setattr(module, "registry", lambda: present)
    result = plan(macs=0.5, has_calibration=True)
    assert "recover-lstsq" not in result.text
    assert any(note.startswith("recover-lstsq is not available") for note in result.notes)


def test_activation_equalization_is_planned_only_for_int8_with_calibration():
    from slimcc.compress_plan import plan

    steps = plan(int8=True, has_calibration=True, int8_speed=None, equalize_activations=True).steps
    assert steps[:2] == ["canonicalize", "equalize-activation-ranges"]
    assert steps[2].startswith("qdq-insert{")
    assert "equalize-activation-ranges" not in plan(int8=True, has_calibration=True).steps
    assert "equalize-activation-ranges" not in plan(macs=0.5, has_calibration=True, equalize_activations=True).steps
