"""NameScope: fresh names never collide; inside shared_names one index serves the whole block."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from slimcc.errors import SlimccError
from slimcc.ir.names import NameScope, shared_names


def small_graph() -> gs.Graph:
    x = gs.Variable("x", np.float32, [1])
    y = gs.Variable("a", np.float32, [1])
    return gs.Graph(nodes=[gs.Node("Relu", name="a_1", inputs=[x], outputs=[y])], inputs=[x], outputs=[y])


def test_names_skip_tensors_and_nodes_and_continue_within_a_block():
    graph = small_graph()
    assert NameScope(graph).new("a") == "a_2"  # "a" is a tensor, "a_1" a node
    with shared_names(graph):
        names = [NameScope(graph).new("a") for _ in range(3000)]
    assert names[:2] == ["a_2", "a_3"] and names[-1] == "a_3001" and len(set(names)) == 3000


def test_a_duplicate_name_made_inside_a_block_is_an_error():
    graph = small_graph()
    with pytest.raises(SlimccError, match="duplicate tensor names"):
        with shared_names(graph):
            NameScope(graph).new("b")
            relu = graph.nodes[0]
            extra = gs.Variable("a", np.float32, [1])  # made without the scope: collides with "a"
            graph.nodes.append(gs.Node("Relu", name="c", inputs=[relu.outputs[0]], outputs=[extra]))
