"""Element-wise, injective and pooling kernels on CPUs: one flat vectorized loop per output.

Chains of element-wise blocks are inlined into the block that writes the function's output;
the output loop is flattened, split into vectors of the target's width and run in parallel
over the rest. Pooling (a spatial reduction over a small window) keeps its window loops
outside a vector along the output row.
"""

from __future__ import annotations

from slimcc.targets.schedules.isa import CpuVector
from slimcc.targets.tvm_import import ensure_tvm

MIN_PARALLEL_ELEMENTS = 4096  # below this a thread pool launch costs more than the loop
MAX_POOL_WINDOW = 64  # larger reductions (global pooling, matmul) go to dlight's reduction rules


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
    """Flatten `block`'s loops, vectorize the inner `lanes` when they divide the extent, parallelize the rest."""
    loops = sch.get_loops(block)
    if not loops:
        return
    extents = [int(sch.get(loop).extent) for loop in loops]
    total = 1
    for extent in extents:
        total *= extent
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    width = vector.vector_width_dividing(total)
    if width > 1:
        outer, inner = sch.split(fused, [None, width])
        sch.vectorize(inner)
    else:
        outer = fused
    if vector.cores > 1 and total >= MIN_PARALLEL_ELEMENTS:
        sch.parallel(outer)


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
    window_size = 1
    for loop in window:
        window_size *= int(sch.get(loop).extent)
    if window_size > MAX_POOL_WINDOW:
        return False
    row = spatial[-1]
    width = vector.vector_width_dividing(int(sch.get(row).extent))
    xo, xi = sch.split(row, [None, width])
    sch.reorder(*spatial[:-1], xo, *window, xi)
    outer = sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0]
    if width > 1:
        sch.vectorize(xi)
    if vector.cores > 1:
        sch.parallel(outer)
    sch.decompose_reduction(block, window[0])
    return True
