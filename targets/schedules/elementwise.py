"""Element-wise, injective and pooling kernels on CPUs: one flat vectorized loop per output.

Chains of element-wise blocks are inlined into the block that writes the function's output;
the output loop is flattened, split into vectors of the target's width and run in parallel
over the rest. Pooling (a spatial reduction over a small window) keeps its window loops
outside a vector along the output row.
"""

from __future__ import annotations

import math

from slimcc.targets.schedules.isa import CpuVector, loop_volume, parallel_pays
from slimcc.targets.tvm_import import ensure_tvm

MAX_POOL_WINDOW = 64  # larger NCHW reductions (global pooling, matmul) need the plane-sum or dlight rules


def root_blocks(sch) -> list:
    """The blocks directly under the function's root block, in program order."""
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def is_reduction(sch, block) -> bool:
    """Whether `block` has a reduction iterator."""
    tvm = ensure_tvm()

    return any(iv.iter_type == tvm.tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def inline_producers(sch) -> None:
    """Inline every non-reduction block that is not a function output into its consumers."""
    ensure_tvm()
    from tvm.s_tir.schedule import ScheduleError

    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
    for block in root_blocks(sch):
        if sch.get(block).name_hint in outputs or is_reduction(sch, block):
            continue
        try:
            sch.compute_inline(block)
        except ScheduleError:
            pass


def schedule_flat(sch, block, vector: CpuVector) -> None:
    """Vectorize `block` and parallelize its outer loops.

    An element-wise block (every input read at the output's own index, or broadcast) is one
    flat loop split into vectors. A block that moves data (concat, reshape, transpose: a
    channel shuffle) reads at indices computed with div/mod of the output index; there the
    vector runs along the innermost output axis only, where those indices stay contiguous.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    total = loop_volume(sch, block)
    loops = fuse_contiguous_rows(sch, block, loops, vector)
    row_width = vector.vector_width_dividing(int(sch.get(loops[-1]).extent))
    if len(loops) > 1 and not reads_follow_output(sch, block) and row_width >= min(4, vector.lanes):
        outer, inner = sch.split(loops[-1], [None, row_width])
        sch.vectorize(inner)
        outer = sch.fuse(*loops[:-1], outer)
    else:
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        width = vector.vector_width_dividing(total)
        outer = fused
        if width > 1:
            outer, inner = sch.split(fused, [None, width])
            sch.vectorize(inner)
    if parallel_pays(vector, total, int(sch.get(outer).extent)):
        sch.parallel(outer)


def fuse_contiguous_rows(sch, block, loops: list, vector: CpuVector) -> list:
    """Fuse the innermost of `loops` (the block's spatial loops, one per iterator) with the loops
    outside it while every buffer the block touches is indexed there by those same iterators, in
    order, at its last axes: the fused row is then contiguous everywhere, and wider than the
    innermost axis alone where that axis takes no whole vector. Returns the loops after fusing.

    YOLOv8n's DFL softmax over [1, 16, 4, 2100] took 4-lane vectors along the 2100 axis; fused
    with the 4 it takes 16 lanes over 8400 (int8 YOLOv8n: 289 -> 102 us).
    """
    stmt = sch.get(block)
    spatial = [iv.var for iv in stmt.iter_vars][:len(loops)]
    width = vector.vector_width_dividing(int(sch.get(loops[-1]).extent))
    if width == vector.lanes or len(loops) != len(spatial) or len(loops) < 2:
        return loops
    regions = [[r.min for r in region.region] for region in list(stmt.reads) + list(stmt.writes)]
    count = 1
    while count < len(loops) and all(_trailing_are(indices, spatial[-count - 1:]) or not _uses(indices, spatial[-count - 1:])
                                     for indices in regions):
        count += 1
    if count == 1:
        return loops
    extent = math.prod(int(sch.get(loop).extent) for loop in loops[-count:])
    if vector.vector_width_dividing(extent) <= width:
        return loops
    return [*loops[:-count], sch.fuse(*loops[-count:])]


def _trailing_are(indices: list, variables: list) -> bool:
    return len(indices) >= len(variables) and all(i.same_as(v) for i, v in zip(indices[-len(variables):], variables))


def _uses(indices: list, variables: list) -> bool:
    tvm = ensure_tvm()

    return any(used.same_as(v) for index in indices for used in tvm.tirx.analysis.undefined_vars(index)
               for v in variables)


def reads_follow_output(sch, block) -> bool:
    """Whether every read of `block` indexes its buffer by the block's own iterators (right-aligned)
    or broadcasts (a constant index), as an element-wise op does."""
    stmt = sch.get(block)
    iter_vars = [iv.var for iv in stmt.iter_vars]
    for region in stmt.reads:
        indices = [r.min for r in region.region]
        for axis, index in enumerate(indices):
            own = iter_vars[len(iter_vars) - len(indices) + axis] if len(indices) <= len(iter_vars) else None
            if not (index.same_as(own) or _is_constant(index)):
                return False
    return True


def _is_constant(expr) -> bool:
    tvm = ensure_tvm()

    return isinstance(expr, tvm.tirx.IntImm)


def schedule_pool(sch, block, vector: CpuVector) -> bool:
    """A windowed spatial reduction (max/avg pool): window loops outside a vector along the output row.

    Needs the loop nest as TE made it: one loop per iterator, spatial ones first. Returns False
    (nothing changed) otherwise.
    """
    tvm = ensure_tvm()

    loops = sch.get_loops(block)
    kinds = [iv.iter_type == tvm.tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars]
    count = kinds.index(True) if True in kinds else len(kinds)
    if len(loops) != len(kinds) or any(not k for k in kinds[count:]) or count < 2 or count == len(kinds):
        return False
    spatial, window = loops[:count], loops[count:]
    spatial = fuse_contiguous_rows(sch, block, spatial, vector)
    window_size = 1
    for loop in window:
        window_size *= int(sch.get(loop).extent)
    row = spatial[-1]
    width = vector.vector_width_dividing(int(sch.get(row).extent))
    if window_size > MAX_POOL_WINDOW and width < vector.lanes // 2:
        return False  # a long reduction needs whole vectors: global pooling of NCHW{fi}c channel blocks
    xo, xi = sch.split(row, [None, width])
    sch.reorder(*spatial[:-1], xo, *window, xi)
    work = loop_volume(sch, block)
    outer = sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0]
    if width > 1:
        sch.vectorize(xi)
    if parallel_pays(vector, work, int(sch.get(outer).extent)):
        sch.parallel(outer)
    sch.decompose_reduction(block, window[0])
    return True


def schedule_plane_sum(sch, block, vector: CpuVector) -> bool:
    """A sum over whole trailing axes (global average pooling): vector partial sums, then a short sum.

    The reduced axes are fused and split into vectors (`rfactor`), so each output reads its plane
    as contiguous vectors into one register; the consumers (the divide of a mean) run per output.
    Returns False (nothing changed) when the reduction is not over contiguous trailing axes, or
    its size is not a multiple of a quarter vector.
    """
    tvm = ensure_tvm()

    stmt = sch.get(block)
    kinds = [iv.iter_type == tvm.tirx.IterVar.CommReduce for iv in stmt.iter_vars]
    loops = sch.get_loops(block)
    count = kinds.index(True) if True in kinds else len(kinds)
    if len(loops) != len(kinds) or count == len(kinds) or not all(kinds[count:]) or len(stmt.reads) != 1:
        return False
    reduced = [iv.var for iv in stmt.iter_vars[count:]]
    trailing = [r.min for r in stmt.reads[0].region][-len(reduced):]
    if not all(index.same_as(var) for index, var in zip(trailing, reduced)):
        return False
    size = 1
    for loop in loops[count:]:
        size *= int(sch.get(loop).extent)
    width = vector.vector_width_dividing(size)
    if size <= MAX_POOL_WINDOW or width < max(2, vector.lanes // 4):
        return False
    outer = sch.fuse(*loops[:count]) if count > 1 else loops[0]
    plane = sch.fuse(*loops[count:]) if len(loops) - count > 1 else loops[count]
    _, lanes = sch.split(plane, [None, width])
    partial = sch.rfactor(lanes, factor_axis=0)
    sch.compute_at(partial, outer)
    for consumer in sch.get_consumers(block):
        sch.reverse_compute_at(consumer, outer)
    partial_loops = sch.get_loops(partial)
    # under `outer`, compute_at made one loop per remaining iterator in the rfactor block's order:
    # the lanes (factor_axis=0, spatial) and then the vector steps (the reduction)
    below = [i for i, loop in enumerate(partial_loops) if sch.get(loop).same_as(sch.get(outer))][0] + 1
    lane_loop, steps = [loop for loop in partial_loops[below:] if int(sch.get(loop).extent) > 1]
    if (int(sch.get(lane_loop).extent), int(sch.get(steps).extent)) != (width, size // width):
        return False
    sch.reorder(steps, lane_loop)
    sch.vectorize(lane_loop)
    sch.set_scope(partial, 0, "local")
    if parallel_pays(vector, size * int(sch.get(outer).extent), int(sch.get(outer).extent)):
        sch.parallel(outer)
    sch.decompose_reduction(partial, steps)
    return True
