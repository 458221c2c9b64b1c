"""qdq-cancel and qdq-propagate: exactness on hand-built Q/DQ graphs (integer outputs compared bit for bit)."""

from __future__ import annotations

import numpy as np
from onnx import helper
from quant_helpers import F, I8, U8, qdq_model, scalar, vi

from slimcc.ir.model import load_model
from slimcc.ir.verify import run_onnxruntime
from slimcc.passes.quant.qdq_cancel import QDQCancel
from slimcc.passes.quant.qdq_propagate import QDQPropagate, clamp_is_absorbed

RNG = np.random.default_rng(0)


def _ops(model):
    return [n.op for n in model.graph.nodes]


def _same_outputs(a, b, feeds):
    ra, rb = run_onnxruntime(a, feeds), run_onnxruntime(b, feeds)
    for (_, x), y in zip(ra.items(), rb.values()):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def _chain(s2, z2, dtype2=U8, extra_consumer=False):
    """x -> Q(0.05, 128) -> DQ -> Q(s2, z2) -> y (integers); optionally DQ also feeds a Relu output."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z1"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["d1"]),
             helper.make_node("QuantizeLinear", ["d1", "s2", "z2"], ["y"])]
    outputs = [vi("y", dtype2, [2, 8])]
    if extra_consumer:
        nodes.append(helper.make_node("Relu", ["d1"], ["r"]))
        outputs.append(vi("r", F, [2, 8]))
    inits = [scalar("s1", F, 0.05), scalar("z1", U8, 128), scalar("s2", F, s2), scalar("z2", dtype2, z2)]
    return load_model(qdq_model(nodes, inits, [vi("x", F, [2, 8])], outputs))


def test_identical_dq_q_removed_exactly():
    model = _chain(0.05, 128)
    reference = model.copy()
    result = QDQCancel().run(model)
    assert result.modified and result.stats["applied"]["cancel-dq-q"] == 1
    assert _ops(model) == ["QuantizeLinear"]
    feeds = {"x": (RNG.standard_normal((2, 8)) * 10).astype(np.float32)}
    _same_outputs(reference, model, feeds)


def test_multi_consumer_dq_keeps_other_consumers():
    model = _chain(0.05, 128, extra_consumer=True)
    reference = model.copy()
    assert QDQCancel().run(model).modified
    assert sorted(_ops(model)) == ["DequantizeLinear", "QuantizeLinear", "Relu"]
    _same_outputs(reference, model, {"x": (RNG.standard_normal((2, 8)) * 10).astype(np.float32)})


def test_different_parameters_are_not_cancelled():
    for s2, z2, dtype in [(0.05, 127, U8), (0.051, 128, U8), (0.05, 0, I8)]:
        model = _chain(s2, z2, dtype)
        result = QDQCancel().run(model)
        assert not result.modified and result.stats["requantize"] == 1
        assert any("requantize" in r for r in result.stats["rejected"]["cancel-dq-q"])


def test_merge_chain_intersects_ranges():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z1"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["d1"]),
             helper.make_node("QuantizeLinear", ["d1", "s2", "z2"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["y"])]
    inits = [scalar("s1", F, 0.04), scalar("z1", U8, 100), scalar("s2", F, 0.02), scalar("z2", U8, 50)]
    model = load_model(qdq_model(nodes, inits, [vi("x", F, [64])], [vi("y", F, [64])]))
    reference = model.copy()
    assert not QDQCancel().run(model).modified
    assert QDQCancel(merge=True).run(model).modified
    assert _ops(model) == ["QuantizeLinear", "DequantizeLinear"]
    x = np.linspace(-6, 8, 64).astype(np.float32)
    ref, got = run_onnxruntime(reference, {"x": x})["y"], run_onnxruntime(model, {"x": x})["y"]
    lo, hi = max(0.04 * -100, 0.02 * -50), min(0.04 * 155, 0.02 * 205)
    assert got.min() >= lo - 1e-6 and got.max() <= hi + 1e-6
    assert np.abs(got - ref).max() <= 0.04 + 1e-6  # within one step of the coarser grid


def _propagate_graph(op, extra_inputs=(), attrs=None, in_shape=(1, 4, 6, 6), out_shape=(1, 4, 6, 6), clamp=None,
                     z=128, clamp_inits=()):
    """x -> Q -> DQ -> op -> [clamp] -> Q -> y (uint8)."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node(op, ["d", *[e.name for e in extra_inputs]], ["o"], **(attrs or {}))]
    last = "o"
    if clamp:
        nodes.append(helper.make_node(clamp[0], ["o", *clamp[1]], ["c"]))
        last = "c"
    nodes.append(helper.make_node("QuantizeLinear", [last, "s", "z"], ["y"]))
    inits = [scalar("s", F, 0.05), scalar("z", U8, z), *extra_inputs, *clamp_inits]
    return load_model(qdq_model(nodes, inits, [vi("x", F, list(in_shape))], [vi("y", U8, list(out_shape))]))


