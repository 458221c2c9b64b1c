"""Tuning throughput through a TVM RPC tracker with 1 and 2 local x86 measurement servers.

    python bench/tune_tracker.py [--model resnet-basic] [--trials 96] [--out bench/out/tune-tracker.json]

Each row tunes the same zoo model from an empty database through a tracker on 127.0.0.1 with
`--parallel` equal to the number of servers, and reports search trials and measured records
(slimcc's seeded schedules included) per minute of wall time. The
servers, the builders and the search share this machine's cores, so a second server measures
in parallel only as far as a free core allows: the figures are for the plumbing, a farm of real
boards scales with its boards. The JSON names the CPU and its flags.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
import sys
from pathlib import Path

# bench/ holds a tvm.py: drop this folder from the path so `import tvm` finds Apache TVM
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from slimcc.models import zoo  # noqa: E402
from slimcc.targets.compiler import prepare_model  # noqa: E402
from slimcc.targets.local_rpc import local_servers, local_tracker  # noqa: E402
from slimcc.targets.target import make_target  # noqa: E402
from slimcc.targets.tune import tune_model  # noqa: E402
from slimcc.targets.tune_measure import MeasureSite  # noqa: E402


def quant_bench():
    """bench/quant.py as a module (for its cpu_model/cpu_flags)."""
    spec = importlib.util.spec_from_file_location("bench_quant", Path(__file__).with_name("quant.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet-basic")
    parser.add_argument("--trials", type=int, default=96)
    parser.add_argument("--servers", default="1,2", help="server counts to compare")
    parser.add_argument("--out", default="bench/out/tune-tracker.json")
    args = parser.parse_args()
    quant = quant_bench()
    spec = make_target("x86", num_cores=1)
    model = prepare_model(zoo.build(args.model, seed=0))
    rows = []
    for count in [int(c) for c in args.servers.split(",")]:
        with tempfile.TemporaryDirectory(prefix="slimcc-bench-tracker-") as db, local_tracker() as port, \
                local_servers(port, "x86-bench", count):
            start = time.perf_counter()
            summary = tune_model(model, spec, args.trials, database_dir=db, progress=False,
                                 site=MeasureSite(("127.0.0.1", port), "x86-bench", parallel=count))
            seconds = time.perf_counter() - start
        rows.append({"servers": count, "trials": args.trials, "records": summary["records"],
                     "seconds": round(seconds, 1), "trials_per_minute": round(60 * args.trials / seconds, 1),
                     "records_per_minute": round(60 * summary["new_records"] / seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"cpu_model": quant.cpu_model(), "cpu_flags": quant.cpu_flags(), "model": args.model,
              "note": "servers, builders and search share this machine's cores", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
