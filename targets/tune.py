"""MetaSchedule tuning with an on-disk database per (model, target) that later compiles reuse.

The database is MetaSchedule's JSON database (database_workload.json +
database_tuning_record.json), which appends each measured record as it goes: an interrupted
run keeps what it measured, and the next run or compile picks it up.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from slimcc.errors import SlimccError
from slimcc.ir.model import Model, first_line
from slimcc.targets.schedules.isa import cpu_vector_for
from slimcc.targets.target import TargetSpec
from slimcc.targets.tune_devices import DeviceTally
from slimcc.targets.tune_measure import MeasureSite, check_site, make_runner
from slimcc.targets.tune_seed import seed_database
from slimcc.targets.tune_space import tune_contexts
from slimcc.targets.tune_workers import index_pseudo_source_files, pooled_builder, torchless_workers
from slimcc.targets.tvm_import import ensure_tvm

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
# per candidate: LLVM spends minutes on the odd heavily unrolled candidate (seen: a 1x1 conv, > 3 min);
# dropping it costs one trial, waiting for it stalls the whole batch
BUILD_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 120.0
MIN_TRIALS_PER_TASK = 4  # with fewer trials than kernels x this, only the heaviest kernels are tuned
TRIALS_PER_BATCH = 16  # candidates built and measured per round
SEARCH_POPULATION = 48  # evolutionary search population (TVM's default, 512, suits thousands of trials)


def model_key(model: Model) -> str:
    """Content hash of the prepared (canonicalized, static) model: what tuning records depend on."""
    return model.content_hash()


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
               trials_per_task: int | None = None, progress: bool = True, seed: int = 0,
               site: MeasureSite | None = None) -> dict:
    """Tune the fused kernels of `model` for `spec` with MetaSchedule, `trials` measurements in all.

    Kernels are tuned heaviest first (FLOPs x occurrences); with few trials only the heaviest
    get any, at least MIN_TRIALS_PER_TASK each, since a kernel measured once gains little.
    Kernels slimcc's rules schedule are searched in slimcc's own space (its schedule with tunable
    tile sizes, `tune_space`), others in MetaSchedule's. Before searching, slimcc's own schedule
    of each chosen kernel is measured and committed as a record (`tune_seed`), so the tuned build
    is never slower than the untuned one per kernel.
    Candidates are measured on this machine, or on the devices a TVM RPC tracker hands out for
    `site.key`, or on one RPC server (`tune_measure`; required for targets this machine cannot
    run, e.g. aarch64).
    Records are appended to `database_dir` (default: `default_database(model, spec)`); existing
    records are kept and extended. Returns {database, trials, tasks, records, devices, ...}, with
    devices = {device: {"measured": n, "failed": m}} and one progress line per measured batch.
    """
    site = site or MeasureSite()
    if trials < 1:
        raise SlimccError(f"--trials must be >= 1, got {trials}")
    if spec.is_gpu:
        raise SlimccError(f"slimcc tunes CPU targets; target {spec.name} is a GPU (compile it untuned)")
    if spec.cross_compiler and not site.remote:
        raise SlimccError(f"{spec.name} kernels cannot run on this machine: tune them on the device, through a "
                          "TVM RPC tracker (--tracker HOST:PORT --key KEY) or its RPC server (--rpc HOST:PORT)")
    if not spec.tvm.get("num-cores"):
        raise SlimccError(f"tuning for {spec.name} needs the device's core count: give --num-cores N "
                          "(and the same value to `slimcc compile`, so it finds the records)")
    check_site(site)
    db = Path(database_dir) if database_dir is not None else default_database(model, spec)
    try:
        db.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlimccError(f"cannot use {db} as a tuning database folder: {exc.strerror} "
                          "(give --db a new or existing folder)") from None
    ensure_tvm()
    from tvm.s_tir import meta_schedule as ms

    index_pseudo_source_files()
    _log_to_files_only()
    target = spec.to_tvm()
    ranked = rank_tasks(extract_model_tasks(model, target, spec.notes.get("int8_mode")))
    if not ranked:
        raise SlimccError("the model has no kernels MetaSchedule can tune (all are pre-scheduled)")
    chosen = choose_tasks(ranked, trials)
    per_task = trials_per_task or max(1, -(-trials // len(chosen)))
    before = record_count(db)
    bar = _progress_bar(trials, progress)
    tally = DeviceTally(ledger=site.remote, report=_progress_lines(bar))
    seeded: dict[str, float] = {}
    seed_failures: dict[str, str] = {}
    interrupts = _InterruptWatch(notice=progress)
    try:
        vector = cpu_vector_for(target)
        contexts, weights = tune_contexts(chosen, str(db), vector, _search_strategy(ms),
                                          spec.tvm.get("num-cores") or "physical", seed)
        database = ms.database.JSONDatabase(work_dir=str(db))
        runner = make_runner(site, _evaluator_config(ms), RUN_TIMEOUT_S, tally, interrupts.checkpoint)
        with torchless_workers(), interrupts:
            builder = pooled_builder(_build_workers(spec, site), BUILD_TIMEOUT_S, shared_library=site.remote,
                                     cross_compiler=spec.cross_compiler)
            try:
                if vector is not None:
                    seeded, seed_failures = seed_database(database, chosen, target, vector, builder, runner)
                ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(db), max_trials_global=trials,
                              max_trials_per_task=per_task, num_trials_per_iter=min(TRIALS_PER_BATCH, per_task),
                              builder=builder, runner=runner, database=database,
                              measure_callbacks=ms.MeasureCallback.create("default") + [_progress_callback(bar)])
            finally:
                builder.shutdown()
    except KeyboardInterrupt:
        raise _interrupted(db) from None
    except SlimccError:
        raise
    except Exception as exc:
        if interrupts.seen:  # TVM's FFI turns a Ctrl-C inside MetaSchedule into a bare RuntimeError
            raise _interrupted(db) from None
        raise SlimccError(f"MetaSchedule tuning failed: {first_line(exc)} (records so far kept in {db})") from None
    finally:
        if bar is not None:
            bar.close()
    records = record_count(db)
    return {"database": str(db), "trials": trials, "trials_per_task": per_task, "tasks": len(chosen),
            "kernels": len(ranked), "tuned_task_names": [t.task_name for t in chosen],
            "seeded_with_slimcc_schedules": seeded, "seed_failures": seed_failures,
            "records": records, "new_records": records - before, "measured_on": site.describe(),
            "devices": tally.as_dict()}


def _interrupted(db: Path) -> SlimccError:
    return SlimccError(f"tuning interrupted; the {record_count(db)} records measured so far are kept in {db} "
                       "(the same command resumes from them)")


class _InterruptWatch:
    """Defers a first Ctrl-C (SIGINT) while tuning to the runner's next `checkpoint`; a second
    one interrupts at once.

    A KeyboardInterrupt raised while MetaSchedule's search threads run aborts the process
    ("terminate called without an active exception"); one raised in its Python callbacks comes
    back from TVM's FFI as a RuntimeError without a message, hence `seen`. Signals reach the
    main thread only, so in another thread this watches nothing.
    """

    def __init__(self, notice: bool = True):
        self.seen = False
        self.notice = notice
        self._previous = None

    def checkpoint(self) -> None:
        """Raise KeyboardInterrupt once Ctrl-C was pressed (called where no search thread runs)."""
        if self.seen:
            raise KeyboardInterrupt

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._note)
        return self

    def __exit__(self, *exc_info) -> bool:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False

    def _note(self, signum, frame):
        if self.seen:
            raise KeyboardInterrupt
        self.seen = True
        if self.notice:
            import sys

            print("\nstopping after the measurement in flight (Ctrl-C again to stop at once)", file=sys.stderr)


def _build_workers(spec: TargetSpec, site: MeasureSite) -> int:
    """Builder processes: one per core this machine gives kernels when measuring here; with
    remote devices, this machine's cores (`os.cpu_count()`) build while the devices measure."""
    if site.remote:
        return max(1, min(os.cpu_count() or 1, site.parallel))
    return spec.tvm.get("num-cores") or 1


