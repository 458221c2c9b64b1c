"""Fold a per-output-channel affine map y*s + t into the weights of Conv/ConvTranspose/Gemm.

Shared by fold-batchnorm and fold-scale-bias: both prove legality first (`affine_refusal`,
`channel_vector`) and then call `fold_affine`, which writes new constants (the old ones
may be shared with other nodes) and makes the producer emit the folded node's output.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.names import NameScope
from slimcc.passes.pattern import constant_value, remove_node

AFFINE_HOSTS = frozenset({"Conv", "ConvTranspose", "Gemm"})


def output_channels(node: gs.Node) -> int:
    """Number of output channels of a Conv/ConvTranspose/Gemm from its weight."""
    weight = constant_value(node.inputs[1])
    if node.op == "Conv":
        return int(weight.shape[0])
    if node.op == "ConvTranspose":
        return int(weight.shape[1]) * int(node.attrs.get("group", 1))
    return int(weight.shape[0] if node.attrs.get("transB", 0) else weight.shape[1])


def output_rank(node: gs.Node) -> int:
    """Rank of the host's output (Conv: rank of the weight; Gemm: 2)."""
    return 2 if node.op == "Gemm" else constant_value(node.inputs[1]).ndim


def affine_refusal(node: gs.Node) -> str | None:
    """Why an affine map cannot be folded into `node`'s weights, or None when it can."""
    weight = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return f"{node.op} weight is not a constant"
    if not np.issubdtype(weight.dtype, np.floating):
        return f"{node.op} weight is {weight.dtype}, not floating point"
    bias_tensor = node.inputs[2] if len(node.inputs) > 2 and not node.inputs[2].is_empty() else None
    if bias_tensor is not None and constant_value(bias_tensor) is None:
        return f"{node.op} bias is not a constant"
    if node.op == "Gemm":
        if weight.ndim != 2:
            return "Gemm weight is not 2-D"
        if bias_tensor is not None:
            bias = constant_value(bias_tensor)
            n = output_channels(node)
            if bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1) or bias.size not in (1, n):
                return f"Gemm bias of shape {list(bias.shape)} is not per output channel"
    return None


def channel_vector(value: np.ndarray, rank: int, channels: int) -> np.ndarray | str:
    """`value` as a length-`channels` vector if it broadcasts only over axis 1 of a rank-`rank`
    tensor (scalar, [C], [C,1,1], [1,C,1,1] ...); otherwise the reason it does not."""
    value = np.asarray(value)
    if value.ndim > rank:
        return f"constant of rank {value.ndim} would broadcast the rank-{rank} output up"
    padded = value.reshape((1,) * (rank - value.ndim) + value.shape)
    for axis, dim in enumerate(padded.shape):
        if axis != 1 and dim != 1:
            return f"constant of shape {list(value.shape)} varies along axis {axis}, not only the channel axis"
    if padded.shape[1] not in (1, channels):
        return f"constant has {padded.shape[1]} channels, the output has {channels}"
    return np.broadcast_to(padded.reshape(-1), (channels,)).astype(np.float64)


def _new_constant(names: NameScope, base: str, values: np.ndarray) -> gs.Constant:
    return gs.Constant(names.new(base), np.ascontiguousarray(values))


def fold_affine(graph: gs.Graph, host: gs.Node, follower: gs.Node, scale: np.ndarray, shift: np.ndarray) -> None:
    """Rewrite host so that it computes host(x) * scale + shift (per output channel) and
    produces `follower`'s output; `follower` is removed. Arithmetic in float64."""
    weight = constant_value(host.inputs[1])
    dtype = weight.dtype
    w = weight.astype(np.float64)
    channels = scale.shape[0]
    has_bias = len(host.inputs) > 2 and not host.inputs[2].is_empty()
    bias = constant_value(host.inputs[2]).astype(np.float64) if has_bias else np.zeros(1)
    if host.op == "Conv":
        w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    elif host.op == "ConvTranspose":
        group = int(host.attrs.get("group", 1))
        grouped = w.reshape((group, w.shape[0] // group, w.shape[1]) + w.shape[2:])
        grouped = grouped * scale.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))
        w = grouped.reshape(w.shape)
    else:  # Gemm: Y = alpha*A*B + beta*C; scale the output columns of B, fold beta into C
        w = w * (scale.reshape(-1, 1) if host.attrs.get("transB", 0) else scale.reshape(1, -1))
        bias = float(host.attrs.get("beta", 1.0)) * bias.reshape(-1)
        host.attrs["beta"] = 1.0
    bias = np.broadcast_to(bias.reshape(-1), (channels,)) * scale + shift
    base = host.name or host.outputs[0].name
    names = NameScope(graph)
    host.inputs[1] = _new_constant(names, f"{base}_folded_w", w.astype(dtype))
    new_bias = _new_constant(names, f"{base}_folded_b", bias.astype(dtype))
    if len(host.inputs) > 2:
        host.inputs[2] = new_bias
    else:
        host.inputs.append(new_bias)
    result = follower.outputs[0]
    remove_node(follower)
    host.outputs[0] = result
