"""networkx views for analyses: the op graph of an onnx-graphsurgeon graph (orderings, blocks)
and coupling graphs whose connected components are dependency groups.

Ops are nodes, activation tensors are edges. Constants (weights, shape tensors) are not
edges: they have no producer; read them from `G.nodes[key]["node"].inputs`. Only the
top-level graph is viewed: nodes inside If/Loop/Scan bodies are not expanded.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from slimcc.errors import SlimccError
from slimcc.ir.atomic import atomic_file

INPUT, OUTPUT, OP = "input", "output", "op"


def node_keys(graph: gs.Graph) -> dict[int, str]:
    """A unique, stable string key per node (its name; `op_index` when empty or repeated), by id(node)."""
    keys: dict[int, str] = {}
    used: set[str] = set()
    for index, node in enumerate(graph.nodes):
        base = node.name or f"{node.op}_{index}"
        key, suffix = base, 1
        while key in used:
            key = f"{base}#{suffix}"
            suffix += 1
        used.add(key)
        keys[id(node)] = key
    return keys


def _special_key(prefix: str, name: str, used: set[str]) -> str:
    key, suffix = f"{prefix}:{name}", 1
    while key in used:
        key = f"{prefix}:{name}#{suffix}"
        suffix += 1
    used.add(key)
    return key


def to_networkx(graph: gs.Graph) -> nx.MultiDiGraph:
    """Build a MultiDiGraph: one node per op plus one per graph input and output.

    Op nodes carry `kind="op"`, `op` and `node` (the gs.Node); graph inputs/outputs are
    nodes keyed `input:NAME` / `output:NAME` with `kind` "input"/"output" and `tensor`.
    Every activation tensor becomes one edge per consumer (producer -> consumer) keyed by
    the tensor name, with the gs tensor under `tensor` and the consumer's input slot under
    `index`. `G.graph["keys"]` maps id(gs.Node) -> node key.
    """
    G = nx.MultiDiGraph()
    keys = node_keys(graph)
    used = set(keys.values())
    G.graph["keys"] = keys
    producer_key: dict[str, str] = {}
    for tensor in graph.inputs:
        key = _special_key(INPUT, tensor.name, used)
        G.add_node(key, kind=INPUT, tensor=tensor)
        producer_key[tensor.name] = key
    for node in graph.nodes:
        key = keys[id(node)]
        G.add_node(key, kind=OP, op=node.op, node=node)
        for out in node.outputs:
            producer_key[out.name] = key
    for node in graph.nodes:
        key = keys[id(node)]
        for slot, tensor in enumerate(node.inputs):
            if isinstance(tensor, gs.Variable) and tensor.name in producer_key:
                G.add_edge(producer_key[tensor.name], key, key=tensor.name, tensor=tensor, index=slot)
    for slot, tensor in enumerate(graph.outputs):
        key = _special_key(OUTPUT, tensor.name, used)
        G.add_node(key, kind=OUTPUT, tensor=tensor)
        if tensor.name in producer_key:
            G.add_edge(producer_key[tensor.name], key, key=tensor.name, tensor=tensor, index=slot)
    return G


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that writes `tensor`, or None for graph inputs and constants."""
    return tensor.inputs[0] if len(tensor.inputs) else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """The nodes that read `tensor` (each once, in graph-edit order)."""
    seen, result = set(), []
    for node in tensor.outputs:
        if id(node) not in seen:
            seen.add(id(node))
            result.append(node)
    return result


def topological_nodes(graph: gs.Graph) -> list[gs.Node]:
    """The graph's nodes in a topological order, ties kept in their current order.

    Unlike `gs.Graph.toposort()` this does not reorder the graph; a cycle is a SlimccError.
    """
    G = to_networkx(graph)
    order = {key: i for i, key in enumerate(G.nodes)}
    try:
        keys = list(nx.lexicographical_topological_sort(G, key=order.__getitem__))
    except nx.NetworkXUnfeasible:
        cycle = [k for k, _, *_ in nx.find_cycle(G)]
        raise SlimccError(f"the graph has a cycle through nodes {', '.join(cycle[:6])}") from None
    return [G.nodes[k]["node"] for k in keys if G.nodes[k]["kind"] == OP]


def component_labels(count: int, edges: Iterable[tuple[int, int]]) -> np.ndarray:
    """Connected components of the undirected graph on nodes 0..count-1 joined by `edges`.

    Returns one label per node: the smallest node of its component, so labels are
    independent of the order edges were found in.
    """
    coupling = nx.Graph(edges)  # a node on no edge is a component of its own: left out of the graph
    labels = np.arange(count, dtype=np.int64)
    for component in nx.connected_components(coupling):
        members = np.fromiter(component, np.int64, len(component))
        labels[members] = members.min()
    return labels


