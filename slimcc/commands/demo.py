"""`slimcc demo`: the whole story on the bundled digits CNN, measured stage by stage.

inspect -> prune (+ least-squares refit) -> Tucker decomposition -> int8 Q/DQ -> bias
correction -> TVM compile for x86 -> run. Each stage applies its passes to the previous
stage's model (exact passes verified against onnxruntime) and is measured: params, MACs,
file size, held-out accuracy, onnxruntime latency and TVM latency. A stage whose pass is not
available, or fails, is skipped with a note. Everything lands in one report folder
(report.md, PNG plots, demo.json, the stage models and TVM artifacts), written atomically.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slimcc.commands.common import print_json, print_table
from slimcc.errors import SlimccError
from slimcc.ir.atomic import atomic_folder
from slimcc.ir.calibration import CalibrationData
from slimcc.ir.cost import model_cost
from slimcc.ir.model import Model, first_line, load_model, save_model
from slimcc.ir.verify import make_session
from slimcc.passes.base import registry
from slimcc.passes.pipeline import parse_pipeline
from slimcc.passes.verified import run_verified
from slimcc.report import TABLE_HEADERS, table_rows, write_report

DEFAULT_OUT = "slimcc-demo"
MARKER = "demo.json"  # marks a folder as a demo report, which a new run may replace
FALLBACK_ZOO_MODEL = "resnet-basic"


@dataclass(frozen=True)
class Stage:
    """A demo stage: a name and its passes (the first is the one the stage is about)."""

    name: str
    passes: tuple[str, ...]


STAGES = (
    Stage("original", ("canonicalize",)),
    Stage("pruned", ("prune-channels{macs=0.5}", "recover-lstsq")),
    Stage("decomposed", ("decompose-tucker{speedup=2}",)),
    Stage("quantized", ("qdq-insert", "qdq-propagate", "qdq-cancel")),
    Stage("recovered", ("recover-bias",)),
)


@dataclass
class Settings:
    """How much work the demo does (the --quick mode shrinks every knob)."""

    calibration_samples: int
    latency_repeats: int
    tvm_stages: str  # "all" or "last"
    trials: int

    @classmethod
    def from_args(cls, quick: bool, trials: int | None) -> Settings:
        if quick:
            return cls(32, 20, "last", trials or 0)
        return cls(128, 100, "all", trials or 0)


@dataclass
class Subject:
    """The model the demo compresses, with its calibration data and accuracy function (None: no labels)."""

    label: str
    model: Model
    calibration: CalibrationData
    accuracy: object = None


@dataclass
class Row:
    """One measured stage."""

    stage: str
    pipeline: str = ""
    params: int | None = None
    macs: int | None = None
    file_bytes: int | None = None
    accuracy: float | None = None
    ort_ms: float | None = None
    tvm_ms: float | None = None
    seconds: float | None = None
    note: str = ""
    tvm_note: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"stage": self.stage, "pipeline": self.pipeline, "params": self.params, "macs": self.macs,
                "file_bytes": self.file_bytes, "accuracy": self.accuracy, "ort_ms": self.ort_ms,
                "tvm_ms": self.tvm_ms, "seconds": self.seconds, "note": "; ".join(filter(None, [self.note, self.tvm_note])),
                **self.extra}


def add_parser(sub) -> None:
    """Register the `demo` subcommand."""
    parser = sub.add_parser(
        "demo", help="compress, compile and measure the bundled digits CNN stage by stage, with a report",
        description="Run inspect -> prune -> decompose -> quantize -> recover -> TVM compile -> run on the bundled "
                    "digits CNN; print one row per stage and write a Markdown report with plots.")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"report folder (default ./{DEFAULT_OUT}; replaced if it holds an earlier demo)")
    parser.add_argument("--quick", action="store_true",
                        help="reduced mode: less calibration data, fewer timing runs, TVM for the last stage only")
    parser.add_argument("--trials", type=int, metavar="N",
                        help="also tune the final model with N MetaSchedule trials and add a tuned row "
                             "(default 0: tuning takes many minutes on 2 cores)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of the table")
    parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def check_out_folder(path: Path) -> None:
    """Refuse to replace anything that is not an earlier demo report."""
    if path.exists() and not path.is_dir():
        raise SlimccError(f"--out {path} is a file; give a folder name")
    if path.is_dir() and any(path.iterdir()) and not (path / MARKER).is_file():
        raise SlimccError(f"--out {path} exists and is not a slimcc demo report; give another folder "
                          "(it would be replaced)")


def load_subject(samples: int) -> tuple[Subject, list[str]]:
    """The bundled digits model with its labelled data, or a zoo model when it is not there."""
    from slimcc.models import digits

    if digits.MODEL_PATH.is_file():
        if importlib.util.find_spec("sklearn") is None:
            raise SlimccError("the demo measures accuracy on scikit-learn's digits data set; install it with "
                              "pip install -e '.[report]' (or pip install scikit-learn)")
        model = load_model(digits.MODEL_PATH)
        calib = CalibrationData(digits.calibration_batches(samples, batch=1), "digits training split")
        return Subject("bundled digits CNN", model, calib, digits.accuracy), []
    from slimcc.models.zoo import build

    model = load_model(build(FALLBACK_ZOO_MODEL, seed=0))
    rng = np.random.default_rng(0)
    shape = [int(d) for d in model.graph.inputs[0].shape]
    calib = CalibrationData([{model.graph.inputs[0].name: rng.standard_normal(shape).astype(np.float32)}
                             for _ in range(samples)], "random normal inputs")
    note = (f"the bundled model {digits.MODEL_PATH.name} is not installed; the demo used the untrained zoo model "
            f"{FALLBACK_ZOO_MODEL!r} with random calibration data (no accuracy)")
    return Subject(f"zoo {FALLBACK_ZOO_MODEL} (untrained)", model, calib, None), [note]


def available_passes(stage: Stage) -> tuple[list[str], list[str]]:
    """The stage's pass specs that are registered, and notes for those that are not."""
    names = registry()
    kept, missing = [], []
    for spec in stage.passes:
        (kept if spec.partition("{")[0] in names else missing).append(spec)
    return kept, [f"{spec.partition('{')[0]} not available" for spec in missing]


