"""Per-layer onnxruntime kernel times: every profiled kernel is traced back to the layer it belongs to."""

from __future__ import annotations

from quant_helpers import calib_context, canonical_zoo

from slimcc.passes.quant.layer_times import OTHER, kernel_owner, layer_times
from slimcc.passes.quant.qdq_insert import QDQInsert


def test_onnxruntime_kernel_names_trace_back_to_their_layer():
    model = canonical_zoo("resnet-basic")
    ctx, _ = calib_context(count=2)
    QDQInsert().run(model, ctx)
    convs = [n for n in model.graph.nodes if n.op == "Conv"]
    owner = kernel_owner(model.graph, {n.name for n in convs})
    first = convs[1]
    # onnxruntime's names: a converted node keeps ours with a suffix, a fused one takes its output tensor's
    assert owner(f"{first.name}_token_7") == first.name
    assert owner(f"{first.outputs[0].name}_nchwc") == first.name
    quantize = next(n for n in model.graph.nodes if n.op == "QuantizeLinear" and n.inputs[0].name
                    not in {t.name for t in model.graph.inputs})
    assert owner(quantize.name) != OTHER
    assert owner("ReorderOutput_token_3") == OTHER


def test_layer_times_cover_every_layer_of_both_models():
    fp32 = canonical_zoo("resnet-basic")
    ctx, feeds = calib_context(count=2)
    int8 = fp32.copy()
    QDQInsert().run(int8, ctx)
    layers = QDQInsert().candidates(fp32.graph)
    times = layer_times({"fp32": fp32, "int8": int8}, layers, feeds[0], runs=3)
    assert set(times) == {*layers, OTHER}
    for name in layers:
        assert times[name]["fp32"] > 0 and times[name]["int8"] > 0, name
    # most of the int8 model's time is in its layers, not unattributed kernels
    total = sum(t["int8"] for t in times.values())
    assert times[OTHER]["int8"] < 0.5 * total
