"""`measure=true`: time one layer before and after decomposition on single-thread onnxruntime.

Each side is a single-layer model built in memory through slimcc.ir (the node, its
constants, and its activations as graph inputs), run with onnxruntime's graph
optimisations on, because that is how the compressed model will be deployed.
"""

from __future__ import annotations

import time

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.model import Model
from slimcc.ir.verify import make_session, random_feeds


def single_layer_graph(node: gs.Node, opset: int) -> tuple[gs.Graph, gs.Node]:
    """A graph holding a copy of `node`: its activations become graph inputs, constants are copied."""
    inputs, graph_inputs = [], []
    for index, tensor in enumerate(node.inputs):
        if isinstance(tensor, gs.Constant):
            inputs.append(gs.Constant(tensor.name, np.asarray(tensor.values)))
        elif tensor is None or not tensor.name:
            inputs.append(gs.Variable.empty())
        else:
            var = gs.Variable(tensor.name or f"in{index}", dtype=tensor.dtype, shape=list(tensor.shape))
            inputs.append(var)
            graph_inputs.append(var)
    outputs = [gs.Variable(t.name, dtype=t.dtype, shape=list(t.shape) if t.shape else None) for t in node.outputs]
    copy = gs.Node(op=node.op, name=node.name, attrs=dict(node.attrs), inputs=inputs, outputs=outputs)
    return gs.Graph(nodes=[copy], inputs=graph_inputs, outputs=outputs, opset=opset), copy


def time_model(model: Model, *, repeats: int = 15, budget_s: float = 0.5) -> float:
    """Best-of-`repeats` latency in milliseconds on single-thread onnxruntime (optimisations on)."""
    session = make_session(model, optimize=True, threads=1)
    feeds = random_feeds(model, seed=0)
    names = [o.name for o in session.get_outputs()]
    for _ in range(2):
        session.run(names, feeds)
    best, start = float("inf"), time.perf_counter()
    for i in range(repeats):
        t0 = time.perf_counter()
        session.run(names, feeds)
        best = min(best, time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
    return best * 1e3


def measure_layer(model: Model, node: gs.Node, rewrite) -> dict:
    """{'original': ms, 'decomposed': ms} for `node` alone and for `rewrite` applied to it."""
    from slimcc.passes.lowrank.emit import NameScope

    original_graph, _ = single_layer_graph(node, model.opset)
    decomposed_graph, copy = single_layer_graph(node, model.opset)
    rewrite(decomposed_graph, copy, NameScope(decomposed_graph))
    decomposed_graph.cleanup()
    original, decomposed = Model(original_graph), Model(decomposed_graph)
    return {"original": round(time_model(original), 4), "decomposed": round(time_model(decomposed), 4)}