def apply_stage(model: Model, specs: list[str], subject: Subject, reference: Model) -> tuple[Model, dict]:
    """Run the stage's passes on a copy of `model` through the verified run (exact passes must match onnxruntime).

    `reference` (the original model) is what recovery passes reconstruct towards.
    """
    work = model.copy()
    passes = parse_pipeline(",".join(specs))
    report = run_verified(work, passes, subject.calibration, reference=reference, progress=False).report
    stats = {r.name: {k: v for k, v in r.result.stats.items() if isinstance(v, (int, float, str, bool))}
             for r in report.records}
    return work, stats


def ort_latency_ms(model: Model, feeds: dict[str, np.ndarray], repeats: int) -> float:
    """Median onnxruntime latency (1 thread, all graph optimizations) in milliseconds."""
    session = make_session(model, optimize=True, threads=1)
    for _ in range(3):
        session.run(None, feeds)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        samples.append(time.perf_counter() - start)
    return 1e3 * float(np.median(samples))


def tvm_latency_ms(model: Model, folder: Path, feeds: dict[str, np.ndarray], repeats: int,
                   trials: int = 0, progress: bool = False) -> tuple[float | None, str, dict]:
    """Compile `model` for x86 into `folder` (tuning `trials` first when > 0) and time it.

    Returns (ms or None, a note saying why there is no number, tuning facts).
    """
    try:
        from slimcc.targets.compiler import compile_model, is_int8, prepare_model
        from slimcc.targets.runner import load_artifact
        from slimcc.targets.target import make_target
    except ImportError as exc:
        return None, f"TVM targets not available ({exc})", {}
    tuning: dict = {}
    try:
        prepared = prepare_model(model)
        spec = make_target("x86", int8=is_int8(prepared))
        database = None
        if trials > 0:
            from slimcc.targets.tune import tune_model

            tuning = tune_model(prepared, spec, trials, database_dir=folder.parent / f"{folder.name}-db",
                                progress=progress)
            database = tuning["database"]
        compile_model(prepared, spec, folder, database_dir=database)
        return 1e3 * load_artifact(folder).time(feeds, repeat=repeats), "", tuning
    except SlimccError as exc:
        return None, f"TVM: {exc}", tuning
    except Exception as exc:  # a TVM runtime failure must not end the demo: the row says why
        return None, f"TVM: {type(exc).__name__}: {first_line(exc)}", tuning


