"""fold-constants: evaluate every node whose inputs are constant, and Shape of static tensors."""

from __future__ import annotations

import contextlib

import onnx_graphsurgeon as gs

from slimcc.ir.model import first_line
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.canonicalize._shapes import forget_unknown_output_shapes

# folded tensors larger than this stay computed (a folded Expand/Tile can blow up the file)
MAX_FOLDED_BYTES = 16 << 20


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
        before = len(graph.nodes)
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