def test_propagate_across_layout_ops_then_cancel_is_exact():
    cases = [("Reshape", [helper.make_tensor("shape", 7, [2], [4, 36])], {}, [4, 36]),
             ("Transpose", [], {"perm": [0, 2, 3, 1]}, [1, 6, 6, 4]),
             ("Flatten", [], {"axis": 1}, [1, 144]),
             ("MaxPool", [], {"kernel_shape": [2, 2], "strides": [2, 2]}, [1, 4, 3, 3]),
             ("Slice", [helper.make_tensor("st", 7, [1], [1]), helper.make_tensor("en", 7, [1], [3]),
                        helper.make_tensor("ax", 7, [1], [1])], {}, [1, 2, 6, 6]),
             ("Unsqueeze", [helper.make_tensor("axes", 7, [1], [0])], {}, [1, 1, 4, 6, 6])]
    feeds = {"x": (RNG.standard_normal((1, 4, 6, 6)) * 4).astype(np.float32)}
    for op, extra, attrs, shape in cases:
        model = _propagate_graph(op, extra, attrs, out_shape=shape)
        reference = model.copy()
        assert QDQPropagate().run(model).modified, op
        assert QDQCancel().run(model).modified, op
        assert "DequantizeLinear" not in _ops(model), (op, _ops(model))
        _same_outputs(reference, model, feeds)


def test_concat_with_one_scale_moves_dq_and_exact():
    nodes = [helper.make_node("QuantizeLinear", ["a", "s", "z"], ["qa"]),
             helper.make_node("QuantizeLinear", ["b", "s", "z"], ["qb"]),
             helper.make_node("DequantizeLinear", ["qa", "s", "z"], ["da"]),
             helper.make_node("DequantizeLinear", ["qb", "s", "z"], ["db"]),
             helper.make_node("Concat", ["da", "db"], ["c"], axis=1),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["y"])]
    inits = [scalar("s", F, 0.1), scalar("z", U8, 10)]
    model = load_model(qdq_model(nodes, inits, [vi("a", F, [1, 2, 3]), vi("b", F, [1, 3, 3])],
                                 [vi("y", U8, [1, 5, 3])]))
    reference = model.copy()
    QDQPropagate().run(model)
    QDQCancel().run(model)
    assert sorted(_ops(model)) == ["Concat", "QuantizeLinear", "QuantizeLinear"]
    _same_outputs(reference, model, {"a": RNG.standard_normal((1, 2, 3)).astype(np.float32) * 5,
                                     "b": RNG.standard_normal((1, 3, 3)).astype(np.float32) * 5})


def test_relu_and_clip_dropped_only_when_range_clamps_exactly():
    feeds = {"x": (RNG.standard_normal((1, 4, 6, 6)) * 8).astype(np.float32)}
    relu_ok = _propagate_graph("Identity", clamp=("Relu", []), z=0)
    reference = relu_ok.copy()
    assert QDQPropagate().run(relu_ok).modified and "Relu" not in _ops(relu_ok)
    _same_outputs(reference, relu_ok, feeds)
    relu_bad = _propagate_graph("Identity", clamp=("Relu", []), z=128)
    QDQPropagate().run(relu_bad)
    assert "Relu" in _ops(relu_bad)
    # u8, scale 0.05, zp 0 represents [0, 12.75]: Clip(0, 12.75) is absorbed, Clip(0, 6) is not
    assert clamp_is_absorbed(0.0, 12.75, 0.05, 0, np.uint8) and not clamp_is_absorbed(0.0, 6.0, 0.05, 0, np.uint8)
    lo, hi = helper.make_tensor("lo", F, [], [0.0]), helper.make_tensor("hi", F, [], [12.75])
    clip = _propagate_graph("Identity", clamp=("Clip", ["lo", "hi"]), z=0, clamp_inits=(lo, hi))
    reference = clip.copy()
    assert QDQPropagate().run(clip).modified and "Clip" not in _ops(clip)
    _same_outputs(reference, clip, feeds)


def test_propagate_and_cancel_after_insert_are_exact_on_zoo_vgg():
    from quant_helpers import calib_context, canonical_zoo

    from slimcc.ir.verify import compare_models
    from slimcc.passes.quant.qdq_insert import QDQInsert

    model = canonical_zoo("vgg")
    ctx, held_out = calib_context()
    QDQInsert().run(model, ctx)
    inserted = model.copy()
    before = _ops(model).count("DequantizeLinear")
    moved = QDQPropagate().run(model)
    cancelled = QDQCancel().run(model)
    assert moved.stats["applied"]["dq-below-layout-op"] >= 1  # MaxPool / Flatten
    assert cancelled.stats["applied"]["cancel-dq-q"] >= 1
    assert _ops(model).count("DequantizeLinear") < before
    assert any(n.op == "MaxPool" and n.inputs[0].dtype == np.uint8 for n in model.graph.nodes)
    assert compare_models(inserted, model, held_out).max_abs <= 1e-6


def test_moving_dq_below_the_last_reshape_keeps_the_graph_output_name():
    """x -> Q -> DQ -> Reshape -> y: the DQ moves below the Reshape, and y is still the graph output
    (a renamed output broke callers and recover-bias, which matches tensors to the original by name)."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Reshape", ["d", "shape"], ["y"])]
    inits = [scalar("s", F, 0.05), scalar("z", U8, 128),
             helper.make_tensor("shape", 7, [2], [4, 4])]
    model = load_model(qdq_model(nodes, inits, [vi("x", F, [2, 8])], [vi("y", F, [4, 4])]))
    before = model.copy()
    assert QDQPropagate().run(model).modified
    assert _ops(model)[-1] == "DequantizeLinear" and [t.name for t in model.graph.outputs] == ["y"]
    _same_outputs(before, model, {"x": RNG.normal(0, 2, (2, 8)).astype(np.float32)})
