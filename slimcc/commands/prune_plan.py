"""`slimcc prune-plan MODEL`: channel groups, blocked groups with reasons, chosen channels, coverage."""

from __future__ import annotations

import json

from slimcc.commands.common import add_model_arguments, print_json, print_table
from slimcc.errors import SlimccError
from slimcc.ir.model import load_model, parse_input_shapes
from slimcc.passes.base import PassContext


def add_parser(sub) -> None:
    """Register the `prune-plan` subcommand."""
    parser = sub.add_parser("prune-plan", help="show what channel pruning would remove, and why groups are blocked",
                            description="Analyze channel dependencies (after canonicalize) and show the pruning "
                                        "plan: coupled groups, blocked groups with reasons, chosen channels, and "
                                        "coverage = share of conv MACs in groups that can actually lose channels, "
                                        "and the ops that hold back the rest. Writes no model.")
    add_model_arguments(parser)
    parser.add_argument("--macs", type=float, default=0.0, help="keep this share of MACs (e.g. 0.5)")
    parser.add_argument("--ratio", type=float, default=0.0, help="remove this share of every prunable group")
    parser.add_argument("--criterion", default="l1", choices=["l1", "l2", "bn", "activation", "hessian",
                                                                   "reconstruction"])
    parser.add_argument("--scope", default="layer", choices=["layer", "global"])
    parser.add_argument("--allocation", default="score", choices=["score", "sensitivity"],
                        help="how --macs is spread over groups: one threshold on the criterion's scores, or "
                             "each group's measured output-error curve (needs --calib; prints the curves)")
    parser.add_argument("--round", type=int, default=8, help="round kept counts to a multiple (groups >= 32)")
    parser.add_argument("--calib", metavar="DATA", help="calibration data for activation/hessian/reconstruction")
    parser.add_argument("--json", metavar="FILE", help="write the full plan as JSON ('-' for stdout)")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Load, canonicalize, analyze, select; print a summary and optionally write the JSON plan."""
    from slimcc.passes.canonicalize import Canonicalize
    from slimcc.passes.prune.channels import analyze_channels
    from slimcc.passes.prune.prune_channels import PruneChannels
    from slimcc.passes.prune.report import plan_report

    prune = PruneChannels(ratio=args.ratio, macs=args.macs, criterion=args.criterion, scope=args.scope,
                          round=args.round, allocation=args.allocation)
    model = load_model(args.model, parse_input_shapes(args.input_shape))
    Canonicalize().run(model)
    calib = None
    if prune.needs_calibration:
        if not args.calib:
            raise SlimccError(f"--criterion {args.criterion} --allocation {args.allocation} needs calibration data; "
                              "give --calib FILE.npz|FOLDER")
        from slimcc.ir.calibration import load_calibration
        calib = load_calibration(args.calib, model)
    analysis = analyze_channels(model.graph)
    selection = prune.select(model, analysis, PassContext(calibration=calib, progress=not args.quiet))
    data = plan_report(model, analysis, selection, layers=True)
    data["model"] = str(args.model)
    if args.json == "-":
        print_json(data)
        return 0
    if args.json:
        from slimcc.ir.atomic import atomic_file
        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    if not args.quiet:
        rows = [[g["id"], g["units"], g["kept_units"], ", ".join(m["tensor"] for m in g["members"][:2])[:60]]
                for g in data["groups"] if g["prunable"]]
        print_table(["group", "units", "kept", "tensors"], rows)
        blocked = [g for g in data["groups"] if not g["prunable"]]
        for g in blocked:
            print(f"blocked group {g['id']} ({g['units']} units): {'; '.join(g['blocked'])[:160]}")
        sensitivity = (data.get("criterion_analysis") or {}).get("sensitivity")
        for curve in (sensitivity or {}).get("groups", []):
            points = ", ".join(f"-{p['removed']}: {p['error']:.3g}" for p in curve["points"])
            print(f"group {curve['group']} ({curve['units']} units) output error {points}; removes {curve['removed']}")
        for blocker in data["blockers"][:8]:
            print(f"  {blocker['macs_share']:.1%} of conv MACs held back by: {blocker['reason'][:140]}")
        print(f"coverage {data['coverage']:.1%} of conv MACs; groups {len(data['groups'])} "
              f"({data['prunable_groups']} prunable); MACs {data['macs']:,} -> ~{data['macs_after_estimate']:,}")
    return 0
