"""lower-recurrent: LSTM/GRU unrolled into primitive ops, exact on onnxruntime, or refused with a reason."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from slimcc.errors import PipelineError
from slimcc.ir.model import load_model
from slimcc.ir.verify import compare_models, random_feeds, run_onnxruntime
from slimcc.passes.base import registry
from slimcc.passes.canonicalize import Canonicalize
from slimcc.passes.canonicalize.lower_recurrent import LowerRecurrent, recurrent_refusals
from slimcc.passes.pipeline import parse_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ir"))
from ir_builders import make_proto, recurrent_model  # noqa: E402

REL_TOL = 1e-5
PRIMITIVE_OPS = {"MatMul", "Add", "Sub", "Mul", "Sigmoid", "Tanh", "Split", "Slice", "Concat", "Unsqueeze",
                 "Squeeze", "Transpose"}


def lowered(proto, **options):
    """(original, lowered, pass result) for a proto."""
    original = load_model(proto)
    model = original.copy()
    result = LowerRecurrent(**options).run(model)
    return original, model, result


def assert_exact(original, model, feeds=None):
    """No recurrent node is left, only primitive ops, and every output matches onnxruntime's LSTM/GRU."""
    ops = collections.Counter(n.op for n in model.graph.nodes)
    assert set(ops) <= PRIMITIVE_OPS, ops
    report = compare_models(original, model, feeds or [random_feeds(original, seed=s) for s in range(2)])
    assert [o.name for o in report.outputs] == [t.name for t in original.graph.outputs]
    assert report.max_rel <= REL_TOL, report.as_dict()
    assert model.is_static()


def _with_attrs(**attrs):
    """A forward LSTM with extra node attributes."""
    proto = recurrent_model("LSTM", "forward")
    proto.graph.node[0].attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    return proto


def _set_input(proto, slot: int, name: str, tensor=None, graph_input=None):
    """Wire input `slot` of the model's one node to `name` (a new initializer or graph input)."""
    node = proto.graph.node[0]
    while len(node.input) <= slot:
        node.input.append("")
    node.input[slot] = name
    if tensor is not None:
        proto.graph.initializer.append(tensor)
    if graph_input is not None:
        proto.graph.input.append(graph_input)
    return proto


def _with_input(slot: int, name: str, tensor=None, graph_input=None):
    """A forward LSTM (T=5, N=2) with input `slot` wired to `name`."""
    return _set_input(recurrent_model("LSTM", "forward", batch=2, seq=5), slot, name, tensor, graph_input)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("variant", [
    {},
    {"bias": False},
    {"initial": "constant"},
    {"initial": "input", "bias": False},
    {"peepholes": True, "initial": "constant"},
])
def test_lstm_matches_onnxruntime(direction, variant):
    original, model, result = lowered(recurrent_model("LSTM", direction, **variant))
    assert result.modified and result.stats["applied"] == {"lower-lstm": 1, "lower-gru": 0}
    assert_exact(original, model)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("variant", [{}, {"bias": False, "initial": "input"}])
def test_gru_matches_onnxruntime(direction, linear_before_reset, variant):
    original, model, result = lowered(recurrent_model("GRU", direction, linear_before_reset=linear_before_reset,
                                                      **variant))
    assert result.stats["applied"] == {"lower-lstm": 0, "lower-gru": 1}
    assert_exact(original, model)


def test_one_step_and_full_sequence_lens():
    proto = recurrent_model("LSTM", "bidirectional", seq=1, initial="constant")
    assert_exact(*lowered(proto)[:2])
    proto = _set_input(recurrent_model("GRU", "reverse", seq=4, batch=3), 4, "lens",
                       helper.make_tensor("lens", TensorProto.INT32, [3], [4, 4, 4]))
    original, model, result = lowered(proto)
    assert result.modified
    assert_exact(original, model)


@pytest.mark.parametrize("outputs", [(1,), (2,), (0,), (1, 2)])
def test_only_the_outputs_read_are_emitted(outputs):
    original, model, _ = lowered(recurrent_model("LSTM", "bidirectional", outputs=outputs))
    assert_exact(original, model)
    ops = collections.Counter(n.op for n in model.graph.nodes)
    assert ("Slice" in ops) == (0 in outputs)  # Y's per-direction time order costs two Slices
    assert ops["Squeeze"] == len([k for k in outputs if k])