def component_keys(keys: Sequence[Hashable], pairs: Iterable[tuple[Hashable, Hashable]]) -> dict[Hashable, int]:
    """Connected components of `keys` joined by `pairs` (keys a pair names are added): key -> component label."""
    index = {key: i for i, key in enumerate(keys)}
    edges = [(index.setdefault(a, len(index)), index.setdefault(b, len(index))) for a, b in pairs]
    labels = component_labels(len(index), edges)
    return {key: int(labels[i]) for key, i in index.items()}


def block_boundaries(graph: gs.Graph) -> list[gs.Tensor]:
    """The tensors that close single-entry/single-exit blocks, in data-flow order.

    A tensor qualifies when it is the one used output of an op that dominates the graph outputs:
    every path from a graph input to a graph output runs through that op (networkx immediate
    dominators from a virtual entry before the graph inputs to a virtual exit after the outputs).
    Ops fed only by constants are not on any such path.
    """
    G = to_networkx(graph)
    entry, exit_ = ("entry",), ("exit",)  # tuples: never equal to a node key, which is a string
    kinds = dict(G.nodes(data="kind"))
    G.add_edges_from((entry, key) for key, kind in kinds.items() if kind == INPUT)
    G.add_edges_from((key, exit_) for key, kind in kinds.items() if kind == OUTPUT)
    dominators = nx.immediate_dominators(G, entry)
    if exit_ not in dominators:
        return []
    chain, key = [], dominators[exit_]
    while key != entry:
        chain.append(key)
        key = dominators[key]
    outputs = {id(t) for t in graph.outputs}
    boundaries = []
    for key in reversed(chain):
        if G.nodes[key]["kind"] != OP:
            continue
        used = [t for t in G.nodes[key]["node"].outputs if t.outputs or id(t) in outputs]
        if len(used) == 1:
            boundaries.append(used[0])
    return boundaries


GRAPH_FORMATS = (".graphml", ".dot")


def plain_view(graph: gs.Graph) -> nx.MultiDiGraph:
    """`to_networkx` with text attributes only, for files: nodes have `kind`, `op` and `name`,
    edges the tensor's `name`, `shape` (e.g. "1x64x56x56", "?" when unknown) and `dtype`."""
    G = to_networkx(graph)
    plain = nx.MultiDiGraph()
    for key, data in G.nodes(data=True):
        name = data["node"].name if data["kind"] == OP else data["tensor"].name
        plain.add_node(key, kind=data["kind"], op=data.get("op", ""), name=name or "")
    for u, v, key, data in G.edges(keys=True, data=True):
        tensor = data["tensor"]
        shape = "?" if tensor.shape is None else "x".join(str(d) for d in tensor.shape)
        dtype = "" if tensor.dtype is None else str(getattr(tensor.dtype, "__name__", tensor.dtype))
        plain.add_edge(u, v, key=key, name=key, shape=shape, dtype=dtype)
    return plain


def write_graph(graph: gs.Graph, path: str | Path) -> Path:
    """Write the op graph for graph viewers, atomically: GraphML (.graphml) or Graphviz DOT (.dot)."""
    path = Path(path)
    if path.suffix.lower() not in GRAPH_FORMATS:
        raise SlimccError(f"cannot write a graph to {path.name}: give a file ending in {' or '.join(GRAPH_FORMATS)}")
    if not path.parent.is_dir():
        raise SlimccError(f"output folder {path.parent} does not exist")
    view = plain_view(graph)
    with atomic_file(path) as tmp:
        if path.suffix.lower() == ".graphml":
            nx.write_graphml(view, tmp)
        else:
            tmp.write_text(_dot(view))
    return path


def _dot(view: nx.MultiDiGraph) -> str:
    lines = ["digraph model {"]
    for key, data in view.nodes(data=True):
        if data["kind"] == OP:
            lines.append(f'  "{_escape(key)}" [label="{_escape(data["op"])}\\n{_escape(data["name"])}", shape=box];')
        else:
            lines.append(f'  "{_escape(key)}" [label="{_escape(data["name"])}", shape=ellipse];')
    for u, v, data in view.edges(data=True):
        lines.append(f'  "{_escape(u)}" -> "{_escape(v)}" [label="{_escape(data["name"])} {data["shape"]}"];')
    return "\n".join(lines + ["}"]) + "\n"


def _escape(text: str) -> str:
    """Text inside a DOT double-quoted string."""
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
