"""Fresh tensor and node names for graph rewrites."""

from __future__ import annotations

import onnx_graphsurgeon as gs


class NameScope:
    """Hands out tensor/node names that do not collide with anything already in the graph.

    Build one per rewrite (it indexes the graph's names once) and ask it for every new name.
    """

    def __init__(self, graph: gs.Graph):
        self.used = set(graph.tensors().keys()) | {n.name for n in graph.nodes if n.name}

    def new(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`... : the first name not used yet (then reserved)."""
        name, index = base, 1
        while name in self.used:
            name = f"{base}_{index}"
            index += 1
        self.used.add(name)
        return name
