"""`slimcc tune MODEL --target x86 --trials N [--db DIR]`: MetaSchedule tuning into an on-disk database.

`slimcc compile` reuses the default database of the same model and target automatically
(or any database given with --tuned DIR). Interrupting keeps the records measured so far.
"""

from __future__ import annotations

from slimcc.commands.common import add_model_arguments, print_json
from slimcc.ir.model import parse_input_shapes


def add_parser(sub) -> None:
    """Register the `tune` subcommand."""
    parser = sub.add_parser("tune", help="tune a model's kernels with MetaSchedule (database reused by compile)",
                            description="Canonicalize MODEL and tune its fused kernels with TVM MetaSchedule on this "
                                        "machine; records go to a database that `slimcc compile` reuses. "
                                        "Per-kernel logs and latencies are in the database's logs/ folder.")
    add_model_arguments(parser)
    parser.add_argument("--target", choices=("x86",), default="x86", help="only x86 runs here")
    parser.add_argument("--trials", type=int, required=True, metavar="N",
                        help="measurements in total; kernels are tuned heaviest first, at least 4 trials each")
    parser.add_argument("--trials-per-task", type=int, metavar="N",
                        help="cap per kernel (default: N / kernels tuned)")
    parser.add_argument("--mcpu", metavar="CPU", help="LLVM CPU name (default: this machine's)")
    parser.add_argument("--num-cores", type=int, metavar="N", help="threads kernels may use")
    parser.add_argument("--db", metavar="DIR", help="database folder (default: per model+target in ~/.cache/slimcc)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Handler: prepare, tune, report where the records are."""
    from slimcc.targets.compiler import prepare_model
    from slimcc.targets.target import make_target
    from slimcc.targets.tune import tune_model

    model = prepare_model(args.model, parse_input_shapes(args.input_shape))
    spec = make_target(args.target, mcpu=args.mcpu, num_cores=args.num_cores)
    summary = tune_model(model, spec, args.trials, database_dir=args.db, trials_per_task=args.trials_per_task,
                         progress=not getattr(args, "quiet", False))
    if args.json:
        print_json(summary)
    else:
        print(f"{summary['records']} records ({summary['new_records']} new, {summary['tasks']} kernels) in "
              f"{summary['database']}; `slimcc compile` uses them for this model and target")
    return 0
