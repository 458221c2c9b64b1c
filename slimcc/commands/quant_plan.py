"""`slimcc quant-plan MODEL --calib DATA`: which layers int8 placement would keep float, and why.

Runs the analysis behind `qdq-insert{placement=auto}` (slimcc.passes.quant.placement) on the
canonicalized model without writing anything: the output error with each layer alone int8,
with --cumulative the error with every layer up to it int8 (network order), the layers the
budget keeps float, and the error of that placement; and each layer's kernel time on onnxruntime
as fp32 and as int8 (the all-int8 model profiled beside the float one,
slimcc.passes.quant.layer_times), which the placement weighs against error as compress does
(speed=onnxruntime), with the layers kept float for speed. --json prints it all as JSON.
"""

from __future__ import annotations

from slimcc.commands.common import add_model_arguments, print_json
from slimcc.commands.optimize import load_model_and_calibration
from slimcc.errors import SlimccError


SUMMARY = "show which layers int8 keeps float under an error budget, and why"
DESCRIPTION = ("Measure each layer's int8 sensitivity on calibration data and show the placement "
               "`slimcc compress --int8` would choose.")
OPTIONS = (
    ("--calib", {"required": True, "metavar": "DATA", "help": "calibration .npz or image folder"}),
    ("--budget", {"type": float, "default": None, "metavar": "E",
                  "help": "largest relative L2 output error (default: qdq-insert's)"}),
)


def add_parser(sub) -> None:
    """Register the `quant-plan` subcommand."""
    parser = sub.add_parser("quant-plan", help=SUMMARY, description=DESCRIPTION)
    add_model_arguments(parser)
    for flag, options in OPTIONS:
        parser.add_argument(flag, **options)
    parser.add_argument("--cumulative", action="store_true", help="also the error with every layer up to each int8")
    parser.add_argument("--top", type=int, default=20, metavar="N", help="layers listed (most sensitive first)")
    parser.add_argument("--no-times", action="store_true",
                        help="do not profile per-layer kernel times (placement then weighs error only)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Handler of `slimcc quant-plan`."""
    from dataclasses import replace

    from slimcc.passes.base import PassContext
    from slimcc.passes.canonicalize import Canonicalize
    from slimcc.compress_plan import plan as compress_plan
    from slimcc.passes.pipeline import parse_pipeline
    from slimcc.passes.quant.placement import Trials, auto_placement, cumulative_errors, placement_summary
    from slimcc.passes.quant.qdq_insert import RANGE_CACHE, ROUNDING_CACHE

    if args.budget is not None and not args.budget > 0:
        raise SlimccError(f"--budget {args.budget}: give a relative error > 0 (e.g. 0.03)")
    _, model, calib = load_model_and_calibration(args)
    Canonicalize().run(model)
    # the qdq-insert step `slimcc compress --int8 --calib` plans
    step = next(s for s in compress_plan(int8=True, has_calibration=True).steps if s.startswith("qdq-insert"))
    insert = parse_pipeline(step)[0]
    insert = replace(insert, budget=args.budget) if args.budget is not None else insert
    insert = replace(insert, speed="off") if args.no_times else insert
    ctx = PassContext(calibration=calib, progress=not args.json)
    plan = auto_placement(model, ctx, insert, analyse=True)
    result = plan.as_dict()
    if plan.equalized:
        from slimcc.passes.quant.equalize import CrossLayerEqualize

        CrossLayerEqualize().run(model)
    # the plan's ranges (per tensor with method=auto) were measured on this (equalized) model
    planned = replace(ctx, notes={**ctx.notes, RANGE_CACHE: plan.ranges, ROUNDING_CACHE: plan.rounding})
    every = replace(insert, placement="all", equalize="off", method=plan.method)
    if args.cumulative:
        errors = cumulative_errors(Trials(model, planned, every), ctx.progress)
        result["cumulative"] = [{"layer": name, "error": round(e, 6)} for name, e in errors.items()]  # network order
    if args.json:
        print_json(result)
        return 0
    print(placement_summary(result, args.top))
    if plan.float_layers:
        print(f"float: {', '.join(plan.float_layers)}")
    if "speed" in result:
        print(times_table(result))
    if args.cumulative:
        print("cumulative output error, layers int8 in network order:")
        for row in result["cumulative"]:
            print(f"  {row['error']:9.5f}  {row['layer']}")
    return 0


def times_table(result: dict) -> str:
    """Per-layer lines: error alone int8, fp32 and int8 kernel microseconds, and where the plan keeps it."""
    floats = set(result["float_layers"])
    speed = result["speed"]
    times = speed["kernel_times_us"]
    lines = ["kernel time on onnxruntime (us; int8: every candidate int8), network order:",
             "      error    fp32    int8  plan   layer"]
    for name, t in times.items():
        error = result["sensitivity"].get(name)
        shown = f"{error:9.5f}" if error is not None else " " * 9
        plan = "" if name == "other" else ("float" if name in floats else "int8")
        lines.append(f"  {shown} {t['fp32']:7.0f} {t['int8']:7.0f}  {plan:5} {name}")
    total = {k: sum(t[k] for t in times.values()) for k in ("fp32", "int8")}
    lines.append(f"  {'total':>9} {total['fp32']:7.0f} {total['int8']:7.0f}")
    estimate = speed["estimated_us"]
    lines.append(f"estimated layer time (us): fp32 {estimate['fp32']:.0f}, all int8 {estimate['all_int8']:.0f}, "
                 f"error budget's placement {estimate['error_budget']:.0f}, chosen {estimate['chosen']:.0f}")
    if speed["float_for_speed"]:
        lines.append(f"float for speed: {', '.join(speed['float_for_speed'])}")
    return "\n".join(lines)
