"""fold-constants: evaluate every node whose inputs are constant, and Shape of static tensors."""

from __future__ import annotations

import contextlib

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.model import first_line
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.canonicalize._shapes import forget_unknown_output_shapes

# folded tensors larger than this stay computed (a folded Expand/Tile can blow up the file)
MAX_FOLDED_BYTES = 16 << 20
INT64_MAX = np.iinfo(np.int64).max


def split_shape_ranges(graph: gs.Graph) -> int:
    """Rewrite Shape{start,end} as Shape -> Slice(start, end); returns how many.

    onnx-graphsurgeon's shape folding ignores start/end and folds such a node to the whole
    shape; Shape -> Slice means the same (both clamp and wrap negative bounds alike) and folds right.
    """
    ranged = [n for n in graph.nodes if n.op == "Shape" and ("start" in n.attrs or "end" in n.attrs)]
    for node in ranged:
        start, end = int(node.attrs.pop("start", 0)), node.attrs.pop("end", None)
        sliced = node.outputs[0]
        whole = gs.Variable(f"{sliced.name}__whole_shape", dtype=np.int64)
        node.outputs = [whole]
        bounds = [gs.Constant(f"{sliced.name}__{key}", np.array([value], np.int64))
                  for key, value in (("start", start), ("end", INT64_MAX if end is None else int(end)))]
        graph.nodes.append(gs.Node("Slice", name=f"{node.name or sliced.name}__range", inputs=[whole, *bounds],
                                   outputs=[sliced]))
    return len(ranged)


@contextlib.contextmanager
def _quiet_graphsurgeon():
    """onnx-graphsurgeon logs a warning per skipped node and the onnxruntime session it uses
    warns about its own graph optimizations; keep the console clean (errors still show)."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    logger = gs.logger.G_LOGGER
    old = logger.severity
    logger.severity = logger.ERROR
    try:
        yield
    finally:
        logger.severity = old


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Fold constant sub-graphs and shape computations on static shapes into initializers."""

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        forget_unknown_output_shapes(model.graph)
        if not model.is_static():  # Shape folding needs inferred shapes; our rewrites keep them
            model.refresh_shapes()
        work = model.copy()  # graphsurgeon folds in place; a failure must leave the model untouched
        graph = work.graph
        before = len(graph.nodes) + split_shape_ranges(graph)
        try:
            with _quiet_graphsurgeon():
                graph.toposort()
                graph.fold_constants(fold_shapes=True, error_ok=False, size_threshold=MAX_FOLDED_BYTES)
                graph.cleanup().toposort()
        except Exception as exc:  # onnxruntime evaluates the constant sub-graphs inside graphsurgeon
            return PassResult(False, {"folded_nodes": 0,
                                      "refused": f"evaluating constant sub-graphs failed: {first_line(exc)}"})
        folded = before - len(graph.nodes)
        if folded > 0:
            model.graph = graph
        return PassResult(folded > 0, {"folded_nodes": folded})
