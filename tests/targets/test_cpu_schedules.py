"""slimcc's CPU schedules (targets/schedules): every layer form they take is scheduled by slimcc's
rule for it, not left to TVM's naive loops, and still matches onnxruntime."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from slimcc.ir.model import load_model
from slimcc.targets.compiler import compile_model, prepare_model
from slimcc.targets.runner import load_artifact
from slimcc.targets.schedules.elementwise import reads_follow_output
from slimcc.targets.schedules.isa import CpuVector, cpu_vector_for
from slimcc.targets.target import make_target

from targets_helpers import assert_matches_onnxruntime, feeds_for, scheduled_kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ir"))
from ir_builders import make_proto  # noqa: E402


def _layer_model(op: str, x_shape, weight_shape=None, **attrs):
    """x -> op(x, W, b) -> y, with seeded W and b when `weight_shape` is given."""
    rng = np.random.default_rng(3)
    inits, inputs = {}, ["x"]
    if weight_shape is not None:
        inits["w"] = rng.standard_normal(weight_shape).astype(np.float32) * 0.3
        bias_len = weight_shape[1] * attrs.get("group", 1) if op == "ConvTranspose" else weight_shape[0]
        inits["b"] = rng.standard_normal(bias_len).astype(np.float32)
        inputs += ["w", "b"]
    node = helper.make_node(op, inputs, ["y"], **attrs)
    proto = make_proto([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return prepare_model(load_model(proto))


CONV_CASES = {
    # name: (x shape, weight shape, attrs, slimcc rule that must take the conv)
    "3x3": ((1, 16, 20, 20), (32, 16, 3, 3), {"pads": [1, 1, 1, 1]}, "conv"),
    "1x1-half-vector": ((1, 16, 14, 14), (24, 16, 1, 1), {}, "conv"),
    "1x1-plane-vectors": ((1, 24, 8, 12), (40, 24, 1, 1), {}, "pointwise"),
    "1x1-three-output-channels": ((1, 8, 8, 8), (3, 8, 1, 1), {}, "pointwise"),
    "1x1-strided": ((1, 16, 16, 17), (24, 16, 1, 1), {"strides": [2, 2]}, "pointwise"),
    "1x1-blocked": ((1, 16, 8, 12), (32, 16, 1, 1), {}, "conv"),
    "winograd-4x4-tiles": ((1, 32, 8, 12), (48, 32, 3, 3), {"pads": [1, 1, 1, 1]}, "winograd"),
    "winograd-2x2-tiles": ((1, 64, 6, 10), (64, 64, 3, 3), {"pads": [1, 1, 1, 1]}, "winograd"),
    "winograd-asymmetric-pad": ((1, 32, 9, 9), (32, 32, 3, 3), {"pads": [0, 0, 1, 1]}, "winograd"),
    "winograd-odd-plane-stays-direct": ((1, 32, 7, 7), (32, 32, 3, 3), {"pads": [1, 1, 1, 1]}, "conv"),
    "3x3-strided-blocked": ((1, 32, 15, 15), (32, 32, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, "conv"),
    "strided-asymmetric-pad": ((1, 8, 17, 17), (16, 8, 3, 3), {"strides": [2, 2], "pads": [0, 1, 1, 0]}, "conv"),
    "dilated": ((1, 8, 16, 16), (16, 8, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, "conv"),
    "grouped": ((1, 16, 12, 12), (32, 4, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}, "conv"),
    "grouped-1x1-odd-group": ((1, 34, 8, 8), (68, 17, 1, 1), {"group": 2}, "pointwise"),
    "grouped-1x1-shuffle-widths": ((1, 40, 8, 8), (24, 10, 1, 1), {"group": 4}, "pointwise"),
    "depthwise-wide-rows": ((1, 8, 6, 40), (8, 1, 3, 3), {"group": 8, "pads": [1, 1, 1, 1]}, "depthwise"),
    "depthwise-narrow": ((1, 24, 15, 15), (24, 1, 3, 3), {"group": 24, "pads": [1, 1, 1, 1]}, "depthwise_channels"),
    "depthwise-strided-asymmetric-pad": ((1, 32, 17, 17), (32, 1, 3, 3), {"group": 32, "strides": [2, 2],
                                                                          "pads": [0, 1, 1, 0]}, "depthwise_channels"),
    "depthwise-multiplier-strided": ((1, 8, 16, 16), (16, 1, 5, 5), {"group": 8, "strides": [2, 2],
                                                                     "pads": [2, 2, 2, 2]}, "depthwise"),
    "three-output-channels": ((1, 8, 16, 16), (3, 8, 3, 3), {"pads": [1, 1, 1, 1]}, "conv"),
    "single-input-channel": ((1, 1, 16, 16), (8, 1, 3, 3), {}, "depthwise"),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_forms_take_slimcc_schedules_and_match_onnxruntime(case, x86, tmp_path):
    x_shape, w_shape, attrs, rule = CONV_CASES[case]
    model = _layer_model("Conv", x_shape, w_shape, **attrs)
    manifest = compile_model(model, x86, tmp_path / "art", isolate=False)
    assert manifest.build["slimcc_schedules"].get(rule) == 1, manifest.build
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)


def test_winograd_runs_parallel_on_four_cores(tmp_path):
    """A four-core build parallelizes every Winograd stage (TVM refuses a parallel loop around an
    already decomposed reduction, which once sent the kernel to the naive fallback)."""
    model = _layer_model("Conv", (1, 32, 16, 16), (32, 32, 3, 3), pads=[1, 1, 1, 1])
    manifest = compile_model(model, make_target("x86", num_cores=4), tmp_path / "art", isolate=False)
    assert manifest.build["slimcc_schedules"].get("winograd") == 1, manifest.build
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)


@pytest.mark.parametrize("attrs", [{"strides": [2, 2]},
                                   {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}],
                         ids=["k2s2", "k3s2-output-padding"])
def test_conv_transpose_runs_as_packed_direct_conv(attrs, x86, tmp_path):
    kernel = 2 if "pads" not in attrs else 3
    model = _layer_model("ConvTranspose", (1, 16, 9, 9), (16, 8, kernel, kernel), **attrs)
    manifest = compile_model(model, x86, tmp_path / "art", isolate=False)
    assert manifest.build["slimcc_schedules"].get("conv") == 1, manifest.build
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)


@pytest.mark.parametrize("op,attrs", [("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
                                      ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
                                      ("Sigmoid", {}), ("Tanh", {}), ("Exp", {}),
                                      ("Softmax", {"axis": 1}), ("GlobalAveragePool", {})])
def test_pooling_and_elementwise_match_onnxruntime(op, attrs, x86, tmp_path):
    model = _layer_model(op, (1, 16, 16, 32), **attrs)
    manifest = compile_model(model, x86, tmp_path / "art", isolate=False)
    assert not manifest.build["unscheduled_kernels"], manifest.build
    if op == "GlobalAveragePool":  # slimcc's plane sum, not dlight's reduction rule
        assert manifest.build["slimcc_schedules"] == {"elementwise": 1}, manifest.build
    feeds = {"x": feeds_for(model)["x"] * 8.0}  # reaches the saturated ends of sigmoid/tanh
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)


def test_conv_with_a_runtime_weight_keeps_tvms_conv(x86, tmp_path):
    """A weight that is a graph input cannot be packed at compile time: TVM's own conv runs it."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    proto = make_proto([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8]),
                                helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 4, 3, 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = prepare_model(load_model(proto))
    manifest = compile_model(model, x86, tmp_path / "art", isolate=False)
    assert "conv" not in manifest.build["slimcc_schedules"]
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)


