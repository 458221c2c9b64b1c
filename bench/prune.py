"""Benchmark channel pruning: original vs pruned, single-thread onnxruntime, measured in the same run.

    python bench/prune.py [--macs 0.6] [--repeats 30] [--models resnet-basic,yolov8n] [--json out.json]
    python bench/prune.py --macs 0.7 --models shufflenet,shufflenet-v1     # grouped convs and shuffles

Per model: MACs, params, serialized size and median latency before/after, the MACs reduction
(orig/pruned), the measured speedup (orig/pruned latency) and speedup / MACs reduction
(target >= 0.8). Latencies are interleaved (A, B, A, B, ...) so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from slimcc.ir.cost import model_cost
from slimcc.ir.atomic import save_json_atomic
from slimcc.ir.model import load_model
from slimcc.ir.verify import interleaved_latency, random_feeds
from slimcc.passes.canonicalize import Canonicalize
from slimcc.passes.prune.prune_channels import PruneChannels


# zoo models run at ImageNet size; resnet-basic is then ResNet-18-shaped, the ShuffleNets are the
# 0.5x-wide ones (stage channels 48/96/192 for v2)
ZOO_WIDTH = {"resnet-basic": 64}
ZOO_DEFAULT_WIDTH = 24


def load_benchmark_model(name: str):
    """A zoo model at ImageNet size (`ZOO_WIDTH`) or a real model at its default shape."""
    from slimcc.models.zoo import ZOO, build

    if name in ZOO:
        return load_model(build(name, size=224, width=ZOO_WIDTH.get(name, ZOO_DEFAULT_WIDTH)))
    from slimcc.models.fetch import REAL_MODELS, real_model_path
    spec = REAL_MODELS[name]
    return load_model(real_model_path(name), {spec.input_name: list(spec.input_shape)})


def bench_model(name: str, macs: float, repeats: int) -> dict:
    original = load_benchmark_model(name)
    Canonicalize().run(original)
    pruned = original.copy()
    result = PruneChannels(macs=macs).run(pruned)
    feeds = random_feeds(original, seed=0)
    lat_orig, lat_pruned = interleaved_latency([original, pruned], feeds, repeats)
    cost_o, cost_p = model_cost(original), model_cost(pruned)
    size_o, size_p = len(original.serialized()), len(pruned.serialized())
    macs_reduction = cost_o.macs / cost_p.macs
    speedup = lat_orig / lat_pruned
    return {"model": name, "target_macs": macs, "coverage": result.stats.get("coverage"),
            "macs": [cost_o.macs, cost_p.macs], "params": [cost_o.params, cost_p.params],
            "file_bytes": [size_o, size_p], "latency_ms": [round(lat_orig * 1e3, 3), round(lat_pruned * 1e3, 3)],
            "macs_reduction": round(macs_reduction, 3), "speedup": round(speedup, 3),
            "speedup_over_macs_reduction": round(speedup / macs_reduction, 3),
            "meets_target_0.8": speedup >= 0.8 * macs_reduction}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--macs", type=float, default=0.6)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--models", default="resnet-basic,yolov8n")
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args(argv)
    np.random.seed(0)
    from prune_task import quant_bench  # bench/ is on sys.path when this runs as a script

    quant = quant_bench()
    results = [bench_model(name, args.macs, args.repeats) for name in args.models.split(",")]
    report = {"bench": "prune", "cpu_model": quant.cpu_model(), "cpu_flags": quant.cpu_flags(),
              "onnxruntime_threads": 1, "results": results}
    print(json.dumps(report, indent=2))
    if args.json:
        save_json_atomic(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
