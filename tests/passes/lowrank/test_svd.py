"""decompose-svd: both conv forms and Gemm/MatMul at full rank, im2col exactness, structure, refusals."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest

from lowrank_helpers import conv_model, gemm_model, ppocr_det, relative_max_error, with_outputs
from slimcc.ir.model import load_model
from slimcc.ir.verify import assert_equivalent, run_onnxruntime
from slimcc.models.zoo import build
from slimcc.passes.lowrank.decompose_svd import DecomposeSvd
from slimcc.passes.lowrank.emit import NameScope
from slimcc.passes.lowrank.im2col import emit_im2col, weight_as_columns
from slimcc.passes.lowrank.layers import read_conv

CONV_CASES = {
    "plain": dict(pads=[1, 1, 1, 1]),
    "asymmetric-pads-stride": dict(pads=[0, 1, 2, 1], strides=[2, 1]),
    "same-upper": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    "same-lower": dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    "valid": dict(auto_pad="VALID"),
    "dilated": dict(dilations=[2, 2], pads=[2, 2, 2, 2]),
}


def ops(model) -> collections.Counter:
    return collections.Counter(n.op for n in model.graph.nodes)


@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("form", ["conv", "gemm"])
@pytest.mark.parametrize("keep_s", [False, True])
def test_full_rank_conv_forms(case, form, keep_s):
    model = conv_model(size=(11, 13), bias=case != "valid", **CONV_CASES[case])
    reference = model.copy()
    result = DecomposeSvd(rank=1.0, force=True, form=form, keep_s=keep_s).run(model)
    assert result.stats["layers"]["conv"]["rel_error"] < 1e-6
    counts = ops(model)
    if form == "conv":
        assert counts["Conv"] == 2 + int(keep_s)
    else:
        assert counts["Conv"] == 0 and counts["MatMul"] == 2 + int(keep_s)
        assert counts["Concat"] == 1 and counts["Slice"] <= 9  # one im2col, shared by the MatMuls
    onnx.checker.check_model(model.to_proto(), full_check=True)
    assert_equivalent(reference, model, rel_tol=1e-4)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_im2col_is_bit_exact(case):
    """The Pad/Slice/Concat im2col equals a numpy im2col bit for bit, inf included (no arithmetic)."""
    model = conv_model(size=(11, 13), **CONV_CASES[case])
    layer = read_conv(model.graph.nodes[0])
    graph = model.graph
    nodes, cols = emit_im2col(layer, graph.inputs[0], NameScope(graph), "t")
    graph.nodes = nodes
    graph.outputs = [cols]
    x = np.random.default_rng(0).standard_normal(layer.input_shape).astype(np.float32)
    x[0, 1, 3, 4] = np.inf
    got = run_onnxruntime(model, {"x": x})[cols.name]
    top, left, bottom, right = layer.pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    (sh, sw), (dh, dw), (kh, kw) = layer.strides, layer.dilations, layer.kernel_hw
    oh, ow = layer.output_shape[2:]
    taps = [padded[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            for i in range(kh) for j in range(kw)]
    want = np.concatenate(taps, axis=1).reshape(1, -1, oh * ow)
    assert np.array_equal(got, want)
    # the column order matches weight_as_columns: W_cols @ cols + b is the conv itself
    x[0, 1, 3, 4] = 0.5
    cols_finite = run_onnxruntime(model, {"x": x})[cols.name][0].astype(np.float64)
    conv = weight_as_columns(np.asarray(layer.weight, np.float64)) @ cols_finite + layer.bias[:, None]
    expected = run_onnxruntime(conv_model(size=(11, 13), relu=False, **CONV_CASES[case]), {"x": x})["y"]
    assert np.allclose(conv.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)


def test_strided_1x1_puts_the_stride_on_the_first_factor():
    model = conv_model(cin=32, cout=48, kernel=(1, 1), size=(10, 10), strides=[2, 2])
    reference = model.copy()
    DecomposeSvd(rank=1.0, force=True).run(model)
    first, last = [n for n in model.graph.nodes if n.op == "Conv"]
    assert first.attrs["strides"] == [2, 2] and last.attrs.get("strides", [1, 1]) == [1, 1]
    assert_equivalent(reference, model, rel_tol=1e-4)


def test_grouped_conv_per_group_and_refusals():
    model = conv_model(cin=16, cout=32, group=4, pads=[1, 1, 1, 1])
    reference = model.copy()
    result = DecomposeSvd(rank=1.0, force=True, keep_s=True).run(model)
    assert result.stats["layers"]["conv"]["groups"] == 4
    assert all(n.attrs["group"] == 4 for n in model.graph.nodes if n.op == "Conv")
    assert_equivalent(reference, model, rel_tol=1e-4)
    refused = DecomposeSvd(rank=1.0, force=True, form="gemm").run(conv_model(cin=16, cout=32, group=4))
    assert "grouped" in refused.stats["refused"]["conv"]
    depthwise = DecomposeSvd(rank=1.0, force=True).run(conv_model(cin=8, cout=8, group=8))
    assert "depthwise" in depthwise.stats["refused"]["conv"]


@pytest.mark.parametrize("attrs", [{}, {"transA": 1}, {"transB": 1, "alpha": 0.5, "beta": 2.0},
                                   {"transA": 1, "transB": 1, "alpha": 1.5}])
@pytest.mark.parametrize("keep_s", [False, True])
def test_full_rank_gemm_keeps_attributes(attrs, keep_s):
    model = gemm_model(**attrs)
    reference = model.copy()
    DecomposeSvd(rank=1.0, force=True, keep_s=keep_s).run(model)
    gemms = [n for n in model.graph.nodes if n.op == "Gemm"]
    assert len(gemms) == 2 + int(keep_s)
    assert gemms[0].attrs.get("transA", 0) == attrs.get("transA", 0)
    assert gemms[-1].attrs["alpha"] == attrs.get("alpha", 1.0) and gemms[-1].attrs["beta"] == attrs.get("beta", 1.0)
    assert len(gemms[-1].inputs) == 3  # C stays on the last factor
    assert_equivalent(reference, model, rel_tol=1e-4)


def test_full_rank_matmul():
    model = gemm_model(op="MatMul")
    reference = model.copy()
    DecomposeSvd(rank=1.0, force=True, keep_s=True).run(model)
    assert ops(model)["MatMul"] == 3
    assert_equivalent(reference, model, rel_tol=1e-4)


def test_speedup_rank_and_error_stats():
    model = gemm_model(m=8, k=256, n=256)
    result = DecomposeSvd(speedup=2).run(model)
    layer = result.stats["layers"]["fc"]
    assert layer["ranks"] == [64] and layer["predicted_speedup"] == 2.0  # 256*256 / (2*512) = 64
    assert 0 < layer["rel_error"] < 1


@pytest.mark.parametrize("name", ["vgg", "resnet-basic", "conv-gemm"])
@pytest.mark.parametrize("form", ["conv", "gemm"])
def test_full_rank_on_zoo(name, form):
    model = load_model(build(name))
    reference = model.copy()
    result = DecomposeSvd(rank=1.0, force=True, form=form).run(model)
    assert result.stats["decomposed"] >= 3
    assert_equivalent(reference, model, rel_tol=1e-4)


@pytest.mark.realmodel
@pytest.mark.parametrize("form", ["conv", "gemm"])
def test_full_rank_on_ppocr_det(form, real_model_path):
    model = ppocr_det(real_model_path)
    reference = model.copy()
    result = DecomposeSvd(rank=1.0, force=True, form=form, exclude="p2o.Conv.37;p2o.Conv.40").run(model)
    assert result.stats["decomposed"] >= 40
    assert result.stats["skipped"]["p2o.Conv.37"] == "excluded by option"
    logits = next(n for n in model.graph.nodes if n.op == "Sigmoid").inputs[0].name
    names = [logits, "conv2d_450.tmp_0", "conv2d_497.tmp_0"]
    feeds = {"x": np.random.default_rng(0).uniform(-1, 1, (1, 3, 320, 320)).astype(np.float32)}
    expected = run_onnxruntime(with_outputs(reference, names), feeds)
    actual = run_onnxruntime(with_outputs(model, names), feeds)
    for name in names:
        assert relative_max_error(expected[name], actual[name]) < 1e-4, name


def test_lossy_pipeline_keeps_the_model_valid_under_the_manager():
    from slimcc.passes.manager import PassManager
    from slimcc.passes.pipeline import parse_pipeline

    model = load_model(build("conv-gemm", width=32))
    passes = parse_pipeline("decompose-tucker{speedup=2,multiple=4},decompose-svd{speedup=2,form=gemm,keep_s=true}")
    report = PassManager(passes, verify_each=True).run(model)
    assert [r.result.modified for r in report.records] == [True, True]
    tucker, svd = (r.result.stats for r in report.records)
    assert tucker["macs_after"] < tucker["macs_before"] and svd["macs_after"] < svd["macs_before"]
    assert ops(model)["MatMul"] >= 3
