"""Canonicalization passes on hand-built graphs (one rewrite at a time) and on every zoo model."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimcc.ir.model import load_model, save_model
from slimcc.ir.verify import compare_models, random_feeds
from slimcc.models.data import zoo_inputs
from slimcc.models.zoo import ZOO, build
from slimcc.passes.base import registry
from slimcc.passes.canonicalize import Canonicalize
from slimcc.passes.canonicalize.constant_to_initializer import ConstantToInitializer
from slimcc.passes.canonicalize.fold_batchnorm import FoldBatchNorm
from slimcc.passes.canonicalize.fold_constants import FoldConstants
from slimcc.passes.canonicalize.fold_scale_bias import FoldScaleBias
from slimcc.passes.canonicalize.remove_identity import RemoveIdentity
from slimcc.passes.canonicalize.upgrade_opset import UpgradeOpset
from slimcc.passes.pipeline import parse_pipeline

RNG = np.random.default_rng(0)


def f32(*shape, low=None):
    value = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(value) + low if low is not None else value


def make_model(nodes, initializers=None, inputs=(("x", [1, 3, 8, 8]),), outputs=("y",), opset=17):
    """A throwaway float model built with onnx.helper; output types from shape inference."""
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs], [],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
    proto.graph.output.extend(inferred[name] for name in outputs)
    return load_model(proto)


def ops(model) -> collections.Counter:
    return collections.Counter(n.op for n in model.graph.nodes)


def assert_close(reference, candidate, feeds=None, tol=1e-5):
    """Every output within tol x its scale (max |reference|)."""
    report = compare_models(reference, candidate, feeds)
    for out in report.outputs:
        assert out.max_abs <= tol * max(out.scale, 1e-6), (out.name, out.max_abs, out.scale)
    return report


def bn_inputs(c, prefix="bn"):
    return {f"{prefix}_s": f32(c), f"{prefix}_b": f32(c), f"{prefix}_m": f32(c), f"{prefix}_v": f32(c, low=0.1)}


def bn_node(x, y, prefix="bn", **attrs):
    return helper.make_node("BatchNormalization", [x, f"{prefix}_s", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"],
                            [y], name=prefix, epsilon=1e-3, **attrs)


def test_every_canonicalization_pass_is_registered():
    names = set(registry())
    assert {"canonicalize", "constant-to-initializer", "fold-constants", "remove-identity", "fold-batchnorm",
            "fold-scale-bias", "upgrade-opset"} <= names
    [passed] = parse_pipeline("canonicalize{opset=18}")
    assert isinstance(passed, Canonicalize) and passed.opset == 18


@pytest.mark.parametrize("with_bias", [True, False])
def test_batchnorm_folds_into_conv(with_bias):
    inits = {"w": f32(4, 3, 3, 3), "b": f32(4), **bn_inputs(4)}
    conv_inputs = ["x", "w", "b"] if with_bias else ["x", "w"]
    model = make_model([helper.make_node("Conv", conv_inputs, ["t"], name="conv", pads=[1, 1, 1, 1]),
                        bn_node("t", "y")], inits)
    reference = model.copy()
    result = FoldBatchNorm().run(model)
    assert result.stats["applied"] == {"fold-batchnorm": 1}
    assert ops(model) == {"Conv": 1}
    assert [t.name for t in model.graph.outputs] == ["y"]
    assert_close(reference, model)


@pytest.mark.parametrize("group", [1, 2])
def test_batchnorm_folds_into_grouped_conv_transpose(group):
    # ConvTranspose weight is [Cin, Cout/group, kh, kw]: output channel = g * Cout/group + j
    inits = {"w": f32(4, 6 // group, 3, 3), "b": f32(6), **bn_inputs(6)}
    model = make_model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["t"], name="deconv", group=group,
                                         strides=[2, 2]),
                        bn_node("t", "y")], inits, inputs=(("x", [1, 4, 5, 5]),))
    reference = model.copy()
    assert FoldBatchNorm().run(model).modified
    assert ops(model) == {"ConvTranspose": 1}
    assert_close(reference, model)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_batchnorm_folds_into_gemm_with_alpha_beta(trans_b):
    weight = f32(5, 8) if trans_b else f32(8, 5)
    inits = {"w": weight, "c": f32(5), **bn_inputs(5)}
    model = make_model([helper.make_node("Gemm", ["x", "w", "c"], ["t"], name="gemm", transB=trans_b,
                                         alpha=0.5, beta=2.0),
                        bn_node("t", "y")], inits, inputs=(("x", [3, 8]),))
    reference = model.copy()
    assert FoldBatchNorm().run(model).modified
    assert ops(model) == {"Gemm": 1}
    assert_close(reference, model)


def test_batchnorm_is_refused_when_the_conv_output_is_shared_or_not_a_conv():
    inits = {"w": f32(4, 3, 3, 3), **bn_inputs(4), **bn_inputs(4, "bn2")}
    model = make_model([helper.make_node("Conv", ["x", "w"], ["t"], name="conv", pads=[1, 1, 1, 1]),
                        bn_node("t", "u"),
                        helper.make_node("Relu", ["t"], ["r"], name="relu"),
                        bn_node("r", "v", prefix="bn2"),
                        helper.make_node("Add", ["u", "v"], ["y"], name="add")], inits)
    reference = model.copy()
    result = FoldBatchNorm().run(model)
    assert not result.modified
    assert result.stats["rejected"] == {"fold-batchnorm": {
        "input 0: Conv output has 2 consumers (needs exactly 1)": 1,
        "input 0: producer is Relu, expected one of Conv/ConvTranspose/Gemm": 1}}
    assert ops(model)["BatchNormalization"] == 2
    assert_close(reference, model, tol=0)


@pytest.mark.parametrize("op,shape", [("Mul", (1, 4, 1, 1)), ("Mul", (4, 1, 1)), ("Add", (1, 4, 1, 1)),
                                      ("Add", ()), ("Sub", (4, 1, 1)), ("Div", (1, 4, 1, 1)), ("Mul", (1,))])
def test_per_channel_scale_and_bias_fold_into_conv(op, shape):
    const = f32(*shape, low=0.5) if shape else np.float32(1.5)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["t"], name="conv", pads=[1, 1, 1, 1]),
                        helper.make_node(op, ["t", "c"], ["y"], name="op")], {"w": f32(4, 3, 3, 3), "c": const})
    reference = model.copy()
    result = FoldScaleBias().run(model)
    assert sum(result.stats["applied"].values()) == 1
    assert ops(model) == {"Conv": 1}
    assert_close(reference, model)


def test_scale_with_the_constant_first_folds_too():
    model = make_model([helper.make_node("Conv", ["x", "w", "b"], ["t"], name="conv"),
                        helper.make_node("Mul", ["c", "t"], ["y"], name="mul")],
                       {"w": f32(4, 3, 1, 1), "b": f32(4), "c": f32(1, 4, 1, 1)})
    reference = model.copy()
    assert FoldScaleBias().run(model).modified
    assert ops(model) == {"Conv": 1}
    assert_close(reference, model)


@pytest.mark.parametrize("shape,reason", [
    ((1, 1, 8, 8), "constant of shape [1, 1, 8, 8] varies along axis 2, not only the channel axis"),
    ((1, 1, 1, 1, 1), "constant of rank 5 would broadcast the rank-4 output up"),
    ((2, 4, 1, 1), "constant of shape [2, 4, 1, 1] varies along axis 0, not only the channel axis"),
])
def test_scale_that_broadcasts_beyond_channels_is_refused(shape, reason):
    model = make_model([helper.make_node("Conv", ["x", "w"], ["t"], name="conv", pads=[1, 1, 1, 1]),
                        helper.make_node("Mul", ["t", "c"], ["y"], name="mul")], {"w": f32(4, 3, 3, 3), "c": f32(*shape)})
    result = FoldScaleBias().run(model)
    assert not result.modified
    assert result.stats["rejected"]["fold-mul-add"] == {reason: 1}


def test_scale_is_refused_when_the_conv_output_has_other_consumers():
    model = make_model([helper.make_node("Conv", ["x", "w"], ["t"], name="conv", pads=[1, 1, 1, 1]),
                        helper.make_node("Mul", ["t", "c"], ["m"], name="mul"),
                        helper.make_node("Add", ["m", "t"], ["y"], name="add")],
                       {"w": f32(4, 3, 3, 3), "c": f32(1, 4, 1, 1)})
    result = FoldScaleBias().run(model)
    assert not result.modified
    assert result.stats["rejected"]["fold-mul-add"]["input 0: Conv output has 2 consumers (needs exactly 1)"] == 1


def test_shared_weights_are_not_modified_in_place():
    # two convs share `w`; folding a scale into one must not change the other
    model = make_model([helper.make_node("Conv", ["x", "w"], ["t"], name="conv", pads=[1, 1, 1, 1]),
                        helper.make_node("Mul", ["t", "c"], ["m"], name="mul"),
                        helper.make_node("Conv", ["x", "w"], ["u"], name="conv2", pads=[1, 1, 1, 1]),
                        helper.make_node("Add", ["m", "u"], ["y"], name="add")],
                       {"w": f32(4, 3, 3, 3), "c": f32(1, 4, 1, 1)})
    reference = model.copy()
    assert FoldScaleBias().run(model).modified
    assert_close(reference, model)


def test_identity_and_dropout_are_removed_and_output_names_kept():
    model = make_model([helper.make_node("Identity", ["x"], ["i"], name="id0"),
                        helper.make_node("Relu", ["i"], ["r"], name="relu"),
                        helper.make_node("Dropout", ["r"], ["d"], name="drop"),
                        helper.make_node("Sigmoid", ["d"], ["s"], name="sig"),
                        helper.make_node("Identity", ["s"], ["y"], name="id_out")], opset=13)
    reference = model.copy()
    result = RemoveIdentity().run(model)
    assert result.stats["applied"] == {"remove-identity": 3}
    assert ops(model) == {"Relu": 1, "Sigmoid": 1}
    assert [t.name for t in model.graph.outputs] == ["y"]
    assert model.graph.outputs[0].inputs[0].op == "Sigmoid"
    assert_close(reference, model, tol=0)


def test_identity_refusals_name_their_reason():
    model = make_model([helper.make_node("Identity", ["x"], ["y"], name="passthrough"),
                        helper.make_node("Relu", ["x"], ["r"], name="relu"),
                        helper.make_node("Dropout", ["r", "ratio", "train"], ["z", "mask"], name="drop")],
                       {"ratio": np.array(0.5, np.float32), "train": np.array(False)},
                       outputs=("y", "z", "mask"))
    result = RemoveIdentity().run(model)
    assert not result.modified
    assert result.stats["rejected"]["remove-identity"] == {
        "Identity forwards a graph input or constant to graph output 'y'; kept for its name": 1,
        "Dropout mask output is used": 1}


def test_constant_nodes_become_initializers():
    value = numpy_helper.from_array(f32(1, 3, 1, 1))
    model = make_model([helper.make_node("Constant", [], ["k"], name="k", value=value),
                        helper.make_node("Constant", [], ["s"], name="s", value_float=2.0),
                        helper.make_node("Mul", ["x", "k"], ["m"], name="mul"),
                        helper.make_node("Mul", ["m", "s"], ["y"], name="mul2")])
    reference = model.copy()
    result = ConstantToInitializer().run(model)
    assert result.stats["applied"] == {"constant-to-initializer": 2}
    assert ops(model) == {"Mul": 2}
    assert_close(reference, model, tol=0)


def test_shape_subgraph_is_folded_so_reshape_gets_a_constant_shape():
    # y = Reshape(x, Concat(Gather(Shape(x), 0), [-1])): the pattern exporters emit for flatten
    model = make_model([helper.make_node("Shape", ["x"], ["shp"], name="shape"),
                        helper.make_node("Gather", ["shp", "zero"], ["n"], name="gather", axis=0),
                        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsq"),
                        helper.make_node("Concat", ["n1", "minus1"], ["target"], name="concat", axis=0),
                        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape")],
                       {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64),
                        "minus1": np.array([-1], np.int64)})
    reference = model.copy()
    result = FoldConstants().run(model)
    assert result.stats["folded_nodes"] == 4
    assert ops(model) == {"Reshape": 1}
    [reshape] = model.graph.nodes
    assert reshape.inputs[1].values.tolist() == [1, -1]
    assert_close(reference, model, tol=0)


def test_opset_upgrade_from_11_keeps_outputs():
    # Split, Unsqueeze and Squeeze took their sizes/axes as attributes before opset 13
    model = make_model([helper.make_node("Clip", ["x", "lo", "hi"], ["c"], name="clip"),
                        helper.make_node("Split", ["c"], ["a", "b"], name="split", axis=1, split=[1, 2]),
                        helper.make_node("ReduceMean", ["b"], ["m"], name="mean", axes=[1], keepdims=0),
                        helper.make_node("Unsqueeze", ["m"], ["u"], name="unsq", axes=[1]),
                        helper.make_node("Mul", ["a", "u"], ["p"], name="mul"),
                        helper.make_node("Squeeze", ["p"], ["y"], name="sq", axes=[0])],
                       {"lo": np.array(0.0, np.float32), "hi": np.array(1.0, np.float32)}, opset=11)
    reference = model.copy()
    result = UpgradeOpset().run(model)
    assert result.stats == {"from": 11, "to": 17}
    assert model.opset == 17
    assert_close(reference, model, tol=0)
    assert not UpgradeOpset().run(model).modified


@pytest.mark.parametrize("name", list(ZOO))
def test_canonicalize_zoo_model_roundtrip(name, tmp_path):
    original = load_model(build(name))
    model = original.copy()
    assert ops(model)["BatchNormalization"] > 0
    result = Canonicalize().run(model)
    path = save_model(model, tmp_path / f"{name}.onnx")
    reloaded = load_model(path)
    if ops(original)["LSTM"]:  # crnn: unrolling the LSTM adds more nodes than folding removes
        assert ops(reloaded)["LSTM"] == 0
    else:
        assert result.stats["nodes_after"] < result.stats["nodes_before"]
    assert ops(reloaded)["BatchNormalization"] == 0
    assert reloaded.opset >= 13 and reloaded.is_static() and result.stats["static"]
    assert_close(original, reloaded, [random_feeds(original, seed=s) for s in range(2)], tol=1e-4)
    assert_close(original, reloaded, zoo_inputs(2), tol=1e-4)
    assert not Canonicalize().run(reloaded).modified


def test_fold_constants_failure_leaves_the_model_untouched_and_says_why(monkeypatch):
    import onnx_graphsurgeon as gs

    def broken(self, *args, **kwargs):
        raise RuntimeError("onnxruntime could not evaluate node X\nmore text")

    model = make_model([helper.make_node("Shape", ["x"], ["s"], name="shape"),
                        helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")])
    monkeypatch.setattr(gs.Graph, "fold_constants", broken)
    result = FoldConstants().run(model)
    assert not result.modified
    assert result.stats["refused"] == "evaluating constant sub-graphs failed: onnxruntime could not evaluate node X"
    assert ops(model) == {"Shape": 1, "Reshape": 1}


@pytest.mark.parametrize("host", ["Conv", "ConvTranspose"])
def test_scale_bias_fold_is_exact_or_refused_for_any_broadcast_shape(host):
    """Property: for random constant shapes that broadcast against the output, the rewrite either
    keeps the outputs or is refused (never a wrong fold)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
    @hypothesis.given(op=st.sampled_from(["Mul", "Add", "Sub", "Div"]),
                      dims=st.lists(st.sampled_from([0, 1]), min_size=0, max_size=4),
                      const_first=st.booleans())
    def check(op, dims, const_first):
        out_shape = [1, 4, 6, 6]
        # each kept axis is either 1 or the output's size on the aligned axis
        shape = [out_shape[4 - len(dims) + i] if keep else 1 for i, keep in enumerate(dims)]
        const = f32(*shape, low=0.5) if shape else np.float32(1.25)
        weight = f32(4, 3, 3, 3) if host == "Conv" else f32(3, 4, 3, 3)
        attrs = {"pads": [1, 1, 1, 1]}
        operands = ["c", "t"] if const_first else ["t", "c"]
        model = make_model([helper.make_node(host, ["x", "w"], ["t"], name="host", **attrs),
                            helper.make_node(op, operands, ["y"], name="op")],
                           {"w": weight, "c": const}, inputs=(("x", [1, 3, 6, 6]),))
        reference = model.copy()
        result = FoldScaleBias().run(model)
        per_channel = all(d == 1 for i, d in enumerate([1] * (4 - len(shape)) + shape) if i != 1)
        commutes = op in ("Mul", "Add") or not const_first
        assert result.modified == (per_channel and commutes), (shape, result.stats)
        assert_close(reference, model)

    check()


def test_canonical_mark_survives_saving_and_changes_clear_it(tmp_path, monkeypatch):
    """compile re-canonicalizes only a model that is not canonical already (issue 20)."""
    from slimcc.passes.canonicalize import Canonicalize
    from slimcc.passes.pipeline import parse_pipeline
    from slimcc.passes.verified import run_verified
    from slimcc.targets.compiler import prepare_model

    model = load_model(build("crnn"))
    assert not Canonicalize().is_canonical(model)
    run_verified(model, parse_pipeline("canonicalize"), progress=False)
    assert Canonicalize().is_canonical(model) and not Canonicalize(recurrent=False).is_canonical(model)
    path = save_model(model, tmp_path / "c.onnx")
    loaded = load_model(path)
    assert Canonicalize().is_canonical(loaded)

    def refuse(*args, **kwargs):
        raise AssertionError("canonicalize ran again")

    monkeypatch.setattr(Canonicalize, "run", refuse)
    assert prepare_model(path).is_static()
    monkeypatch.undo()
    run_verified(loaded, parse_pipeline("prune-channels{ratio=0.3}"), progress=False)
    assert not Canonicalize().is_canonical(loaded)
