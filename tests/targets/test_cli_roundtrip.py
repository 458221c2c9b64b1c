"""`slimcc compile` then `slimcc run`: a raw ONNX file to outputs in an .npz, matching onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from slimcc.cli import main
from slimcc.models import zoo
from slimcc.targets.compiler import prepare_model

from targets_helpers import assert_matches_onnxruntime


@pytest.fixture
def cli(capsys):
    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_compile_then_run_matches_onnxruntime(cli, tmp_path):
    proto = zoo.build("conv-gemm", seed=3)
    onnx.save(proto, tmp_path / "m.onnx")
    code, out, err = cli("compile", tmp_path / "m.onnx", "--target", "x86", "--json", "-o", tmp_path / "art")
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["inputs"][0]["name"] == "x"

    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = cli("run", tmp_path / "art", "--input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "y.npz")
    assert code == 0, err
    with np.load(tmp_path / "y.npz", allow_pickle=False) as data:
        outputs = {name: data[name] for name in data.files}
    assert_matches_onnxruntime(prepare_model(proto), outputs, {"x": x})


def test_run_refuses_bad_inputs_without_writing(cli, tmp_path):
    proto = zoo.build("conv-gemm", seed=3)
    onnx.save(proto, tmp_path / "m.onnx")
    assert cli("compile", tmp_path / "m.onnx", "-o", tmp_path / "art")[0] == 0
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 16, 16), np.float32))
    code, _, err = cli("run", tmp_path / "art", "--input", f"x={tmp_path / 'bad.npy'}", "-o", tmp_path / "y.npz")
    assert code == 2 and "compiled for [1, 3, 32, 32]" in err
    code, _, err = cli("run", tmp_path / "art", "--input", f"image={tmp_path / 'bad.npy'}", "-o", tmp_path / "y.npz")
    assert code == 2 and "unknown input" in err
    code, _, err = cli("run", tmp_path / "art", "-o", tmp_path / "y.npz")
    assert code == 2 and "missing input 'x'" in err
    assert not (tmp_path / "y.npz").exists()


def test_compile_refuses_dynamic_model_without_shape(cli, tmp_path):
    proto = zoo.build("conv-gemm")
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(proto, tmp_path / "dyn.onnx")
    code, _, err = cli("compile", tmp_path / "dyn.onnx", "-o", tmp_path / "art")
    assert code == 2 and "--input-shape" in err
    assert not (tmp_path / "art").exists()
    code, _, err = cli("compile", tmp_path / "dyn.onnx", "--input-shape", "x=2,3,32,32", "-o", tmp_path / "art")
    assert code == 0, err
    assert json.loads((tmp_path / "art" / "manifest.json").read_text())["inputs"][0]["shape"] == [2, 3, 32, 32]
