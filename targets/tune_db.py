"""Tuning databases shared across models: what a database covers of a model, and merging them.

Records are keyed by workload (the kernel's TIR, structurally hashed) and target, not by model,
so a kernel tuned for one model is reused by every model with the same kernel for the same
target; `slimcc compile --tuned DIR` reports how many kernels a database covered.
"""

from __future__ import annotations

from pathlib import Path

from slimcc.errors import SlimccError
from slimcc.ir.model import Model, first_line
from slimcc.targets.target import TargetSpec
from slimcc.targets.tune import check_database, extract_model_tasks, record_count
from slimcc.targets.tvm_import import ensure_tvm


def database_coverage(model: Model, spec: TargetSpec, database_dir: str | Path) -> dict:
    """Which of `model`'s kernels for `spec` have a record in the database, with the best time.

    Returns {"kernels", "covered", "per_kernel": [{"kernel", "covered", "best_ms"}...]}.
    """
    ensure_tvm()
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(work_dir=str(check_database(database_dir)))
    target = spec.to_tvm()
    rows = []
    for task in extract_model_tasks(model, target, spec.notes.get("int8_mode")):
        record = database.query_tuning_record(task.dispatched[0], target, task.task_name)
        best = _mean_ms(record) if record is not None else None
        rows.append({"kernel": task.task_name, "covered": best is not None, "best_ms": best})
    return {"database": str(database_dir), "kernels": len(rows), "covered": sum(r["covered"] for r in rows),
            "per_kernel": rows}


def merge_databases(sources: list[str | Path], destination: str | Path) -> dict:
    """Join databases into `destination`, keeping the fastest record per workload and target.

    The destination may be one of the sources' folders only if it is new or empty; returns
    {"sources", "records_in", "records_out", "database"}.
    """
    ensure_tvm()
    from tvm.s_tir import meta_schedule as ms

    dest = Path(destination)
    if record_count(dest):
        raise SlimccError(f"{dest} already holds tuning records: merge into a new folder")
    pooled = ms.database.MemoryDatabase()
    records_in = 0
    for source in sources:
        folder = check_database(source)
        for record in ms.database.JSONDatabase(work_dir=str(folder)).get_all_tuning_records():
            if _mean_ms(record) is None:
                continue  # a failed measurement (MetaSchedule stores 1e10 s)
            workload = pooled.commit_workload(record.workload.mod)
            pooled.commit_tuning_record(ms.database.TuningRecord(record.trace, workload, record.run_secs,
                                                                 record.target, record.args_info))
            records_in += 1
    try:
        dest.mkdir(parents=True, exist_ok=True)
        pooled.dump_pruned(ms.database.JSONDatabase(work_dir=str(dest)))
    except OSError as exc:
        raise SlimccError(f"cannot write the merged database to {dest}: {exc.strerror}") from None
    except Exception as exc:  # TVM's own error types from the database code
        raise SlimccError(f"merging tuning databases failed: {first_line(exc)}") from None
    return {"sources": [str(s) for s in sources], "records_in": records_in, "records_out": record_count(dest),
            "database": str(dest)}


def _mean_ms(record) -> float | None:
    """Mean measured milliseconds of a record, or None for a failed measurement."""
    secs = [float(s) for s in (record.run_secs or [])]
    if not secs or max(secs) >= 1e9:
        return None
    return 1e3 * sum(secs) / len(secs)
