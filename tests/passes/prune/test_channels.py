"""Channel dependency analysis on small hand-built graphs: exact couplings and recorded refusals."""

from __future__ import annotations

import json

import numpy as np
from prune_helpers import GraphBuilder, check_mask_equivalence

from slimcc.ir.model import load_model
from slimcc.passes.prune.channels import analyze_channels


def _analyze(proto):
    model = load_model(proto)
    return model, analyze_channels(model.graph)


def _component(an, tensor, unit):
    return int(an.element_component[tensor][unit])


def test_residual_add_couples_both_branches_channel_by_channel():
    b = GraphBuilder()
    a = b.op("Relu", [b.conv("x", 4, 6)])[0]
    c = b.conv(a, 6, 6)
    s = b.op("Add", [a, c])[0]
    y = b.conv(s, 6, 2)
    model, an = _analyze(b.model(y))
    for k in range(6):
        assert _component(an, a, k) == _component(an, c, k) == _component(an, s, k)
    assert len({_component(an, a, k) for k in range(6)}) == 6
    report, unmasked, _ = check_mask_equivalence(model, seed=1)
    assert unmasked.max_rel > 1e-3  # the check would notice a wrong channel


def test_concat_offsets_and_split_sizes():
    b = GraphBuilder()
    p = b.conv("x", 4, 3)
    q = b.conv("x", 4, 5)
    cat = b.op("Concat", [p, q], axis=1)[0]
    s1, s2 = b.op("Split", [cat, b.const(np.array([2, 6], np.int64))], n_out=2, axis=1)
    y = b.op("Add", [b.conv(s1, 2, 2), b.conv(s2, 6, 2)])[0]
    model, an = _analyze(b.model(y))
    assert _component(an, cat, 3) == _component(an, q, 0)
    assert _component(an, cat, 2) == _component(an, s2, 0) == _component(an, p, 2)
    assert _component(an, cat, 7) == _component(an, s2, 5)
    check_mask_equivalence(model, removed={_component(an, p, 0), _component(an, q, 1), _component(an, q, 4)})


def test_depthwise_couples_input_and_output_and_grouped_prunes_group_uniformly():
    b = GraphBuilder()
    a = b.conv("x", 4, 8, k=1)
    d = b.conv(a, 8, 8, group=8)
    g = b.conv(d, 8, 8, group=2)
    y = b.conv(g, 8, 3, k=1)
    model, an = _analyze(b.model(y))
    assert all(_component(an, a, k) == _component(an, d, k) for k in range(8))
    for t in (d, g):  # one channel of each conv group per component, four components
        assert all(_component(an, t, k) == _component(an, t, k + 4) for k in range(4))
        assert len({_component(an, t, k) for k in range(4)}) == 4
    assert [u["tensor"] for u in an.uniform] == [d, g] and all(u["uniform"] for u in an.uniform)
    _, _, pruned = check_mask_equivalence(model, removed={_component(an, g, 5), _component(an, d, 2)})
    convs = [n for n in pruned.graph.nodes if n.op == "Conv"]
    assert convs[2].attrs["group"] == 2 and convs[2].inputs[1].shape == [6, 3, 3, 3]
    assert convs[1].attrs["group"] == 6


def test_silu_and_se_mul_couple_channels():
    b = GraphBuilder()
    a = b.conv("x", 4, 6)
    silu = b.op("Mul", [a, b.op("Sigmoid", [a])[0]])[0]
    pooled = b.op("GlobalAveragePool", [silu])[0]
    gate = b.op("HardSigmoid", [b.conv(b.op("Relu", [b.conv(pooled, 6, 2, k=1)])[0], 2, 6, k=1)])[0]
    scaled = b.op("Mul", [silu, gate])[0]
    y = b.conv(scaled, 6, 2)
    model, an = _analyze(b.model(y))
    assert _component(an, a, 4) == _component(an, silu, 4) == _component(an, gate, 4) == _component(an, scaled, 4)
    check_mask_equivalence(model, seed=3)


def test_unknown_op_blocks_with_reason_and_graph_io_never_pruned():
    b = GraphBuilder()
    a = b.conv("x", 4, 6)
    t = b.op("LpNormalization", [a], axis=1)[0]
    y = b.conv(t, 6, 2)
    model, an = _analyze(b.model(y))
    blocked = an.groups[an.components[_component(an, a, 0)].group]
    assert not blocked.prunable and any("LpNormalization" in r for r in blocked.blocked)
    assert not an.groups[an.components[_component(an, "x", 0)].group].prunable
    assert not an.groups[an.components[_component(an, y, 0)].group].prunable
    assert an.prunable_groups() == []


