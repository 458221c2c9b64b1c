"""DQ -> element-wise float activation -> Q chains become 256-entry lookup tables (targets/int8_tables.py)."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimcc.ir.model import load_model
from slimcc.targets.compiler import compile_model
from slimcc.targets.int8_tables import lower_tables
from slimcc.targets.int8 import lower_int8
from slimcc.targets.relax_import import prepare_for_build, to_relax
from slimcc.targets.runner import load_artifact
from slimcc.targets.schedules.byte_lookup import VBMI_FEATURE
from slimcc.targets.target import make_target
from targets_helpers import assembly

ACTIVATIONS = ("HardSwish", "HardSigmoid", "Sigmoid", "SiLU")
CHANNELS = 2
NO_VBMI_CPU = "cascadelake"  # AVX-512 and VNNI without VBMI: the lookup stays a gather fused into the conv


def _activation(name: str) -> list:
    """ONNX nodes computing `name` from "cd" into "act"."""
    if name == "MulInput":  # not an activation: a product with the dequantized model input
        return [helper.make_node("Mul", ["cd", "xd"], ["act"])]
    if name == "SiLU":
        return [helper.make_node("Sigmoid", ["cd"], ["sig"]), helper.make_node("Mul", ["cd", "sig"], ["act"])]
    if name == "ChannelScaledHardSwish":  # what equalize-activation-ranges leaves: Mul(s) -> HardSwish -> Mul(1/t)
        return [helper.make_node("Mul", ["cd", "chs"], ["scaled"]), helper.make_node("HardSwish", ["scaled"], ["hs"]),
                helper.make_node("Mul", ["hs", "cht"], ["act"])]
    return [helper.make_node(name, ["cd"], ["act"])]


def _conv_then(activation: str, code: str = "uint8", hw: int = 16, channels: int = CHANNELS):
    """x -> DQ -> Conv 1x1 (int8 weights, int32 bias) -> Q -> DQ -> activation -> Q: an int8 conv and its activation.

    The conv's channels are x and -x (weights +-127 at scale 1/127, same input and output
    quantization), so its integer and float forms agree exactly and an input holding every code
    gives the activation every code: the two builds can differ only in the activation.
    """
    elem = TensorProto.UINT8 if code == "uint8" else TensorProto.INT8
    x_s, x_z = np.float32(0.05), np.array(128 if code == "uint8" else 0, code)
    w_q = np.resize(np.array([127, -127], np.int8), channels).reshape(channels, 1, 1, 1)
    w_s = np.full(channels, 1 / 127, np.float32)
    a_s, a_z = np.float32(0.031), np.array(11 if code == "uint8" else -3, code)
    inits = {"xs": x_s, "xz": x_z, "w": w_q, "ws": w_s, "wz": np.zeros(channels, np.int8),
             "b": np.zeros(channels, np.int32), "bs": (x_s * w_s).astype(np.float32),
             "bz": np.zeros(channels, np.int32), "cs": x_s, "cz": x_z, "as": a_s, "az": a_z}
    if activation == "ChannelScaledHardSwish":
        inits["chs"] = np.linspace(0.5, 3.0, channels, dtype=np.float32).reshape(channels, 1, 1)
        inits["cht"] = np.linspace(1.5, 0.25, channels, dtype=np.float32).reshape(channels, 1, 1)
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["conv"]),
             helper.make_node("QuantizeLinear", ["conv", "cs", "cz"], ["c"]),
             helper.make_node("DequantizeLinear", ["c", "cs", "cz"], ["cd"]),
             *_activation(activation),
             helper.make_node("QuantizeLinear", ["act", "as", "az"], ["y"])]
    graph = helper.make_graph(nodes, activation, [helper.make_tensor_value_info("x", elem, [1, 1, hw, hw])],
                              [helper.make_tensor_value_info("y", elem, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return load_model(onnx.shape_inference.infer_shapes(model))


def _every_code(code: str, hw: int = 16) -> np.ndarray:
    """A [1, 1, hw, hw] input holding each of the 256 codes at least once, in random order."""
    rng = np.random.default_rng(5)
    values = np.concatenate([np.arange(256), rng.integers(0, 256, hw * hw - 256)])
    values = rng.permutation(values) - (128 if code == "int8" else 0)
    return values.astype(code).reshape(1, 1, hw, hw)


def _real_and_fake(model, x, target) -> tuple[dict, dict, dict]:
    """({mode: output}, {mode: build facts}, {mode: executable}) of the real-int8 and fake-quantized
    builds of `model` on `x`."""
    tvm = pytest.importorskip("tvm")
    from tvm import relax

    from slimcc.targets.build import compile_pipeline

    outputs, facts, executables = {}, {}, {}
    for mode in ("real", "fake"):
        facts[mode] = {}
        mod = prepare_for_build(to_relax(model), target, facts[mode], int8_mode=mode)
        executables[mode] = tvm.compile(mod, target=target,
                                        relax_pipeline=compile_pipeline(target, None, facts[mode]))
        outputs[mode] = relax.VirtualMachine(executables[mode], tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    return outputs, facts, executables


def _float_qdq_calls(mod) -> int:
    """How many R.quantize/R.dequantize calls the module's Relax functions still make."""
    script = mod.script(show_meta=False)
    return script.count("R.quantize(") + script.count("R.dequantize(")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_after_int8_conv_is_a_table_bit_identical_to_fake(activation, tmp_path):
    model = _conv_then(activation)
    x = _every_code("uint8")
    real = compile_model(model, make_target("x86"), tmp_path / "real", isolate=False)
    fake = compile_model(model, make_target("x86"), tmp_path / "fake", isolate=False, int8_mode="fake")
    assert real.build["int8_tables"] == 1 and "int8_tables" not in fake.build
    got = load_artifact(tmp_path / "real").run({"x": x})["y"]
    want = load_artifact(tmp_path / "fake").run({"x": x})["y"]
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 30  # the activation's output is not a handful of saturated levels


