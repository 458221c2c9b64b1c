"""networkx view, producer/consumers, topological order, connected-component labels and block boundaries."""

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from ir_builders import branchy_model, make_proto
from slimcc.errors import SlimccError
from slimcc.ir.graphview import (block_boundaries, component_keys, component_labels, consumers, producer,
                                 to_networkx, topological_nodes)
from slimcc.ir.model import load_model


def test_networkx_edges_are_tensors_with_consumer_slots():
    model = load_model(branchy_model())
    G = to_networkx(model.graph)
    assert isinstance(G, nx.MultiDiGraph)
    assert {k for k, d in G.nodes(data=True) if d["kind"] == "op"} == {"conv", "relu", "add", "mul", "shape"}
    assert G.nodes["input:x"]["kind"] == "input" and G.nodes["output:y"]["kind"] == "output"
    # "c" feeds relu and add; "r" feeds add, mul and shape
    assert sorted(v for _, v, k in G.out_edges("conv", keys=True) if k == "c") == ["add", "relu"]
    assert sorted(v for _, v, k in G.out_edges("relu", keys=True) if k == "r") == ["add", "mul", "shape"]
    edge = G.get_edge_data("relu", "mul")["r"]
    assert edge["tensor"].name == "r" and edge["index"] == 1
    # weights are constants, not edges: conv has exactly one incoming edge (from the input)
    assert [(u, k) for u, _, k in G.in_edges("conv", keys=True)] == [("input:x", "x")]
    assert G.has_edge("mul", "output:y") and G.has_edge("shape", "output:s")


def test_duplicate_and_empty_names_get_unique_keys():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="n"), helper.make_node("Relu", ["a"], ["b"], name="n"),
             helper.make_node("Relu", ["b"], ["y"])]
    proto = make_proto(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    G = to_networkx(load_model(proto).graph)
    ops = [k for k, d in G.nodes(data=True) if d["kind"] == "op"]
    assert len(ops) == 3 and len(set(ops)) == 3
    assert list(nx.topological_sort(G))[0] == "input:x"
    assert nx.shortest_path_length(G, "input:x", "output:y") == 4


def test_producer_and_consumers():
    graph = load_model(branchy_model()).graph
    tensors = graph.tensors()
    assert producer(tensors["c"]).name == "conv"
    assert producer(tensors["x"]) is None and producer(tensors["w"]) is None
    assert [n.name for n in consumers(tensors["r"])] == ["add", "mul", "shape"]
    assert consumers(tensors["y"]) == []


def test_topological_nodes_does_not_reorder_graph():
    graph = load_model(branchy_model()).graph
    graph.nodes.reverse()
    before = [n.name for n in graph.nodes]
    order = [n.name for n in topological_nodes(graph)]
    assert [n.name for n in graph.nodes] == before
    assert order.index("conv") < order.index("relu") < order.index("add") < order.index("mul")
    assert order.index("relu") < order.index("shape")


def test_cycle_is_a_one_line_error():
    a, b = gs.Variable("a", np.float32, [1]), gs.Variable("b", np.float32, [1])
    graph = gs.Graph(nodes=[gs.Node("Relu", "p", inputs=[b], outputs=[a]), gs.Node("Relu", "q", inputs=[a], outputs=[b])],
                     inputs=[], outputs=[b])
    with pytest.raises(SlimccError, match="cycle"):
        topological_nodes(graph)


@pytest.mark.realmodel
def test_networkx_view_of_real_model_is_consistent(real_model_path):
    from slimcc.models.fetch import REAL_MODELS

    spec = REAL_MODELS["yolov8n"]
    graph = load_model(real_model_path("yolov8n"), {spec.input_name: list(spec.input_shape)}).graph
    G = to_networkx(graph)
    assert nx.is_directed_acyclic_graph(G)
    assert G.number_of_nodes() == len(graph.nodes) + len(graph.inputs) + len(graph.outputs)
    keys = G.graph["keys"]
    for u, v, name, data in G.edges(keys=True, data=True):
        tensor = data["tensor"]
        assert tensor.name == name
        made_by = producer(tensor)
        assert (u == f"input:{name}") if made_by is None else (keys[id(made_by)] == u)
        if G.nodes[v]["kind"] == "op":
            assert G.nodes[v]["node"].inputs[data["index"]] is tensor
    # C2f Split feeds several consumers: one edge per consumer
    split = next(n for n in graph.nodes if n.op == "Split")
    assert G.out_degree(keys[id(split)]) == sum(len(consumers(t)) for t in split.outputs)
    order = topological_nodes(graph)
    seen = {t.name for t in graph.inputs}
    for node in order:
        assert all(isinstance(t, gs.Constant) or not t.name or t.name in seen
                   for t in node.inputs)
        seen.update(t.name for t in node.outputs)
    assert len(order) == len(graph.nodes)


def test_component_labels_are_the_smallest_member_whatever_the_edge_order():
    edges = [(5, 2), (2, 7), (0, 3), (8, 8)]
    expected = [0, 1, 2, 0, 4, 2, 6, 2, 8]
    assert component_labels(9, edges).tolist() == expected
    rng = np.random.default_rng(0)
    for _ in range(5):
        shuffled = [tuple(e[::-1]) if rng.random() < 0.5 else e for e in rng.permutation(edges).tolist()]
        assert component_labels(9, shuffled).tolist() == expected
    assert component_labels(3, []).tolist() == [0, 1, 2]


def test_component_keys_groups_names_and_adds_the_names_pairs_mention():
    groups = component_keys(["a", "b", "c"], [("a", "d"), ("d", "c")])
    assert set(groups) == {"a", "b", "c", "d"}
    assert groups["a"] == groups["c"] == groups["d"] != groups["b"]


def test_block_boundaries_are_the_dominators_of_the_outputs():
    """x -> Relu a -> (Neg b, Abs c) -> Add d -> Mul m (by a Constant node's k) -> Sigmoid y: the branches
    b and c are inside a block; the constant-only Constant node is on no data path."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"), helper.make_node("Neg", ["a"], ["b"], name="neg"),
             helper.make_node("Abs", ["a"], ["c"], name="abs"), helper.make_node("Add", ["b", "c"], ["d"], name="add"),
             helper.make_node("Constant", [], ["k"], name="const",
                              value=helper.make_tensor("kv", TensorProto.FLOAT, [], [2.0])),
             helper.make_node("Mul", ["d", "k"], ["m"], name="mul"), helper.make_node("Sigmoid", ["m"], ["y"], name="sig")]
    proto = make_proto(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    assert [t.name for t in block_boundaries(load_model(proto).graph)] == ["a", "d", "m", "y"]


def test_two_outputs_share_only_the_blocks_before_they_part():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"), helper.make_node("Neg", ["a"], ["y1"], name="neg"),
             helper.make_node("Abs", ["a"], ["y2"], name="abs")]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2]) for name in ("y1", "y2")]
    proto = make_proto(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], outputs)
    assert [t.name for t in block_boundaries(load_model(proto).graph)] == ["a"]
