"""MetaSchedule tuning with an on-disk database per (model, target) that later compiles reuse.

The database is MetaSchedule's JSON database (database_workload.json +
database_tuning_record.json), which appends each measured record as it goes: an interrupted
run keeps what it measured, and the next run or compile picks it up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from slimcc.errors import SlimccError
from slimcc.ir.model import Model, first_line
from slimcc.targets.target import TargetSpec
from slimcc.targets.tvm_import import ensure_tvm

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
BUILD_TIMEOUT_S = 600.0  # per candidate; a worker's first build imports TVM, which takes minutes on a loaded machine


def model_key(model: Model) -> str:
    """Content hash of the prepared (canonicalized, static) model: what tuning records depend on."""
    return hashlib.sha256(model.to_proto().SerializeToString()).hexdigest()


def target_key(spec: TargetSpec) -> str:
    """Hash of the TVM target dict (mcpu, cores, arch...), so records never cross targets."""
    text = json.dumps({"tvm": spec.tvm, "host": spec.host}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_root() -> Path:
    """Where default databases live: $SLIMCC_CACHE/tuning or ~/.cache/slimcc/tuning."""
    base = os.environ.get("SLIMCC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "slimcc")
    return Path(base) / "tuning"


def default_database(model: Model, spec: TargetSpec) -> Path:
    """The database folder for this (model, target) pair."""
    return cache_root() / f"{model_key(model)[:16]}-{spec.name}-{target_key(spec)[:12]}"


def record_count(database_dir: str | Path) -> int:
    """Tuning records in a database folder (0 when it does not exist)."""
    path = Path(database_dir) / RECORD_FILE
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def check_database(database_dir: str | Path) -> Path:
    """A database folder given by the user must exist and hold MetaSchedule's JSON files."""
    path = Path(database_dir)
    if not path.is_dir():
        raise SlimccError(f"tuning database {path} not found (create it with `slimcc tune MODEL --db {path}`)")
    missing = [name for name in (WORKLOAD_FILE, RECORD_FILE) if not (path / name).is_file()]
    if missing:
        raise SlimccError(f"{path} is not a MetaSchedule database (missing {', '.join(missing)})")
    return path


def tune_model(model: Model, spec: TargetSpec, trials: int, *, database_dir: str | Path | None = None,
               trials_per_task: int | None = None, progress: bool = True, seed: int = 0) -> dict:
    """Tune every fused kernel of `model` for `spec` with MetaSchedule, `trials` measurements in all.

    Records are appended to `database_dir` (default: `default_database(model, spec)`); existing
    records are kept and extended. Returns {database, trials, tasks, records}.
    """
    if trials < 1:
        raise SlimccError(f"--trials must be >= 1, got {trials}")
    if spec.cross_compiler or spec.is_gpu:
        raise SlimccError(f"tuning runs kernels on this machine; target {spec.name} cannot run here "
                          "(tune for x86, or tune on the device itself)")
    db = Path(database_dir) if database_dir is not None else default_database(model, spec)
    db.mkdir(parents=True, exist_ok=True)
    ensure_tvm()
    from tvm.s_tir import meta_schedule as ms

    from slimcc.targets.relax_import import prepare_for_build, to_relax

    target = spec.to_tvm()
    mod = fuse_for_tuning(prepare_for_build(to_relax(model)), target)
    try:
        tasks = ms.relax_integration.extract_tasks(mod, target)
    except Exception as exc:
        raise SlimccError(f"MetaSchedule could not extract tuning tasks: {first_line(exc)}") from None
    tunable = [t for t in tasks if not t.mod.attrs or not t.mod.attrs.get("tirx.is_scheduled", False)]
    if not tunable:
        raise SlimccError("the model has no kernels MetaSchedule can tune (all are pre-scheduled)")
    per_task = trials_per_task or max(1, -(-trials // max(1, len(tunable))))
    before = record_count(db)
    bar = _progress_bar(trials, progress)
    try:
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tunable, work_dir=str(db), seed=seed)
        with _torchless_workers():
            ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(db), max_trials_global=trials,
                          max_trials_per_task=per_task, num_trials_per_iter=min(64, per_task),
                          builder=ms.builder.LocalBuilder(max_workers=spec.tvm.get("num-cores"),
                                                          timeout_sec=BUILD_TIMEOUT_S),
                          runner=ms.runner.LocalRunner(timeout_sec=BUILD_TIMEOUT_S),
                          measure_callbacks=ms.MeasureCallback.create("default") + [_progress_callback(bar)])
    except KeyboardInterrupt:
        raise SlimccError(f"tuning interrupted; the {record_count(db)} records measured so far are kept in {db}") from None
    except SlimccError:
        raise
    except Exception as exc:
        raise SlimccError(f"MetaSchedule tuning failed: {first_line(exc)} (records so far kept in {db})") from None
    finally:
        if bar is not None:
            bar.close()
    return {"database": str(db), "trials": trials, "trials_per_task": per_task, "tasks": len(tunable),
            "records": record_count(db), "new_records": record_count(db) - before}


@contextlib.contextmanager
def _torchless_workers():
    """Keep MetaSchedule's builder/runner worker processes from importing PyTorch.

    Each worker imports tvm, and apache-tvm-ffi imports torch when installed, which can take
    longer than a candidate's build timeout on a busy machine. The workers never use torch,
    so a shadow package that raises ImportError is put first on their PYTHONPATH.
    """
    old = os.environ.get("PYTHONPATH")
    with tempfile.TemporaryDirectory(prefix="slimcc-notorch-") as shadow:
        os.makedirs(os.path.join(shadow, "torch"))
        with open(os.path.join(shadow, "torch", "__init__.py"), "w") as handle:
            handle.write('raise ImportError("torch is hidden from TVM tuning workers by slimcc")\n')
        os.environ["PYTHONPATH"] = shadow + (os.pathsep + old if old else "")
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old


def fuse_for_tuning(mod, target):
    """Legalize and fuse exactly as the compile pipeline does before it applies the database,
    so tuned kernels match the kernels of later compiles."""
    tvm = ensure_tvm()

    from slimcc.targets.build import backend_pipeline

    with target:
        return tvm.transform.Sequential(list(backend_pipeline(target).legalize_passes(target))[:5])(mod)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="tuning", unit="trial")


def _progress_callback(bar):
    """A MetaSchedule measure callback that advances a tqdm bar by each batch of measured candidates."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class ProgressCallback(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            if bar is not None:
                bar.update(len(measure_candidates))

    return ProgressCallback()
