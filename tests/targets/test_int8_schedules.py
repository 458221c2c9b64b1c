"""slimcc's int8 conv kernels on x86 (targets/schedules/int8_pack.py, int8_conv.py, vnni.py): bit-exact
with the numpy integer reference in every layer form, VNNI instructions where the target has them,
and an int8 zoo model end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from slimcc.passes.quant import intref
from slimcc.passes.quant.qdq_insert import QDQInsert
from slimcc.ir.verify import run_onnxruntime
from slimcc.targets.build import compile_pipeline
from slimcc.targets.compiler import compile_model
from slimcc.targets.relax_import import prepare_for_build, to_relax
from slimcc.targets.runner import load_artifact
from slimcc.targets.schedules.isa import target_has_feature
from slimcc.targets.target import make_target
from slimcc.targets.tvm_import import ensure_tvm

from targets_helpers import assembly
from test_int8_relax import _clamp, _one_step_bound, _qdq_layer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "passes" / "quant"))
from quant_helpers import calib_context, canonical_zoo  # noqa: E402

HOST = make_target("x86", num_cores=1)
HOST_VNNI = target_has_feature(HOST.to_tvm(), "avx512vnni")
NO_VNNI_CPU = "skylake-avx512"  # AVX-512 without VNNI: runs on any AVX-512 host, takes the exact int32 path
needs_vnni = pytest.mark.skipif(not HOST_VNNI, reason="this CPU has no AVX512-VNNI")
HOST_AMX = target_has_feature(HOST.to_tvm(), "amx-int8")
VNNI_NO_AMX_CPU = "icelake-server"  # VNNI without AMX: the blocked convs stay on vpdpbusd
# the rule of a blocked conv at stride 1 or 2 that AMX pays for (amx_conv.amx_eligible) on this host
AMX_FORM = "int8_amx" if HOST_AMX else "int8_conv"

CASES = {  # cin, cout, group, (h, w), kernel, strides, pads (top, left, bottom, right), dilations, act, rule
    "1x1": (64, 64, 1, (14, 14), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), None, "int8_conv"),
    "1x1-strided": (32, 64, 1, (15, 14), (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), "Relu", "int8_conv"),
    "3x3-strided-asym-pad": (32, 48, 1, (15, 13), (3, 3), (2, 2), (1, 0, 2, 1), (1, 1), None, "int8_conv"),
    # AMX where the CPU has it (>= 512 MACs per output): 64 channels a row, 48 outputs (one weight
    # tile per step), stride 2, and rows of 32 and 16 channels
    "3x3-asym-pad-64": (64, 48, 1, (9, 11), (3, 3), (1, 1), (1, 0, 2, 1), (1, 1), "Clip", AMX_FORM),
    "3x3-strided-64": (64, 32, 1, (15, 14), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), "Relu", AMX_FORM),
    "5x5-32-channels": (32, 32, 1, (12, 13), (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), None, AMX_FORM),
    "7x7-16-channels-strided": (16, 32, 1, (17, 16), (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), None, AMX_FORM),
    "3x3-64-at-40x40": (64, 64, 1, (40, 40), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), "Relu", AMX_FORM),
    "cin-5-cout-7": (5, 7, 1, (11, 9), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), "Relu", "int8_conv"),
    "cout-20-dilated-clip": (12, 20, 1, (10, 12), (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), "Clip", "int8_conv"),
    "grouped": (16, 32, 4, (12, 12), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), None, "conv"),
    "depthwise-strided": (24, 24, 24, (15, 15), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), "Relu", "depthwise_channels"),
    "depthwise-rows": (8, 8, 8, (20, 40), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), None, "depthwise"),
    "depthwise-blocked": (32, 32, 32, (20, 40), (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), "Clip", "depthwise_channels"),
    # 7x7 at stride 1: sums in float (FLOAT_DEPTHWISE_TAPS), partial sums up to 49 * 255 * 127
    "depthwise-blocked-7x7": (16, 16, 16, (14, 14), (7, 7), (1, 1), (3, 3, 3, 3), (1, 1), None, "depthwise_channels"),
}


def _layer(case: str):
    """(QDQ model, u8 input, expected u8 output from intref) for one CASES entry."""
    cin, cout, group, hw, kernel, strides, pads, dilations, act, _ = CASES[case]
    rng = np.random.default_rng(11)
    w_q = rng.integers(-127, 128, (cout, cin // group, *kernel)).astype(np.int8)
    fan_in = cin // group * kernel[0] * kernel[1]
    w_s = (rng.uniform(0.002, 0.02, cout) * 3 / np.sqrt(fan_in)).astype(np.float32)  # outputs span the u8 range
    bias = rng.integers(-3000, 3000, cout).astype(np.int32)
    model, (x_s, x_z, y_s, y_z) = _qdq_layer(
        "Conv", (1, cin, *hw), w_q, w_s, bias, w_axis=0, act=act, strides=list(strides), pads=list(pads),
        dilations=list(dilations), group=group)
    x = rng.integers(0, 256, (1, cin, *hw)).astype(np.uint8)
    want = intref.qlinear_conv(x, x_s, x_z, w_q, w_s, 0, y_s, y_z, bias, strides=strides, pads=pads,
                               dilations=dilations, group=group)
    return model, x, _clamp(want, act, y_s, y_z)


def _build(model, spec):
    """(Relax executable, build facts) of `model` through slimcc's x86 pipeline, in process."""
    tvm = ensure_tvm()
    target = spec.to_tvm()
    facts: dict = {}
    mod = prepare_for_build(to_relax(model), target, facts)
    return tvm.compile(mod, target=target, relax_pipeline=compile_pipeline(target, None, facts)), facts