def test_every_input_code_matches_fake_for_s8_tensors_too():
    """Channel 0 of the conv repeats the input, so the table is read at every s8 code (index + 128)."""
    tvm = pytest.importorskip("tvm")
    from tvm import relax

    model = _conv_then("HardSwish", code="int8")
    x = _every_code("int8")
    target = make_target("x86").to_tvm()
    from slimcc.targets.build import compile_pipeline

    outputs = {}
    for mode in ("real", "fake"):
        facts: dict = {}
        mod = prepare_for_build(to_relax(model), target, facts, int8_mode=mode)
        vm = relax.VirtualMachine(tvm.compile(mod, target=target, relax_pipeline=compile_pipeline(target)), tvm.cpu())
        outputs[mode] = vm["main"](tvm.runtime.tensor(x)).numpy()
        assert facts.get("int8_tables", 0) == (1 if mode == "real" else 0)
    assert outputs["real"].dtype == np.int8
    np.testing.assert_array_equal(outputs["real"], outputs["fake"])
    assert set(np.unique(outputs["real"][0, 0])) == set(np.unique(outputs["fake"][0, 0]))
    assert len(np.unique(outputs["real"][0, 0])) > 30


@pytest.mark.parametrize("channels", [2, 32])  # a cropped channel block; whole blocks, epilogue folded per tile
@pytest.mark.parametrize("activation", ["HardSwish", "SiLU"])
def test_the_lookup_runs_in_the_conv_kernel_and_stays_bit_identical(activation, channels, monkeypatch):
    pytest.importorskip("tvm")
    import slimcc.targets.int8_tables as tables
    from slimcc.targets.build import compile_pipeline
    from slimcc.targets.tvm_import import ensure_tvm

    tvm = ensure_tvm()
    from tvm import relax

    model, x = _conv_then(activation, channels=channels), _every_code("uint8")
    target = make_target("x86", mcpu=NO_VBMI_CPU, num_cores=1).to_tvm()  # VBMI would keep it apart

    def build(mode: str):
        facts: dict = {}
        mod = prepare_for_build(to_relax(model), target, facts, int8_mode=mode)
        executable = tvm.compile(mod, target=target, relax_pipeline=compile_pipeline(target, None, facts))
        return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy(), facts["kernels"]

    fused, fused_kernels = build("real")
    fake, _ = build("fake")
    monkeypatch.setattr(tables, "mark_lookups_elementwise",
                        lambda: tvm.transform.module_pass(lambda mod, _ctx: mod, opt_level=0, name="Unmarked"))
    apart, apart_kernels = build("real")
    assert (fused_kernels, apart_kernels) == (1, 2)  # TVM's own pattern analysis leaves the lookup a kernel
    np.testing.assert_array_equal(fused, fake)
    np.testing.assert_array_equal(apart, fake)
    assert len(np.unique(fused)) > 30


@pytest.mark.parametrize("channels", [2, 32])
@pytest.mark.parametrize("activation", ["HardSwish", "SiLU"])
def test_with_vbmi_the_lookup_is_a_permute_kernel_of_its_own_and_stays_bit_identical(activation, channels):
    pytest.importorskip("tvm")
    from slimcc.targets.schedules.isa import target_has_feature

    target = make_target("x86", num_cores=1).to_tvm()
    if not target_has_feature(target, VBMI_FEATURE):
        pytest.skip("this CPU has no AVX512-VBMI")
    model, x = _conv_then(activation, channels=channels), _every_code("uint8")
    outputs, facts, executables = _real_and_fake(model, x, target)
    assert facts["real"]["kernels"] == 2 and facts["real"]["int8_tables"] == 1
    # LLVM picks the form that overwrites a free register
    assert re.search(r"vperm[it]2b", assembly(executables["real"]))
    np.testing.assert_array_equal(outputs["real"], outputs["fake"])
    assert len(np.unique(outputs["real"])) > 30


@pytest.mark.parametrize(("in_dtype", "out_dtype"), [("uint8", "uint8"), ("int8", "uint8"), ("uint8", "int8"),
                                                     ("int8", "int8")])
