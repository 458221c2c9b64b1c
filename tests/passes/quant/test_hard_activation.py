"""qdq-insert: HardSwish/HardSigmoid and average pooling kept in integers (onnxruntime QLinear* fusions)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper
from quant_helpers import F, optimized_op_types, qdq_model, vi

from slimcc.ir.calibration import CalibrationData
from slimcc.ir.model import load_model
from slimcc.ir.verify import compare_models, run_onnxruntime
from slimcc.passes.base import PassContext
from slimcc.passes.pattern import constant_value
from slimcc.passes.quant.qdq_insert import QDQInsert


def _se_net():
    """x -> Conv -> HardSwish -> Conv -> HardSigmoid(0.25, 0.4) -> Mul(HardSwish out) -> GAP -> Conv -> y."""
    rng = np.random.default_rng(3)

    def conv_init(name, cout, cin):
        return [numpy_helper.from_array((rng.standard_normal((cout, cin, 1, 1)) * 0.4).astype(np.float32), f"{name}.w"),
                numpy_helper.from_array((rng.standard_normal(cout) * 0.3).astype(np.float32), f"{name}.b")]

    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["a"], name="c1"),
             helper.make_node("HardSwish", ["a"], ["h"], name="hswish"),
             helper.make_node("Conv", ["h", "c2.w", "c2.b"], ["e"], name="c2"),
             helper.make_node("HardSigmoid", ["e"], ["g"], name="hsig", alpha=0.25, beta=0.4),
             helper.make_node("Mul", ["h", "g"], ["m"], name="gate"),
             helper.make_node("GlobalAveragePool", ["m"], ["p"], name="gap"),
             helper.make_node("Conv", ["p", "c3.w", "c3.b"], ["y"], name="c3")]
    inits = conv_init("c1", 16, 8) + conv_init("c2", 16, 16) + conv_init("c3", 10, 16)
    proto = qdq_model(nodes, inits, [vi("x", F, [1, 8, 6, 6])], [vi("y", F, [1, 10, 1, 1])])
    return load_model(proto)


def _feeds(n):
    rng = np.random.default_rng(4)
    return [{"x": (rng.standard_normal((1, 8, 6, 6)) * 2).astype(np.float32)} for _ in range(n)]


def _calibrated(n=8):
    return PassContext(calibration=CalibrationData(_feeds(n)), progress=False)


def _ops(model):
    return [n.op for n in model.graph.nodes]


def test_hard_activations_and_pool_run_in_integers():
    model = _se_net()
    reference = model.copy()
    held_out = _feeds(12)[8:]
    stats = QDQInsert().run(model, _calibrated()).stats
    assert stats["int8_hard_activations"] == 2
    assert "HardSwish" not in _ops(model) and "HardSigmoid" not in _ops(model)
    ran = optimized_op_types(model)
    # every element-wise op and the pool became an integer kernel; no float island is left
    assert {"QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool"} <= set(ran)
    assert not {"HardSwish", "HardSigmoid", "Add", "Mul", "GlobalAveragePool"} & set(ran)
    error = compare_models(reference, model, held_out).max_rel
    plain = _se_net()
    QDQInsert(hard_act="float").run(plain, _calibrated())
    assert {"HardSwish", "HardSigmoid"} <= set(_ops(plain))
    assert {"HardSwish", "HardSigmoid"} & set(optimized_op_types(plain))
    # integer HardSwish/HardSigmoid cost no more accuracy than quantizing around float ones
    assert error < 0.02 and error < 1.5 * compare_models(reference, plain, held_out).max_rel


@pytest.mark.parametrize("act", ["u8", "s8"])
def test_saturating_hard_sigmoid_is_the_clip(act):
    """The lowered HardSigmoid is Q(x + beta/alpha) saturating at 0 and 1/alpha, read back times alpha:
    bit for bit the rounding of clip(alpha * x + beta, 0, 1) to 255 steps (unfused onnxruntime).
    (With u8, a HardSigmoid whose input grid lies in its linear part needs no Add: tested below.)"""
    model = _se_net()
    QDQInsert(act=act).run(model, _calibrated())
    graph = model.graph
    cases = [("hswish", 1 / 6, 0.5)] + ([("hsig", 0.25, 0.4)] if act == "s8" else [])
    for name, alpha, beta in cases:
        add = next(n for n in graph.nodes if n.op == "Add" and n.name.startswith(name))
        x = add.inputs[0]
        q = add.outputs[0].outputs[0]
        dq = q.outputs[0].outputs[0]
        assert q.op == "QuantizeLinear" and dq.op == "DequantizeLinear"
        sigmoid = dq.outputs[0]
        c_q, c_scale, c_zero = (constant_value(t) for t in add.inputs[1].inputs[0].inputs)
        offset = np.float32(np.float32(int(c_q) - int(c_zero)) * c_scale)
        assert np.isclose(offset, beta / alpha, rtol=1e-6)
        got = run_onnxruntime(_probe_outputs(model.copy(), [x.name, sigmoid.name]), _feeds(9)[8])
        xv, sv = got[x.name], got[sigmoid.name]
        span = np.float32(1 / alpha / 255)
        steps = np.clip(np.round((xv + offset) / span), 0, 255)
        unit = np.float32(span * np.float32(alpha))
        np.testing.assert_array_equal(sv, (steps.astype(np.float32) * unit).astype(np.float32))
        assert np.abs(sv - np.clip(alpha * xv + beta, 0, 1)).max() <= 0.5 / 255 + 1e-6


def test_hard_sigmoid_in_its_linear_part_rereads_the_input_integers():
    """u8: the HardSigmoid's input grid spans [-beta/alpha, (1-beta)/alpha] with the zero point at
    -beta/alpha, so alpha * x + beta is a second DequantizeLinear of x's own integers: no Add, no
    extra rounding, and onnxruntime runs one QLinearAdd fewer."""
    model = _se_net()
    stats = QDQInsert().run(model, _calibrated()).stats
    assert stats["hard_activations_without_add"] == 1
    assert not any(n.op == "Add" and n.name.startswith("hsig") for n in model.graph.nodes)
    q = next(n for n in model.graph.nodes if n.op == "QuantizeLinear" and n.inputs[0].name == "e")
    scale, zero = float(constant_value(q.inputs[1])), int(constant_value(q.inputs[2]))
    assert -zero * scale == pytest.approx(-1.6, abs=1e-6)  # the zero point sits at the kink
    (reading,) = q.outputs[0].outputs  # e's only reader was the HardSigmoid: one DQ is left
    assert reading.op == "DequantizeLinear" and int(constant_value(reading.inputs[2])) == 0
    got = run_onnxruntime(_probe_outputs(model.copy(), ["e", reading.outputs[0].name]), _feeds(9)[8])
    levels = np.clip(np.round(got["e"] / np.float32(scale)) + zero, 0, 255)
    x = (levels - zero) * scale
    assert x.min() >= -1.6 - 1e-6 and x.max() <= 2.4 + 1e-6 and (levels == 0).any() and (levels > 0).any()
    np.testing.assert_allclose(got[reading.outputs[0].name], 0.25 * x + 0.4, atol=2e-6)  # no extra rounding
    assert optimized_op_types(model).count("QLinearAdd") == 1  # only the HardSwish's


def test_hard_swish_below_its_upper_kink_is_one_integer_mul():
    """A HardSwish input calibrated within [-3, 3] (here [-6, 2.5], cut at -3) runs as one
    QLinearMul of x and x's own integers read as (x + 3) / 6; its output matches the float
    HardSwish of the quantized input to half an output step."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "eye.w", "eye.b"], ["a"], name="eye"),
             helper.make_node("HardSwish", ["a"], ["h"], name="hswish"),
             helper.make_node("Conv", ["h", "c2.w", "c2.b"], ["y"], name="c2")]
    inits = [numpy_helper.from_array(np.eye(8, dtype=np.float32).reshape(8, 8, 1, 1), "eye.w"),
             numpy_helper.from_array(np.zeros(8, np.float32), "eye.b"),
             numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.5).astype(np.float32), "c2.w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "c2.b")]
    model = load_model(qdq_model(nodes, inits, [vi("x", F, [1, 8, 6, 6])], [vi("y", F, [1, 4, 6, 6])]))
    feeds = [{"x": rng.uniform(-6.0, 2.5, (1, 8, 6, 6)).astype(np.float32)} for _ in range(5)]
    for feed in feeds[:4]:
        feed["x"].reshape(-1)[:2] = (-6.0, 2.5)
    stats = QDQInsert(min_reduction=1).run(model, PassContext(calibration=CalibrationData(feeds[:4]),
                                                              progress=False)).stats
    assert stats["hard_activations_without_add"] == 1
    assert "Add" not in _ops(model)
    ran = optimized_op_types(model)
    assert "QLinearMul" in ran and "QLinearAdd" not in ran
    mul = next(n for n in model.graph.nodes if n.name == "hswish")
    out_q = mul.outputs[0].outputs[0]
    step = float(constant_value(out_q.inputs[1]))
    x_name, h_name = mul.inputs[0].name, out_q.outputs[0].outputs[0].outputs[0].name  # Mul -> Q -> DQ
    got = run_onnxruntime(_probe_outputs(model.copy(), [x_name, h_name]), feeds[4])
    xv, hv = got[x_name], got[h_name]
    assert xv.min() == pytest.approx(-3.0, abs=1e-5)
    assert np.abs(hv - xv * np.clip(xv + 3, 0, 6) / 6).max() <= 0.5 * step + 1e-6


