"""Timing the rewrite forms of one pruned conv on single-thread onnxruntime (in-memory per-layer models)."""

from __future__ import annotations


import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.model import Model
from slimcc.ir.verify import interleaved_latency
from slimcc.passes.prune.kernel_shape_geometry import ConvGeometry
from slimcc.passes.prune.kernel_shape_rewrite import emit_gather, emit_rect, emit_rows


def layer_model(node: gs.Node, geom: ConvGeometry, form: str, keep: np.ndarray | None = None,
                block: tuple[int, int, int, int] | None = None, opset: int = 17) -> Model:
    """A one-conv model with `node`'s weights and input shape, rewritten to `form` ("dense" = unchanged)."""
    x = gs.Variable("x", dtype=np.float32, shape=list(geom.input_shape))
    y = gs.Variable("y", dtype=np.float32)
    inputs = [x, gs.Constant("w", np.asarray(geom.weight, np.float32))]
    if len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant):
        inputs.append(gs.Constant("b", np.asarray(node.inputs[2].values, np.float32)))
    conv = gs.Node("Conv", "conv", attrs=dict(node.attrs), inputs=inputs, outputs=[y])
    graph = gs.Graph(nodes=[conv], inputs=[x], outputs=[y], opset=opset)
    if form == "rect":
        emit_rect(conv, geom, block)
    elif form == "rows":
        emit_rows(graph, conv, geom, keep)
    elif form == "gather":
        emit_gather(graph, conv, geom, keep)
    elif form != "dense":
        raise ValueError(f"unknown form {form!r}")
    graph.cleanup().toposort()
    return Model(graph)


def time_models(models: list[Model], repeats: int = 20, warmup: int = 3, seed: int = 0) -> list[float]:
    """Median seconds per run of each model on single-thread optimized onnxruntime, runs interleaved."""
    shape = models[0].graph.inputs[0].shape
    feeds = {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}
    return interleaved_latency(models, feeds, repeats, warmup)
