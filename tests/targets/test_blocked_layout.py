"""Network-wide NCHW{fi}c activations (targets/schedules/blocked_layout.py): which convs take the
blocked layout, that it is carried between them without conversions, that the graph rewrites it
needs keep the values, and that the conversions left over run slimcc's tiled kernel."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from slimcc.ir.model import load_model
from slimcc.targets.compiler import compile_model, prepare_model
from slimcc.targets.runner import load_artifact

from targets_helpers import assert_matches_onnxruntime, feeds_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ir"))
from ir_builders import make_proto  # noqa: E402


def _conv_call(in_channels: int, out_channels: int, groups: int = 1, dtype: str = "float32"):
    from tvm import relax

    x = relax.Var("x", relax.TensorType((1, in_channels, 8, 8), dtype))
    weight = relax.const(np.zeros((out_channels, in_channels // groups, 3, 3), dtype))
    return relax.op.nn.conv2d(x, weight, padding=[1, 1, 1, 1], groups=groups)


@pytest.mark.parametrize("in_channels,out_channels,groups,expected", [
    (32, 64, 1, ("NCHW16c", "OIHW16o", "NCHW16c")),
    (3, 32, 1, ("NCHW", "OIHW16o", "NCHW16c")),        # a stem reads NCHW, writes blocked
    (32, 24, 1, ("NCHW", "OIHW", "NCHW")),             # output channels not a multiple of 16
    (32, 32, 32, ("NCHW16c", "OIHW16o", "NCHW16c")),   # depthwise
    (32, 64, 8, ("NCHW", "OIHW", "NCHW")),             # 8 outputs per group: a vector would span groups
    (32, 64, 4, ("NCHW16c", "OIHW16o", "NCHW16c")),    # 16 outputs (8 inputs) per group
], ids=["regular", "stem", "odd-outputs", "depthwise", "grouped-narrow", "grouped-wide"])
def test_conv_layout_choice(in_channels, out_channels, groups, expected):
    from slimcc.targets.schedules.blocked_layout import conv_layouts

    assert conv_layouts(_conv_call(in_channels, out_channels, groups), 16) == expected


def test_integer_convs_keep_nchw():
    from slimcc.targets.schedules.blocked_layout import conv_layouts

    assert conv_layouts(_conv_call(32, 64, dtype="int8"), 16) == ("NCHW", "OIHW", "NCHW")


def _chain_model():
    """stem conv (3 -> 32) -> Clip(0, 6) -> 3x3 conv -> MaxPool -> depthwise -> Relu -> Split (16/16)
    -> the two halves added -> 1x1 conv (16 -> 32) -> Concat with an uneven split's parts."""
    rng = np.random.default_rng(4)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    inits = {"w0": weight(32, 3, 3, 3), "w1": weight(32, 32, 3, 3), "w2": weight(32, 1, 3, 3),
             "w3": weight(32, 16, 1, 1), "b3": weight(32), "low": np.array(0.0, np.float32),
             "high": np.array(6.0, np.float32), "halves": np.array([16, 16], np.int64),
             "uneven": np.array([8, 24], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c0", "low", "high"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=32),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Split", ["r2", "halves"], ["h0", "h1"], axis=1),
             helper.make_node("Add", ["h0", "h1"], ["s"]),
             helper.make_node("Conv", ["s", "w3", "b3"], ["c3"]),
             helper.make_node("Split", ["c3", "uneven"], ["u0", "u1"], axis=1),
             helper.make_node("Concat", ["u1", "u0", "c3"], ["y"], axis=1)]
    proto = make_proto(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 24])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return prepare_model(load_model(proto))


def test_blocked_chain_converts_only_at_its_ends_and_matches_onnxruntime(x86, tmp_path):
    """Clip, pooling, depthwise, an even channel split and Add stay NCHW16c between the convs; the
    uneven split converts (TVM would count its indices in blocks), and the values match."""
    model = _chain_model()
    manifest = compile_model(model, x86, tmp_path / "art", isolate=False)
    schedules = manifest.build["slimcc_schedules"]
    assert not manifest.build["unscheduled_kernels"], manifest.build
    # one conversion back to NCHW before the uneven split (its consumer, the concat, reads c3
    # there too); the stem writes blocked directly, so nothing converts at the input
    assert schedules.get("layout_transform") == 1, schedules
    # the 32 -> 32 3x3 conv on the 16x24 plane runs as Winograd F(4x4, 3x3), on blocked tensors too
    assert schedules.get("conv") == 2 and schedules.get("winograd") == 1, schedules
    assert schedules.get("depthwise_channels") == 1, schedules
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)