def test_pre_activation_grid_covers_only_what_the_hard_activation_distinguishes():
    """A tensor read only by integer HardSwish/HardSigmoid spends its u8 levels on
    [-beta/alpha, hi] (HardSigmoid: up to (1-beta)/alpha): below, both are exactly 0."""
    model = _se_net()
    probe = _probe_outputs(_se_net(), ["a", "e"])
    raw = [run_onnxruntime(probe, feed) for feed in _feeds(8)]
    a_min = min(float(r["a"].min()) for r in raw)
    e_min = min(float(r["e"].min()) for r in raw)
    e_max = max(float(r["e"].max()) for r in raw)
    assert a_min < -3.5 and e_min < -2.0 and e_max > 3.0  # the calibration data reaches past the kinks
    QDQInsert().run(model, _calibrated())
    for name, lo, hi in (("a", -3.0, None), ("e", -1.6, 2.4)):
        q = next(n for n in model.graph.nodes if n.op == "QuantizeLinear" and n.inputs[0].name == name)
        scale, zero = float(constant_value(q.inputs[1])), int(constant_value(q.inputs[2]))
        assert abs(-zero * scale - lo) <= scale, name  # grid starts at the kink, not at the data minimum
        if hi is not None:
            assert abs((255 - zero) * scale - hi) <= scale, name


def _probe_outputs(model, names):
    """`model` with the named intermediate tensors as its outputs."""
    model.graph.outputs = [t for t in model.graph.tensors().values() if t.name in names]
    for t in model.graph.outputs:
        t.dtype = np.float32
    return model
