"""Activation ranges from a stream of calibration batches: minmax holds one batch at a time, not all
batches at once (issue 20: qdq-insert's calibration memory grew with depth times batches)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from quant_helpers import calib_context, canonical_zoo

import slimcc.ir.calibration as calibration
from slimcc.ir.calibration import collect_activations
from slimcc.passes.quant.calibrate import activation_ranges, tensor_range
from slimcc.passes.quant.qdq_insert import QDQInsert


def _batches(count: int, refs: list, alive: list):
    """`count` batches of one tensor; before each, records whether the batch two before is still alive."""
    rng = np.random.default_rng(0)
    for i in range(count):
        gc.collect()
        if i >= 2:
            alive.append(refs[i - 2]() is not None)
        batch = {"t": rng.standard_normal(1000).astype(np.float32) * (i + 1)}
        refs.append(weakref.ref(batch["t"]))
        yield batch


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_activation_ranges_match_tensor_range_over_all_batches(method):
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(5000).astype(np.float32) * s + s for s in (0.5, 2.0, 1.0)]
    streamed = activation_ranges(({"t": a} for a in arrays), ["t"], method, percentile=99.0)
    assert streamed == {"t": tensor_range(arrays, method, percentile=99.0)}


def test_minmax_ranges_free_each_batch_before_the_next_but_one():
    alive: list[bool] = []
    ranges = activation_ranges(_batches(6, [], alive), ["t"], "minmax")
    assert len(alive) == 4 and not any(alive)
    assert ranges["t"][1] > 0 > ranges["t"][0]


def test_percentile_keeps_batches_it_needs():
    alive: list[bool] = []
    activation_ranges(_batches(4, [], alive), ["t"], "percentile")
    assert alive == [True, True]  # so the minmax check above would see a retained batch


def test_qdq_insert_reads_activations_one_batch_at_a_time(monkeypatch):
    model = canonical_zoo("resnet-basic")
    ctx, _ = calib_context(count=4)
    reference_model = model.copy()
    real = calibration.iter_activations
    inputs = {t.name for t in model.graph.inputs}  # graph inputs come from the calibration data itself
    seen: list[int] = []
    held: list[list[weakref.ref]] = []

    def watched(*args, **kwargs):
        for values in real(*args, **kwargs):
            gc.collect()
            if len(held) >= 2:
                assert all(r() is None for r in held[-2]), "an earlier batch's activations are still held"
            held.append([weakref.ref(v) for k, v in values.items() if k not in inputs])
            seen.append(len(values))
            yield values

    monkeypatch.setattr(calibration, "iter_activations", watched)
    QDQInsert(method="minmax").run(model, ctx)
    monkeypatch.undo()
    assert len(seen) == 4 and seen[0] > 5
    # the streamed ranges are the ones all batches together give
    names = [n.inputs[0].name for n in model.graph.nodes if n.op == "QuantizeLinear"
             and n.inputs[0].name in {t.name for t in reference_model.graph.tensors().values()}]
    values = collect_activations(reference_model, ctx.calibration, names[:3], progress=False)
    for name in names[:3]:
        lo, hi = tensor_range(values[name])
        q = next(n for n in model.graph.nodes if n.op == "QuantizeLinear" and n.inputs[0].name == name)
        scale = float(q.inputs[1].values)
        assert np.isclose(scale, (hi - lo) / 255.0, rtol=1e-5)
