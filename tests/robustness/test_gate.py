"""Verification gate of `slimcc optimize`: a deliberately broken pass (registered only here) is caught,
named, and rolled back (or stops the run) as the user chose; nothing unverified is written."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import pytest

from slimcc.cli import main
from slimcc.ir.model import load_model
from slimcc.ir.verify import assert_equivalent, compare_models
from slimcc.models.zoo import build
from slimcc.passes.base import Pass, PassResult, register_pass, unregister_pass


def scale_first_conv(model, factor: float) -> PassResult:
    for node in model.graph.nodes:
        if node.op == "Conv":
            weight = node.inputs[1]
            weight.values = (np.asarray(weight.values) * factor).astype(np.float32)
            return PassResult(True, {"scaled": node.name})
    return PassResult(False)


@dataclass(frozen=True)
class CorruptWeights(Pass):
    """Claims to be exact but scales the first Conv's weights by 1.5 (a deliberately broken pass)."""

    exact = True

    def run(self, model, ctx=None):
        return scale_first_conv(model, 1.5)


@dataclass(frozen=True)
class OverlyLossy(Pass):
    """A lossy pass that changes the first Conv far beyond any sensible error budget."""

    exact = False

    def run(self, model, ctx=None):
        return scale_first_conv(model, -3.0)


@dataclass(frozen=True)
class GentleLossy(Pass):
    """A lossy pass whose change (weights x 1.0001) stays inside a 1e-2 budget."""

    exact = False

    def run(self, model, ctx=None):
        return scale_first_conv(model, 1.0001)


@pytest.fixture(autouse=True)
def broken_passes():
    for name, cls in (("test-corrupt-weights", CorruptWeights), ("test-overly-lossy", OverlyLossy),
                      ("test-gentle-lossy", GentleLossy)):
        register_pass(name)(cls)
    yield
    for name in ("test-corrupt-weights", "test-overly-lossy", "test-gentle-lossy"):
        unregister_pass(name)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(build("resnet-basic", seed=0), path)
    return path


def optimize(capsys, *args):
    capsys.readouterr()
    code = main(["--quiet", "optimize", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_broken_exact_pass_rolled_back_and_named(source, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, stderr = optimize(capsys, source, "-p", "canonicalize,test-corrupt-weights,remove-identity",
                                    "-o", out, "--on-fail", "rollback", "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["rolled_back"] == ["test-corrupt-weights"]
    record = next(r for r in summary["passes"] if r["pass"] == "test-corrupt-weights")
    assert "exact pass changed output" in record["stats"]["error"]
    assert_equivalent(load_model(source), load_model(out))  # the corrupted weights never reached the file


def test_rollback_message_in_the_report(source, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code = main(["optimize", str(source), "-p", "canonicalize,test-corrupt-weights", "-o", str(out),
                 "--on-fail", "rollback"])
    text = capsys.readouterr().out
    assert code == 0
    assert "rolled back (failed verification): test-corrupt-weights" in text


def test_broken_exact_pass_stops_by_default(source, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, _, stderr = optimize(capsys, source, "-p", "canonicalize,test-corrupt-weights", "-o", out)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "'test-corrupt-weights'" in lines[0] and "after: canonicalize" in lines[0]
    assert not out.exists()


def test_no_verify_lets_the_broken_pass_through(source, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, _, stderr = optimize(capsys, source, "-p", "test-corrupt-weights", "-o", out, "--no-verify")
    assert code == 0, stderr
    assert compare_models(load_model(source), load_model(out)).max_rel > 0.01  # proves the gate did the catching


def test_lossy_pass_over_max_error_rolled_back_and_named(source, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, stderr = optimize(capsys, source, "-p", "test-gentle-lossy,test-overly-lossy", "-o", out,
                                    "--max-error", "0.01", "--on-fail", "rollback", "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["rolled_back"] == ["test-overly-lossy"]
    assert "--max-error 0.01" in next(r for r in summary["passes"] if r["rolled_back"])["stats"]["error"]
    report = compare_models(load_model(source), load_model(out))
    assert 0 < report.max_rel <= 0.01  # the gentle pass stayed, the lossy one was undone


def test_lossy_pass_over_max_error_stops(source, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, _, stderr = optimize(capsys, source, "-p", "test-overly-lossy", "-o", out, "--max-error", "0.01")
    assert code == 2 and "'test-overly-lossy'" in stderr and "--max-error" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not out.exists()