def test_softmax_blocks_on_channel_axis_but_not_elsewhere():
    for axis, prunable in ((1, False), (3, True)):
        b = GraphBuilder()
        a = b.conv("x", 4, 6)
        y = b.conv(b.op("Softmax", [a], axis=axis)[0], 6, 2)
        _, an = _analyze(b.model(y))
        assert an.groups[an.components[_component(an, a, 0)].group].prunable is prunable


def test_flatten_into_gemm_owns_hw_columns():
    b = GraphBuilder(hw=4)
    a = b.op("Relu", [b.conv("x", 4, 3)])[0]
    f = b.op("Flatten", [a], axis=1)[0]
    w = b.rng.normal(0, 0.2, (5, 3 * 16)).astype(np.float32)
    y = b.op("Gemm", [f, b.const(w)], transB=1)[0]
    model, an = _analyze(b.model(y))
    assert an.spaces[f].unit == 16 and an.spaces[f].units == 3
    assert _component(an, f, 1) == _component(an, a, 1)
    _, _, pruned = check_mask_equivalence(model, removed={_component(an, a, 1)})
    gemm = [n for n in pruned.graph.nodes if n.op == "Gemm"][0]
    assert list(gemm.inputs[1].shape) == [5, 32]


def test_channel_shuffle_maps_units_and_keeps_product_structure():
    b = GraphBuilder()
    a = b.conv("x", 4, 8)
    r1 = b.op("Reshape", [a, b.const(np.array([1, 2, 4, 8, 8], np.int64))])[0]
    t = b.op("Transpose", [r1], perm=[0, 2, 1, 3, 4])[0]
    r2 = b.op("Reshape", [t, b.const(np.array([1, 8, 8, 8], np.int64))])[0]
    y = b.conv(r2, 8, 2)
    model, an = _analyze(b.model(y))
    # out channel j*2+i comes from in channel i*4+j; in channels j and 4+j are one unit
    assert _component(an, r2, 1) == _component(an, a, 4) == _component(an, a, 0) == _component(an, r2, 0)
    assert len({_component(an, a, k) for k in range(8)}) == 4
    check_mask_equivalence(model, removed={_component(an, a, 1), _component(an, a, 3)})


def test_slice_on_channel_axis_and_transpose_follow_the_axis():
    b = GraphBuilder()
    a = b.conv("x", 4, 8)
    s = b.op("Slice", [a, b.const(np.array([2], np.int64)), b.const(np.array([7], np.int64)),
                       b.const(np.array([1], np.int64))])[0]
    t = b.op("Transpose", [s], perm=[0, 2, 3, 1])[0]
    back = b.op("Transpose", [t], perm=[0, 3, 1, 2])[0]
    y = b.conv(back, 5, 2)
    model, an = _analyze(b.model(y))
    assert an.spaces[t].axis == 3
    assert _component(an, s, 0) == _component(an, a, 2) == _component(an, back, 0)
    check_mask_equivalence(model, removed={_component(an, a, 3), _component(an, a, 6), _component(an, a, 0)})


def test_analysis_is_json_data():
    b = GraphBuilder()
    y = b.conv(b.op("Relu", [b.conv("x", 4, 6)])[0], 6, 2)
    _, an = _analyze(b.model(y))
    data = json.loads(json.dumps(an.as_dict()))
    assert data["prunable_groups"] == 1
    assert sum(g["prunable"] for g in data["groups"]) == 1
    assert any(g["blocked"] == ["graph input"] for g in data["groups"])


def test_transformer_mlp_behind_a_layernorm_is_prunable_on_the_last_axis():
    """[1, C, T] columns transposed to [1, T, C] (as after a conv stem): LayerNorm blocks the C of the residual
    stream, but its output's space starts on the last axis, so the MLP hidden layer (MatMul -> bias Add ->
    Relu -> MatMul) stays prunable."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    steps, c, hidden = 5, 4, 6
    inits = {"g": rng.uniform(0.5, 1.5, c), "be": rng.normal(0, 0.1, c), "w1": rng.normal(0, 0.5, (c, hidden)),
             "b1": rng.normal(0, 0.1, hidden), "w2": rng.normal(0, 0.5, (hidden, c))}
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="time_first", perm=[0, 2, 1]),
             helper.make_node("LayerNormalization", ["t", "g", "be"], ["n"], name="ln", axis=-1),
             helper.make_node("MatMul", ["n", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, steps])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, steps, c])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model, an = _analyze(proto)
    assert an.spaces["n"].axis == 2 and an.spaces["h"].axis == 2
    (group,) = an.prunable_groups()
    assert {an.spaces[t].axis for t in ("h", "hb", "r")} == {2}
    assert len(group.components) == hidden
    assert any("LayerNormalization" in r for g in an.groups for r in g.blocked)
    report, unmasked, _ = check_mask_equivalence(model, seed=2)
    assert unmasked.max_rel > 1e-3  # channels were really removed, and the pruned model equals the masked one
