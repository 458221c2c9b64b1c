"""Concat/Split/MaxPool/nearest Resize between one-scale Q/DQ run on the 8-bit tensors
(targets/int8_movement.py), bit-exact with onnxruntime running the QDQ model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimcc.ir.model import load_model
from slimcc.ir.verify import run_onnxruntime
from slimcc.targets.build import compile_pipeline
from slimcc.targets.relax_import import prepare_for_build, to_relax
from slimcc.targets.target import make_target
from slimcc.targets.tvm_import import ensure_tvm

CHANNELS = 32


def _movement_model(second_scale: float, conv: bool = False):
    """Q -> Split -> (Q/DQ) -> Concat (parts swapped) -> MaxPool -> nearest Resize, every Q/DQ at one
    scale except the Concat's second input, at `second_scale`; with `conv`, an int8 1x1 conv first
    (whose VNNI form writes NCHW16c: targets/int8_blocked.py then carries the layout through)."""
    rng = np.random.default_rng(4)
    inits = {"s": np.float32(0.05), "z": np.uint8(7), "s2": np.float32(second_scale),
             "split": np.array([16, 16], np.int64), "scales": np.array([1, 1, 2, 2], np.float32),
             "w": rng.integers(-127, 128, (CHANNELS, CHANNELS, 1, 1)).astype(np.int8),
             "ws": np.full(CHANNELS, 0.0004, np.float32), "wz": np.zeros(CHANNELS, np.int8)}
    first = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["x0"]),
             helper.make_node("Conv", ["x0", "wd"], ["xc"]),
             helper.make_node("QuantizeLinear", ["xc", "s", "z"], ["xq2"]),
             helper.make_node("DequantizeLinear", ["xq2", "s", "z"], ["xd"])] if conv else \
        [helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             *first,
             helper.make_node("Split", ["xd", "split"], ["a", "b"], axis=1),
             helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"]),
             helper.make_node("QuantizeLinear", ["b", "s2", "z"], ["bq"]),
             helper.make_node("DequantizeLinear", ["aq", "s", "z"], ["ad"]),
             helper.make_node("DequantizeLinear", ["bq", "s2", "z"], ["bd"]),
             helper.make_node("Concat", ["bd", "ad"], ["c"], axis=1),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"]),
             helper.make_node("MaxPool", ["cd"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("QuantizeLinear", ["p", "s", "z"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["pd"]),
             helper.make_node("Resize", ["pd", "", "scales"], ["r"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "movement",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return load_model(onnx.shape_inference.infer_shapes(model))


@pytest.mark.parametrize("second_scale,conv", [(0.05, False), (0.07, False), (0.05, True)])
def test_data_movement_runs_in_eight_bits_when_the_scales_agree(second_scale, conv):
    tvm = ensure_tvm()
    from tvm import relax

    model = _movement_model(second_scale, conv)
    target = make_target("x86", num_cores=1).to_tvm()
    facts: dict = {}
    mod = prepare_for_build(to_relax(model), target, facts)
    script = mod["main"].script(show_meta=False)
    executable = tvm.compile(mod, target=target, relax_pipeline=compile_pipeline(target, None, facts))
    x = np.random.default_rng(3).uniform(-1, 12, (1, CHANNELS, 10, 10)).astype(np.float32)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    want = run_onnxruntime(model, {"x": x})["y"]
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 50
    if conv and facts["slimcc_schedules"].get("int8_conv"):  # VNNI: blocked from the conv to the output
        assert 'R.Tensor((1, 2, 10, 10, 16), dtype="uint8") = R.concat(' in script
        assert 'R.Tensor((1, 2, 10, 10, 16), dtype="uint8") = R.image.resize2d(' in script
        assert script.count("R.layout_transform(") + script.count("slimcc_byte_transpose") == 2
    elif second_scale == 0.05:  # one scale everywhere: only the input's quantize is left
        assert script.count("R.quantize(") == 1 and "R.dequantize(" not in script
        assert 'R.concat(' in script and 'dtype="uint8") = R.nn.max_pool2d(' in script
    else:  # the concat mixes scales: it stays float, the split part with its own scale too
        assert 'dtype="float32") = R.concat(' in script
        assert 'dtype="uint8") = R.nn.max_pool2d(' in script
