"""Integer reference arithmetic vs onnxruntime QLinearConv/QLinearMatMul, and qdq-lower."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper
from quant_helpers import F, I8, I32, U8, calib_context, canonical_zoo, qdq_model, vi

from slimcc.ir.model import load_model
from slimcc.ir.verify import compare_models, run_onnxruntime
from slimcc.passes.quant import intref
from slimcc.passes.quant.qdq_cancel import QDQCancel
from slimcc.passes.quant.qdq_insert import QDQInsert
from slimcc.passes.quant.qdq_lower import QDQLower
from slimcc.passes.quant.qdq_propagate import QDQPropagate

RNG = np.random.default_rng(1)


def test_fixed_point_multiplier_and_half_even_rounding():
    for real in [0.3, 0.5, 0.75, 1e-4, 2.5e-3]:
        m, shift = intref.quantize_multiplier(real)
        assert 2**30 <= m < 2**31
        assert abs(m * 2.0 ** -(31 + shift) - real) <= real * 2**-30
    np.testing.assert_array_equal(intref.rounding_shift(np.array([1, 3, 5, -1, -3, 6, 7]), 1).astype(np.int64),
                                  [0, 2, 2, -0, -2, 3, 4])
    acc = np.array([[4, 12, -4, 20, 100000]])  # x 0.125: 0.5, 1.5, -0.5, 2.5 tie to even
    np.testing.assert_array_equal(intref.requantize(acc, 0.125, 10, np.uint8), [[10, 12, 10, 12, 255]])


def _qlinearconv_ort(x_q, x_s, x_z, w_q, w_s, w_z, y_s, y_z, bias, attrs):
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in
             [("xs", np.float32(x_s)), ("xz", np.uint8(x_z)), ("w", w_q), ("ws", w_s.astype(np.float32)),
              ("wz", np.zeros(w_s.shape, np.int8)), ("ys", np.float32(y_s)), ("yz", np.uint8(y_z)), ("b", bias)]]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], **attrs)
    model = qdq_model([node], inits, [vi("x", U8, list(x_q.shape))], [vi("y", U8, None)])
    return run_onnxruntime(model, {"x": x_q}, optimize=True)["y"]


def _case(designed: bool, group: int = 1):
    cin, cout = (8, 8) if group > 1 else (8, 6)
    x_q = RNG.integers(0, 128 if designed else 256, (1, cin, 7, 7)).astype(np.uint8)
    w_q = RNG.integers(-63, 64, (cout, cin // group, 3, 3)).astype(np.int8)
    bias = RNG.integers(-2000, 2000, cout).astype(np.int32)
    if designed:  # multipliers with few mantissa bits: float32 and fixed point agree exactly
        x_s, w_s, y_s = 2.0**-4, (RNG.integers(1, 16, cout) * 2.0**-9).astype(np.float32), 2.0**-2
    else:
        x_s, w_s, y_s = 0.0173, RNG.uniform(0.001, 0.01, cout).astype(np.float32), 0.37
    return x_q, x_s, 37, w_q, w_s, 0, y_s, 120, bias


def test_reference_conv_matches_onnxruntime_bit_exactly():
    for group in (1, 8):
        attrs = {"pads": [1, 1, 1, 1], "strides": [2, 1], "group": group}
        args = _case(True, group)
        want = intref.qlinear_conv(*args[:8], args[8], strides=(2, 1), pads=(1, 1, 1, 1), group=group)
        got = _qlinearconv_ort(*args, attrs)
        np.testing.assert_array_equal(want, got)
        assert len(np.unique(got)) > 20  # not a saturated, trivially equal output


def test_reference_conv_generic_scales_within_one_step():
    args = _case(False)
    want = intref.qlinear_conv(*args[:8], args[8], pads=(1, 1, 1, 1))
    got = _qlinearconv_ort(*args, {"pads": [1, 1, 1, 1]})
    diff = np.abs(want.astype(int) - got.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_reference_matmul_matches_onnxruntime():
    a = RNG.integers(0, 128, (5, 16)).astype(np.uint8)
    b = RNG.integers(-63, 64, (16, 4)).astype(np.int8)
    b_s = np.float32([2.0**-7, 3 * 2.0**-8, 2.0**-6, 5 * 2.0**-9])
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in
             [("as", np.float32(2.0**-3)), ("az", np.uint8(9)), ("b", b), ("bs", b_s),
              ("bz", np.zeros(4, np.int8)), ("ys", np.float32(2.0**-1)), ("yz", np.uint8(100))]]
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    got = run_onnxruntime(qdq_model([node], inits, [vi("a", U8, [5, 16])], [vi("y", U8, [5, 4])]), {"a": a})["y"]
    want = intref.qlinear_matmul(a, 2.0**-3, 9, b, b_s, np.zeros(4, np.int8), 2.0**-1, np.uint8(100))
    np.testing.assert_array_equal(want, got)


def test_qdq_lower_zoo_model_to_qlinearconv():
    model = canonical_zoo("conv-gemm")
    ctx, held_out = calib_context()
    QDQInsert().run(model, ctx)
    QDQPropagate().run(model)
    QDQCancel().run(model)
    qdq = model.copy()
    result = QDQLower().run(model)
    assert result.stats["applied"]["lower-qlinearconv"] >= 1
    ops = [n.op for n in model.graph.nodes]
    assert "QLinearConv" in ops and "Conv" in ops  # the 3-channel stem stays float
    report = compare_models(qdq, model, held_out)
    # the QDQ graph rounds the bias-free accumulator through float; QLinearConv rounds once
    assert report.max_rel < 0.02, report.as_dict()
