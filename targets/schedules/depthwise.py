"""Depthwise conv (`slimcc_dwconv`) on CPUs: vectors along the output row, a few rows per tile.

Each output channel reads one input channel, so there is no channel reuse to block for; the
kernel is memory-bound. Vectors run along x (contiguous input loads, the weight a broadcast),
rows are register-blocked so each loaded input row feeds up to KH output rows.
"""

from __future__ import annotations

from slimcc.targets.schedules.epilogue import (attach_epilogue, find_block, inline_epilogue, schedule_pad,
                                               vectorize_innermost)
from slimcc.targets.schedules.isa import CpuVector
from slimcc.targets.schedules.pack_weights import DWCONV_BLOCK


def largest_divisor(extent: int, limit: int) -> int:
    """The largest divisor of `extent` that is <= `limit` (at least 1)."""
    return max(d for d in range(1, max(1, min(limit, extent)) + 1) if extent % d == 0)


def schedule_depthwise(sch, vector: CpuVector) -> bool:
    """Schedule the `slimcc_dwconv` kernel in `sch`; False when the function has none."""
    conv = find_block(sch, DWCONV_BLOCK)
    if conv is None:
        return False
    _, _, out_height, out_width = [int(d) for d in sch.get(conv).writes[0].source.shape]
    width = vector.vector_width_dividing(out_width)
    vectors = largest_divisor(out_width // width, 4)
    rows = largest_divisor(out_height, max(1, min(4, vector.accumulators // vectors)))

    tail = inline_epilogue(sch, conv)
    n, f, y, x, ry, rx = sch.get_loops(conv)
    yo, yi = sch.split(y, [None, rows])
    xo, xv, xl = sch.split(x, [None, vectors, width])
    sch.reorder(n, f, yo, xo, ry, rx, yi, xv, xl)
    cache = sch.cache_write(conv, 0, "local")
    if attach_epilogue(sch, cache, tail, xo):
        vectorize_innermost(sch, cache)
    if width > 1:
        sch.vectorize(xl)
    sch.unroll(xv)
    sch.unroll(yi)
    sch.unroll(rx)
    outer = sch.fuse(n, f, yo)
    if vector.cores > 1:
        sch.parallel(outer)
    sch.decompose_reduction(conv, ry)
    schedule_pad(sch, vector)
    return True
