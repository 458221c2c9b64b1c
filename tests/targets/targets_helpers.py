"""Helpers for TVM target tests: compare artifact outputs with onnxruntime."""

from __future__ import annotations

import numpy as np

from slimcc.ir.model import Model
from slimcc.ir.verify import compare_outputs, random_feeds, run_onnxruntime

REL_TOL = 1e-3


def assert_matches_onnxruntime(model: Model, outputs: dict[str, np.ndarray], feeds) -> float:
    """Artifact outputs (keyed by the model's output names) agree with onnxruntime within REL_TOL."""
    expected = run_onnxruntime(model, feeds)
    assert list(outputs) == list(expected), "artifact outputs must carry the model's output names, in order"
    report = compare_outputs(expected, outputs)
    assert report.max_rel <= REL_TOL, report.as_dict()
    return report.max_rel


def feeds_for(model: Model) -> dict[str, np.ndarray]:
    """Deterministic random inputs for a model."""
    return random_feeds(model, seed=1)


def measured_record_count(database_dir) -> int:
    """Tuning records with a real timing (MetaSchedule stores a failed measurement as 1e10 s)."""
    import json
    from pathlib import Path

    path = Path(database_dir) / "database_tuning_record.json"
    count = 0
    for line in path.read_text().splitlines():
        run_secs = json.loads(line)[1][1] if line.strip() else None
        count += bool(run_secs) and max(run_secs) < 1e9
    return count


def scheduled_kernels(model: Model, target_spec) -> dict[str, tuple[str, str]]:
    """{kernel name: (slimcc rule, TVMScript of the scheduled kernel)} for the fused kernels a
    compile of `model` sees; kernels no slimcc rule takes are left out."""
    from slimcc.targets.schedules.apply import slimcc_schedule
    from slimcc.targets.schedules.isa import cpu_vector_for
    from slimcc.targets.tune import extract_model_tasks

    target = target_spec.to_tvm()
    vector = cpu_vector_for(target)
    out = {}
    for task in extract_model_tasks(model, target):
        sch, rule = slimcc_schedule(task.dispatched[0], vector)
        if sch is not None:
            out[task.task_name] = (rule, sch.mod["main"].script())
    return out


def assembly(executable) -> str:
    """The x86/aarch64 assembly of every LLVM module a TVM build holds."""
    return "\n".join(m.inspect_source("asm") for m in executable.mod.imports if m.kind == "llvm")
