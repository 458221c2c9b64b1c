"""Loading and saving: static input shapes, atomic writes, confined external data."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimcc.errors import ModelLoadError, SlimccError
from slimcc.ir.model import load_model, parse_input_shapes, save_model
from slimcc.ir.verify import assert_equivalent
from slimcc.ir.weightless import has_stubs
from slimcc.models.zoo import build_deep_resnet


def dynamic_conv_model():
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_input_shape_makes_shapes_static():
    model = load_model(dynamic_conv_model(), {"x": [2, 3, 8, 10]})
    assert model.is_static()
    assert model.graph.outputs[0].shape == [2, 4, 8, 10]


@pytest.mark.parametrize("shapes, fragment", [
    ({"nope": [1, 3, 8, 8]}, "unknown input 'nope'; inputs are: x"),
    ({"x": [1, 3, 8]}, "rank 3 does not match"),
    ({"x": [1, 4, 8, 8]}, "dim 1 is fixed to 3"),
])
def test_bad_input_shapes(shapes, fragment):
    with pytest.raises(SlimccError, match=fragment):
        load_model(dynamic_conv_model(), shapes)


@pytest.mark.parametrize("spec", ["x", "=1,2", "x=1,a", "x=0,3", "x="])
def test_parse_input_shape_errors(spec):
    with pytest.raises(SlimccError):
        parse_input_shapes([spec])


def test_save_is_atomic_and_round_trips(tmp_path):
    model = load_model(dynamic_conv_model(), {"x": [1, 3, 8, 8]})
    out = save_model(model, tmp_path / "m.onnx")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    assert_equivalent(model, load_model(out))


def test_failed_save_leaves_nothing(tmp_path):
    model = load_model(dynamic_conv_model(), {"x": [1, 3, 8, 8]})
    model.graph.nodes[0].op = "NoSuchOp"
    with pytest.raises(SlimccError, match="invalid model"):
        save_model(model, tmp_path / "bad.onnx")
    assert os.listdir(tmp_path) == []


def saved_deep_chain(tmp_path):
    """A short zoo residual chain (weights large enough to be stubbed for the checker), saved once."""
    model = load_model(build_deep_resnet(blocks=2, seed=0))
    out = save_model(model, tmp_path / "m.onnx")
    return model, out, out.read_bytes()


def test_refused_save_keeps_the_old_file(tmp_path):
    """The checker on save still refuses an invalid model when its weights travel as stubs, and the
    file already at the destination stays as it was."""
    model, out, before = saved_deep_chain(tmp_path)
    next(node for node in model.graph.nodes if node.op == "Relu").op = "NoSuchOp"
    assert has_stubs(model.weightless_proto()[0])
    with pytest.raises(SlimccError, match="refusing to write an invalid model"):
        save_model(model, out)
    assert os.listdir(tmp_path) == ["m.onnx"]
    assert out.read_bytes() == before


def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    """A write that fails before the rename leaves neither a half-written output nor a temp file."""
    model, out, before = saved_deep_chain(tmp_path)

    def disk_full(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, out)
    assert os.listdir(tmp_path) == ["m.onnx"]
    assert out.read_bytes() == before


def write_external(tmp_path, location, *, length=None):
    proto = dynamic_conv_model()
    tensor = proto.graph.initializer[0]
    raw = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
    (tmp_path / "weights.bin").write_bytes(raw)
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length or len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    path = tmp_path / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def test_external_data_inside_folder_loads(tmp_path):
    model = load_model(write_external(tmp_path, "weights.bin"))
    assert_equivalent(dynamic_conv_model(), model, {"x": np.ones((1, 3, 5, 5), np.float32)})


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/passwd", "sub/../../weights.bin"])
def test_external_data_traversal_rejected(tmp_path, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    path = write_external(inner, location)
    with pytest.raises(ModelLoadError, match="folder|relative"):
        load_model(path)


def test_external_data_symlink_outside_rejected(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 432)
    path = write_external(inner, "link.bin")
    (inner / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ModelLoadError, match="outside"):
        load_model(path)


def test_external_data_oversized_length_rejected(tmp_path):
    with pytest.raises(ModelLoadError, match="byte file"):
        load_model(write_external(tmp_path, "weights.bin", length=10**12))


@pytest.mark.parametrize("content", [b"", b"hello world, not a model\n", b"\x08\x07\x12\xff\xff"])
def test_garbage_files_rejected(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError):
        load_model(path)
