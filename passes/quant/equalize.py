"""cross-layer-equalize: Nagel et al. 2019 ("Data-Free Quantization") weight range equalization.

For a chain Conv1 -> f -> Conv2, where f is positively homogeneous (identity, Relu, LeakyRelu,
PRelu with one slope per channel or a scalar, Clip with min 0 and no max: f(s x) = s f(x) for s > 0),
output channel i of Conv1 can be divided by s_i > 0 and input channel i of Conv2 multiplied
by s_i without changing any output. With s_i = sqrt(r1_i / r2_i) (r1_i: max |W1| of output
channel i, r2_i: max |W2| over input channel i) both channels end with the range sqrt(r1_i r2_i),
so one weight grid (per-tensor int8) fits both layers and tiny channels stop being rounded to
zero. Depthwise-separable blocks (pointwise -> depthwise -> pointwise) are chains of such pairs;
the pass sweeps every pair `sweeps` times so a chain converges. Relu6 / bounded Clip are not
homogeneous (the bound does not scale): such pairs are refused, never approximated.

Exact in float (a rescaling up to float rounding), so the verification gate checks it as exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.errors import PipelineError
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.pattern import constant_value
from slimcc.passes.quant.qdq_graph import add_constant, is_graph_output

HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu", "Clip")
MAX_SWEEPS = 64  # a chain converges in a few; more only burns time (a fuzzed 10^9 never ended)


@register_pass("cross-layer-equalize")
@dataclass(frozen=True)
class CrossLayerEqualize(Pass):
    """Equalize per-channel weight ranges of Conv -> (Relu) -> Conv pairs (exact rescaling)."""

    sweeps: int = 4

    exact = True

    def __post_init__(self):
        if not 1 <= self.sweeps <= MAX_SWEEPS:
            raise PipelineError(f"cross-layer-equalize: sweeps={self.sweeps} must be between 1 and {MAX_SWEEPS}")

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        graph = model.graph
        pairs = equalizable_pairs(graph)
        for _ in range(self.sweeps):
            for first, second in pairs:
                equalize_pair(graph, first, second)
        if pairs:
            graph.cleanup()
        return PassResult(bool(pairs), {"pairs": len(pairs)})


def equalizable_pairs(graph: gs.Graph) -> list[tuple[gs.Node, gs.Node]]:
    """(Conv1, Conv2) pairs whose only link is Conv1 -> [one homogeneous activation] -> Conv2's data input."""
    pairs = []
    for node in graph.nodes:
        if not plain_conv(node):
            continue
        tensor = node.outputs[0]
        middle = sole_reader(graph, tensor)
        if middle is not None and middle.op in HOMOGENEOUS:
            if not _homogeneous(middle, tensor) or sole_reader(graph, middle.outputs[0]) is None:
                continue
            tensor = middle.outputs[0]
        second = sole_reader(graph, tensor)
        if second is not None and plain_conv(second) and second.inputs[0] is tensor \
                and _in_channels(second) == _out_channels(node):
            pairs.append((node, second))
    return pairs


def equalize_pair(graph: gs.Graph, first: gs.Node, second: gs.Node) -> None:
    """Rescale Conv1's output channels by 1/s and Conv2's input channels by s, s = sqrt(r1 / r2)."""
    w1 = constant_value(first.inputs[1]).astype(np.float64)
    w2 = constant_value(second.inputs[1]).astype(np.float64)
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
    r2 = _input_channel_view(second, np.abs(w2)).max(axis=1)
    scale = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1.0)), 1.0)
    first.inputs[1] = add_constant(graph, f"{first.name}_weight_cle",
                                   (w1 / scale.reshape([-1] + [1] * (w1.ndim - 1))).astype(np.float32))
    if len(first.inputs) > 2 and not first.inputs[2].is_empty():
        bias = constant_value(first.inputs[2]).astype(np.float64)
        first.inputs[2] = add_constant(graph, f"{first.name}_bias_cle", (bias / scale).astype(np.float32))
    group = int(second.attrs.get("group", 1))
    per_group = w2.shape[1]
    local = scale.reshape(group, per_group)  # channel i = g * per_group + j scales W2[g-th outputs, j]
    factor = np.repeat(local, w2.shape[0] // group, axis=0)
    w2 = w2 * factor.reshape(factor.shape + (1,) * (w2.ndim - 2))
    second.inputs[1] = add_constant(graph, f"{second.name}_weight_cle", w2.astype(np.float32))


def _input_channel_view(conv: gs.Node, weight: np.ndarray) -> np.ndarray:
    """[input channels, everything that channel multiplies] of a (grouped) Conv weight."""
    group = int(conv.attrs.get("group", 1))
    cout, per_group = weight.shape[:2]
    grouped = weight.reshape(group, cout // group, per_group, -1)  # [g, outputs of g, inputs of g, k]
    return np.moveaxis(grouped, 2, 1).reshape(group * per_group, -1)


def plain_conv(node: gs.Node) -> bool:
    """A Conv with constant float32 weights (and bias, if any)."""
    if node.op != "Conv" or len(node.inputs) < 2:
        return False
    weight = constant_value(node.inputs[1])
    if weight is None or weight.dtype != np.float32 or weight.ndim < 3:
        return False
    if len(node.inputs) > 2 and not node.inputs[2].is_empty():
        bias = constant_value(node.inputs[2])
        if bias is None or bias.shape != (weight.shape[0],):
            return False
    return True


def sole_reader(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    """The one node reading `tensor` (once), when it is not also a graph output."""
    readers = list(tensor.outputs)
    if len(readers) != 1 or is_graph_output(graph, tensor) or sum(t is tensor for t in readers[0].inputs) != 1:
        return None
    return readers[0]


def _homogeneous(node: gs.Node, tensor: gs.Tensor) -> bool:
    """Whether f(s x) = s f(x) for every s > 0 per channel (the activation reads `tensor` as its input 0)."""
    if node.inputs[0] is not tensor:
        return False
    if node.op in ("Relu", "LeakyRelu"):
        return True
    if node.op == "PRelu":
        slope = constant_value(node.inputs[1])
        return slope is not None
    # Clip(x, 0, none)
    low = constant_value(node.inputs[1]) if len(node.inputs) > 1 and not node.inputs[1].is_empty() else None
    has_high = len(node.inputs) > 2 and not node.inputs[2].is_empty()
    return low is not None and low.size == 1 and float(low.reshape(-1)[0]) == 0.0 and not has_high


def _out_channels(conv: gs.Node) -> int:
    return int(constant_value(conv.inputs[1]).shape[0])


def _in_channels(conv: gs.Node) -> int:
    weight = constant_value(conv.inputs[1])
    return int(weight.shape[1]) * int(conv.attrs.get("group", 1))
