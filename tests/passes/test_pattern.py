"""Unit tests of the declarative pattern matcher and the RewritePass driver."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimcc.ir.model import load_model
from slimcc.ir.verify import assert_equivalent
from slimcc.passes.pattern import (Any, Const, Match, Pattern, RewritePass, Rule, explain, match_node, remove_node,
                                   replace_uses)


def make_model(nodes, initializers=None, inputs=(("x", [1, 3, 8, 8]),), outputs=("y",), opset=17):
    """A throwaway float model; output shapes come from shape inference on load."""
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs], [],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
    proto.graph.output.extend(inferred[name] for name in outputs)
    return load_model(proto)


RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
C = RNG.standard_normal((1, 4, 1, 1)).astype(np.float32)

CONV_THEN_CONST = Pattern("Add", [Pattern("Conv", capture="conv", single_use=True), Const("c")], capture="add")


def node_named(model, name):
    return next(n for n in model.graph.nodes if n.name == name)


@pytest.mark.parametrize("const_first", [False, True])
def test_commutative_add_matches_either_operand_order(const_first):
    operands = ["c", "t"] if const_first else ["t", "c"]
    model = make_model([helper.make_node("Conv", ["x", "w"], ["t"], name="conv", pads=[1, 1, 1, 1]),
                        helper.make_node("Add", operands, ["y"], name="add")], {"w": W, "c": C})
    match = match_node(CONV_THEN_CONST, node_named(model, "add"), model.graph)
    assert isinstance(match, Match), match
    assert match.nodes["conv"].name == "conv" and match.nodes["add"].name == "add"
    assert match["c"].name == "c"
    np.testing.assert_array_equal(match.values["c"], C)


def test_non_commutative_sub_needs_operands_in_order():
    pattern = Pattern("Sub", [Pattern("Conv"), Const("c")])
    model = make_model([helper.make_node("Conv", ["x", "w"], ["t"], name="conv", pads=[1, 1, 1, 1]),
                        helper.make_node("Sub", ["c", "t"], ["y"], name="sub")], {"w": W, "c": C})
    reason = match_node(pattern, node_named(model, "sub"), model.graph)
    assert reason == "input 0: is not produced by a node (expected Conv)"


def test_single_consumer_rejection_names_the_consumer_count():
    model = make_model([helper.make_node("Conv", ["x", "w"], ["t"], name="conv", pads=[1, 1, 1, 1]),
                        helper.make_node("Add", ["t", "c"], ["a"], name="add"),
                        helper.make_node("Relu", ["t"], ["r"], name="relu"),
                        helper.make_node("Mul", ["a", "r"], ["y"], name="mul")], {"w": W, "c": C})
    reason = match_node(CONV_THEN_CONST, node_named(model, "add"), model.graph)
    assert reason == "input 0: Conv output has 2 consumers (needs exactly 1)"
    # without the constraint, the same graph matches
    loose = Pattern("Add", [Pattern("Conv"), Const()])
    assert isinstance(match_node(loose, node_named(model, "add"), model.graph), Match)


def test_a_graph_output_counts_as_a_consumer():
    model = make_model([helper.make_node("Conv", ["x", "w"], ["t"], name="conv", pads=[1, 1, 1, 1]),
                        helper.make_node("Add", ["t", "c"], ["y"], name="add")], {"w": W, "c": C},
                       outputs=("y", "t"))
    reason = match_node(CONV_THEN_CONST, node_named(model, "add"), model.graph)
    assert reason == "input 0: Conv output has 2 consumers (needs exactly 1)"


def test_attribute_constraints_by_value_and_by_predicate():
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1], group=1)],
                       {"w": W})
    conv = node_named(model, "conv")
    assert isinstance(match_node(Pattern("Conv", attrs={"pads": [1, 1, 1, 1]}), conv, model.graph), Match)
    assert isinstance(match_node(Pattern("Conv", attrs={"group": lambda g: g in (None, 1)}), conv, model.graph),
                      Match)
    reason = match_node(Pattern("Conv", attrs={"group": 2}), conv, model.graph)
    assert reason == "Conv attribute group=1 is not accepted"
    absent = match_node(Pattern("Conv", attrs={"dilations": [2, 2]}), conv, model.graph)
    assert absent == "Conv attribute dilations=None is not accepted"


def test_const_shape_and_value_predicates_and_constant_nodes():
    value = np.full((1, 4, 1, 1), 2.0, np.float32)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["t"], name="conv", pads=[1, 1, 1, 1]),
                        helper.make_node("Constant", [], ["k"], name="k", value=numpy_helper.from_array(value)),
                        helper.make_node("Mul", ["t", "k"], ["y"], name="mul")], {"w": W})
    mul = node_named(model, "mul")
    ok = match_node(Pattern("Mul", [Any("t"), Const("k", shape=(1, 4, 1, 1), value=lambda v: np.all(v == 2))]),
                    mul, model.graph)
    assert isinstance(ok, Match)
    np.testing.assert_array_equal(ok.values["k"], value)
    assert ok["t"].name == "t"
    bad_shape = match_node(Pattern("Mul", [Any(), Const(shape=(4,))]), mul, model.graph)
    assert bad_shape == "input 1: constant shape [1, 4, 1, 1] is not accepted"
    bad_value = match_node(Pattern("Mul", [Any(), Const(value=1.0)]), mul, model.graph)
    assert bad_value == "input 1: constant value is not accepted"


def test_op_type_sets_and_repeated_captures_bind_the_same_tensor():
    model = make_model([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                        helper.make_node("Mul", ["r", "r"], ["s"], name="square"),
                        helper.make_node("Mul", ["s", "r"], ["y"], name="cube")])
    same_twice = Pattern("Mul", [Pattern({"Relu", "Sigmoid"}, capture="act"), Any("v")])
    twice = Pattern("Mul", [Any("v"), Any("v")])
    assert isinstance(match_node(same_twice, node_named(model, "square"), model.graph), Match)
    assert isinstance(match_node(twice, node_named(model, "square"), model.graph), Match)
    reason = match_node(twice, node_named(model, "cube"), model.graph)
    assert reason == "input 1: capture 'v' would bind two different tensors"


def _drop_mul_by_one(graph, match):
    replace_uses(graph, match.root.outputs[0], match["x"])
    remove_node(match.root)


MUL_BY_ONE = Rule("mul-by-one", Pattern("Mul", [Any("x"), Const("one", value=lambda v: np.all(v == 1))]),
                  rewrite=_drop_mul_by_one,
                  check=lambda m: "x is a graph input" if any(t is m["x"] for t in m.graph.inputs) else None)


class DropMulByOne(RewritePass):
    """Test pass: remove multiplications by one."""

    rules = (MUL_BY_ONE,)


def chain_model():
    one, two = np.ones((1,), np.float32), np.full((1,), 2.0, np.float32)
    return make_model([helper.make_node("Mul", ["x", "one"], ["m0"], name="m0"),  # refused by check
                       helper.make_node("Relu", ["m0"], ["r"], name="relu"),
                       helper.make_node("Mul", ["r", "one"], ["m1"], name="m1"),
                       helper.make_node("Mul", ["one", "m1"], ["m2"], name="m2"),
                       helper.make_node("Mul", ["m2", "two"], ["m3"], name="m3"),  # value mismatch
                       helper.make_node("Mul", ["m3", "one"], ["y"], name="m4")],  # graph output
                      {"one": one, "two": two})


def test_explain_gives_a_reason_per_candidate_node():
    model = chain_model()
    reasons = dict(explain(model.graph, MUL_BY_ONE))
    assert reasons == {"m0": "x is a graph input", "m1": "matches", "m2": "matches",
                       "m3": "input 1: constant value is not accepted", "m4": "matches"}


def test_rewrite_pass_runs_to_fixpoint_and_records_counts_and_reasons():
    model = chain_model()
    reference = model.copy()
    result = DropMulByOne().run(model)
    assert result.modified
    assert result.stats["applied"] == {"mul-by-one": 3}
    assert result.stats["rejected"] == {"mul-by-one": {"x is a graph input": 1,
                                                       "input 1: constant value is not accepted": 1}}
    assert [n.name for n in model.graph.nodes] == ["m0", "relu", "m3"]
    assert_equivalent(reference, model, rel_tol=1e-6)
    again = DropMulByOne().run(model)
    assert not again.modified and again.stats["applied"] == {"mul-by-one": 0}


def test_overlapping_matches_are_applied_one_per_sweep():
    # m1 and m2 both match; m2's operand is m1's output. Both must be applied, over two sweeps at most.
    model = make_model([helper.make_node("Mul", ["x", "two"], ["a"], name="m0"),
                        helper.make_node("Mul", ["a", "one"], ["b"], name="m1"),
                        helper.make_node("Mul", ["b", "one"], ["y"], name="m2")],
                       {"one": np.ones((1,), np.float32), "two": np.full((1,), 2.0, np.float32)})
    reference = model.copy()
    result = DropMulByOne().run(model)
    assert result.stats["applied"] == {"mul-by-one": 2}
    assert [n.op for n in model.graph.nodes] == ["Mul"]
    assert_equivalent(reference, model, rel_tol=1e-6)
    onnx.checker.check_model(model.to_proto())
