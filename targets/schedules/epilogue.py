"""What surrounds the main block of a fused kernel: its padding producer and its element-wise epilogue."""

from __future__ import annotations

from slimcc.targets.schedules.isa import loop_volume, parallel_pays
from slimcc.targets.tvm_import import ensure_tvm


def find_block(sch, prefix: str):
    """The first block whose name starts with `prefix` (FuseTIR may add a suffix), or None."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint.startswith(prefix):
            return block
    return None


def inline_epilogue(sch, main) -> list:
    """Inline every block after `main` into its consumer; returns the blocks that remain after `main`.

    A fused conv kernel is conv -> bias add -> (residual add) -> activation; inlining the
    intermediates leaves one block that reads the conv result once.
    """
    ensure_tvm()
    from tvm.s_tir.schedule import ScheduleError

    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    names = [sch.get(b).name_hint for b in blocks]
    start = names.index(sch.get(main).name_hint) + 1
    for block in blocks[start:-1]:
        try:
            sch.compute_inline(block)
        except ScheduleError:
            pass  # not element-wise (e.g. a reshape): it stays a loop of its own
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    names = [sch.get(b).name_hint for b in blocks]
    return blocks[names.index(sch.get(main).name_hint) + 1:]


def attach_epilogue(sch, cache, tail: list, loop) -> bool:
    """Fold the epilogue into the cache write-back `cache` and run it under `loop` (per output tile).

    Returns False (leaving the epilogue as separate loops) when it cannot be fused, e.g. when it
    is not element-wise in the conv output.
    """
    ensure_tvm()
    from tvm.s_tir.schedule import ScheduleError

    try:
        for block in tail:
            sch.reverse_compute_inline(block)
    except ScheduleError:
        pass
    try:
        sch.reverse_compute_at(cache, loop, preserve_unit_loops=True)
    except ScheduleError:
        return False
    return True


def schedule_pad(sch, vector) -> None:
    """The padding copy (a producer kept at the root): a zero fill plus a condition-free, vectorized copy.

    `decompose_padding` splits the if_then_else copy in two; as one loop with the condition
    inside, it cost as much as the depthwise conv it feeds.
    """
    from slimcc.targets.schedules.pack_weights import PAD_BLOCK

    pad = find_block(sch, PAD_BLOCK)
    if pad is None:
        return
    loops = sch.get_loops(pad)
    work = loop_volume(sch, pad)
    outer = sch.fuse(*loops[:-2])
    if parallel_pays(vector, work, int(sch.get(outer).extent)):
        sch.parallel(outer)
    copy = split_padding(sch, pad, sch.get_loops(pad)[-2], vector)
    if copy is not None:
        vectorize_innermost(sch, copy)
    vectorize_innermost(sch, pad)


def split_padding(sch, pad, loop, vector):
    """`decompose_padding(pad, loop)`: the copy block, or None where the pad stays one loop.

    It stays one loop (with its condition) when there is no padding to split off (a strided
    subsample copy), and in tuning spaces: TVM 0.27 cannot print a DecomposePadding instruction
    as Python, and MetaSchedule prints every design space.
    """
    ensure_tvm()
    from tvm.s_tir.schedule import ScheduleError

    if vector.tunable:
        return None
    try:
        return sch.decompose_padding(pad, loop)
    except ScheduleError:
        return None


def vectorize_innermost(sch, block) -> None:
    """Vectorize `block`'s innermost loop when TVM can (contiguous element-wise write-back)."""
    ensure_tvm()
    from tvm.s_tir.schedule import ScheduleError

    try:
        sch.vectorize(sch.get_loops(block)[-1])
    except ScheduleError:
        pass


def finish_tile(sch, main, cache, tail: list, tile_loop, vector_loop, unrolled: list, outer: list, reduction,
                vector) -> None:
    """The steps every register-tiled kernel ends with, once its loops are split and ordered.

    The epilogue is folded into the write-back under `tile_loop`, `vector_loop` vectorized,
    `unrolled` unrolled, the `outer` loops fused (and parallel on several cores when the kernel
    is large enough), the accumulator init hoisted out of the loop `reduction`, and the padding
    producer scheduled.
    """
    work = loop_volume(sch, main)
    if attach_epilogue(sch, cache, tail, tile_loop):
        vectorize_innermost(sch, cache)
    if int(sch.get(vector_loop).extent) > 1:
        sch.vectorize(vector_loop)
    for loop in unrolled:
        sch.unroll(loop)
    fused = sch.fuse(*outer)
    if parallel_pays(vector, work, int(sch.get(fused).extent)):
        sch.parallel(fused)
    sch.decompose_reduction(main, reduction)
    schedule_pad(sch, vector)