def test_global_pooling_of_channel_blocks_takes_slimcc_vectors(x86, tmp_path):
    """GlobalAveragePool after a blocked conv reduces NCHW16c planes: slimcc's pooling rule keeps the
    16 channels of a block in one vector (dlight's reduction rule, the fallback, ran 10x slower)."""
    rng = np.random.default_rng(5)
    inits = {"w": (rng.standard_normal((32, 16, 3, 3)) * 0.3).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["y"])]
    proto = make_proto(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 20, 24])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = prepare_model(load_model(proto))
    manifest = compile_model(model, x86, tmp_path / "art", isolate=False)
    schedules = manifest.build["slimcc_schedules"]
    assert schedules.get("conv") == 1 and schedules.get("elementwise") == 1, schedules
    assert not manifest.build["unscheduled_kernels"], manifest.build
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)


def test_layout_friendly_rewrites_keep_shapes():
    """Clip kernels become maximum/minimum with scalar bounds, an even channel split equal
    sections, an uneven one strided slices."""
    from tvm import relax

    from slimcc.targets.relax_values import static_shape
    from slimcc.targets.schedules.blocked_layout import layout_friendly

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 32, 4, 4), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            low = builder.emit(relax.op.maximum(x, relax.const(np.zeros([1, 1, 1, 1], np.float32))))
            even = builder.emit(relax.op.split(low, [16], axis=1))
            uneven = builder.emit(relax.op.split(low, [8], axis=1))
            out = builder.emit_output(relax.Tuple([relax.TupleGetItem(even, 1), relax.TupleGetItem(uneven, 0),
                                                   relax.TupleGetItem(uneven, 1)]))
        builder.emit_func_output(out)
    rewritten = layout_friendly(builder.get())["main"].script()
    assert "indices_or_sections=2" in rewritten and rewritten.count("R.strided_slice") == 2, rewritten
    assert "R.maximum(x, R.const(0.0" in rewritten, rewritten
    assert static_shape(x) == (1, 32, 4, 4)


@pytest.mark.parametrize("shape,to_blocked", [((1, 48, 7, 12), True), ((1, 32, 5, 9), False)],
                         ids=["to-NCHW16c", "to-NCHW"])
def test_layout_transform_kernel_is_exact(shape, to_blocked):
    """slimcc's tiled NCHW <-> NCHW16c kernel moves every element where TVM's layout_transform says."""
    import tvm
    from tvm import s_tir, te

    from slimcc.targets.schedules.isa import CpuVector
    from slimcc.targets.schedules.layout_transform import schedule_layout_transform
    from slimcc.targets.target import make_target

    n, c, h, w = shape
    if to_blocked:
        x = te.placeholder(shape, name="x")
        out = te.compute((n, c // 16, h, w, 16), lambda a, b, i, j, k: x[a, b * 16 + k, i, j], name="moved")
    else:
        x = te.placeholder((n, c // 16, h, w, 16), name="x")
        out = te.compute(shape, lambda a, b, i, j: x[a, b // 16, i, j, b % 16], name="moved")
    sch = s_tir.Schedule(te.create_prim_func([x, out]).with_attr("global_symbol", "main"))
    assert schedule_layout_transform(sch, CpuVector("avx512", 16, 32, 1))
    lib = tvm.compile(sch.mod, target=make_target("x86", num_cores=1).to_tvm())
    data = np.random.default_rng(0).standard_normal([int(d) for d in x.shape]).astype(np.float32)
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], np.float32))
    lib(tvm.runtime.tensor(data), result)
    expected = (data.reshape(n, c // 16, 16, h, w).transpose(0, 1, 3, 4, 2) if to_blocked
                else data.transpose(0, 1, 4, 2, 3).reshape(shape))
    np.testing.assert_array_equal(result.numpy(), expected)
