"""Small helpers shared by the Q/DQ passes: build Q/DQ nodes and read their parameters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.names import NameScope
from slimcc.passes.pattern import constant_value


def fresh(graph: gs.Graph, base: str) -> str:
    """A tensor/node name not yet used in `graph` (one name; a rewrite making many uses a NameScope)."""
    return NameScope(graph).new(base)


@dataclass(frozen=True)
class QDQInfo:
    """Parameters of a QuantizeLinear/DequantizeLinear node, as numpy values."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    dtype: np.dtype

    def same_as(self, other: QDQInfo) -> bool:
        """True when dtype, scale, zero point and axis are all identical (bit-exact)."""
        return (self.dtype == other.dtype and self.scale.shape == other.scale.shape
                and self.zero_point.shape == other.zero_point.shape
                and np.array_equal(self.scale.view(np.uint32), other.scale.view(np.uint32))
                and np.array_equal(self.zero_point, other.zero_point)
                and (self.axis == other.axis or self.scale.size == 1))


def qdq_info(node: gs.Node) -> QDQInfo | None:
    """Constant scale/zero point of a Q or DQ node (None when either is not a constant)."""
    scale = constant_value(node.inputs[1])
    if scale is None:
        return None
    if len(node.inputs) > 2 and not node.inputs[2].is_empty():
        zero_point = constant_value(node.inputs[2])
        if zero_point is None:
            return None
    else:
        zero_point = np.zeros(scale.shape, np.uint8)
    axis = int(node.attrs.get("axis", 1)) if scale.size > 1 else None
    return QDQInfo(np.asarray(scale, np.float32), np.asarray(zero_point), axis, np.asarray(zero_point).dtype)


def add_constant(graph: gs.Graph, base: str, value: np.ndarray) -> gs.Constant:
    """A new named initializer."""
    return gs.Constant(fresh(graph, base), np.asarray(value))


def make_quantize(graph: gs.Graph, x: gs.Tensor, scale: gs.Tensor, zero_point: gs.Tensor, *,
                  axis: int | None = None, name: str | None = None) -> gs.Variable:
    """Append x -> QuantizeLinear and return the integer output tensor."""
    base = name or f"{x.name}_q"
    out = gs.Variable(fresh(graph, base), dtype=np.asarray(constant_value(zero_point)).dtype, shape=x.shape)
    attrs = {"axis": axis} if axis is not None else {}
    graph.nodes.append(gs.Node("QuantizeLinear", fresh(graph, base + "_node"), attrs, [x, scale, zero_point], [out]))
    return out


def make_dequantize(graph: gs.Graph, q: gs.Tensor, scale: gs.Tensor, zero_point: gs.Tensor, *,
                    axis: int | None = None, name: str | None = None, shape=None) -> gs.Variable:
    """Append q -> DequantizeLinear and return the float output tensor."""
    base = name or f"{q.name}_dq"
    out = gs.Variable(fresh(graph, base), dtype=np.float32, shape=shape if shape is not None else q.shape)
    attrs = {"axis": axis} if axis is not None else {}
    graph.nodes.append(gs.Node("DequantizeLinear", fresh(graph, base + "_node"), attrs, [q, scale, zero_point], [out]))
    return out


def dequantized_bias(graph: gs.Graph, base: str, bias: np.ndarray, in_scale, weight_scales) -> gs.Variable:
    """`bias` [Cout] as int32 behind a DequantizeLinear of scale s_in * s_w (per output channel, zero
    point 0): the form onnxruntime's QLinearConv and slimcc's integer lowering fold into the layer."""
    bias_scale = (np.float32(np.asarray(in_scale).reshape(())) * np.asarray(weight_scales, np.float32)).astype(np.float32)
    if bias_scale.size == 1:
        bias_scale = np.full(bias.shape, bias_scale.reshape(()), np.float32)
    q_bias = np.clip(np.round(bias.astype(np.float64) / bias_scale), -2**31, 2**31 - 1).astype(np.int32)
    return make_dequantize(graph, add_constant(graph, f"{base}_bias_q", q_bias),
                           add_constant(graph, f"{base}_bias_scale", bias_scale),
                           add_constant(graph, f"{base}_bias_zero_point", np.zeros(bias.shape, np.int32)),
                           axis=0, shape=list(bias.shape))


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node producing `tensor`, or None for inputs/constants."""
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """True when `tensor` is one of the graph outputs."""
    return any(t is tensor for t in graph.outputs)
