"""`slimcc compare A.onnx B.onnx --calib DATA`: the quantization debugger.

Runs both models on the calibration inputs and compares every activation they share by name
(an int8 model from `slimcc compress --int8` keeps the float model's tensor names): SQNR,
cosine similarity and relative error per layer, the SQNR each layer's inputs had and how much
it lost, the layer that lost the most, output agreement (top-1 for classifiers), a text plot
of the error by layer, and with --plot the same plot as an image (matplotlib).
"""

from __future__ import annotations

from pathlib import Path

from slimcc.commands.common import print_json, print_table
from slimcc.errors import SlimccError
from slimcc.ir.model import load_model, parse_input_shapes


SUMMARY = "per-layer error between two versions of a model (e.g. fp32 and int8)"
DESCRIPTION = ("Compare two versions of a model layer by layer on calibration inputs: SQNR, cosine similarity and "
               "relative error of every tensor both have, the layer that adds the most error, and output agreement.")


def add_parser(sub) -> None:
    """Register the `compare` subcommand."""
    parser = sub.add_parser("compare", help=SUMMARY, description=DESCRIPTION)
    parser.add_argument("reference", metavar="A", help="reference ONNX model (e.g. the fp32 one)")
    parser.add_argument("candidate", metavar="B", help="ONNX model to judge (e.g. the int8 one)")
    parser.add_argument("--calib", required=True, metavar="DATA", help="inputs: .npz keyed by input name, or images")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                        help="fix a dynamic input shape (repeatable), applied to both models")
    parser.add_argument("--batches", type=int, default=8, metavar="N", help="compare on the first N batches")
    parser.add_argument("--top", type=int, default=15, metavar="N", help="rows shown: the N layers that add most error")
    parser.add_argument("--plot", metavar="PNG", help="also draw SQNR by layer into this image (needs matplotlib)")
    parser.add_argument("--json", action="store_true", help="print the full comparison as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Handler of `slimcc compare`."""
    from slimcc.ir.calibration import load_calibration
    from slimcc.passes.quant.layer_errors import compare_layers, error_bars

    if args.batches < 1 or args.top < 1:
        raise SlimccError("--batches and --top must be >= 1")
    shapes = parse_input_shapes(args.input_shape)
    reference, candidate = load_model(args.reference, shapes), load_model(args.candidate, shapes)
    batches = load_calibration(args.calib, reference).batches[:args.batches]
    result = compare_layers(reference, candidate, batches, progress=not args.json)
    if not result["layers"]:
        raise SlimccError("the models share no float activation tensor by name; nothing to compare layer by layer")
    if args.plot:
        draw(result["layers"], Path(args.plot))
    if args.json:
        print_json(result)
        return 0
    shown = sorted(sorted(result["layers"], key=lambda l: -l["added_db"])[:args.top], key=result["layers"].index)
    print(f"{result['tensors']} shared tensors on {len(batches)} batch(es); rows: the {len(shown)} layers that add "
          "the most error, in network order")
    print_table(["node", "op", "SQNR dB", "fit SQNR", "cosine", "rel L2", "input SQNR", "added dB"],
                [[l["node"], l["op"], f"{l['sqnr_db']:.2f}", f"{l['channel_fit_sqnr_db']:.2f}", f"{l['cosine']:.5f}",
                  f"{l['rel_l2']:.4f}", f"{l['input_sqnr_db']:.2f}", f"{l['added_db']:.2f}"] for l in shown])
    print("\n".join(error_bars(result["layers"], top=args.top)))
    worst = result["worst_layer"]
    print(f"largest loss: {worst['node']} ({worst['op']}) drops SQNR by {worst['added_db']:.2f} dB to "
          f"{worst['channel_fit_sqnr_db']:.2f} dB (per-channel gain fitted)")
    for name, metrics in result["outputs"].items():
        agreement = f", top-1 agreement {metrics['top1_agreement']:.1%} of {metrics['samples']}" \
            if "top1_agreement" in metrics else ""
        print(f"output {name}: SQNR {metrics['sqnr_db']:.2f} dB, cosine {metrics['cosine']:.5f}{agreement}")
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def draw(layers: list[dict], path: Path) -> None:
    """SQNR by layer as a PNG, written to a temporary name and renamed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SlimccError("--plot needs matplotlib (pip install matplotlib)") from None
    figure, axis = plt.subplots(figsize=(max(6.0, len(layers) * 0.12), 4.0))
    axis.plot(range(len(layers)), [l["sqnr_db"] for l in layers], marker=".", label="SQNR")
    axis.plot(range(len(layers)), [l["channel_fit_sqnr_db"] for l in layers], marker=".",
              label="per-channel gain fitted")
    axis.legend()
    axis.set_xlabel("tensor (network order)")
    axis.set_ylabel("SQNR (dB)")
    axis.set_title("error by layer (lower is worse)")
    temp = path.with_name(path.name + ".tmp.png")
    figure.savefig(temp, dpi=100, bbox_inches="tight")
    plt.close(figure)
    temp.replace(path)
