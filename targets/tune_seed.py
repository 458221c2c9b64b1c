"""Seed a tuning database with slimcc's own schedules, measured like any other candidate.

MetaSchedule's search starts from random samples of its design space, which after a few dozen
trials reach about half the speed of slimcc's hand schedules. Committing slimcc's schedule of
each task as a measured record first means:
- a compile with the database picks the fastest record per kernel, so tuning can only replace
  slimcc's schedule with a faster one;
- the evolutionary search takes the database's best records into its first population.
"""

from __future__ import annotations

import os
import shutil

from slimcc.ir.model import first_line
from slimcc.targets.schedules.apply import slimcc_schedule
from slimcc.targets.schedules.isa import CpuVector
from slimcc.targets.tvm_import import ensure_tvm

SEARCHED_RECORDS = 1 << 16  # records of one workload looked through for an earlier seed


def seed_database(database, tasks, target, vector: CpuVector, builder, runner) -> tuple[dict[str, float], dict[str, str]]:
    """Build, time and commit slimcc's schedule of each task.

    Returns ({task name: mean seconds}, {task name: why its schedule could not be measured}).
    A task no slimcc rule takes, or whose schedule fails to build or run, is left to the search.
    """
    ensure_tvm()
    from tvm.s_tir import meta_schedule as ms

    scheduled, measured, failed = [], {}, {}
    for task in tasks:
        workload_mod = task.dispatched[0]
        sch, _rule = slimcc_schedule(workload_mod, vector)
        if sch is None:
            continue
        seconds = recorded_seconds(database, workload_mod, sch)
        if seconds is not None:  # seeded by an earlier run on this database: not measured again
            measured[task.task_name] = seconds
        else:
            scheduled.append((task, workload_mod, sch))
    if not scheduled:
        return measured, failed
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, _, sch in scheduled])
    for (task, workload_mod, sch), result in zip(scheduled, built):
        if result.error_msg:
            failed[task.task_name] = f"build: {first_line(result.error_msg)}"
            continue
        args_info = ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])
        try:
            run = runner.run([ms.runner.RunnerInput(result.artifact_path, "cpu", args_info)])[0].result()
        finally:
            shutil.rmtree(os.path.dirname(result.artifact_path), ignore_errors=True)
        if run.error_msg or not run.run_secs:
            failed[task.task_name] = f"run: {first_line(run.error_msg or 'no timing')}"
            continue
        workload = database.commit_workload(workload_mod)
        database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, run.run_secs, target, args_info))
        seconds = [float(s) for s in run.run_secs]
        measured[task.task_name] = sum(seconds) / len(seconds)
    return measured, failed


def recorded_seconds(database, workload_mod, sch) -> float | None:
    """Mean seconds of the database's record of exactly `sch`'s schedule (same trace and decisions)
    of `workload_mod`, or None when there is none."""
    if not database.has_workload(workload_mod):
        return None
    text = str(sch.trace.as_json())
    for record in database.get_top_k(database.commit_workload(workload_mod), SEARCHED_RECORDS):
        if str(record.trace.as_json()) == text and record.run_secs:
            seconds = [float(s) for s in record.run_secs]
            return sum(seconds) / len(seconds)
    return None
