"""Property: for random graphs assembled from zoo-like blocks and random masks, pruned == masked."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prune_helpers import GraphBuilder, check_mask_equivalence

from slimcc.ir.model import load_model

BLOCKS = ("cbr", "residual", "depthwise", "concat", "split", "shuffle", "se", "silu", "grouped")


def _block(b: GraphBuilder, kind: str, x: str, c: int) -> tuple[str, int]:
    if kind == "cbr":
        return b.op("Relu", [b.bn(b.conv(x, c, c + 2), c + 2)])[0], c + 2
    if kind == "residual":
        y = b.bn(b.conv(b.op("Relu", [b.conv(x, c, c)])[0], c, c), c)
        return b.op("Relu", [b.op("Add", [x, y])[0]])[0], c
    if kind == "depthwise":
        return b.conv(b.conv(b.conv(x, c, 2 * c, k=1), 2 * c, 2 * c, group=2 * c), 2 * c, c, k=1), c
    if kind == "concat":
        return b.op("Concat", [b.conv(x, c, 3), b.conv(x, c, 5, k=1)], axis=1)[0], 8
    if kind == "split":
        y = b.conv(x, c, 6, k=1)
        s1, s2 = b.op("Split", [y, b.const(np.array([2, 4], np.int64))], n_out=2, axis=1)
        return b.op("Concat", [s1, b.conv(s2, 4, 4)], axis=1)[0], 6
    if kind == "shuffle":
        y = b.conv(x, c, 8, k=1)
        r = b.op("Reshape", [y, b.const(np.array([1, 2, 4, 8, 8], np.int64))])[0]
        t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])[0]
        return b.op("Reshape", [t, b.const(np.array([1, 8, 8, 8], np.int64))])[0], 8
    if kind == "se":
        g = b.op("GlobalAveragePool", [x])[0]
        gate = b.op("Sigmoid", [b.conv(b.op("Relu", [b.conv(g, c, 2, k=1)])[0], 2, c, k=1)])[0]
        return b.op("Mul", [x, gate])[0], c
    if kind == "silu":
        y = b.conv(x, c, c + 1)
        return b.op("Mul", [y, b.op("Sigmoid", [y])[0]])[0], c + 1
    y = b.conv(x, c, 8, k=1)  # grouped
    return b.conv(y, 8, 8, group=4), 8


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=4), seed=st.integers(0, 10_000))
def test_random_graph_random_mask(blocks, seed):
    b = GraphBuilder(c=4, hw=8, seed=seed)
    x, c = b.conv("x", 4, 4), 4
    for kind in blocks:
        x, c = _block(b, kind, x, c)
    y = b.conv(x, c, 3, k=1)
    check_mask_equivalence(load_model(b.model(y)), seed=seed)
