"""softmax-transpose: Transpose(perm) -> Softmax(axis=a) becomes Softmax(axis=perm[a]) -> Transpose(perm).

Exact from opset 13 on (Softmax normalizes along one axis; a transpose only renames axes).
It fires when the normalized axis moves toward the innermost dimension (perm[a] > a):
onnxruntime runs a Softmax over an inner axis by transposing that axis to the end, which is
much cheaper in the swapped layout. Measured on YOLOv8n's DFL head (single thread): int8
QLinearSoftmax 6.4 -> 0.94 ms, float Softmax 1.67 -> 0.35 ms. After qdq-insert the moved
Transpose also runs on integers (qdq-propagate moves the DequantizeLinear below it).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from slimcc.passes.base import PassContext, PassResult, register_pass
from slimcc.passes.pattern import Match, Pattern, RewritePass, Rule
from slimcc.passes.quant.qdq_graph import fresh


def _axes(match: Match) -> tuple[list[int], int]:
    perm = [int(p) for p in match.nodes["t"].attrs["perm"]]
    return perm, int(match.root.attrs.get("axis", -1)) % len(perm)


def _check(match: Match) -> str | None:
    perm = match.nodes["t"].attrs.get("perm")
    if perm is None or sorted(int(p) for p in perm) != list(range(len(perm))) or not perm:
        return "Transpose without a valid perm (no perm reverses all axes)"
    perm, axis = _axes(match)
    if perm[axis] <= axis:
        return "the Softmax axis would not move inward"
    return None


def _swap(graph: gs.Graph, match: Match) -> None:
    softmax, transpose = match.root, match.nodes["t"]
    perm, axis = _axes(match)
    out = softmax.outputs[0]
    source = transpose.inputs[0]
    inner = gs.Variable(fresh(graph, f"{out.name}_before_transpose"), dtype=out.dtype, shape=source.shape)
    softmax.inputs[0] = source
    softmax.attrs["axis"] = perm[axis]
    softmax.outputs[0] = inner
    graph.nodes.append(gs.Node("Transpose", fresh(graph, f"{transpose.name}_after_softmax"), {"perm": perm},
                               [inner], [out]))


SWAP = Rule("transpose-after-softmax", Pattern("Softmax", [Pattern("Transpose", capture="t", single_use=True)]),
            rewrite=_swap, check=_check)


@register_pass("softmax-transpose")
class SoftmaxTranspose(RewritePass):
    """Move a Transpose from before a Softmax to after it when the Softmax axis moves inward."""

    rules = (SWAP,)

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        if model.opset < 13:
            return PassResult(False, {"skipped": "opset < 13: Softmax flattens from its axis, which cannot move"})
        return super().run(model, ctx)
