"""NCHW <-> NCHW{fi}c conversions (where blocked_layout meets an op that stays NCHW) on CPUs.

TVM legalizes `R.layout_transform` as a loop over the input that writes the output at div/mod
indices; vectorized as a flat loop, every lane computes its own address and the kernel costs
about as much as the conv next to it. Here the loop runs over (N, C/fi, H, W/wi) tiles of
fi channels x wi columns, the tile fully unrolled (the NCHW side of it, fi rows of wi
contiguous pixels, the inner loop when writing NCHW), and LLVM turns the tile into register
shuffles. Measured on ShuffleNet's 64x56x56 conversion, one thread: NCHW -> NCHW16c 0.026 ms
and back 0.025 ms, against 0.052 / 0.061 ms as flat vector loops over the output and 0.26 ms
as the legalized loop was scheduled before.
"""

from __future__ import annotations

from slimcc.targets.schedules.elementwise import root_blocks
from slimcc.targets.schedules.isa import CpuVector, largest_divisor, loop_volume, parallel_pays

TILE_COLUMNS = 8  # columns per tile: 8 measured faster than 14 or 16 in both directions


def schedule_layout_transform(sch, vector: CpuVector) -> bool:
    """Schedule a kernel that only converts one tensor between NCHW and NCHW{fi}c; False otherwise."""
    blocks = root_blocks(sch)
    if len(blocks) != 1:
        return False
    block = blocks[0]
    facts = sch.get(block)
    if len(facts.reads) != 1 or len(facts.writes) != 1:
        return False
    source = [int(d) for d in facts.reads[0].source.shape]
    target = [int(d) for d in facts.writes[0].source.shape]
    blocking = len(source) == 4 and len(target) == 5 and target[1] * target[4] == source[1]
    if not blocking and not (len(source) == 5 and len(target) == 4 and source[1] * source[4] == target[1]):
        return False
    fi = target[4] if blocking else source[4]
    if len(sch.get_loops(block)) == 4:  # iterating over the NCHW side (TVM legalizes it over the input)
        sch.transform_block_layout(block, lambda n, c, h, w: (n, c // fi, h, w, c % fi))
    if len(sch.get_loops(block)) != 5:
        return False
    n, blocks_loop, h, w, lane = sch.get_loops(block)
    columns = largest_divisor(int(sch.get(w).extent), TILE_COLUMNS)
    wo, wi = sch.split(w, [None, columns])
    sch.reorder(n, blocks_loop, h, wo, *((wi, lane) if blocking else (lane, wi)))
    sch.unroll(wi)
    sch.unroll(lane)
    outer = sch.fuse(n, blocks_loop, h, wo)
    if parallel_pays(vector, loop_volume(sch, block), int(sch.get(outer).extent)):
        sch.parallel(outer)
    return True
