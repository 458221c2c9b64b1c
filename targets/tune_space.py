"""MetaSchedule design spaces built from slimcc's own CPU schedules.

A kernel that one of slimcc's rules takes is tuned in that rule's space only: the same loop
structure, with its register-tile sizes as sampled decisions that start at slimcc's defaults
(`isa.split_tile`). The search then explores tile sizes around a schedule that is already fast,
instead of MetaSchedule's generic space, which reached about half of slimcc's speed in the
trials a 2-core machine affords. Kernels no rule takes keep MetaSchedule's own space.
"""

from __future__ import annotations

from dataclasses import replace

from slimcc.targets.schedules.apply import apply_first_rule
from slimcc.targets.schedules.isa import CpuVector
from slimcc.targets.tvm_import import ensure_tvm


def takes_kernel(workload_mod, vector: CpuVector) -> bool:
    """Whether one of slimcc's rules schedules this task's kernel."""
    ensure_tvm()
    from tvm import s_tir

    return apply_first_rule(lambda: s_tir.Schedule(workload_mod), vector)[0] is not None


def slimcc_space(vector: CpuVector):
    """A MetaSchedule space generator: slimcc's schedule of the kernel with tunable tile sizes."""
    ensure_tvm()
    from tvm.s_tir import meta_schedule as ms

    tunable = replace(vector, tunable=True)

    def design_space(sch):
        scheduled, _rule = apply_first_rule(sch.copy, tunable)
        return [] if scheduled is None else [scheduled]

    return ms.space_generator.ScheduleFn(design_space, sch_rules=[], postprocs=[], mutator_probs="llvm")


def tune_contexts(tasks, work_dir: str, vector: CpuVector | None, strategy, num_threads, seed: int):
    """One TuneContext per task: slimcc's space where a slimcc rule takes the kernel, MetaSchedule's
    post-order-apply space elsewhere (and everywhere when `vector` is None)."""
    ensure_tvm()
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
    from tvm.s_tir.meta_schedule.utils import fork_seed

    contexts, weights = [], []
    loggers = get_loggers_from_work_dir(work_dir, [t.task_name for t in tasks])
    for task, logger, rand_state in zip(tasks, loggers, fork_seed(seed, n=len(tasks))):
        workload = task.dispatched[0]
        ours = vector is not None and takes_kernel(workload, vector)
        contexts.append(ms.TuneContext(mod=workload, target=task.target,
                                       space_generator=slimcc_space(vector) if ours else "post-order-apply",
                                       search_strategy=strategy, task_name=task.task_name, logger=logger,
                                       rand_state=rand_state, num_threads=num_threads).clone())
        weights.append(task.weight)
    return contexts, weights
