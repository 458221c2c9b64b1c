"""The quantization debugger's analysis: per-tensor SQNR/cosine, the layer that adds the error, agreement."""

from __future__ import annotations

import numpy as np
from quant_helpers import calib_context, canonical_zoo

from slimcc.passes.quant.layer_errors import MAX_SQNR_DB, compare_layers, error_bars, tensor_metrics
from slimcc.passes.quant.qdq_insert import QDQInsert


def test_tensor_metrics_match_their_definitions():
    r = [np.array([1.0, -2.0, 2.0], np.float32)]
    c = [np.array([1.0, -2.0, 2.3], np.float32)]
    m = tensor_metrics(r, c)
    assert np.isclose(m["sqnr_db"], 10 * np.log10(9.0 / 0.09), atol=1e-3)
    assert np.isclose(m["rel_l2"], 0.1, atol=1e-5)
    assert 0.99 < m["cosine"] < 1.0
    assert tensor_metrics(r, r)["sqnr_db"] == MAX_SQNR_DB


def test_compare_finds_the_deliberately_broken_layer():
    reference = canonical_zoo("resnet-basic")
    broken = reference.copy()
    convs = [n for n in broken.graph.nodes if n.op == "Conv"]
    victim = convs[len(convs) // 2]
    weight = victim.inputs[1].values
    victim.inputs[1].values = (weight + np.random.default_rng(0).standard_normal(weight.shape).astype(np.float32)
                               * np.abs(weight).max()).astype(np.float32)
    ctx, _ = calib_context(count=4)
    result = compare_layers(reference, broken, ctx.calibration.batches)
    assert result["worst_layer"]["node"] == victim.name
    upstream = result["layers"][:[l["node"] for l in result["layers"]].index(victim.name)]
    assert upstream and all(l["sqnr_db"] == MAX_SQNR_DB for l in upstream)
    assert "top1_agreement" in result["outputs"]["y"]
    assert any("#" in line for line in error_bars(result["layers"]))


def test_compare_int8_against_fp32_shares_the_float_tensor_names():
    reference = canonical_zoo("resnet-basic")
    quantized = reference.copy()
    ctx, _ = calib_context(count=4)
    stats = QDQInsert().run(quantized, ctx).stats
    result = compare_layers(reference, quantized, ctx.calibration.batches)
    assert result["tensors"] >= len([n for n in reference.graph.nodes if n.op == "Conv"])
    noisy = [l for l in result["layers"] if l["sqnr_db"] < MAX_SQNR_DB]
    assert len(noisy) >= stats["quantized_layers"] and result["outputs"]["y"]["sqnr_db"] < 60
    same = compare_layers(reference, reference.copy(), ctx.calibration.batches)
    assert same["outputs"]["y"]["top1_agreement"] == 1.0 and same["worst_layer"]["added_db"] == 0.0


def test_an_exact_per_channel_rescaling_is_not_counted_as_error():
    from slimcc.passes.quant.equalize import CrossLayerEqualize

    reference = canonical_zoo("resnet-basic")
    equalized = reference.copy()
    assert CrossLayerEqualize().run(equalized).modified
    ctx, _ = calib_context(count=2)
    result = compare_layers(reference, equalized, ctx.calibration.batches)
    assert min(l["sqnr_db"] for l in result["layers"]) < 40  # raw SQNR sees the rescaled tensors
    assert min(l["channel_fit_sqnr_db"] for l in result["layers"]) > 90
    assert result["worst_layer"]["added_db"] < 1.0
