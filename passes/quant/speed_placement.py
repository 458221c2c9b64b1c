"""Speed-aware int8 placement: keep int8 only where onnxruntime measures it faster, islands included.

An int8 layer is not faster everywhere: onnxruntime's int8 depthwise convolution is slower than
its float one, a HardSwish after an int8 layer costs two integer element-wise kernels where the
float model fuses it into the convolution, and every switch between float and int8 costs a
QuantizeLinear or DequantizeLinear (and often a layout reorder) on the tensor between them.
So after the error budget has chosen the layers that may be int8, the placement keeps float,
from measurements, those whose int8 form does not pay for itself.

The estimate: the fp32 model and its all-int8 form are profiled (`layer_times`); a placement costs
each layer's fp32 or int8 kernel time, plus, for every data-flow edge between a float and an int8
layer (the graph's inputs, outputs and non-candidate compute layers are float), a conversion of
the tensor on it, at the per-element cost measured on the int8 model's own Q/DQ kernels
(`layer_times.conversion_cost`). Per-layer costs plus a cost per disagreeing edge is a binary
labelling with submodular pairwise terms, so the cheapest placement among those that only turn
budget-allowed int8 layers float is a minimum s-t cut (networkx), exact on any graph.
"""

from __future__ import annotations

import networkx as nx

from slimcc.ir.graphview import OP, to_networkx
from slimcc.passes.quant.layer_times import COMPUTE_OPS, static_elements

INT8, FLOAT = "int8", "float"  # the two terminals of the cut


def layer_edges(graph, candidates: list[str]) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """Data flow between the candidate layers: {(layer, reader layer): elements of the tensor between
    them}, and {layer: elements flowing between it and float code (graph inputs and outputs,
    non-candidate compute layers), in or out}; paths run through every non-compute node
    (activations, pools, adds, layout ops). Elements are those of the layer's own output (out) or
    input (in), 0 where the shape is not static."""
    view = to_networkx(graph)
    names = set(candidates)
    stops = {key for key, data in view.nodes(data=True) if data["kind"] != OP or data["op"] in COMPUTE_OPS}
    edges: dict[tuple[str, str], int] = {}
    to_float: dict[str, int] = {}
    for name in candidates:
        node = view.nodes[name]["node"]
        out_size, in_size = static_elements(node.outputs[0].shape), static_elements(node.inputs[0].shape)
        for neighbours, size, downstream in ((view.successors, out_size, True), (view.predecessors, in_size, False)):
            inner = view.subgraph((set(view) - stops) | {name})
            walk = nx.descendants(inner, name) if downstream else nx.ancestors(inner, name)
            reached = {other for key in walk | {name} for other in neighbours(key) if other in stops} - {name}
            if reached - names:
                to_float[name] = to_float.get(name, 0) + size
            if downstream:
                edges.update({(name, other): size for other in reached & names})
    return edges, to_float


def fastest_subset(graph, candidates: list[str], allowed: set[str], times: dict[str, dict[str, float]],
                   per_element: float) -> set[str]:
    """The subset of `allowed` (layers the error budget lets be int8) with the smallest `placement_time`."""
    edges, to_float = layer_edges(graph, candidates)
    cut = nx.DiGraph()
    for name in candidates:
        # cutting INT8 -> name puts it on the float side (pays fp32); name -> FLOAT, the int8 side
        cut.add_edge(INT8, name, capacity=times[name]["fp32"])
        if name in allowed:
            cut.add_edge(name, FLOAT, capacity=times[name]["int8"]
                         + per_element * to_float.get(name, 0))
        else:
            cut.add_edge(name, FLOAT)  # no capacity: infinite, never int8
    for (a, b), size in edges.items():
        for u, v in ((a, b), (b, a)):
            previous = cut.get_edge_data(u, v, {}).get("capacity", 0.0)
            cut.add_edge(u, v, capacity=previous + per_element * size)
    _, (int8_side, _) = nx.minimum_cut(cut, INT8, FLOAT)
    return {name for name in int8_side if name != INT8}


def placement_time(graph, candidates: list[str], int8: set[str], times: dict[str, dict[str, float]],
                   per_element: float) -> float:
    """Estimated microseconds of the candidate layers with exactly `int8` of them int8, conversions included."""
    edges, to_float = layer_edges(graph, candidates)
    total = sum(times[n]["int8" if n in int8 else "fp32"] for n in candidates)
    total += per_element * sum(to_float.get(n, 0) for n in int8)
    return total + per_element * sum(size for (a, b), size in edges.items() if (a in int8) != (b in int8))