def conv_channels(model: Model) -> dict[str, int]:
    """Output channels of every Conv, by node name."""
    return {node.name: int(node.inputs[1].shape[0]) for node in model.graph.nodes
            if node.op == "Conv" and len(node.inputs) > 1 and node.inputs[1].shape}


def measure(row: Row, model: Model, path: Path, subject: Subject, settings: Settings) -> None:
    """Fill params, MACs, file size, accuracy and onnxruntime latency of `row`."""
    cost = model_cost(model)
    save_model(model, path)
    row.params, row.macs, row.file_bytes = cost.params, cost.macs, path.stat().st_size
    try:
        if subject.accuracy is not None:
            row.accuracy = float(subject.accuracy(model))
        row.ort_ms = ort_latency_ms(model, subject.calibration.batches[0], settings.latency_repeats)
    except SlimccError as exc:
        row.note = "; ".join(filter(None, [row.note, f"onnxruntime: {exc}"]))
    except Exception as exc:  # onnxruntime refusing to run a stage's model: say so in the row
        row.note = "; ".join(filter(None, [row.note, f"onnxruntime: {type(exc).__name__}: {first_line(exc)}"]))


def run_stages(subject: Subject, settings: Settings, folder: Path, bar) -> tuple[list[Row], list[tuple[Row, Model]],
                                                                               Model | None, list]:
    """Apply and measure every stage; returns (rows, measured (row, model) pairs, original, kept channels)."""
    rows: list[Row] = []
    measured: list[tuple[Row, Model]] = []
    kept: list[tuple[str, int, int]] = []
    model: Model | None = None
    original: Model | None = None
    for index, stage in enumerate(STAGES):
        bar.set_description(f"demo: {stage.name}")
        row = Row(stage.name)
        rows.append(row)
        specs, missing = available_passes(stage)
        if not specs or specs[0] != stage.passes[0] or (model is None and index > 0):
            row.note = "skipped: " + ("; ".join(missing) or "no model from the stages before")
            bar.update()
            continue
        row.note = "; ".join(missing)
        start = time.perf_counter()
        try:
            model_in = model if model is not None else subject.model
            new_model, row.extra["stats"] = apply_stage(model_in, specs, subject, original or subject.model)
        except SlimccError as exc:
            row.note = f"skipped: {exc}"
            bar.update()
            continue
        row.seconds = round(time.perf_counter() - start, 3)
        row.pipeline = ",".join(specs)
        model = new_model
        original = original or model
        if stage.name == "pruned":
            before, after = conv_channels(original), conv_channels(model)
            kept = [(name, before[name], after[name]) for name in before if name in after]
        measure(row, model, folder / "models" / f"{index}-{stage.name}.onnx", subject, settings)
        measured.append((row, model))
        bar.update()
    return rows, measured, original, kept


