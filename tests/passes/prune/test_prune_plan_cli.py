"""`slimcc prune-plan`: JSON plan with coverage on the real models; bad input exits 2 and writes nothing."""

from __future__ import annotations

import json

import pytest

from slimcc.cli import main
from slimcc.ir.model import save_model, load_model
from slimcc.models.fetch import REAL_MODELS
from slimcc.models.zoo import build


@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_prune_plan_json_coverage_on_real_models(name, real_model_path, tmp_path):
    spec = REAL_MODELS[name]
    out = tmp_path / "plan.json"
    shape = ",".join(map(str, spec.input_shape))
    code = main(["--quiet", "prune-plan", str(real_model_path(name)), "--input-shape", f"{spec.input_name}={shape}",
                 "--macs", "0.6", "--json", str(out)])
    assert code == 0
    plan = json.loads(out.read_text())
    assert plan["coverage"] >= 0.9
    assert 0.5 <= plan["macs_ratio_estimate"] <= 0.6
    assert any(not g["prunable"] and "graph output" in g["blocked"] for g in plan["groups"])
    removed = sum(g["removed_units"] for g in plan["groups"])
    assert removed == plan["removed_units"] > 0
    assert all(g["removed_units"] == 0 for g in plan["groups"] if not g["prunable"])


def test_prune_plan_bad_input_writes_nothing(tmp_path, capsys):
    model_path = tmp_path / "m.onnx"
    save_model(load_model(build("vgg")), model_path)
    out = tmp_path / "plan.json"
    assert main(["prune-plan", str(model_path), "--ratio", "1.5", "--json", str(out)]) == 2
    assert not out.exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["prune-plan", str(model_path), "--criterion", "hessian", "--ratio", "0.3"]) == 2
    assert main(["prune-plan", str(tmp_path / "missing.onnx")]) == 2


def test_optimize_with_prune_channels_pipeline(tmp_path):
    model_path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    save_model(load_model(build("c2f")), model_path)
    assert main(["--quiet", "optimize", str(model_path), "-p", "canonicalize,prune-channels{macs=0.6}",
                 "-o", str(out)]) == 0
    assert out.stat().st_size < model_path.stat().st_size
