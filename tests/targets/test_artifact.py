"""Artifact folders: manifest content, atomic replacement, refusal to clobber unrelated folders."""

from __future__ import annotations

import hashlib
import json

import onnx
import pytest

from slimcc import __version__
from slimcc.errors import SlimccError
from slimcc.models import zoo
from slimcc.targets.artifact import MANIFEST, read_manifest
from slimcc.targets.build import LIBRARY_NAME, describe_child_death
from slimcc.targets.compiler import compile_model, prepare_model


@pytest.fixture(scope="module")
def conv_gemm_artifact(tmp_path_factory, x86):
    """conv-gemm compiled for x86 through the isolated (child process) build."""
    proto = zoo.build("conv-gemm", seed=0)
    model = prepare_model(proto)
    folder = tmp_path_factory.mktemp("art") / "conv-gemm"
    compile_model(model, x86, folder, isolate=True)
    return folder, model, hashlib.sha256(proto.SerializeToString()).hexdigest()


def test_manifest_describes_inputs_outputs_target_and_source(conv_gemm_artifact, x86):
    folder, model, sha = conv_gemm_artifact
    data = json.loads((folder / MANIFEST).read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted([MANIFEST, LIBRARY_NAME])
    assert data["inputs"] == [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32"}]
    out = model.graph.outputs[0]
    assert data["outputs"] == [{"name": out.name, "shape": list(out.shape), "dtype": "float32"}]
    assert data["target"]["tvm"] == x86.tvm and data["target"]["name"] == "x86"
    assert data["slimcc_version"] == __version__
    assert data["source_sha256"] == sha
    assert data["build"]["tvm_version"].startswith("0.27")
    assert data["build"]["tuning_database"] is None and data["build"]["tuned_kernels"] == 0
    assert read_manifest(folder).inputs[0].shape == [1, 3, 32, 32]


def test_existing_unrelated_folder_is_not_overwritten(tmp_path, x86):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(SlimccError, match="not a slimcc artifact"):
        compile_model(prepare_model(zoo.build("conv-gemm")), x86, target, isolate=False)
    assert (target / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"], "no staging folder may be left behind"


def test_failed_build_leaves_no_folder(tmp_path, x86, monkeypatch):
    from slimcc.targets import compiler

    def explode(*args, **kwargs):
        raise SlimccError("TVM failed to compile for x86: boom")

    monkeypatch.setattr(compiler, "build_library", explode)
    with pytest.raises(SlimccError, match="boom"):
        compile_model(prepare_model(zoo.build("conv-gemm")), x86, tmp_path / "out", isolate=False)
    assert list(tmp_path.iterdir()) == []


def test_read_manifest_rejects_broken_artifacts(conv_gemm_artifact, tmp_path):
    with pytest.raises(SlimccError, match="not found"):
        read_manifest(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlimccError, match="not a slimcc artifact"):
        read_manifest(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    data = json.loads((conv_gemm_artifact[0] / MANIFEST).read_text())
    (broken / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(SlimccError, match="lacks its library"):
        read_manifest(broken)


def test_child_crash_is_reported_with_signal_name():
    message = describe_child_death(-11, "some output\nfatal: LLVM ERROR: bad\n", "arm")
    assert message.startswith("TVM crashed (SIGSEGV) while compiling for arm")
    assert "LLVM ERROR: bad" in message


def test_source_model_is_unchanged_by_prepare():
    proto = zoo.build("conv-gemm")
    before = proto.SerializeToString()
    prepare_model(proto)
    assert proto.SerializeToString() == before
    assert isinstance(onnx.load_from_string(before), onnx.ModelProto)
