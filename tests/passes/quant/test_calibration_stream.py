"""Activation ranges from a stream of calibration batches: minmax holds one batch at a time, not all
batches at once (issue 20: qdq-insert's calibration memory grew with depth times batches)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from slimcc.passes.quant.calibrate import activation_ranges, tensor_range


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
