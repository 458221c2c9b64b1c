"""`slimcc inspect MODEL`: op histogram, inputs/outputs, params, MACs, file size, per-layer costs;
`--graph OUT.graphml|OUT.dot` also writes the op graph (networkx view) for graph viewers."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from slimcc.commands.common import add_model_arguments, print_json, print_table
from slimcc.ir.cost import CostReport, NodeCost, model_cost
from slimcc.ir.graphview import write_graph
from slimcc.ir.model import Model, first_line, load_model, parse_input_shapes
from slimcc.report import human as report_human

SHAPE_FOLDING_PASSES = ("constant-to-initializer", "fold-constants")


def add_parser(sub) -> None:
    """Register the `inspect` subcommand."""
    parser = sub.add_parser("inspect", help="show ops, inputs/outputs, params, MACs and size of a model",
                            description="Show a model's op histogram, inputs/outputs, params, MACs and file size.")
    add_model_arguments(parser)
    parser.add_argument("--layers", action="store_true", help="also print one row per node")
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of tables")
    parser.add_argument("--graph", metavar="OUT", help="also write the op graph to OUT.graphml or OUT.dot "
                        "(ops and graph inputs/outputs as nodes, tensors as edges with shape and dtype)")
    parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def cost_with_static_shapes(model: Model) -> tuple[CostReport, str]:
    """Cost of `model`'s own nodes; when shapes are unknown, shapes found by folding shape
    sub-graphs on a copy are borrowed (by tensor name). Nodes that folding removed entirely
    compute constants only: they cost 0 at run time once canonicalized. Returns the report
    and how shapes were found."""
    report = model_cost(model)
    if report.complete:
        return report, "shape-inference"
    folded = _folded_copy(model)
    if folded is None:
        return report, "shape-inference"
    folded_tensors = folded.graph.tensors()
    view = model.copy()
    for name, tensor in view.graph.tensors().items():
        other = folded_tensors.get(name)
        if other is not None and _static(other.shape) and not _static(tensor.shape) and not hasattr(tensor, "values"):
            tensor.shape = [int(d) for d in other.shape]
            tensor.dtype = tensor.dtype if tensor.dtype is not None else other.dtype
    report = model_cost(view)
    for index, (cost, node) in enumerate(zip(report.per_node, view.graph.nodes)):
        if cost.macs is None and not any(t.name in folded_tensors for t in node.outputs):
            report.per_node[index] = NodeCost(cost.name, cost.op, cost.params, 0, 0,
                                              "constant computation, folded away by canonicalize")
    report.macs = sum(c.macs for c in report.per_node if c.macs is not None)
    report.bytes = sum(c.bytes for c in report.per_node if c.bytes is not None)
    report.unknown = [c.name for c in report.per_node if c.macs is None]
    return report, "shape-folding"


def _folded_copy(model: Model) -> Model | None:
    """A copy with shape sub-graphs folded, if the folding passes are registered and succeed."""
    from slimcc.passes.base import registry

    passes = registry()
    _quiet_onnxruntime()
    if not all(name in passes for name in SHAPE_FOLDING_PASSES):
        return None
    copy = model.copy()
    try:
        for name in SHAPE_FOLDING_PASSES:
            passes[name]().run(copy)
        copy.refresh_shapes()
    except Exception as exc:  # best effort: without folding, MACs stay a lower bound; say why
        print(f"note: shape folding failed ({type(exc).__name__}: {first_line(exc)}); MACs are a lower bound",
              file=sys.stderr)
        return None
    return copy


def _quiet_onnxruntime() -> None:
    """Constant folding runs onnxruntime, whose optimizer logs warnings to stderr; keep errors only."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def describe(model: Model, path: Path, *, layers: bool) -> dict:
    """Everything `inspect` reports, as a JSON-ready dict."""
    report, shapes_from = cost_with_static_shapes(model)
    graph = model.graph
    data = {
        "model": str(path),
        "file_bytes": path.stat().st_size,
        "opset": model.opset,
        "nodes": len(graph.nodes),
        "ops": dict(sorted(Counter(n.op for n in graph.nodes).items(), key=lambda kv: (-kv[1], kv[0]))),
        "inputs": [_tensor_info(t) for t in graph.inputs],
        "outputs": [_tensor_info(t) for t in graph.outputs],
        "shapes_from": shapes_from,
    }
    data.update(report.as_dict(layers=layers))
    if layers:
        outputs = {c.name: n.outputs for c, n in zip(report.per_node, graph.nodes)}
        for row in data["layers"]:
            row["output_shapes"] = [_shape(t.shape) for t in outputs[row["name"]]]
    return data


def _tensor_info(tensor) -> dict:
    return {"name": tensor.name, "shape": _shape(tensor.shape),
            "dtype": str(getattr(tensor.dtype, "name", tensor.dtype)) if tensor.dtype is not None else None}


def _shape(shape):
    return None if shape is None else [d if isinstance(d, int) else str(d) for d in shape]


def human(n: int | None) -> str:
    """1234567 -> '1.23M' (None -> '?')."""
    return report_human(n, missing="?")


def run(args) -> int:
    """Handler of `slimcc inspect`."""
    shapes = parse_input_shapes(args.input_shape)
    path = Path(args.model)
    model = load_model(path, shapes)
    if args.graph:
        write_graph(model.graph, args.graph)
    data = describe(model, path, layers=args.layers)
    if args.json:
        print_json(data)
        return 0
    if getattr(args, "quiet", False):
        return 0
    print(f"{path}  opset {data['opset']}  {data['nodes']} nodes  {human(data['file_bytes'])}B on disk")
    print_table(["input", "shape", "dtype"], [[t["name"], t["shape"], t["dtype"]] for t in data["inputs"]])
    print_table(["output", "shape", "dtype"], [[t["name"], t["shape"], t["dtype"]] for t in data["outputs"]])
    print_table(["op", "count"], [[op, n] for op, n in data["ops"].items()])
    macs = human(data["macs"])
    if data["macs_unknown_nodes"]:
        macs = f">= {macs} ({len(data['macs_unknown_nodes'])} nodes with dynamic shapes; give --input-shape)"
    print(f"params {human(data['params'])} ({data['params']})  MACs {macs}  weights {human(data['weight_bytes'])}B")
    if args.layers:
        print_table(["node", "op", "output shape", "params", "MACs", "bytes"],
                    [[r["name"], r["op"], ",".join(str(s) for s in r["output_shapes"]), r["params"],
                      "?" if r["macs"] is None else r["macs"], "?" if r["bytes"] is None else r["bytes"]]
                     for r in data["layers"]])
    return 0