def extract_model_tasks(model: Model, target, int8_mode: str | None = None) -> list:
    """MetaSchedule's tasks for the fused kernels a compile of `model` for `target` will see."""
    ensure_tvm()
    from tvm.s_tir import meta_schedule as ms

    from slimcc.targets.relax_import import prepare_for_build, to_relax

    mod = fuse_for_tuning(prepare_for_build(to_relax(model), target, int8_mode=int8_mode), target)
    try:
        return list(ms.relax_integration.extract_tasks(mod, target))
    except Exception as exc:
        raise SlimccError(f"MetaSchedule could not extract tuning tasks: {first_line(exc)}") from None


def rank_tasks(tasks) -> list:
    """Tunable (not pre-scheduled) tasks, heaviest first by estimated FLOPs x occurrences."""
    ensure_tvm()
    from tvm.s_tir.analysis import estimate_tir_flops

    tunable = [t for t in tasks if not _prescheduled(t.mod)]

    def cost(task) -> float:
        try:
            return float(estimate_tir_flops(task.dispatched[0])) * task.weight
        except (RuntimeError, ValueError, TypeError):  # an op the estimator does not know: last, still tunable
            return 0.0

    return sorted(tunable, key=cost, reverse=True)


def _prescheduled(mod) -> bool:
    """Whether a task's module carries its schedule already (slimcc's explicit vector kernels)."""
    tvm = ensure_tvm()

    functions = [func for _, func in mod.functions.items() if isinstance(func, tvm.tirx.PrimFunc)]
    return any(func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False))
               for func in functions) or bool(mod.attrs and mod.attrs.get("tirx.is_scheduled", False))


