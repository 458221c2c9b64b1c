"""Cost model: parameters, multiply-accumulates (MACs) and memory traffic per node and in total.

Conventions (so numbers are comparable across passes):
- MACs: Conv/ConvTranspose/Gemm/MatMul (and their integer/QLinear forms) count one MAC per
  multiply-add of the product; bias adds are not counted. Pooling counts one MAC-equivalent
  per window element read (kernel ops), global pooling one per input element.
  BatchNormalization is one MAC per output element (x * scale + shift). Element-wise ops
  count one op per output element. Every other op (Reshape, Concat, Resize...) counts 0.
- params: elements of constant inputs holding weights: floating constants and 8-bit
  (quantized) constants. int32/int64 constants are shapes, axes or indices, not params.
- bytes: input + output activation bytes + bytes of every constant input (what a kernel
  reads and writes once).
Shapes must be static: call `model.refresh_shapes()` (after canonicalize for models with
shape sub-graphs). A node whose shapes are unknown gets `macs=None`/`bytes=None` and a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from slimcc.ir.constants import constant_tensor
from slimcc.ir.model import numpy_dtype

ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Mod", "Where",
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Swish", "Mish", "Gelu", "Softplus", "Softsign", "Tanh", "Clip", "Exp", "Log", "Sqrt",
    "Reciprocal", "Abs", "Neg", "Erf", "Sign", "Floor", "Ceil", "Round", "Sin", "Cos",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor",
    "QuantizeLinear", "DequantizeLinear",
})
POOLING = frozenset({"MaxPool", "AveragePool", "LpPool"})
GLOBAL_POOLING = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
WEIGHT_DTYPES_INT = (np.int8, np.uint8)


@dataclass
class NodeCost:
    """Cost of one node. `macs`/`bytes` are None when a needed shape is unknown (see `note`)."""

    name: str
    op: str
    params: int
    macs: int | None
    bytes: int | None
    note: str | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "params": self.params, "macs": self.macs,
                "bytes": self.bytes, "note": self.note}


@dataclass
class CostReport:
    """Totals and per-node costs. `macs`/`bytes` sum the nodes whose cost is known; `unknown`
    names the nodes left out. `params`/`weight_bytes` count each constant once even if shared."""

    params: int
    macs: int
    bytes: int
    weight_bytes: int
    per_node: list[NodeCost] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unknown

    def as_dict(self, *, layers: bool = False) -> dict:
        data = {"params": self.params, "macs": self.macs, "bytes": self.bytes, "weight_bytes": self.weight_bytes,
                "macs_unknown_nodes": list(self.unknown)}
        if layers:
            data["layers"] = [c.as_dict() for c in self.per_node]
        return data


def model_cost(model) -> CostReport:
    """Cost of every node of a Model (or gs.Graph) and the totals; never mutates the model."""
    graph = model if isinstance(model, gs.Graph) else model.graph
    per_node = [node_cost(node, index) for index, node in enumerate(graph.nodes)]
    weights: dict[str, gs.Constant] = {}
    for node in graph.nodes:
        for tensor in node.inputs:
            value = constant_tensor(tensor)
            if value is not None:
                weights.setdefault(tensor.name or str(id(tensor)), value)
    params = sum(_size(t.shape) for t in weights.values() if _is_weight(t))
    weight_bytes = sum(_nbytes(t) or 0 for t in weights.values() if _is_weight(t))
    return CostReport(params=params, macs=sum(c.macs for c in per_node if c.macs is not None),
                      bytes=sum(c.bytes for c in per_node if c.bytes is not None), weight_bytes=weight_bytes,
                      per_node=per_node, unknown=[c.name for c in per_node if c.macs is None])


def node_cost(node: gs.Node, index: int | None = None) -> NodeCost:
    """params, MACs and bytes of one node (see the module docstring for the conventions)."""
    name = node.name or f"{node.op}_{index if index is not None else id(node)}"
    if node.op == "Constant":  # its value is counted where it is consumed
        return NodeCost(name, node.op, 0, 0, 0)
    constants = [constant_tensor(t) for t in node.inputs]
    params = sum(_size(c.shape) for c in constants if c is not None and _is_weight(c))
    macs, note = _macs(node)
    total_bytes = 0
    for tensor in [c if c is not None else t for c, t in zip(constants, node.inputs)] + list(node.outputs):
        if not tensor.name:  # omitted optional input
            continue
        size = _nbytes(tensor)
        if size is None:
            total_bytes = None
            note = note or f"unknown shape or dtype of tensor {tensor.name!r}"
            break
        total_bytes += size
    return NodeCost(name, node.op, params, macs, total_bytes, note)


def node_macs(node: gs.Node) -> int | None:
    """MACs of one node; None when a shape it needs is unknown."""
    return _macs(node)[0]


def _macs(node: gs.Node) -> tuple[int | None, str | None]:
    op = node.op
    try:
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            return _conv_macs(node, weight_index=3 if op == "QLinearConv" else 1)
        if op == "ConvTranspose":
            return _conv_transpose_macs(node)
        if op == "Gemm":
            return _gemm_macs(node)
        if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
            return _matmul_macs(node, (0, 3) if op == "QLinearMatMul" else (0, 1))
        if op in POOLING:
            out = _static(node.outputs[0])
            return _size(out) * math.prod(node.attrs.get("kernel_shape", [])), None
        if op in GLOBAL_POOLING or op == "BatchNormalization":
            tensor = node.inputs[0] if op in GLOBAL_POOLING else node.outputs[0]
            return _size(_static(tensor)), None
        if op in ELEMENTWISE:
            return _size(_static(node.outputs[0])), None
    except _Unknown as exc:
        return None, f"MACs unknown: shape of {exc.args[0]!r} is not static (give --input-shape, run canonicalize)"
    except (IndexError, TypeError, ValueError, KeyError) as exc:  # malformed node: report, never crash
        return None, f"MACs unknown: malformed {op} node ({type(exc).__name__})"
    return 0, None


class _Unknown(Exception):
    pass


def _static(tensor: gs.Tensor) -> list[int]:
    shape = tensor.shape
    if shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        raise _Unknown(tensor.name)
    return [int(d) for d in shape]


def _size(shape) -> int:
    return int(math.prod(int(d) for d in shape)) if shape is not None else 0


def _conv_output_spatial(node: gs.Node, in_spatial: list[int], kernel: list[int]) -> list[int]:
    """Output spatial size of a Conv from its attributes (used when the output shape is unknown)."""
    rank = len(in_spatial)
    strides = node.attrs.get("strides", [1] * rank)
    dilations = node.attrs.get("dilations", [1] * rank)
    pads = node.attrs.get("pads", [0] * (2 * rank))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    out = []
    for i in range(rank):
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-in_spatial[i] // strides[i]))
            continue
        effective = dilations[i] * (kernel[i] - 1) + 1
        out.append((in_spatial[i] + pads[i] + pads[i + rank] - effective) // strides[i] + 1)
    return out


def _conv_macs(node: gs.Node, weight_index: int) -> tuple[int, None]:
    weight = _static(node.inputs[weight_index])  # [Cout, Cin/groups, k...]
    kernel = weight[2:]
    try:
        out = _static(node.outputs[0])
    except _Unknown:
        x = _static(node.inputs[0])
        out = [x[0], weight[0]] + _conv_output_spatial(node, x[2:], kernel)
    # every output element takes Cin/groups * prod(kernel) multiply-adds
    return _size(out) * weight[1] * math.prod(kernel), None


def _conv_transpose_macs(node: gs.Node) -> tuple[int, None]:
    x = _static(node.inputs[0])           # [N, Cin, spatial...]
    weight = _static(node.inputs[1])      # [Cin, Cout/groups, k...]
    # every input element is scattered into Cout/groups * prod(kernel) outputs
    return _size(x) * weight[1] * math.prod(weight[2:]), None


def _gemm_macs(node: gs.Node) -> tuple[int, None]:
    a = _static(node.inputs[0])
    k = a[0] if node.attrs.get("transA", 0) else a[1]
    try:
        out = _static(node.outputs[0])
    except _Unknown:
        b = _static(node.inputs[1])
        m = a[1] if node.attrs.get("transA", 0) else a[0]
        n = b[0] if node.attrs.get("transB", 0) else b[1]
        out = [m, n]
    return _size(out) * k, None


def _matmul_macs(node: gs.Node, operands: tuple[int, int]) -> tuple[int, None]:
    a = _static(node.inputs[operands[0]])
    k = a[-1]
    try:
        out = _static(node.outputs[0])
    except _Unknown:
        b = _static(node.inputs[operands[1]])
        batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])) if len(a) > 1 and len(b) > 1 else ()
        out = list(batch) + ([a[-2]] if len(a) > 1 else []) + ([b[-1]] if len(b) > 1 else [])
    return _size(out) * k, None


def _is_weight(tensor: gs.Constant) -> bool:
    dtype = numpy_dtype(tensor.dtype)
    if dtype is None:  # bfloat16, float8, int4...: numpy has no type, but these only hold weights
        return True
    return np.issubdtype(dtype, np.floating) or dtype in WEIGHT_DTYPES_INT




def _itemsize(dtype) -> float | None:
    np_dtype = numpy_dtype(dtype)
    if np_dtype is not None:
        return np_dtype.itemsize
    try:  # onnx-only types: bfloat16 (2), float8 (1), int4/uint4 (0.5)
        bits = {onnx.TensorProto.BFLOAT16: 16, onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(int(dtype), 8)
        return bits / 8
    except (TypeError, ValueError):
        return None


def _nbytes(tensor: gs.Tensor) -> int | None:
    if isinstance(tensor, gs.Constant):
        shape, itemsize = tensor.shape, _itemsize(tensor.dtype)
    else:
        try:
            shape = _static(tensor)
        except _Unknown:
            return None
        itemsize = _itemsize(tensor.dtype)
    if itemsize is None or shape is None:
        return None
    return int(math.ceil(_size(shape) * itemsize))
