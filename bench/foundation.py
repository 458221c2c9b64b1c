"""Foundation benchmark: per real model, canonicalize node counts, error, and I/O time.

For every fetched real model: nodes before/after `canonicalize`, max abs / relative error
against the original on onnxruntime (random and real-image inputs), and the time of
slimcc's load + canonicalize + save next to plain onnx.load + onnx.save, in the same run.

    python bench/foundation.py [--out bench/out/foundation.json] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from slimcc.ir.model import load_model, read_onnx, save_model, write_onnx
from slimcc.ir.atomic import save_json_atomic
from slimcc.ir.verify import compare_models, random_feeds
from slimcc.models.data import real_inputs
from slimcc.models.fetch import REAL_MODELS, real_model_path
from slimcc.passes.canonicalize import Canonicalize


def best_time(func, repeat: int) -> float:
    """Fastest of `repeat` runs, in seconds (the least disturbed by the other core's load)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(name: str, repeat: int, workdir: Path) -> dict:
    """All figures for one real model."""
    spec = REAL_MODELS[name]
    path = real_model_path(name)
    shapes = {spec.input_name: list(spec.input_shape)}
    original = load_model(path, shapes)
    nodes_before = len(original.graph.nodes)

    def slimcc_round_trip():
        model = load_model(path, shapes)
        Canonicalize().run(model)
        save_model(model, workdir / f"{name}.slimcc.onnx")
        return model

    def onnx_round_trip():
        write_onnx(read_onnx(path), workdir / f"{name}.plain.onnx")

    canonical = slimcc_round_trip()
    feeds = [random_feeds(original, seed=0)] + real_inputs(name, count=2)
    report = compare_models(original, load_model(workdir / f"{name}.slimcc.onnx"), feeds)
    slimcc_s = best_time(slimcc_round_trip, repeat)
    plain_s = best_time(onnx_round_trip, repeat)
    return {
        "model": name, "input_shape": shapes, "nodes_before": nodes_before,
        "nodes_after": len(canonical.graph.nodes), "max_abs_error": report.max_abs,
        "max_rel_error": report.max_rel, "slimcc_load_canonicalize_save_s": round(slimcc_s, 4),
        "onnx_load_save_s": round(plain_s, 4), "time_ratio": round(slimcc_s / plain_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/out/foundation.json")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(name, args.repeat, Path(tmp)) for name in REAL_MODELS]
    report = {"benchmark": "foundation", "results": results}
    save_json_atomic(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
