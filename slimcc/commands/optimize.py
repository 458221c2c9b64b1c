"""`slimcc optimize MODEL -p PIPELINE -o OUT`: run a pass pipeline, verify it, write the result.

Verification is on by default (`--no-verify` turns it off) and is slimcc.passes.verified's gate,
the same one every entry point uses: every exact pass must keep the outputs equal (relative
error <= 1e-4 or --max-error, or within 4x the change onnxruntime's own fusions make) against
the model before it, so a bad pass is named; the final model is compared with the original, and
lossy pipelines must stay within --max-error when given. OUT is written (atomically) only after
everything succeeded.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from slimcc.commands.common import add_model_arguments, print_json, print_table
from slimcc.commands.inspect import cost_with_static_shapes, human
from slimcc.errors import SlimccError
from slimcc.ir.model import Model, load_model, parse_input_shapes, save_model
from slimcc.passes.manager import ManagerReport
from slimcc.passes.pipeline import format_pipeline, parse_pipeline
from slimcc.passes.verified import EXACT_REL_TOL, pipeline_is_exact, run_verified


def add_parser(sub) -> None:
    """Register the `optimize` subcommand."""
    parser = sub.add_parser("optimize", help="run a pass pipeline on a model, verify it and save it",
                            description="Run a pass pipeline (e.g. 'canonicalize,prune-channels{ratio=0.5}'), "
                                        "verify against onnxruntime, and write the result.")
    add_model_arguments(parser)
    parser.add_argument("-p", "--pipeline", required=True, metavar="PIPELINE",
                        help="passes separated by commas, options in braces (see `slimcc passes`)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output .onnx file")
    parser.add_argument("--calib", metavar="DATA",
                        help="calibration data: .npz keyed by input name (samples on a leading axis), or a "
                             "folder of images (resized to the input HxW, RGB, /255, ImageNet mean/std, NCHW)")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="compare with the original on onnxruntime before writing (default: on)")
    parser.add_argument("--max-error", type=float, metavar="F",
                        help=f"largest allowed relative output error (default {EXACT_REL_TOL:g} for exact "
                             "pipelines; unlimited for lossy ones)")
    parser.add_argument("--on-fail", choices=("stop", "rollback"), default="stop",
                        help="when a pass fails verification (an exact pass changing outputs, or a lossy "
                             "one exceeding --max-error): stop (default) or undo it and go on")
    parser.add_argument("--seed", type=int, default=0, help="seed for random verification inputs")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def check_output_path(path: Path) -> None:
    """Refuse an output path that cannot be written, before doing any work."""
    if path.is_dir():
        raise SlimccError(f"output path {path} is a folder; give a file name ending in .onnx")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SlimccError(f"output folder {folder} does not exist; create it first")


def summarize(model: Model, file_bytes: int) -> dict:
    """nodes, params, MACs, weight bytes and file size of a model."""
    report, _ = cost_with_static_shapes(model)
    return {"nodes": len(model.graph.nodes), "params": report.params, "macs": report.macs,
            "macs_complete": report.complete, "weight_bytes": report.weight_bytes, "file_bytes": file_bytes}


def load_model_and_calibration(args) -> tuple[Path, Model, object]:
    """The MODEL argument loaded with --input-shape, and --calib data (or None) checked against it."""
    source = Path(args.model)
    model = load_model(source, parse_input_shapes(args.input_shape))
    calib = None
    if args.calib:
        from slimcc.ir.calibration import load_calibration

        calib = load_calibration(args.calib, model)
    return source, model, calib


def run(args) -> int:
    """Handler of `slimcc optimize`."""
    quiet = bool(getattr(args, "quiet", False))
    passes = parse_pipeline(args.pipeline)
    output = Path(args.output)
    check_output_path(output)
    if args.max_error is not None and (not math.isfinite(args.max_error) or args.max_error < 0):
        raise SlimccError(f"--max-error {args.max_error}: give a finite number >= 0")
    if args.max_error is not None and not args.verify:
        raise SlimccError("--max-error needs verification; drop --no-verify")
    needing = [p.name for p in passes if p.needs_calibration]
    if needing and not args.calib:
        raise SlimccError(f"pass(es) {', '.join(needing)} need calibration data; give --calib FILE.npz|FOLDER")
    exact = pipeline_is_exact(passes)

    source, model, calib = load_model_and_calibration(args)
    before = summarize(model, source.stat().st_size)
    outcome = run_verified(model, passes, calib, max_error=args.max_error, seed=args.seed,
                           progress=not quiet and not args.json, verify=args.verify,
                           rollback=args.on_fail == "rollback")
    report, seconds, verification = outcome.report, outcome.seconds, outcome.verification

    save_model(model, output)
    after = summarize(model, output.stat().st_size)
    summary = {"model": str(source), "output": str(output), "pipeline": format_pipeline(passes), "exact": exact,
               "seconds": round(seconds, 4), "before": before, "after": after, "passes": report.as_dict(),
               "rolled_back": [r.name for r in report.records if r.rolled_back], "verification": verification,
               "calibration": None if calib is None else {"batches": len(calib), "source": calib.source}}
    if args.json:
        print_json(summary)
    elif not quiet:
        print_report(summary, report)
    return 0


def print_report(summary: dict, report: ManagerReport) -> None:
    """Before/after table, per-pass timing and the verification line."""
    before, after = summary["before"], summary["after"]
    rows = []
    for key, label in (("nodes", "nodes"), ("params", "params"), ("macs", "MACs"),
                       ("weight_bytes", "weight bytes"), ("file_bytes", "file bytes")):
        a, b = before[key], after[key]
        if key == "macs" and not (before["macs_complete"] and after["macs_complete"]):
            rows.append([label, _partial(before), _partial(after), "-"])
            continue
        ratio = f"{b / a:.3f}x" if a else "-"
        rows.append([label, human(a), human(b), ratio])
    print(f"pipeline: {summary['pipeline']}")
    if summary["calibration"]:
        print(f"calibration: {summary['calibration']['batches']} batch(es) from {summary['calibration']['source']}")
    print_table(["", "before", "after", "after/before"], rows)
    if not (before["macs_complete"] and after["macs_complete"]):
        print("MACs need static shapes: give --input-shape NAME=D0,D1,... for dynamic inputs")
    print_table(["pass", "modified", "seconds", "notes"],
                [[r.spec, "rolled back" if r.rolled_back else ("yes" if r.result.modified else "no"),
                  f"{r.seconds:.3f}", _short_stats(r.result.stats)] for r in report.records])
    for record in report.records:
        if "placement" in record.result.stats and not record.rolled_back:
            from slimcc.passes.quant.placement import placement_summary

            print(placement_summary(record.result.stats["placement"]))
    if summary["rolled_back"]:
        print(f"rolled back (failed verification): {', '.join(summary['rolled_back'])}")
    verification = summary["verification"]
    if verification is not None:
        tol = verification["tolerance"]
        print(f"verified on {verification['batches']} input batch(es): max relative error "
              f"{verification['max_rel']:.3g} (max abs {verification['max_abs']:.3g})"
              + (f", limit {tol:g}" if tol is not None else ", no limit (lossy pipeline; set --max-error)"))
    print(f"wrote {summary['output']}")


def _partial(summary: dict) -> str:
    """MACs of a model whose shapes are partly dynamic: a lower bound, or '?' when nothing is known."""
    if summary["macs_complete"]:
        return human(summary["macs"])
    return f">={human(summary['macs'])}" if summary["macs"] else "?"


def _short_stats(stats: dict) -> str:
    """The scalar entries of a pass's stats, shortened for a table cell."""
    if "error" in stats:
        return str(stats["error"])[:80]
    items = [f"{k}={v}" for k, v in stats.items() if isinstance(v, (int, float, str, bool))]
    text = " ".join(items)
    return text if len(text) <= 80 else text[:77] + "..."
