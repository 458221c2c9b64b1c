"""`slimcc tune MODEL --target x86|arm --trials N [--db DIR] [--tracker HOST:PORT --key KEY [--parallel N] | --rpc HOST:PORT]`:
MetaSchedule tuning into an on-disk database, measured here, on the devices of a TVM RPC tracker,
or on one TVM RPC server. Progress shows one line per measured batch and device.

`slimcc compile` reuses the default database of the same model and target automatically
(or any database given with --tuned DIR). Interrupting keeps the records measured so far.
"""

from __future__ import annotations

from slimcc.commands.common import add_model_arguments, print_json
from slimcc.ir.model import parse_input_shapes


def add_parser(sub) -> None:
    """Register the `tune` subcommand."""
    parser = sub.add_parser("tune", help="tune a model's kernels with MetaSchedule (database reused by compile)",
                            description="Canonicalize MODEL and tune its fused kernels with TVM MetaSchedule, "
                                        "measured on this machine, on the devices of a TVM RPC tracker (--tracker) "
                                        "or on one RPC server (--rpc); records go to a database that "
                                        "`slimcc compile` reuses. "
                                        "Per-kernel logs and latencies are in the database's logs/ folder.")
    add_model_arguments(parser)
    parser.add_argument("--target", choices=("x86", "arm"), default="x86",
                        help="x86 measures here (or through --tracker/--rpc); arm needs --tracker or --rpc")
    parser.add_argument("--trials", type=int, metavar="N",
                        help="measurements in total; kernels are tuned heaviest first, at least 4 trials each")
    parser.add_argument("--report", action="store_true",
                        help="tune nothing: list which of MODEL's kernels the database (--db) covers")
    parser.add_argument("--trials-per-task", type=int, metavar="N",
                        help="cap per kernel (default: N / kernels tuned)")
    parser.add_argument("--mcpu", metavar="CPU", help="LLVM CPU name (default: this machine's)")
    parser.add_argument("--num-cores", type=int, metavar="N", help="threads kernels may use")
    parser.add_argument("--db", metavar="DIR", help="database folder (default: per model+target in ~/.cache/slimcc)")
    parser.add_argument("--tracker", metavar="HOST:PORT",
                        help="measure on the devices this TVM RPC tracker hands out (trusted network only: "
                             "RPC servers run what they are sent)")
    parser.add_argument("--key", metavar="KEY", help="device key registered with the tracker (required with --tracker)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="measurements in flight at once through the tracker (one per device)")
    parser.add_argument("--rpc", metavar="HOST:PORT",
                        help="measure on this one TVM RPC server, started without --tracker (trusted network only)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Handler: prepare, tune, report where the records are."""
    from slimcc.targets.compiler import prepare_model
    from slimcc.targets.target import make_target
    from slimcc.targets.tune import tune_model
    from slimcc.targets.tune_devices import describe_counts

    from slimcc.errors import SlimccError

    if args.report:
        return report(args)
    if args.trials is None:
        raise SlimccError("slimcc tune: give --trials N (or --report to list what a database covers)")
    site = measure_site(args)
    model = prepare_model(args.model, parse_input_shapes(args.input_shape))
    spec = make_target(args.target, mcpu=args.mcpu, num_cores=args.num_cores)
    summary = tune_model(model, spec, args.trials, database_dir=args.db, trials_per_task=args.trials_per_task,
                         progress=not getattr(args, "quiet", False), site=site)
    if args.json:
        print_json(summary)
    else:
        print(f"{summary['records']} records ({summary['new_records']} new, {summary['tasks']} kernels, measured on "
              f"{summary['measured_on']}: {describe_counts(summary['devices'])}) in {summary['database']}; "
              "`slimcc compile` uses them for this model and target")
    return 0


def measure_site(args):
    """Where candidates are measured, from --tracker/--key/--parallel/--rpc (one-line errors for bad values)."""
    from slimcc.errors import SlimccError
    from slimcc.targets.rpc import DEFAULT_TRACKER_PORT, parse_address
    from slimcc.targets.tune_measure import MeasureSite

    if args.parallel < 1:
        raise SlimccError(f"--parallel must be >= 1, got {args.parallel}")
    if args.rpc is not None:
        if args.tracker is not None:
            raise SlimccError("--rpc measures on one server, --tracker on the devices it hands out: give one of them")
        if args.key:
            raise SlimccError("--key names a device of a tracker: with --rpc, drop it")
        return MeasureSite(server=parse_address(args.rpc), parallel=args.parallel)
    if args.tracker is None:
        if args.key:
            raise SlimccError("--key names a device of a tracker: give --tracker HOST:PORT too")
        return MeasureSite()
    if not args.key:
        raise SlimccError("--tracker needs --key KEY, the key the devices registered under")
    return MeasureSite(parse_address(args.tracker, DEFAULT_TRACKER_PORT), args.key, args.parallel)


def report(args) -> int:
    """`--report`: per kernel of MODEL, whether the database holds a record and its best time."""
    from slimcc.commands.common import print_table
    from slimcc.errors import SlimccError
    from slimcc.targets.compiler import prepare_model
    from slimcc.targets.target import make_target
    from slimcc.targets.tune import default_database
    from slimcc.targets.tune_db import database_coverage

    if args.trials is not None:
        raise SlimccError("--report tunes nothing: drop --trials")
    model = prepare_model(args.model, parse_input_shapes(args.input_shape))
    spec = make_target(args.target, mcpu=args.mcpu, num_cores=args.num_cores)
    database = args.db or default_database(model, spec)
    coverage = database_coverage(model, spec, database)
    if args.json:
        print_json(coverage)
        return 0
    print_table(["kernel", "covered", "best ms"],
                [[row["kernel"], "yes" if row["covered"] else "no",
                  "" if row["best_ms"] is None else f"{row['best_ms']:.4f}"] for row in coverage["per_kernel"]])
    print(f"{coverage['covered']} of {coverage['kernels']} kernels covered by {database}")
    return 0
