"""After fusion: give every kernel no tuning record covers one of slimcc's CPU schedules.

Rules are tried in order on each unscheduled PrimFunc (SLIMCC_RULES): AMX int8 conv, VNNI int8 conv, 1x1
conv, Winograd 3x3 conv, packed conv, packed matmul, depthwise conv, NCHW <-> NCHW{fi}c conversion, then
element-wise/pooling; what none of them
takes goes to TVM's dlight CPU rules (GEMV, reductions). A rule that fails leaves the kernel as it was (naive but correct), and the
build facts say how many kernels each path took.
"""

from __future__ import annotations

from slimcc.targets.schedules.amx_conv import schedule_amx_conv
from slimcc.targets.schedules.conv import schedule_conv, schedule_pointwise
from slimcc.targets.schedules.depthwise import schedule_channel_depthwise, schedule_depthwise
from slimcc.targets.schedules.elementwise import (inline_producers, is_reduction, root_blocks, schedule_flat,
                                                  schedule_plane_sum, schedule_pool)
from slimcc.targets.schedules.int8_conv import schedule_int8_conv
from slimcc.targets.schedules.isa import CpuVector, loop_volume
from slimcc.targets.schedules.layout_transform import schedule_layout_transform
from slimcc.targets.schedules.matmul import schedule_matmul
from slimcc.targets.schedules.winograd import schedule_winograd
from slimcc.targets.tvm_import import ensure_tvm

SCHEDULED_ATTR = "tirx.is_scheduled"
TINY_REDUCTION = 4096  # iterations; a reduction this small needs no vectors (a 2-class softmax)


def _elementwise(sch, vector: CpuVector) -> bool:
    """Element-wise / injective kernels, global pooling, and windowed reductions after an optional
    pad: pooling, or a softmax's max and sum over a short axis (each reduction its own vector loop)."""
    inline_producers(sch)
    blocks = root_blocks(sch)
    reductions = [b for b in blocks if is_reduction(sch, b)]
    if len(reductions) == 1 and schedule_plane_sum(sch, reductions[0], vector):
        return True
    for block in blocks:
        if not is_reduction(sch, block):
            schedule_flat(sch, block, vector)
    return all(schedule_pool(sch, reduction, vector) or loop_volume(sch, reduction) <= TINY_REDUCTION
               for reduction in reductions)  # a tiny reduction (a 2-class softmax) needs no vectors


# (name, rule) in the order they are tried; a rule returns False when the kernel is not its kind
SLIMCC_RULES = (("int8_amx", schedule_amx_conv), ("int8_conv", schedule_int8_conv), ("pointwise", schedule_pointwise), ("winograd", schedule_winograd),
                ("conv", schedule_conv),
                ("matmul", schedule_matmul), ("depthwise", schedule_depthwise),
                ("depthwise_channels", schedule_channel_depthwise), ("layout_transform", schedule_layout_transform),
                ("elementwise", _elementwise))


def schedule_kernel(func, vector: CpuVector):
    """(scheduled PrimFunc, rule name) for one kernel, or (None, None) when no slimcc rule applies."""
    sch, rule = slimcc_schedule(func, vector)
    if sch is None:
        return None, None
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True), rule


def slimcc_schedule(func, vector: CpuVector):
    """(Schedule with its trace, rule name) of the first slimcc rule that takes `func`, or (None, None).

    `func` is a PrimFunc or an IRModule holding it as "main"; the trace replays on the same
    kernel, which is how tuning commits slimcc's schedule as a measured record.
    """
    ensure_tvm()
    from tvm import s_tir

    return apply_first_rule(lambda: s_tir.Schedule(func), vector)


def apply_first_rule(fresh_schedule, vector: CpuVector):
    """(schedule, rule name) of the first rule in SLIMCC_RULES that takes the schedule
    `fresh_schedule()` returns (a new one per rule tried), or (None, None)."""
    for name, rule in SLIMCC_RULES:
        sch = fresh_schedule()
        try:
            if rule(sch, vector):
                return sch, name
        except Exception:  # ScheduleError, or the RuntimeError/ValueError tvm_ffi maps TVM errors to
            continue
    return None, None


def apply_cpu_schedules(mod, vector: CpuVector, facts: dict | None = None):
    """Schedule every unscheduled PrimFunc of `mod`; dlight's CPU rules take what slimcc's rules leave."""
    tvm = ensure_tvm()
    from tvm.s_tir import dlight

    counts: dict[str, int] = {}
    updates = {}
    for gvar, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or _is_scheduled(func):
            continue
        scheduled, rule = schedule_kernel(func, vector)
        if scheduled is not None:
            updates[gvar] = scheduled
            counts[rule] = counts.get(rule, 0) + 1
    for gvar, func in updates.items():
        mod[gvar] = func
    for gvar, func in _dlight_candidates(mod).items():
        with_dlight = dlight.ApplyDefaultSchedule(dlight.cpu.GEMV(), dlight.cpu.Reduction())(
            tvm.IRModule({gvar: func}))
        mod[gvar] = with_dlight[gvar]
    if facts is not None:
        facts["slimcc_schedules"] = counts
        facts["unscheduled_kernels"] = sorted(g.name_hint for g, f in mod.functions.items()
                                              if isinstance(f, tvm.tirx.PrimFunc) and not _is_scheduled(f))
    return mod


def _dlight_candidates(mod) -> dict:
    """Unscheduled kernels with a single reduction block (GEMV, global pooling, a lone sum).

    Multi-reduction kernels such as a softmax over a long axis are left out: dlight's CPU
    reduction rule recomputes the max and sum per output row there (measured 13x slower than
    the naive loops on YOLOv8n's DFL softmax).
    """
    tvm = ensure_tvm()
    from tvm import s_tir

    chosen = {}
    for gvar, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc) and not _is_scheduled(func):
            sch = s_tir.Schedule(func)
            if sum(1 for block in root_blocks(sch) if is_reduction(sch, block)) <= 1:
                chosen[gvar] = func
    return chosen


def _is_scheduled(func) -> bool:
    return func.attrs is not None and bool(func.attrs.get(SCHEDULED_ATTR, False))