def choose_tasks(ranked: list, trials: int) -> list:
    """The heaviest tasks that `trials` can give MIN_TRIALS_PER_TASK measurements each (at least one task)."""
    return ranked[:max(1, min(len(ranked), trials // MIN_TRIALS_PER_TASK))]


def _log_to_files_only() -> None:
    """MetaSchedule's per-round tables go to the database's logs/ folder, not to stdout.

    Its console handler takes the level the "tvm.s_tir.meta_schedule" logger has when tuning
    starts (DEBUG once any tuning ran), which would mix its tables into `slimcc tune --json`.
    """
    import logging

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)


def _search_strategy(ms):
    """Evolutionary search sized for a few dozen trials on a small machine.

    TVM's defaults (population 512, 4 genetic rounds) are meant for thousands of trials;
    a smaller population keeps candidate generation to seconds per batch.
    """
    return ms.search_strategy.EvolutionarySearch(population_size=SEARCH_POPULATION, genetic_num_iters=2,
                                                 init_min_unmeasured=SEARCH_POPULATION // 4)


def _evaluator_config(ms):
    """How each candidate is timed: 3 repeats of >= 20 ms each, enough to rank candidates."""
    return ms.runner.EvaluatorConfig(number=1, repeat=3, min_repeat_ms=20, enable_cpu_cache_flush=False)


def fuse_for_tuning(mod, target):
    """Legalize and fuse exactly as the compile pipeline does before it applies the database,
    so tuned kernels match the kernels of later compiles."""
    tvm = ensure_tvm()

    from slimcc.targets.build import fusion_passes

    with target:
        return tvm.transform.Sequential(fusion_passes(target))(mod)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="tuning", unit="trial")


def _progress_lines(bar):
    """Where per-device batch lines go: above the tqdm bar on stderr (nowhere without a bar)."""
    if bar is None:
        return None
    import sys

    return lambda line: bar.write(line, file=sys.stderr)


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