def test_vector_facts_follow_the_target():
    avx512 = cpu_vector_for(make_target("x86", mcpu="skylake-avx512", num_cores=2).to_tvm())
    avx2 = cpu_vector_for(make_target("x86", mcpu="haswell").to_tvm())
    neon = cpu_vector_for(make_target("arm", num_cores=4).to_tvm())
    assert (avx512.lanes, avx512.registers, avx512.cores) == (16, 32, 2)
    assert (avx2.lanes, avx2.registers) == (8, 16)
    assert (neon.name, neon.lanes, neon.cores) == ("neon", 4, 4)
    assert cpu_vector_for(make_target("cuda", cuda_arch="sm_80").to_tvm()) is None


@pytest.mark.parametrize("extent,expected", [(64, 16), (24, 8), (36, 4), (3, 1)])
def test_vector_width_is_the_widest_that_divides(extent, expected):
    assert CpuVector("avx512", 16, 32, 1).vector_width_dividing(extent) == expected


def test_batch_one_gemm_runs_as_packed_matmul(x86, tmp_path):
    model = _layer_model("Gemm", (1, 96), (40, 96), transB=1)
    manifest = compile_model(model, x86, tmp_path / "art", isolate=False)
    assert manifest.build["slimcc_schedules"].get("matmul") == 1, manifest.build
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)


def test_channel_shuffle_kernel_is_scheduled_and_matches_onnxruntime(x86, tmp_path):
    """Reshape -> Transpose -> Reshape (ShuffleNet's channel shuffle) fuses into one data-moving kernel."""
    shapes = {"shape5": np.array([1, 2, 8, 6, 20], np.int64), "shape4": np.array([1, 16, 6, 20], np.int64)}
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "shape5"], ["g"]),
             helper.make_node("Transpose", ["g"], ["t"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t", "shape4"], ["y"])]
    proto = make_proto(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 6, 20])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 20])], shapes)
    model = prepare_model(load_model(proto))
    manifest = compile_model(model, x86, tmp_path / "art", isolate=False)
    assert not manifest.build["unscheduled_kernels"] and manifest.build["slimcc_schedules"].get("elementwise"), manifest.build
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)