@pytest.mark.parametrize("shape", [(1, 16, 9, 16), (1, 3, 7, 7), (2, 100)])  # whole 64s, a tail only, both
def test_the_permute_lookup_maps_every_code_like_numpy(in_dtype, out_dtype, shape):
    pytest.importorskip("tvm")
    from slimcc.targets.schedules.byte_lookup import vector_lookup_func
    from slimcc.targets.schedules.isa import target_has_feature
    from slimcc.targets.tvm_import import ensure_tvm

    tvm = ensure_tvm()
    target = make_target("x86", num_cores=1).to_tvm()
    if not target_has_feature(target, VBMI_FEATURE):
        pytest.skip("this CPU has no AVX512-VBMI")
    info_in, info_out = np.iinfo(in_dtype), np.iinfo(out_dtype)
    rng = np.random.default_rng(0)
    x = rng.integers(info_in.min, info_in.max + 1, shape).astype(in_dtype)
    x.flat[:256] = np.arange(256).astype(in_dtype)[: x.size]  # every code where the tensor is large enough
    table = rng.integers(info_out.min, info_out.max + 1, 256).astype(out_dtype)
    func = vector_lookup_func(shape, in_dtype, out_dtype).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    out = tvm.runtime.tensor(np.zeros(shape, out_dtype))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(table), out)
    np.testing.assert_array_equal(out.numpy(), table[x.astype(np.int32) + (128 if in_dtype == "int8" else 0)])


@pytest.mark.parametrize("activation", ["HardSwish", "SiLU"])
def test_the_float_chain_is_gone_from_the_module(activation):
    lowered = lower_int8(to_relax(_conv_then(activation)))
    assert _float_qdq_calls(lowered) == 2  # DQ(requantized conv) and the activation's Q
    tabled, replaced = lower_tables(lowered)
    assert replaced == 1
    script = tabled.script(show_meta=False)
    assert _float_qdq_calls(tabled) == 0 and "qtable" in script
    assert "R.multiply" not in script and "R.sigmoid" not in script and "R.clip" not in script


def test_a_chain_reading_a_second_tensor_stays_float():
    """Q(DQ(conv) * DQ(x)) depends on two tensors: no table, the float chain stays."""
    lowered = lower_int8(to_relax(_conv_then("MulInput")))
    tabled, replaced = lower_tables(lowered)
    assert replaced == 0
    assert _float_qdq_calls(tabled) == _float_qdq_calls(lowered) > 0


@pytest.mark.parametrize("channels", [2, 32])  # NCHW; whole blocks (the lookup reads NCHW between byte transposes)
def test_per_channel_chains_are_channel_tables_bit_identical_to_fake(channels):
    pytest.importorskip("tvm")
    model = _conv_then("ChannelScaledHardSwish", channels=channels)
    tabled, replaced = lower_tables(lower_int8(to_relax(model)))
    assert replaced == 1 and _float_qdq_calls(tabled) == 0 and "R.multiply" not in tabled.script(show_meta=False)
    outputs, _, _ = _real_and_fake(model, _every_code("uint8"), make_target("x86").to_tvm())
    np.testing.assert_array_equal(outputs["real"], outputs["fake"])
    if channels > 2:  # channels 0 and 2 hold the same values but differ in scale: one table per channel
        assert not np.array_equal(outputs["real"][0, 0], outputs["real"][0, 2])
    assert len(np.unique(outputs["real"])) > 30


@pytest.mark.parametrize(("in_dtype", "shape"), [("uint8", (1, 3, 9, 16)), ("int8", (2, 2, 7, 7)), ("uint8", (1, 4, 5, 5))])
def test_the_per_channel_permute_lookup_maps_every_code_like_numpy(in_dtype, shape):
    pytest.importorskip("tvm")
    from slimcc.targets.schedules.byte_lookup import vector_channel_lookup_func
    from slimcc.targets.schedules.isa import target_has_feature
    from slimcc.targets.tvm_import import ensure_tvm

    tvm = ensure_tvm()
    target = make_target("x86", num_cores=1).to_tvm()
    if not target_has_feature(target, VBMI_FEATURE):
        pytest.skip("this CPU has no AVX512-VBMI")
    rng = np.random.default_rng(1)
    info = np.iinfo(in_dtype)
    x = rng.integers(info.min, info.max + 1, shape).astype(in_dtype)
    table = rng.integers(0, 256, (shape[1], 256)).astype("uint8")
    func = vector_channel_lookup_func(shape, in_dtype, "uint8").with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    out = tvm.runtime.tensor(np.zeros(shape, "uint8"))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(table), out)
    codes = x.astype(np.int32) + (128 if in_dtype == "int8" else 0)
    want = np.take_along_axis(table[None, :, :].repeat(shape[0], 0), codes.reshape(shape[0], shape[1], -1), axis=2)
    np.testing.assert_array_equal(out.numpy(), want.reshape(shape))
