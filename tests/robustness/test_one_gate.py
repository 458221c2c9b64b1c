"""Every entry point goes through the one verified run (slimcc.passes.verified): a pass that lies about
being exact is refused by `slimcc optimize`, `slimcc compress`, the demo's stages, `slimcc.Pipeline.run`
and `slimcc.compress`, with a one-line error and nothing written or handed back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest

import slimcc
from slimcc.cli import main
from slimcc.commands import demo
from slimcc.compress_plan import Plan
from slimcc.errors import SlimccError, VerificationError
from slimcc.ir.calibration import CalibrationData
from slimcc.ir.verify import compare_models
from slimcc.models.zoo import build
from slimcc.passes.base import Pass, PassResult, register_pass, unregister_pass
from slimcc.passes.pipeline import parse_pipeline
from slimcc.passes.verified import pipeline_is_exact

LIAR = "test-lying-exact"


@dataclass(frozen=True)
class LyingExact(Pass):
    """Claims to be exact but doubles the first Conv's weights (registered only by this test)."""

    exact = True

    def run(self, model, ctx=None):
        conv = next(n for n in model.graph.nodes if n.op == "Conv")
        conv.inputs[1].values = (np.asarray(conv.inputs[1].values) * 2.0).astype(np.float32)
        return PassResult(True, {"doubled": conv.name})


@pytest.fixture(autouse=True)
def liar():
    register_pass(LIAR)(LyingExact)
    yield
    unregister_pass(LIAR)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(build("resnet-basic", seed=0), path)
    return path


def lying_plan(**_):
    """The compress planner, replaced: canonicalize then the lying pass."""
    return Plan(["canonicalize", LIAR])


def one_line_refusal(capsys, argv, out):
    capsys.readouterr()
    code = main(["--quiet", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert LIAR in err and "exact pass changed output" in err
    assert not out.exists()


def test_optimize_refuses_the_lying_pass(source, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    one_line_refusal(capsys, ["optimize", source, "-p", f"canonicalize,{LIAR}", "-o", out], out)


def test_compress_cli_refuses_the_lying_pass(source, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("slimcc.commands.compress.plan", lying_plan)
    out = tmp_path / "out.onnx"
    one_line_refusal(capsys, ["compress", source, "-o", out], out)


def test_pipeline_run_refuses_and_leaves_the_model_unchanged(source):
    model = slimcc.load(source)
    before = model.copy()
    with pytest.raises(VerificationError, match="exact pass changed output") as info:
        slimcc.Pipeline.from_spec(f"canonicalize,{LIAR}").run(model)
    assert "\n" not in str(info.value)
    assert compare_models(before, model).max_abs == 0.0  # nothing unverified reached the caller


def test_pipeline_run_opt_out_lets_it_through(source):
    model = slimcc.load(source)
    before = model.copy()
    report = slimcc.Pipeline.from_spec(LIAR).run(model, verify=False)
    assert report.verification is None
    assert compare_models(before, model).max_rel > 0.1  # proves the gate was what refused it above


def test_api_compress_refuses_the_lying_pass(source, monkeypatch):
    monkeypatch.setattr("slimcc.compress_plan.plan", lying_plan)
    with pytest.raises(VerificationError, match=LIAR) as info:
        slimcc.compress(source)
    assert "\n" not in str(info.value)


def test_demo_stage_refuses_the_lying_pass(source):
    model = slimcc.load(source)
    rng = np.random.default_rng(0)
    calib = CalibrationData([{"x": rng.standard_normal([1, 3, 32, 32]).astype(np.float32)}], "random")
    subject = demo.Subject("test", model, calib)
    with pytest.raises(SlimccError, match="exact pass changed output") as info:
        demo.apply_stage(model, ["canonicalize", LIAR], subject, model)
    assert "\n" not in str(info.value)


def test_exactness_is_decided_by_the_configured_pass():
    assert pipeline_is_exact(parse_pipeline("qdq-cancel"))
    assert not pipeline_is_exact(parse_pipeline("qdq-cancel{merge=true}"))
    assert not pipeline_is_exact(parse_pipeline("canonicalize,prune-channels{ratio=0.5}"))