def test_batch_major_layout_matches_the_onnx_reference():
    """onnxruntime has no layout=1 LSTM; the ONNX reference implementation is the judge."""
    from onnx.reference import ReferenceEvaluator

    proto = recurrent_model("LSTM", "bidirectional", layout=1, initial="input", peepholes=True)
    original, model, _ = lowered(proto)
    feeds = random_feeds(model, seed=3)
    want = ReferenceEvaluator(proto).run(None, feeds)
    got = list(run_onnxruntime(model, feeds).values())
    for a, b in zip(want, got):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=REL_TOL * np.abs(a).max())


def test_stacked_lstm_and_gru_are_both_lowered():
    rng = np.random.default_rng(4)
    weights = {name: rng.standard_normal(shape).astype(np.float32) * 0.5 for name, shape in (
        ("lstm_w", (1, 16, 3)), ("lstm_r", (1, 16, 4)), ("gru_w", (2, 15, 4)), ("gru_r", (2, 15, 5)))}
    weights["axis1"] = np.array([1], np.int64)
    nodes = [helper.make_node("LSTM", ["x", "lstm_w", "lstm_r"], ["h"], name="lstm", hidden_size=4),
             helper.make_node("Squeeze", ["h", "axis1"], ["seq"], name="squeeze"),
             helper.make_node("GRU", ["seq", "gru_w", "gru_r"], ["y", "y_h"], name="gru", hidden_size=5,
                              direction="bidirectional")]
    proto = make_proto(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 2, 3])],
                       [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "y_h")], weights)
    original, model, result = lowered(proto)
    assert result.stats["applied"] == {"lower-lstm": 1, "lower-gru": 1}
    assert_exact(original, model)


REFUSALS = {
    "clip": (lambda: _with_attrs(clip=2.0), "cell clipping (clip=2.0) is not lowered"),
    "input_forget": (lambda: _with_attrs(input_forget=1), "input_forget=1"),
    "activations": (lambda: _with_attrs(activations=["Sigmoid", "Relu", "Tanh"]), "not the default Sigmoid/Tanh/Tanh"),
    "alpha": (lambda: _with_attrs(activations=["Sigmoid", "Tanh", "Tanh"], activation_alpha=[0.5]),
              "activation_alpha is given"),
    "short sequence": (lambda: _with_input(4, "lens", helper.make_tensor("lens", TensorProto.INT32, [2], [5, 3])),
                       "sequence_lens [5, 3] is not the sequence length 5 everywhere"),
    "lens input": (lambda: _with_input(4, "lens", graph_input=helper.make_tensor_value_info(
        "lens", TensorProto.INT32, [2])), "sequence_lens is not a constant"),
    "computed weight": (lambda: _with_input(1, "w_in", graph_input=helper.make_tensor_value_info(
        "w_in", TensorProto.FLOAT, [1, 16, 3])), "LSTM W is not a constant"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_unsupported_attributes_are_refused_with_a_reason(case):
    build, reason = REFUSALS[case]
    original, model, result = lowered(build())
    assert not result.modified
    ((text, count),) = result.stats["rejected"]["lower-lstm"].items()
    assert reason in text and count == 1
    assert [n.op for n in model.graph.nodes] == ["LSTM"]
    assert recurrent_refusals(model.graph) == {"lstm": text}


def test_dynamic_and_too_long_sequences_are_refused():
    proto = recurrent_model("GRU", "forward")
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "T"
    _, model, result = lowered(proto)
    assert "GRU input X has no static 3-D shape (['T', 2, 3]): a dynamic sequence length" in next(
        iter(result.stats["rejected"]["lower-gru"]))
    _, model, result = lowered(recurrent_model("GRU", "forward", seq=6), max_steps=5)
    assert result.stats["rejected"]["lower-gru"] == {
        "GRU sequence length 6 > max_steps=5 (the unrolled graph would be too large)": 1}
    with pytest.raises(PipelineError, match="max_steps"):
        LowerRecurrent(max_steps=0)


def test_canonicalize_lowers_unless_told_not_to():
    proto = recurrent_model("LSTM", "bidirectional", initial="constant")
    original = load_model(proto)
    model = original.copy()
    result = Canonicalize().run(model)
    assert result.stats["passes"]["lower-recurrent"]["applied"]["lower-lstm"] == 1
    assert_exact(original, model)
    (kept,) = parse_pipeline("canonicalize{recurrent=false}")
    model = original.copy()
    kept.run(model)
    assert [n.op for n in model.graph.nodes] == ["LSTM"]
    assert registry()["lower-recurrent"].exact