def _run(executable, x: np.ndarray) -> np.ndarray:
    tvm = ensure_tvm()
    from tvm import relax

    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


@needs_vnni
@pytest.mark.parametrize("case", list(CASES))
def test_int8_conv_forms_are_bit_exact_with_vnni(case):
    model, x, want = _layer(case)
    executable, facts = _build(model, HOST)
    cin, cout, group = CASES[case][:3]
    # NCHW16c in and out (targets/int8_blocked.py): regular and depthwise convs on whole 16-channel blocks
    blocked = group in (1, cin) and cin % 16 == 0 and cout % 16 == 0
    # a blocked layer alone in a model converts the model's 8-bit input and output with slimcc's byte
    # transposes (explicit vector code, not scheduled by a rule)
    assert facts["slimcc_schedules"] == {CASES[case][-1]: 1}, facts
    assert ("slimcc_byte_transpose" in assembly(executable)) == blocked
    got = _run(executable, x)
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 20  # not a saturated, trivially equal output
    assert ("vpdpbusd" in assembly(executable)) == (CASES[case][-1] == "int8_conv")
    assert ("tdpbusd" in assembly(executable)) == (CASES[case][-1] == "int8_amx")
    assert "vpmaddubsw" not in assembly(executable)  # the int16-saturating u8 x s8 multiply is never used


@needs_vnni
@pytest.mark.parametrize("case", ["3x3-asym-pad-64", "3x3-strided-64", "5x5-32-channels", "7x7-16-channels-strided"])
def test_blocked_convs_take_vnni_where_the_cpu_has_no_amx(case):
    model, x, want = _layer(case)
    executable, facts = _build(model, make_target("x86", mcpu=VNNI_NO_AMX_CPU, num_cores=1))
    assert facts["slimcc_schedules"] == {"int8_conv": 1}, facts  # and two byte transposes
    assert "tdpbusd" not in assembly(executable)
    np.testing.assert_array_equal(_run(executable, x), want)


@pytest.mark.parametrize("case", ["3x3-strided-asym-pad", "cin-5-cout-7", "grouped", "depthwise-strided"])
def test_int8_convs_without_vnni_take_the_exact_int32_path(case):
    model, x, want = _layer(case)
    executable, facts = _build(model, make_target("x86", mcpu=NO_VNNI_CPU, num_cores=1))
    rule = "conv" if CASES[case][-1] in ("int8_conv", "int8_amx") else CASES[case][-1]
    assert facts["slimcc_schedules"] == {rule: 1}, facts
    assert "vpdpbusd" not in assembly(executable) and "vpmaddubsw" not in assembly(executable)
    np.testing.assert_array_equal(_run(executable, x), want)


@needs_vnni
@pytest.mark.parametrize("form", ["gemm-transB", "matmul-clip"])
def test_batch1_integer_matmul_runs_as_a_vnni_1x1_conv(form):
    rng = np.random.default_rng(5)
    k, n = 75, 40
    w_kn = rng.integers(-127, 128, (k, n)).astype(np.int8)
    w_s = rng.uniform(0.0005, 0.004, n).astype(np.float32)
    x = rng.integers(0, 256, (1, k)).astype(np.uint8)
    if form == "gemm-transB":
        bias = rng.integers(-3000, 3000, n).astype(np.int32)
        model, (x_s, x_z, y_s, y_z) = _qdq_layer("Gemm", x.shape, np.ascontiguousarray(w_kn.T), w_s, bias,
                                                 w_axis=0, transB=1)
        acc = (x.astype(np.int64) - int(x_z)) @ w_kn.astype(np.int64) + bias
        want = intref.requantize(acc, (np.float32(x_s) * w_s / np.float32(y_s)).astype(np.float32), int(y_z))
    else:
        model, (x_s, x_z, y_s, y_z) = _qdq_layer("MatMul", x.shape, w_kn, w_s, None, w_axis=1, act="Clip")
        want = _clamp(intref.qlinear_matmul(x, x_s, x_z, w_kn, w_s, np.zeros(n, np.int8), y_s, y_z), "Clip",
                      y_s, y_z)
    executable, facts = _build(model, HOST)
    assert facts["slimcc_schedules"].get("int8_conv") == 1, facts
    np.testing.assert_array_equal(_run(executable, x), want)
    assert len(np.unique(want)) > 5


