"""Small graph-building helpers shared by the decomposition rewrites (unique names, nodes, constants)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.names import NameScope  # noqa: F401  (re-exported for the rewrite modules)


@dataclass
class LastFactor:
    """The linear factor that produces a decomposed layer's output, for least-squares refit.

    The layer computes y = x_last @ W (+ b) along `axis` of `input_name` (1 for convs and
    [N, C, P] MatMuls, -1 for Gemm/MatMul rows). `weight` holds W as stored in the graph:
    `layout` says how ("conv": [Cout, R, 1, 1]; "rows": [Cout, R]; "cols": [R, Cout]);
    `scale` is Gemm's alpha and `bias_scale` its beta; `bias` is a Constant of Cout values or None.
    """

    layer: str
    input_name: str
    output_name: str
    weight: gs.Constant
    bias: gs.Constant | None
    layout: str
    axis: int
    scale: float = 1.0
    bias_scale: float = 1.0


def constant(scope: NameScope, base: str, values: np.ndarray, dtype) -> gs.Constant:
    """A named constant in the layer's dtype."""
    return gs.Constant(scope.new(base), np.ascontiguousarray(np.asarray(values).astype(dtype)))


def variable(scope: NameScope, base: str, dtype, shape) -> gs.Variable:
    """A named intermediate tensor with a known dtype and shape."""
    return gs.Variable(scope.new(base), dtype=dtype, shape=list(shape) if shape is not None else None)


def node(scope: NameScope, op: str, base: str, inputs, outputs, attrs=None) -> gs.Node:
    """A named node (not yet in any graph)."""
    return gs.Node(op=op, name=scope.new(base), attrs=dict(attrs or {}), inputs=list(inputs), outputs=list(outputs))


_pending: dict[int, dict[int, list[gs.Node]]] = {}  # graph id -> {old node id: its replacement}


def replace_node(graph: gs.Graph, old: gs.Node, new_nodes: list[gs.Node]) -> None:
    """Put `new_nodes` where `old` was (keeping topological order) and detach `old`.

    Inside `batched_replacements(graph)` the node list is rebuilt once when the block ends.
    """
    old.inputs.clear()
    old.outputs.clear()
    pending = _pending.get(id(graph))
    if pending is not None:
        pending[id(old)] = list(new_nodes)
        return
    index = next(i for i, n in enumerate(graph.nodes) if n is old)
    graph.nodes[index:index + 1] = new_nodes


@contextlib.contextmanager
def batched_replacements(graph: gs.Graph) -> Iterator[None]:
    """Collect `replace_node` calls on `graph` and splice them all in one pass over its nodes at the end
    (splicing each at once would search the node list per replacement: quadratic in depth)."""
    pending: dict[int, list[gs.Node]] = {}
    _pending[id(graph)] = pending
    try:
        yield
    finally:
        del _pending[id(graph)]
        if pending:
            graph.nodes = [new for node in graph.nodes for new in pending.get(id(node), [node])]
