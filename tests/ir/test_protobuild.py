"""Models built from scratch: nodes, weights and graph IO through slimcc.ir.protobuild."""

import numpy as np

from slimcc.ir.model import load_model, read_onnx
from slimcc.ir.protobuild import (make_float_model, make_initializer, make_node, probe_float_tensors,
                                  set_initializers)
from slimcc.ir.verify import run_onnxruntime


def _scaled_relu():
    """y = Relu(x * w) + b, with w and b weights."""
    nodes = [make_node("Mul", ["x", "w"], ["xw"], "mul"), make_node("Relu", ["xw"], ["r"], "relu"),
             make_node("Add", ["r", "b"], ["y"], "add")]
    weights = [make_initializer("w", np.array([2.0, -1.0, 0.5], np.float32)),
               make_initializer("b", np.zeros(3, np.float32))]
    return make_float_model(nodes, weights, "scaled", {"x": [1, 3]}, {"y": [1, 3]}, opset=17, ir_version=8,
                            producer="test")


def test_built_model_loads_and_runs():
    model = _scaled_relu()
    x = np.array([[1.0, 1.0, -4.0]], np.float32)
    assert load_model(model).graph.outputs[0].shape == [1, 3]
    np.testing.assert_array_equal(run_onnxruntime(model, {"x": x})["y"], [[2.0, 0.0, 0.0]])


def test_probe_reads_intermediates_of_a_swapped_copy_and_leaves_the_model_alone():
    model = _scaled_relu()
    before = model.SerializeToString()
    x = np.array([[1.0, 1.0, -4.0]], np.float32)
    xw, r = probe_float_tensors(model, ["xw", "r"], {"x": x}, {"relu": ("Neg", ["xw"], {})})
    np.testing.assert_array_equal(xw, [[2.0, -1.0, -2.0]])
    np.testing.assert_array_equal(r, [[-2.0, 1.0, 2.0]])  # Neg instead of Relu
    assert model.SerializeToString() == before


def test_set_initializers_replaces_values_by_name(tmp_path):
    model = _scaled_relu()
    set_initializers(model, {"b": np.array([1.0, 2.0, 3.0], np.float32)})
    x = np.zeros((1, 3), np.float32)
    np.testing.assert_array_equal(run_onnxruntime(model, {"x": x})["y"], [[1.0, 2.0, 3.0]])
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert read_onnx(path) == read_onnx(path.read_bytes()) == model
