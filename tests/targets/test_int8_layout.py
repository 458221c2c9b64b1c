"""A float conv in NCHW16c feeding an int8 layer quantizes before the layout transform
(targets/int8_layout.py): the quantize joins the float conv's kernel, results unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimcc.ir.model import load_model
from slimcc.targets.relax_import import prepare_for_build, to_relax
from slimcc.targets.target import make_target

CHANNELS = 16  # one NCHW16c block: the float conv takes the blocked layout


def _float_conv_then_int8_conv():
    """x -> Conv (float, 16 -> 16) -> Q -> DQ -> Conv (int8 weights) -> Q: a float stem before an int8 layer."""
    rng = np.random.default_rng(7)
    inits = {"wf": rng.standard_normal((CHANNELS, CHANNELS, 3, 3)).astype(np.float32) * 0.1,
             "qs": np.float32(0.02), "qz": np.uint8(128),
             "w": rng.integers(-127, 128, (CHANNELS, CHANNELS, 1, 1)).astype(np.int8),
             "ws": np.full(CHANNELS, 0.004, np.float32), "wz": np.zeros(CHANNELS, np.int8),
             "ys": np.float32(0.05), "yz": np.uint8(120)}
    nodes = [helper.make_node("Conv", ["x", "wf"], ["f"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["f", "qs", "qz"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "qs", "qz"], ["qd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["qd", "wd"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return load_model(onnx.shape_inference.infer_shapes(model))


def test_quantize_moves_before_the_layout_transform_and_joins_the_float_conv(monkeypatch):
    pytest.importorskip("tvm")
    import slimcc.targets.schedules.int8_pack as int8_pack
    from slimcc.targets.build import compile_pipeline
    from slimcc.targets.tvm_import import ensure_tvm

    tvm = ensure_tvm()
    from tvm import relax

    model, target = _float_conv_then_int8_conv(), make_target("x86", num_cores=1).to_tvm()
    x = np.random.default_rng(1).standard_normal((1, CHANNELS, 12, 12)).astype(np.float32)

    def build():
        facts: dict = {}
        mod = prepare_for_build(to_relax(model), target, facts)
        script = mod["main"].script(show_meta=False)
        executable = tvm.compile(mod, target=target, relax_pipeline=compile_pipeline(target, None, facts))
        out = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        return out, facts["kernels"], script

    moved, moved_kernels, script = build()
    assert f'R.Tensor((1, 1, 12, 12, {CHANNELS}), dtype="uint8") = R.quantize(' in script  # quantized while blocked
    # the model's input and output only (the 8-bit one as slimcc's byte transpose kernel)
    assert script.count("R.layout_transform(") + script.count("slimcc_byte_transpose") == 2
    import slimcc.targets.int8_blocked as int8_blocked

    monkeypatch.setattr(int8_pack, "quantize_on_byte_side", lambda mod: mod)
    monkeypatch.setattr(int8_blocked, "_sink_elementwise", lambda call, producer: None)  # it would move it too
    kept, kept_kernels, script = build()
    assert f'R.Tensor((1, {CHANNELS}, 12, 12), dtype="uint8") = R.quantize(' in script
    # the quantize runs in the float conv's kernel, and the VNNI conv then reads the blocked bytes in
    # place (targets/int8_blocked.py): no transform kernel is left between the two convs
    assert moved_kernels <= kept_kernels - 1
    np.testing.assert_array_equal(moved, kept)
    assert len(np.unique(moved)) > 20
