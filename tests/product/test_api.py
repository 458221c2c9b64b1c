"""The Python API: slimcc.compress / Pipeline / register_pass / load / save with the accepted inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import slimcc
from slimcc.errors import PipelineError, VerificationError
from slimcc.ir.cost import model_cost
from slimcc.ir.verify import compare_models
from slimcc.models.zoo import build


class Reader:
    """An onnxruntime-style CalibrationDataReader."""

    def __init__(self, batches):
        self.batches = iter(batches)

    def get_next(self):
        return next(self.batches, None)


def samples(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("kind", ["arrays", "reader", "npz"])
def test_compress_accepts_every_calibration_form_and_leaves_the_input_alone(kind, tmp_path):
    proto = build("resnet-basic", seed=0)
    model = slimcc.load(proto)
    before = model_cost(model)
    data = samples(8)
    if kind == "arrays":
        calibration = {"x": data}
    elif kind == "reader":
        calibration = Reader([{"x": data[i:i + 1]} for i in range(8)])
    else:
        np.savez(tmp_path / "c.npz", x=data)
        calibration = tmp_path / "c.npz"
    with pytest.warns(UserWarning, match="8 sample"):  # every form counts as 8 samples, too few to prune on
        small, text = slimcc.compress(model, macs=0.5, calibration=calibration)
    assert text == ("canonicalize,prune-channels{macs=0.5,criterion=reconstruction,allocation=sensitivity},"
                    "recover-lstsq{layers=all},recover-bias")
    assert model_cost(small).macs <= 0.55 * before.macs
    assert model_cost(model).macs == before.macs  # the caller's model is untouched
    saved = slimcc.save(small, tmp_path / "small.onnx")
    onnx.checker.check_model(onnx.load(saved))


def test_recovery_brings_the_compressed_model_closer_to_the_original():
    model = slimcc.load(build("resnet-basic", seed=0))
    calib = {"x": samples(16)}
    plain, _ = slimcc.compress(model, macs=0.5)
    with pytest.warns(UserWarning, match="16 sample"):
        recovered, _ = slimcc.compress(model, macs=0.5, calibration=calib)
    feeds = [{"x": samples(1, seed=s)} for s in range(1, 5)]
    assert compare_models(model, recovered, feeds).max_abs < compare_models(model, plain, feeds).max_abs


def test_compress_max_error_raises():
    with pytest.raises(VerificationError):
        slimcc.compress(build("resnet-basic", seed=0), macs=0.3, max_error=1e-6)


def test_pipeline_from_spec_round_trips_and_rejects_unknown_passes():
    pipeline = slimcc.Pipeline.from_spec("canonicalize,prune-channels{ratio=0.25}")
    assert slimcc.Pipeline.from_spec(pipeline.spec()).spec() == pipeline.spec()
    model = slimcc.load(build("vgg", seed=0))
    report = pipeline.run(model)
    assert [r.name for r in report.records] == ["canonicalize", "prune-channels"] and report.modified
    with pytest.raises(PipelineError):
        slimcc.Pipeline.from_spec("canonicalize,no-such-pass")


@pytest.mark.slow
def test_compile_builds_an_artifact_that_matches_onnxruntime(tmp_path):
    from slimcc.ir.verify import run_onnxruntime
    from slimcc.targets.runner import run_artifact

    model = slimcc.load(build("conv-gemm", seed=0))
    folder = slimcc.compile(model, target="x86", output_dir=tmp_path / "art", tuned=False)
    feeds = {"x": samples(1, seed=3)}
    expected = run_onnxruntime(model, feeds)
    actual = run_artifact(folder, feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-3, atol=1e-4)