def test_only_element_wise_reads_count_as_following_the_output():
    from tvm import s_tir, te

    x = te.placeholder((2, 3, 8), name="x")
    bias = te.placeholder((3, 1), name="bias")
    added = te.compute((2, 3, 8), lambda a, b, c: x[a, b, c] + bias[b, 0], name="added")
    moved = te.compute((3, 2, 8), lambda a, b, c: x[b, a, c], name="moved")
    for out, expected in ((added, True), (moved, False)):
        sch = s_tir.Schedule(te.create_prim_func([x, bias, out] if out is added else [x, out]))
        assert reads_follow_output(sch, sch.get_sblock(out.op.name)) is expected


@pytest.mark.parametrize("x_shape,w_shape", [((2, 7, 1, 24), (2, 1, 24, 40)), ((3, 5, 24), (24, 40)), ((6, 24), (24, 12))],
                         ids=["per-direction-weights", "tokens", "rows"])
def test_matmul_with_a_constant_weight_runs_as_packed_gemm(x_shape, w_shape, x86, tmp_path):
    """MatMul on [*batch, M, K] x constant [*wbatch, K, N] (an LSTM's input projection for both
    directions, a transformer's projection over tokens) runs slimcc's GEMM, with its bias fused."""
    rng = np.random.default_rng(5)
    inits = {"w": rng.standard_normal(w_shape).astype(np.float32), "b": rng.standard_normal(w_shape[-1]).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    out_shape = [max(a, b) for a, b in zip(x_shape[:-2], ([1] * (len(x_shape) - len(w_shape)) + list(w_shape))[:-2])]
    proto = make_proto(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape + [x_shape[-2], w_shape[-1]])], inits)
    model = prepare_model(load_model(proto))
    manifest = compile_model(model, x86, tmp_path / "art", isolate=False)
    assert manifest.build["slimcc_schedules"].get("matmul") == 1 and not manifest.build["unscheduled_kernels"], manifest.build
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)


def test_division_by_a_constant_becomes_a_reciprocal_multiply():
    """x / 6 (HardSwish's) becomes x * (1/6) within a rounding; a zero divisor is left alone."""
    tvm = pytest.importorskip("tvm")
    from tvm import relax

    from slimcc.targets.schedules.fast_math import use_reciprocal_multiply

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 8, 8), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            by_six = builder.emit(relax.op.divide(x, relax.const(np.float32(6.0))))
            by_zero = builder.emit(relax.op.divide(by_six, relax.const(np.array([1, 0, 2, 4], np.float32)
                                                                      .reshape(1, 4, 1, 1))))
            out = builder.emit_output(by_zero)
        builder.emit_func_output(out)
    rewritten = use_reciprocal_multiply(builder.get())
    text = rewritten["main"].script()
    assert text.count("R.multiply") == 1 and text.count("R.divide") == 1, text
    values = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        expected = values / np.float32(6.0) / np.array([1, 0, 2, 4], np.float32).reshape(1, 4, 1, 1)
    executable = tvm.compile(rewritten, target="llvm")
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(values)).numpy()
    finite = np.isfinite(expected)
    assert np.array_equal(np.isfinite(got), finite)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=2e-7)


def test_blocked_1x1_conv_unrolls_four_input_channels_per_step(x86):
    """A 1x1 conv on channel vectors reduces 4 input channels per unrolled step (POINTWISE_UNROLL);
    a 3x3 one keeps its reduction loop rolled."""
    for kernel, unrolled in (((32, 16, 1, 1), True), ((32, 16, 3, 3), False)):
        model = _layer_model("Conv", (1, 16, 8, 12), kernel, pads=[kernel[2] // 2] * 4)
        scripts = [script for rule, script in scheduled_kernels(model, x86).values() if rule == "conv"]
        assert len(scripts) == 1
        assert ("T.unroll(T.int64(4))" in scripts[0]) == unrolled, scripts[0]


def test_softmax_over_channels_vectorizes_across_its_contiguous_trailing_axes(x86, tmp_path):
    """A softmax over axis 1 of [1, 16, 4, 20] (YOLOv8n's DFL shape, smaller): 20 takes only 4-lane
    vectors, the 4 x 20 contiguous row takes 16 lanes in the max, the sum and the division."""
    model = _layer_model("Softmax", (1, 16, 4, 20), axis=1)
    scripts = [script for _, script in scheduled_kernels(model, x86).values()]
    assert len(scripts) == 1
    assert scripts[0].count("T.vectorized(T.int64(16))") >= 3, scripts[0]
    manifest = compile_model(model, x86, tmp_path / "art", isolate=False)
    assert not manifest.build["unscheduled_kernels"]
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)
