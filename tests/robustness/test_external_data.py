"""External data is read only from inside the model's folder, with sizes checked before reading."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimcc.cli import main
from slimcc.errors import ModelLoadError
from slimcc.ir.model import load_model
from slimcc.ir.verify import run_onnxruntime

WEIGHT = np.arange(12, dtype=np.float32).reshape(4, 3) / 7.0


def external_model(folder, location, *, offset=None, length=None, in_subgraph=False, data=WEIGHT.tobytes()):
    """y = x @ W with W stored as external data at `location` (optionally inside an If branch)."""
    tensor = numpy_helper.from_array(WEIGHT, "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    fields = {"location": location, "offset": offset, "length": length if length is not None else len(data)}
    for key, value in fields.items():
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    if in_subgraph:
        branch = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "then", [], [y], [tensor])
        other = helper.make_graph([helper.make_node("MatMul", ["x", "w2"], ["y"])], "else", [], [y],
                                  [numpy_helper.from_array(WEIGHT, "w2")])
        nodes = [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)]
        graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(np.array(True), "c")])
    else:
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def layout(tmp_path):
    """tmp/outside.bin (a secret next to the model folder) and tmp/model/ (the model's folder)."""
    (tmp_path / "outside.bin").write_bytes(WEIGHT.tobytes())
    inner = tmp_path / "model"
    (inner / "sub").mkdir(parents=True)
    (inner / "weights.bin").write_bytes(b"\0" * 16 + WEIGHT.tobytes())
    return tmp_path, inner


def expect_rejected(path, fragment):
    with pytest.raises(ModelLoadError, match=fragment) as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_inside_folder_loads_and_runs(layout):
    _, inner = layout
    for subgraph in (False, True):
        model = load_model(external_model(inner, "weights.bin", offset=16, in_subgraph=subgraph))
        x = np.ones((2, 4), np.float32)
        np.testing.assert_allclose(run_onnxruntime(model, {"x": x})["y"], x @ WEIGHT, rtol=1e-6)


def test_symlink_inside_the_folder_is_followed(layout):
    _, inner = layout
    os.symlink(inner / "weights.bin", inner / "sub" / "alias.bin")
    model = load_model(external_model(inner, "sub/alias.bin", offset=16))
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(run_onnxruntime(model, {"x": x})["y"], x @ WEIGHT, rtol=1e-6)


@pytest.mark.parametrize("location", ["../outside.bin", "sub/../../outside.bin", "..\\outside.bin",
                                      "sub\\..\\..\\outside.bin", "./../outside.bin"])
def test_parent_traversal_rejected(layout, location):
    _, inner = layout
    expect_rejected(external_model(inner, location), "leaves the model's folder")


@pytest.mark.parametrize("location", ["/etc/passwd", "\\etc\\passwd", "C:\\weights.bin", "//server/share/w.bin"])
def test_absolute_paths_rejected(layout, location):
    _, inner = layout
    expect_rejected(external_model(inner, location), "must be relative")


@pytest.mark.parametrize("in_subgraph", [False, True])
def test_symlink_leading_outside_rejected(layout, in_subgraph):
    outer, inner = layout
    os.symlink(outer / "outside.bin", inner / "link.bin")
    expect_rejected(external_model(inner, "link.bin", in_subgraph=in_subgraph), "outside the model's folder")


def test_symlinked_subfolder_leading_outside_rejected(layout):
    outer, inner = layout
    os.symlink(outer, inner / "escape")
    expect_rejected(external_model(inner, "escape/outside.bin"), "outside the model's folder")


def test_symlink_loop_rejected(layout):
    _, inner = layout
    os.symlink(inner / "loop_b", inner / "loop_a")
    os.symlink(inner / "loop_a", inner / "loop_b")
    expect_rejected(external_model(inner, "loop_a"), "loop_a")


@pytest.mark.parametrize("location, fragment", [("", "empty or malformed"), ("w\x00.bin", "empty or malformed"),
                                                ("missing.bin", "missing"), ("sub", "not a regular file"),
                                                (".", "outside")])
def test_bad_locations_rejected(layout, location, fragment):
    _, inner = layout
    expect_rejected(external_model(inner, location), fragment)


def test_fifo_is_not_read(layout):
    _, inner = layout
    os.mkfifo(inner / "pipe.bin")  # opening it for reading would block forever
    expect_rejected(external_model(inner, "pipe.bin"), "not a regular file")


@pytest.mark.parametrize("offset, length, fragment", [
    (0, 10**12, "asks for bytes"), (-1, 48, "asks for bytes"), (0, -5, "asks for bytes"),
    (40, 48, "asks for bytes"), ("x", 48, "non-integer"), (0, 8, "need 48"), (16, 32, "need 48")])
def test_sizes_checked_before_reading(layout, offset, length, fragment):
    _, inner = layout
    expect_rejected(external_model(inner, "weights.bin", offset=offset, length=length), fragment)


def test_in_memory_proto_with_external_data_rejected(layout):
    _, inner = layout
    proto = onnx.load(external_model(inner, "weights.bin", offset=16), load_external_data=False)
    with pytest.raises(ModelLoadError, match="without a folder"):
        load_model(proto)


def test_cli_refuses_traversal_in_one_line(layout, capsys):
    outer, inner = layout
    path = external_model(inner, "../outside.bin")
    out = outer / "out.onnx"
    assert main(["inspect", str(path)]) == 2
    assert main(["optimize", str(path), "-p", "canonicalize", "-o", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("leaves the model's folder" in line for line in lines)
    assert not out.exists()
