"""qdq-align-channels: a quantized conv's 3 input channels padded to 4, bit-exact on onnxruntime."""

from __future__ import annotations

import numpy as np
from quant_helpers import calib_context, canonical_zoo, optimized_op_types

from slimcc.ir.verify import run_onnxruntime
from slimcc.passes.pattern import constant_value
from slimcc.passes.quant.align_channels import QDQAlignChannels
from slimcc.passes.quant.qdq_cancel import QDQCancel
from slimcc.passes.quant.qdq_insert import QDQInsert
from slimcc.passes.quant.qdq_propagate import QDQPropagate


def _quantized_resnet(width: int = 16):
    model = canonical_zoo("resnet-basic", size=32, width=width)
    ctx, held_out = calib_context()
    for step in (QDQInsert(min_reduction=16), QDQPropagate(), QDQCancel()):  # 3x3x3 stem: reduction 27
        step.run(model, ctx)
    return model, held_out


def _stem_weight(model) -> np.ndarray:
    conv = next(n for n in model.graph.nodes if n.op == "Conv")
    return constant_value(conv.inputs[1].inputs[0].inputs[0])


def test_stem_conv_gets_four_channels_and_identical_outputs():
    model, held_out = _quantized_resnet()
    before = model.copy()
    assert _stem_weight(before).shape[1] == 3
    result = QDQAlignChannels().run(model)
    assert result.modified and result.stats["applied"] == {"pad-input-channels": 1}
    weight = _stem_weight(model)
    assert weight.shape[1] == 4 and weight.dtype == np.int8
    np.testing.assert_array_equal(weight[:, :3], _stem_weight(before))
    assert not weight[:, 3].any()
    pad = next(n for n in model.graph.nodes if n.op == "Pad")
    assert pad.inputs[0].dtype == np.uint8  # pads the integer tensor, not the float input
    for feeds in held_out:
        want, got = run_onnxruntime(before, feeds), run_onnxruntime(model, feeds)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    ran = optimized_op_types(model)
    assert "Conv" not in ran and ran.count("QLinearConv") == optimized_op_types(before).count("QLinearConv")
    assert not QDQAlignChannels().run(model).modified  # already aligned: nothing left to do


def test_refuses_when_the_fast_kernel_cannot_apply_anyway():
    model, _ = _quantized_resnet(width=12)  # 12 output channels: below the kernel's 16
    result = QDQAlignChannels().run(model)
    assert not result.modified
    assert "output channels rule out the symmetric kernel anyway" in result.stats["rejected"]["pad-input-channels"]
    float_model = canonical_zoo("resnet-basic", size=32, width=16)
    assert not QDQAlignChannels().run(float_model).modified  # float convs are left alone
