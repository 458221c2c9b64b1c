"""`slimcc compress MODEL -o OUT`: the common compression path in one command.

Plans a pipeline from --macs / --rank-speedup / --int8 / --calib (slimcc.compress_plan),
runs it with the same verification gate as `slimcc optimize` (exact passes checked one by one
against onnxruntime, the final model compared with the original, --max-error enforced),
prints the pipeline text so it can be edited and rerun with `slimcc optimize -p`, prints the
before/after table, and with --target also compiles the result with TVM.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from slimcc.commands.common import add_model_arguments, print_json
from slimcc.commands.optimize import check_output_path, load_model_and_calibration, print_report, summarize
from slimcc.compress_plan import calibration_notes, plan
from slimcc.errors import SlimccError
from slimcc.ir.model import Model, save_model
from slimcc.passes.pipeline import format_pipeline, parse_pipeline
from slimcc.passes.verified import run_verified

TARGETS = ("x86", "arm", "cuda")


def add_parser(sub) -> None:
    """Register the `compress` subcommand."""
    parser = sub.add_parser(
        "compress", help="prune / decompose / quantize a model with a planned pipeline, verify it, save it",
        description="Compress a model in one command: slimcc picks a pipeline from the options, runs and verifies "
                    "it, prints the pipeline text (rerun or edit it with `slimcc optimize -p`) and a before/after "
                    "table. Without --macs/--rank-speedup/--int8 it prunes to --macs 0.5.")
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output .onnx file")
    parser.add_argument("--macs", type=float, metavar="F",
                        help="keep this fraction of the MACs by channel pruning (0 < F <= 1, e.g. 0.5)")
    parser.add_argument("--rank-speedup", type=float, metavar="M",
                        help="Tucker-2 decomposition of KxK convs with per-layer speedup M (> 1, e.g. 2)")
    parser.add_argument("--int8", action="store_true", help="insert calibrated int8 Q/DQ (needs --calib)")
    parser.add_argument("--calib", metavar="DATA",
                        help="calibration data: .npz keyed by input name, or a folder of images; enables the "
                             "accuracy-recovery passes (recover-lstsq, recover-bias)")
    parser.add_argument("--target", choices=TARGETS, help="also compile the result with TVM for this target")
    parser.add_argument("--artifact", metavar="DIR",
                        help="artifact folder for --target (default: OUT without .onnx, plus -TARGET)")
    parser.add_argument("--max-error", type=float, metavar="F",
                        help="largest allowed relative output error against the original (default: no limit)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random verification inputs")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of tables")
    parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def default_artifact_dir(output: Path, target: str) -> Path:
    """small.onnx + x86 -> small-x86/ beside it."""
    return output.with_name(f"{output.stem}-{target}")


def run(args) -> int:
    """Handler of `slimcc compress`."""
    quiet = bool(getattr(args, "quiet", False))
    output = Path(args.output)
    check_output_path(output)
    if args.max_error is not None and (not math.isfinite(args.max_error) or args.max_error < 0):
        raise SlimccError(f"--max-error {args.max_error}: give a finite number >= 0")
    if args.artifact and not args.target:
        raise SlimccError("--artifact needs --target x86|arm|cuda")
    planned = plan(macs=args.macs, rank_speedup=args.rank_speedup, int8=args.int8, has_calibration=bool(args.calib))
    passes = parse_pipeline(planned.text)

    source, model, calib = load_model_and_calibration(args)
    if calib is not None:
        planned.notes.extend(calibration_notes(planned, calib.samples))
    before = summarize(model, source.stat().st_size)
    outcome = run_verified(model, passes, calib, max_error=args.max_error, seed=args.seed,
                           progress=not quiet and not args.json)
    save_model(model, output)
    after = summarize(model, output.stat().st_size)
    summary = {"model": str(source), "output": str(output), "pipeline": format_pipeline(passes),
               "exact": outcome.exact, "notes": planned.notes,
               "rerun": rerun_command(source, output, format_pipeline(passes), args),
               "seconds": round(outcome.seconds, 4), "before": before, "after": after,
               "passes": outcome.report.as_dict(), "rolled_back": [], "verification": outcome.verification,
               "calibration": None if calib is None else {"batches": len(calib), "source": calib.source},
               "artifact": None}
    if not args.json and not quiet:
        print_report(summary, outcome.report)
        for note in planned.notes:
            print(f"note: {note}")
        print(f"rerun or edit: {summary['rerun']}")
    if args.target:
        summary["artifact"] = compile_artifact(model, args, output)
        if not args.json and not quiet:
            print(f"compiled for {args.target}: {summary['artifact']['folder']}")
    if args.json:
        print_json(summary)
    return 0


def compile_artifact(model: Model, args, output: Path) -> dict:
    """Compile the compressed model for --target; the .onnx is already written, so a failure says so."""
    folder = Path(args.artifact) if args.artifact else default_artifact_dir(output, args.target)
    try:
        from slimcc.targets.compiler import compile_file
    except ImportError as exc:
        raise SlimccError(f"wrote {output}, but the TVM targets are not available here ({exc}); "
                          "compile later with `slimcc compile`") from None
    try:
        manifest = compile_file(model, args.target, output_dir=folder)
    except SlimccError as exc:
        raise SlimccError(f"wrote {output}, but compiling for {args.target} failed: {exc}") from None
    return {"folder": str(folder), "target": args.target, "library": manifest.library}


def rerun_command(source: Path, output: Path, pipeline: str, args) -> str:
    """The equivalent `slimcc optimize` command line."""
    parts = ["slimcc", "optimize", str(source), "-p", f"'{pipeline}'", "-o", str(output)]
    for shape in args.input_shape:
        parts += ["--input-shape", shape]
    if args.calib:
        parts += ["--calib", str(args.calib)]
    if args.max_error is not None:
        parts += ["--max-error", f"{args.max_error:g}"]
    return " ".join(parts)
