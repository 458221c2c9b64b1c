"""Real int8 in Relax (targets/int8.py): bit-exact against the numpy integer reference, integer IR, zoo builds."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimcc.errors import SlimccError
from slimcc.ir.model import load_model
from slimcc.ir.verify import run_onnxruntime
from slimcc.passes.pattern import constant_value
from slimcc.passes.quant import intref
from slimcc.passes.quant.qdq_insert import QDQInsert
from slimcc.targets.compiler import compile_model
from slimcc.targets.int8 import INT8_ENV, compute_calls, count_integer_ops, lower_int8
from slimcc.targets.relax_import import prepare_for_build, to_relax
from slimcc.targets.runner import load_artifact
from slimcc.targets.target import make_target
from slimcc.targets.tvm_import import ensure_tvm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "passes" / "quant"))
from quant_helpers import calib_context, canonical_zoo  # noqa: E402

U8, I8 = TensorProto.UINT8, TensorProto.INT8


def _qdq_layer(op: str, x_shape, w_q, w_scale, bias_q, *, w_axis: int, act: str | None = None,
               x_scale: float | None = None, **attrs):
    """DQ(x u8) -> op(DQ(w s8), DQ(bias int32)) [-> act] -> Q(u8): qdq-insert's form of one layer."""
    rng = np.random.default_rng(len(x_shape) + w_q.size)
    x_s = np.float32(x_scale if x_scale is not None else rng.uniform(0.01, 0.05))
    x_z, y_s, y_z = np.uint8(37), np.float32(0.25 if x_scale is not None else 0.3), np.uint8(120)
    channels = w_scale.size
    inits = {"xs": x_s, "xz": x_z, "w": w_q, "ws": w_scale, "wz": np.zeros(channels, np.int8),
             "ys": y_s, "yz": y_z}
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=w_axis)]
    inputs = ["xd", "wd"]
    if bias_q is not None:
        inits.update(b=bias_q, bs=(x_s * w_scale).astype(np.float32), bz=np.zeros(channels, np.int32))
        nodes.append(helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], axis=0))
        inputs.append("bd")
    nodes.append(helper.make_node(op, inputs, ["acc"], **attrs))
    if act == "Relu":
        nodes.append(helper.make_node("Relu", ["acc"], ["act"]))
    elif act == "Clip":
        inits.update(lo=np.float32(0.0), hi=np.float32(6.0))
        nodes.append(helper.make_node("Clip", ["acc", "lo", "hi"], ["act"]))
    nodes.append(helper.make_node("QuantizeLinear", ["act" if act else "acc", "ys", "yz"], ["y"]))
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", U8, list(x_shape))],
                              [helper.make_tensor_value_info("y", U8, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return load_model(model), (x_s, x_z, y_s, y_z)


def _run_lowered(model, x: np.ndarray, flavour: str) -> np.ndarray:
    """Import, lower to integer compute in `flavour` and run on this CPU (llvm); returns the u8 output."""
    tvm = ensure_tvm()
    from tvm import relax

    mod = lower_int8(to_relax(model), flavour)
    assert count_integer_ops(mod) == 1
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _clamp(y_q: np.ndarray, act: str | None, y_s, y_z) -> np.ndarray:
    """What Q(act(y)) is in the quantized domain: Relu/Clip(0, 6) clamp at the quantized bounds."""
    if act is None:
        return y_q
    lo = int(y_z)
    hi = int(intref.quantize(np.float32(6.0), y_s, y_z)) if act == "Clip" else 255
    return np.clip(y_q, lo, hi).astype(y_q.dtype)


CONV_CASES = {  # cin, cout, group, hw, kernel, strides, pads (top, left, bottom, right), dilations, act
    "stride2-asym-pad": (5, 7, 1, (11, 9), (3, 3), (2, 2), (1, 0, 2, 1), (1, 1), None),
    "depthwise-relu": (8, 8, 8, (9, 10), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), "Relu"),
    "grouped-dilated-clip": (6, 4, 2, (10, 10), (3, 2), (1, 2), (2, 1, 2, 1), (2, 1), "Clip"),
    "rounding-ties": (8, 6, 1, (9, 9), (3, 3), (2, 1), (1, 1, 1, 1), (1, 1), None),
}
TIES = "rounding-ties"  # power-of-two scales, weights and bias in multiples of 64: many results are exactly x.5


@pytest.mark.parametrize("flavour", ["u8s8", "s8s8"])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_is_bit_exact_with_the_integer_reference(case, flavour):
    cin, cout, group, hw, kernel, strides, pads, dilations, act = CONV_CASES[case]
    rng = np.random.default_rng(7)
    if case == TIES:
        w_q = (rng.integers(-1, 2, (cout, cin // group, *kernel)) * 64).astype(np.int8)
        w_s = (rng.integers(1, 16, cout) * 2.0**-9).astype(np.float32)
        bias = (rng.integers(-40, 40, cout) * 64).astype(np.int32)
    else:
        w_q = rng.integers(-127, 128, (cout, cin // group, *kernel)).astype(np.int8)
        w_s = rng.uniform(0.002, 0.02, cout).astype(np.float32)
        bias = rng.integers(-3000, 3000, cout).astype(np.int32)
    model, (x_s, x_z, y_s, y_z) = _qdq_layer(
        "Conv", (1, cin, *hw), w_q, w_s, bias, w_axis=0, act=act, x_scale=2.0**-4 if case == TIES else None,
        strides=list(strides), pads=list(pads), dilations=list(dilations), group=group)
    x = rng.integers(0, 256, (1, cin, *hw)).astype(np.uint8)
    want = intref.qlinear_conv(x, x_s, x_z, w_q, w_s, 0, y_s, y_z, bias, strides=strides, pads=pads,
                               dilations=dilations, group=group)
    want = _clamp(want, act, y_s, y_z)
    got = _run_lowered(model, x, flavour)
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 20  # not a saturated, trivially equal output
    if case == TIES:  # half-to-even rounding is exercised: some outputs sit exactly between two steps
        acc = intref.conv_accumulate(x, x_z, w_q, 0, strides=strides, pads=pads).astype(np.float64)
        real = (acc + bias.reshape(1, -1, 1, 1)) * (x_s * w_s.astype(np.float64) / y_s).reshape(1, -1, 1, 1)
        assert np.count_nonzero(real - np.floor(real) == 0.5) > 5


@pytest.mark.parametrize("flavour", ["u8s8", "s8s8"])
@pytest.mark.parametrize("form", ["gemm-transB-bias", "matmul-clip"])
def test_gemm_and_matmul_are_bit_exact_with_the_integer_reference(form, flavour):
    rng = np.random.default_rng(3)
    k, n = 37, 11
    w_kn = rng.integers(-127, 128, (k, n)).astype(np.int8)
    w_s = rng.uniform(0.002, 0.02, n).astype(np.float32)
    x = rng.integers(0, 256, (3, k)).astype(np.uint8)
    if form == "gemm-transB-bias":
        bias, act = rng.integers(-3000, 3000, n).astype(np.int32), None
        model, (x_s, x_z, y_s, y_z) = _qdq_layer("Gemm", x.shape, np.ascontiguousarray(w_kn.T), w_s, bias,
                                                 w_axis=0, transB=1)
        acc = (x.astype(np.int64) - int(x_z)) @ w_kn.astype(np.int64) + bias
        want = intref.requantize(acc, (np.float32(x_s) * w_s / np.float32(y_s)).astype(np.float32), int(y_z))
    else:
        act = "Clip"
        model, (x_s, x_z, y_s, y_z) = _qdq_layer("MatMul", x.shape, w_kn, w_s, None, w_axis=1, act=act)
        want = intref.qlinear_matmul(x, x_s, x_z, w_kn, w_s, np.zeros(n, np.int8), y_s, y_z)
    want = _clamp(want, act, y_s, y_z)
    got = _run_lowered(model, x, flavour)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 5  # Clip(0, 6) leaves 21 levels at this output scale


def test_prepare_for_build_emits_integer_conv_unless_switched_off(monkeypatch):
    rng = np.random.default_rng(0)
    w_q = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    model, _ = _qdq_layer("Conv", (1, 3, 8, 8), w_q, np.full(4, 0.01, np.float32), np.zeros(4, np.int32),
                          w_axis=0, pads=[1, 1, 1, 1])
    facts: dict = {}
    lowered = lower_int8(to_relax(model))
    assert compute_calls(lowered) == [("relax.nn.conv2d", "uint8", "int8", "int32")]
    mod = prepare_for_build(to_relax(model), make_target("x86").to_tvm(), facts)
    assert facts == {"int8_mode": "real", "int8_lowered": 1}
    assert compute_calls(mod) == []  # on x86 the integer conv2d became slimcc's int8 kernel (int8_pack)
    script = mod.script(show_meta=False)
    assert "R.dequantize" not in script and ("slimcc_qconv" in script or "slimcc_conv" in script)
    arm = prepare_for_build(to_relax(model), make_target("arm", int8=True).to_tvm())
    assert compute_calls(arm) == []  # s8 x s8 on aarch64 +dotprod: slimcc's sdot kernel
    assert "slimcc_qconv" in arm.script(show_meta=False)
    no_dotprod = prepare_for_build(to_relax(model), make_target("arm").to_tvm())
    assert compute_calls(no_dotprod) == [("relax.nn.conv2d", "int8", "int8", "int32")]

    facts = {}
    fake = prepare_for_build(to_relax(model), None, facts, int8_mode="fake")
    assert facts == {"int8_mode": "fake", "int8_lowered": 0}
    [(op, data, weight, _)] = compute_calls(fake)
    assert (op, data, weight) == ("relax.nn.conv2d", "float32", "float32")

    monkeypatch.setenv(INT8_ENV, "fake")  # the deprecated variable: read only when no mode is given
    facts = {}
    prepare_for_build(to_relax(model), None, facts)
    assert facts["int8_mode"] == "fake"
    facts = {}
    prepare_for_build(to_relax(model), None, facts, int8_mode="real")
    assert facts == {"int8_mode": "real", "int8_lowered": 1}


def test_int8_mode_option_reaches_the_isolated_build_and_rejects_unknown_modes(tmp_path):
    rng = np.random.default_rng(0)
    w_q = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    model, _ = _qdq_layer("Conv", (1, 3, 8, 8), w_q, np.full(4, 0.01, np.float32), np.zeros(4, np.int32),
                          w_axis=0, pads=[1, 1, 1, 1])
    manifest = compile_model(model, make_target("x86"), tmp_path / "fake", isolate=True, int8_mode="fake")
    assert (manifest.build["int8_mode"], manifest.build["int8_lowered"]) == ("fake", 0)
    with pytest.raises(SlimccError, match="int8 mode 'bogus'"):
        compile_model(model, make_target("x86"), tmp_path / "bad", int8_mode="bogus")
    assert not (tmp_path / "bad").exists()


def test_layer_outside_the_lowered_form_keeps_float_qdq():
    rng = np.random.default_rng(0)
    w_q = rng.integers(-127, 128, (4, 3, 1, 1)).astype(np.int8)
    model, _ = _qdq_layer("Conv", (1, 3, 4, 4), w_q, np.full(4, 0.01, np.float32), np.ones(4, np.int32), w_axis=0)
    bias_scale = next(t for t in model.graph.tensors().values() if t.name == "bs")
    bias_scale.values = bias_scale.values * np.float32(2)  # bias scale != sx * sw: no exact int32 bias
    mod = lower_int8(to_relax(model))
    assert count_integer_ops(mod) == 0 and "R.quantize" in mod.script(show_meta=False)


@pytest.fixture(scope="module")
def quantized_resnet():
    """The zoo ResNet (basic blocks) after qdq-insert, with held-out real-photo feeds."""
    model = canonical_zoo("resnet-basic")
    ctx, held_out = calib_context()
    layers = QDQInsert().run(model, ctx).stats["quantized_layers"]
    assert layers >= 8  # every conv but the 3-channel stem; the classifier stays float
    return model, held_out, layers


def _one_step_bound(model) -> float:
    """How far the logits move when the last quantized tensor moves by one step: its scale * max row |W|_1.

    The classifier (Gemm, transB=1) stays float; it reads DQ(Q(pool)) through layout ops (Flatten).
    """
    gemm = model.graph.nodes[-1]
    assert gemm.op == "Gemm" and gemm.attrs["transB"] == 1
    tensor = gemm.inputs[0]
    while tensor.inputs[0].op != "DequantizeLinear":
        tensor = tensor.inputs[0].inputs[0]
    step = float(constant_value(tensor.inputs[0].inputs[1]))
    weight = constant_value(gemm.inputs[1])
    if weight is None:  # a quantized classifier weight: DQ(W_q, per-row scale)
        w_dq = gemm.inputs[1].inputs[0]
        weight = intref.dequantize(*(constant_value(t) for t in w_dq.inputs), axis=0)
    return step * float(np.abs(weight).sum(axis=1).max())


def test_quantized_zoo_resnet_compiles_for_x86_and_matches_onnxruntime(quantized_resnet, x86, tmp_path):
    model, held_out, layers = quantized_resnet
    bound = _one_step_bound(model)
    manifest = compile_model(model, x86, tmp_path / "art", isolate=False)
    assert manifest.build["int8_lowered"] == layers  # every quantized layer runs as an integer kernel
    artifact = load_artifact(tmp_path / "art")
    for feeds in held_out:
        got = artifact.run(feeds)["y"]
        want = run_onnxruntime(model, feeds)["y"]
        # integer kernels vs onnxruntime's float Q/DQ may differ by one step at exact rounding ties
        assert np.abs(got - want).max() <= bound
        assert got.argmax() == want.argmax()


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="aarch64-linux-gnu-g++ missing (apt-get install g++-aarch64-linux-gnu)")
def test_quantized_zoo_resnet_cross_builds_for_aarch64(quantized_resnet, tmp_path):
    model, _, layers = quantized_resnet
    arm = make_target("arm", int8=True)
    mod = prepare_for_build(to_relax(model), arm.to_tvm())
    assert [c for c in compute_calls(mod) if c[3] == "int32"] == []  # every integer conv on slimcc's sdot kernel
    manifest = compile_model(model, arm, tmp_path / "arm", isolate=False)
    assert manifest.build["int8_lowered"] == layers
    assert manifest.build["slimcc_schedules"].get("int8_conv") == layers, manifest.build
    library = (tmp_path / "arm" / manifest.library).read_bytes()
    assert library[:4] == b"\x7fELF" and int.from_bytes(library[18:20], "little") == 183  # EM_AARCH64