@needs_vnni
def test_quantized_zoo_resnet_runs_every_integer_conv_on_vnni_and_matches_onnxruntime(tmp_path):
    model = canonical_zoo("resnet-basic")
    ctx, held_out = calib_context()
    layers = QDQInsert().run(model, ctx).stats["quantized_layers"]
    manifest = compile_model(model, HOST, tmp_path / "art", isolate=False)
    assert manifest.build["int8_lowered"] == layers
    schedules = manifest.build["slimcc_schedules"]
    assert schedules.get("int8_conv", 0) + schedules.get("int8_amx", 0) == layers, manifest.build
    assert (schedules.get("int8_amx", 0) >= 1) == HOST_AMX  # its 3x3 convs with >= 512 MACs per output
    assert manifest.build["unscheduled_kernels"] == []
    artifact, bound = load_artifact(tmp_path / "art"), _one_step_bound(model)
    for feeds in held_out:
        got, want = artifact.run(feeds)["y"], run_onnxruntime(model, feeds)["y"]
        assert np.abs(got - want).max() <= bound  # one step at most, at rounding ties of float Q/DQ
        assert got.argmax() == want.argmax()


@needs_vnni
def test_cropped_output_channels_write_nothing_past_the_output():
    # F = 20 computes 32 padded channels per tile; the requantize must write only the 20 that exist
    # (an earlier schedule wrote all 32 past the output: right results, a corrupted heap)
    tvm = ensure_tvm()
    from tvm import relax

    from slimcc.targets.build import backend_pipeline
    from slimcc.targets.relax_values import constant_array, static_shape
    from slimcc.targets.schedules.apply import schedule_kernel
    from slimcc.targets.schedules.isa import cpu_vector_for

    model, x, want = _layer("cout-20-dilated-clip")
    target = HOST.to_tvm()
    mod = prepare_for_build(to_relax(model), target)
    passes = backend_pipeline(target)
    with target:
        mod = tvm.transform.Sequential(list(passes.library_dispatch_passes(target))
                                       + list(passes.legalize_passes(target))[:5])(mod)
    calls = []
    relax.analysis.post_order_visit(mod["main"], lambda e: calls.append(e) if isinstance(e, relax.Call)
                                    and e.op.name == "relax.call_tir" else None)
    [call] = calls
    scheduled, rule = schedule_kernel(mod[call.args[0]], cpu_vector_for(target))
    assert rule == "int8_conv"
    kernel = tvm.compile(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}), target=target).jit()
    inputs = [tvm.runtime.tensor(x)] + [tvm.runtime.tensor(constant_array(a)) for a in call.args[1].fields[1:]]
    canary = np.full(2 * want.size, 0xA5, np.uint8)
    arena = tvm.runtime.tensor(canary)
    out = arena._create_view(static_shape(call), "uint8")
    kernel["main"](*inputs, out)
    np.testing.assert_array_equal(out.numpy(), want)
    assert (arena.numpy()[want.size:] == 0xA5).all()


@pytest.mark.skipif(not HOST_AMX, reason="this CPU has no AMX-INT8")
def test_amx_tile_loops_use_the_thread_pool_only_on_several_cores():
    """59 M MACs: parallel channel-block tasks at 2 cores, one thread at 1 (a 1-thread build must not
    start the runtime's pool)."""
    model, x, want = _layer("3x3-64-at-40x40")
    for cores, parallel in ((1, False), (2, True)):
        executable, facts = _build(model, make_target("x86", num_cores=cores))
        assert facts["slimcc_schedules"].get("int8_amx") == 1, facts
        assert ("TVMBackendParallelLaunch" in assembly(executable)) == parallel
        np.testing.assert_array_equal(_run(executable, x), want)


def test_float_depthwise_sums_only_where_every_partial_sum_is_exact():
    from slimcc.targets.schedules.int8_pack import FLOAT_DEPTHWISE_TAPS, float_exact_taps

    assert float_exact_taps(514) and not float_exact_taps(515)  # 514 * 255 * 128 < 2^24 <= 515 * 255 * 128
    assert float_exact_taps(FLOAT_DEPTHWISE_TAPS) and float_exact_taps(49)