def run_tvm(measured: list[tuple[Row, Model]], settings: Settings, folder: Path, feeds, bar,
            progress: bool) -> tuple[Row | None, dict | None]:
    """TVM latency for the measured stages (all, or the last with --quick), then the tuned final model."""
    compiled = measured if settings.tvm_stages == "all" else measured[-1:]
    bar.total += len(compiled)
    bar.refresh()
    for row, stage_model in measured:
        if all(row is not r for r, _ in compiled):
            row.tvm_note = "TVM: skipped (--quick)"
            continue
        bar.set_description(f"demo: TVM {row.stage}")
        row.tvm_ms, row.tvm_note, _ = tvm_latency_ms(stage_model, folder / "artifacts" / row.stage, feeds,
                                                      settings.latency_repeats)
        bar.update()
    if settings.trials <= 0:
        return None, None
    last, last_model = measured[-1]
    bar.set_description(f"demo: tuning ({settings.trials} trials)")
    tuned = Row(f"{last.stage}+tuned", pipeline=f"(TVM MetaSchedule, {settings.trials} trials)",
                params=last.params, macs=last.macs, file_bytes=last.file_bytes, accuracy=last.accuracy,
                ort_ms=last.ort_ms)
    tuned.tvm_ms, tuned.tvm_note, tuning = tvm_latency_ms(last_model, folder / "artifacts" / tuned.stage, feeds,
                                                          settings.latency_repeats, trials=settings.trials,
                                                          progress=progress)
    bar.update()
    return tuned, tuning


def report_intro(subject: Subject, original: Model | None) -> list[str]:
    """The report's first lines: the model, its op histogram, the calibration data, how latency is measured."""
    ops = Counter(node.op for node in original.graph.nodes) if original is not None else Counter()
    return [f"Model: {subject.label} ({sum(ops.values())} nodes after canonicalize: "
            + ", ".join(f"{n} {op}" for op, n in ops.most_common(6)) + ").",
            f"Calibration: {len(subject.calibration)} sample(s) from {subject.calibration.source}.",
            "Each stage applies its passes to the model of the stage before; latency is batch 1, median, "
            "onnxruntime with 1 thread, TVM compiled for this x86 CPU."]


def run_demo(out: Path, settings: Settings, *, progress: bool) -> dict:
    """Run every stage, write the report folder atomically and return the JSON summary."""
    from tqdm import tqdm

    started = time.perf_counter()
    subject, notes = load_subject(settings.calibration_samples)
    with atomic_folder(out) as tmp:
        (tmp / "models").mkdir()
        (tmp / "artifacts").mkdir()
        bar = tqdm(total=len(STAGES) + (1 if settings.trials > 0 else 0), desc="demo", unit="stage",
                   disable=not progress)
        try:
            rows, measured, original, kept = run_stages(subject, settings, tmp, bar)
            if not measured:
                raise SlimccError("no demo stage could run (is the `canonicalize` pass installed?)")
            tuned, tuning = run_tvm(measured, settings, tmp, subject.calibration.batches[0], bar, progress)
        finally:
            bar.close()
        stages = [r.as_dict() for r in rows + ([tuned] if tuned else [])]
        written = write_report(tmp, title="slimcc demo", intro=report_intro(subject, original), stages=stages,
                               kept=kept, notes=notes)
        summary = {"model": subject.label, "out": str(out), "report": str(out / written["report"]),
                   "plots": [str(out / p) for p in written["plots"]], "stages": stages,
                   "kept_channels": [{"layer": n, "before": b, "after": a} for n, b, a in kept],
                   "tuning": tuning, "notes": written["notes"],
                   "seconds": round(time.perf_counter() - started, 1)}
        (tmp / MARKER).write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return summary


def _interrupt(signum, frame):
    """SIGTERM behaves like Ctrl-C, so the half-written report folder is removed."""
    raise KeyboardInterrupt


def run(args) -> int:
    """Handler of `slimcc demo`."""
    quiet = bool(getattr(args, "quiet", False))
    if args.trials is not None and args.trials < 0:
        raise SlimccError(f"--trials must be >= 0, got {args.trials}")
    out = Path(args.out)
    check_out_folder(out)
    settings = Settings.from_args(args.quick, args.trials)
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        summary = run_demo(out, settings, progress=not quiet and not args.json)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if args.json:
        print_json(summary)
        return 0
    if not quiet:
        print(f"slimcc demo on the {summary['model']}")
        print_table(TABLE_HEADERS, table_rows(summary["stages"]))
        for note in summary["notes"]:
            print(f"note: {note}")
        print(f"report: {summary['report']} ({len(summary['plots'])} plots) in {summary['seconds']:.0f} s")
    return 0
