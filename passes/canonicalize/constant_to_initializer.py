"""constant-to-initializer: Constant nodes become initializers (gs.Constant tensors)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from slimcc.passes.base import PassContext, PassResult, register_pass
from slimcc.passes.canonicalize._shapes import forget_unknown_output_shapes
from slimcc.passes.pattern import Match, Pattern, RewritePass, Rule, constant_value

CONSTANT_NODE = Pattern("Constant", capture="op")


def check_convert(match: Match) -> str | None:
    """Only dense numeric values; a Constant feeding a graph output directly stays a node."""
    node = match.root
    if constant_value(node.outputs[0]) is None:
        kinds = ", ".join(sorted(node.attrs)) or "no value"
        return f"Constant holds {kinds}, not a dense tensor"
    if any(t is node.outputs[0] for t in match.graph.outputs):
        return "Constant output is a graph output"
    return None


def rewrite_convert(graph: gs.Graph, match: Match) -> None:
    """Turn the output variable into a constant tensor and drop the node."""
    node = match.root
    out = node.outputs[0]
    value = constant_value(out)
    node.outputs.clear()
    node.attrs.clear()  # graphsurgeon's cleanup formats every removed node, value included
    out.to_constant(value)


CONSTANT_TO_INITIALIZER = Rule("constant-to-initializer", CONSTANT_NODE, rewrite=rewrite_convert,
                               check=check_convert)


@register_pass("constant-to-initializer")
class ConstantToInitializer(RewritePass):
    """Turn Constant nodes into initializers."""

    rules = (CONSTANT_TO_INITIALIZER,)

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        # folding a Constant can make a declared [-1, ...] output shape computable
        forget_unknown_output_shapes(model.graph)
        return super().run(model, ctx)
