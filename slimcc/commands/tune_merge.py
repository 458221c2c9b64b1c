"""`slimcc tune-merge A B [...] -o C`: join tuning databases, keeping the fastest record per kernel and target."""

from __future__ import annotations

from slimcc.commands.common import print_json


def add_parser(sub) -> None:
    """Register the `tune-merge` subcommand."""
    parser = sub.add_parser("tune-merge", help="join tuning databases (best record per kernel and target)",
                            description="Join MetaSchedule databases written by `slimcc tune --db` (for example "
                                        "one per model, or one per device farm) into a new folder that keeps the "
                                        "fastest measured record of each kernel workload per target.")
    parser.add_argument("sources", nargs="+", metavar="DB", help="database folders to join")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="new database folder")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Handler: merge and say how many records were kept."""
    from slimcc.targets.tune_db import merge_databases

    summary = merge_databases(args.sources, args.output)
    if args.json:
        print_json(summary)
    else:
        print(f"{summary['records_out']} records kept of {summary['records_in']} measured in "
              f"{len(summary['sources'])} databases -> {summary['database']}")
    return 0
