"""softmax-transpose (exact) and the integer Softmax/Split/Resize placement of qdq-insert."""

from __future__ import annotations

import collections

import numpy as np
from onnx import helper, numpy_helper
from quant_helpers import F, calib_context, canonical_zoo, optimized_op_types, qdq_model, vi

from slimcc.ir.calibration import CalibrationData
from slimcc.ir.model import load_model
from slimcc.ir.verify import compare_models, run_onnxruntime
from slimcc.passes.base import PassContext
from slimcc.passes.pattern import constant_value
from slimcc.passes.quant.qdq_cancel import QDQCancel
from slimcc.passes.quant.qdq_insert import QDQInsert
from slimcc.passes.quant.qdq_propagate import QDQPropagate
from slimcc.passes.quant.softmax_transpose import SoftmaxTranspose


def _dfl_head(axis: int = 1, opset: int = 17):
    """x -> Conv(8->16) -> Reshape [1,4,4,24] -> Transpose(0,2,1,3) -> Softmax(axis) -> Conv(4->8) -> y."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 8, 1, 1)) * 0.5).astype(np.float32), "w1"),
             numpy_helper.from_array(np.array([1, 4, 4, 24], np.int64), "shape"),
             numpy_helper.from_array((rng.standard_normal((8, 4, 1, 1)) * 0.5).astype(np.float32) * 4, "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
             helper.make_node("Reshape", ["a", "shape"], ["r"], name="reshape"),
             helper.make_node("Transpose", ["r"], ["t"], name="t", perm=[0, 2, 1, 3]),
             helper.make_node("Softmax", ["t"], ["s"], name="softmax", axis=axis),
             helper.make_node("Conv", ["s", "w2"], ["y"], name="c2")]
    return load_model(qdq_model(nodes, inits, [vi("x", F, [1, 8, 4, 6])], [vi("y", F, [1, 8, 4, 24])], opset=opset))


def _feeds(n, seed=6):
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal((1, 8, 4, 6)) * 2).astype(np.float32)} for _ in range(n)]


def test_softmax_transpose_swaps_exactly():
    model = _dfl_head()
    reference = model.copy()
    assert SoftmaxTranspose().run(model).stats["applied"]["transpose-after-softmax"] == 1
    ops = [n.op for n in model.graph.nodes]
    assert ops.index("Softmax") < ops.index("Transpose")
    assert next(n for n in model.graph.nodes if n.op == "Softmax").attrs["axis"] == 2
    for feed in _feeds(3):
        np.testing.assert_allclose(run_onnxruntime(model, feed)["y"], run_onnxruntime(reference, feed)["y"],
                                   rtol=1e-5, atol=1e-6)


def test_softmax_transpose_refuses_outward_axis_and_old_opsets():
    outward = _dfl_head(axis=2)  # perm[2] = 1: the axis would move outward
    assert not SoftmaxTranspose().run(outward).modified
    old = _dfl_head(opset=12)  # Softmax-12 flattens from its axis: not a per-axis op
    assert not SoftmaxTranspose().run(old).modified


def test_softmax_runs_in_integers():
    model = _dfl_head()
    reference = model.copy()
    feeds = _feeds(10)
    SoftmaxTranspose().run(model)
    QDQInsert().run(model, PassContext(calibration=CalibrationData(feeds[:8]), progress=False))
    QDQPropagate().run(model)
    QDQCancel().run(model)
    ran = optimized_op_types(model)
    assert "QLinearSoftmax" in ran and "Softmax" not in ran
    assert compare_models(reference, model, feeds[8:]).max_rel < 0.05
    plain = _dfl_head()
    QDQInsert(softmax="float").run(plain, PassContext(calibration=CalibrationData(feeds[:8]), progress=False))
    assert "Softmax" in optimized_op_types(plain)


def test_split_shares_its_input_scale_so_it_runs_on_integers():
    model = canonical_zoo("c2f")
    ctx, _ = calib_context()
    QDQInsert().run(model, ctx)
    QDQPropagate().run(model)
    QDQCancel().run(model)
    for split in (n for n in model.graph.nodes if n.op == "Split"):
        dq = split.inputs[0].inputs[0]
        assert dq.op == "DequantizeLinear"
        qs = [q for t in split.outputs for q in t.outputs if q.op == "QuantizeLinear"]
        assert qs and {float(constant_value(q.inputs[1])) for q in qs} == {float(constant_value(dq.inputs[1]))}
    ran = collections.Counter(optimized_op_types(model))
    # only the network input is quantized and only the float classifier input dequantized
    assert ran["Split"] == 2 and ran["QuantizeLinear"] == 1 and ran["DequantizeLinear"] == 1


def test_concat_and_layout_of_quantized_tensors_stay_integer():
    """Two heads -> Concat -> Reshape -> Softmax (a YOLO-style head): the Concat gets one shared scale
    from its quantized inputs and, with the Reshape, runs on integers; one DQ is left, before the
    Softmax that writes the (float) graph output."""
    rng = np.random.default_rng(8)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 8, 1, 1)) * 0.5).astype(np.float32), "wa"),
             numpy_helper.from_array((rng.standard_normal((8, 8, 1, 1)) * 0.5).astype(np.float32), "wb"),
             numpy_helper.from_array(np.array([1, 6, 4, 24], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="ca"),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="cb"),
             helper.make_node("Concat", ["a", "b"], ["c"], name="concat", axis=1),
             helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
             helper.make_node("Softmax", ["r"], ["y"], name="softmax", axis=1)]
    model = load_model(qdq_model(nodes, inits, [vi("x", F, [1, 8, 4, 6])], [vi("y", F, [1, 6, 4, 24])]))
    reference = model.copy()
    feeds = _feeds(10)
    QDQInsert().run(model, PassContext(calibration=CalibrationData(feeds[:8]), progress=False))
    QDQPropagate().run(model)
    QDQCancel().run(model)
    concat = next(n for n in model.graph.nodes if n.op == "Concat")
    assert len({float(constant_value(t.inputs[0].inputs[1])) for t in concat.inputs}) == 1
    ran = collections.Counter(optimized_op_types(model))
    assert ran["QLinearConv"] == 2 and ran["QuantizeLinear"] == 1 and ran["DequantizeLinear"] == 1
    assert compare_models(reference, model, feeds[8:]).max_rel < 0.05
