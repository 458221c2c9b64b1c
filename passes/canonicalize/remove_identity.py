"""remove-identity: Identity and inference-mode Dropout removed, graph output names kept stable."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from slimcc.passes.base import register_pass
from slimcc.passes.pattern import Any, Match, Pattern, RewritePass, Rule, constant_value, remove_node, replace_uses

IDENTITY_LIKE = Pattern({"Identity", "Dropout"}, [Any("x")], capture="op")


def _is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def check_remove(match: Match) -> str | None:
    """Dropout must be in inference mode with its mask unused; a graph output must keep its name."""
    node, graph, x = match.root, match.graph, match["x"]
    if node.op == "Dropout":
        if len(node.outputs) > 1 and (node.outputs[1].outputs or _is_graph_output(graph, node.outputs[1])):
            return "Dropout mask output is used"
        if len(node.inputs) > 2 and not node.inputs[2].is_empty():
            training = constant_value(node.inputs[2])
            if training is None:
                return "Dropout training_mode is not a constant"
            if bool(training.reshape(-1)[0]):
                return "Dropout is in training mode"
    out = node.outputs[0]
    if _is_graph_output(graph, out):
        if len(x.inputs) != 1 or isinstance(x, gs.Constant):
            return f"{node.op} forwards a graph input or constant to graph output {out.name!r}; kept for its name"
        if _is_graph_output(graph, x) or any(t is x for t in graph.inputs):
            return f"{node.op} input is itself a graph input/output; kept so both names stay"
    return None


def rewrite_remove(graph: gs.Graph, match: Match) -> None:
    """Bypass the node; if it produced a graph output, its input's producer now produces that output."""
    node, x = match.root, match["x"]
    out = node.outputs[0]
    remove_node(node)
    if not _is_graph_output(graph, out):
        replace_uses(graph, out, x)
        return
    producer = x.inputs[0]
    replace_uses(graph, x, out)
    for i, tensor in enumerate(producer.outputs):
        if tensor is x:
            producer.outputs[i] = out


REMOVE_IDENTITY = Rule("remove-identity", IDENTITY_LIKE, rewrite=rewrite_remove, check=check_remove)


@register_pass("remove-identity")
class RemoveIdentity(RewritePass):
    """Remove Identity and inference-mode Dropout nodes (graph output names are kept)."""

    rules = (REMOVE_IDENTITY,)
