"""Fresh tensor and node names for graph rewrites."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import onnx_graphsurgeon as gs

from slimcc.errors import SlimccError

_shared: list[tuple[gs.Graph, _Index | None]] = []  # innermost shared_names block last


class NameScope:
    """Hands out tensor/node names that do not collide with anything already in the graph.

    Build one per rewrite (it indexes the graph's names once) and ask it for every new name.
    Inside `shared_names(graph)`, every NameScope of that graph shares one index, built once.
    """

    def __init__(self, graph: gs.Graph):
        if _shared and _shared[-1][0] is graph:
            if _shared[-1][1] is None:
                _shared[-1] = (graph, _Index(_used_names(graph)))
            index = _shared[-1][1]
        else:
            index = _Index(_used_names(graph))
        self.used, self._next = index.used, index.next

    def new(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`... : the first name not used yet (then reserved)."""
        name, index = base, self._next.get(base, 1)
        while name in self.used:
            name = f"{base}_{index}"
            index += 1
        self._next[base] = index  # the next request for `base` starts here, not at base_1 again
        self.used.add(name)
        return name


class _Index:
    """Names in use, and per base name the suffix to try next (shared by a block's NameScopes)."""

    def __init__(self, used: set[str]):
        self.used, self.next = used, {}


def _used_names(graph: gs.Graph) -> set[str]:
    return set(graph.tensors().keys()) | {n.name for n in graph.nodes if n.name}


@contextlib.contextmanager
def shared_names(graph: gs.Graph) -> Iterator[None]:
    """Within the block, NameScopes of `graph` share one index of its names (built on first use), so a
    pass that asks for a name per node stays linear. Names must come from NameScope in the block;
    a duplicate tensor name found when it ends is reported as an error, never kept."""
    _shared.append((graph, None))
    try:
        yield
    finally:
        _, used = _shared.pop()
    if used is not None:
        try:
            graph.tensors(check_duplicates=True)
        except Exception as exc:  # graphsurgeon raises OnnxGraphSurgeonException
            raise SlimccError(f"a rewrite produced duplicate tensor names: {exc}") from None
