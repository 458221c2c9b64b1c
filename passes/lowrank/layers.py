"""Read a Conv / Gemm / MatMul node of the IR into the plain facts decomposition needs.

A node that cannot be decomposed safely yields a `Refusal` with the reason instead of a
layer: non-constant weights, unknown shapes, non-2-D kernels, depthwise convs...
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.constants import constant_value
from slimcc.passes.lowrank.ranks import ConvGeometry


@dataclass(frozen=True)
class Refusal:
    """Why a node is left alone."""

    reason: str


@dataclass
class ConvLayer:
    """A 2-D Conv with constant weight (and bias), static shapes and explicit pads."""

    node: gs.Node
    weight: np.ndarray              # [Cout, Cin/G, KH, KW]
    bias: np.ndarray | None         # [Cout]
    group: int
    strides: list[int]
    dilations: list[int]
    pads: list[int]                 # [top, left, bottom, right], auto_pad resolved
    input_shape: list[int]          # [N, Cin, H, W]
    output_shape: list[int]         # [N, Cout, OH, OW]
    core_attrs: dict = field(default_factory=dict)  # the original spatial attrs, for the KxK factor

    @property
    def cout(self) -> int:
        return int(self.weight.shape[0])

    @property
    def cin(self) -> int:
        return int(self.input_shape[1])

    @property
    def kernel_hw(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])

    @property
    def geometry(self) -> ConvGeometry:
        kh, kw = self.kernel_hw
        return ConvGeometry(cin=self.cin, cout=self.cout, kernel=kh * kw,
                            in_pixels=self.input_shape[2] * self.input_shape[3],
                            out_pixels=self.output_shape[2] * self.output_shape[3], groups=self.group)


@dataclass
class MatMulLayer:
    """A Gemm or MatMul whose second operand is a constant 2-D matrix.

    `matrix` is the effective B (shape [K, N]) after transB; `bias` is Gemm's C, if any.
    """

    node: gs.Node
    matrix: np.ndarray
    bias: gs.Tensor | None
    alpha: float
    beta: float
    trans_a: int
    trans_b: int
    rows: int  # M = product of the leading dims of A (for MACs)

    @property
    def macs(self) -> int:
        return self.rows * self.matrix.shape[0] * self.matrix.shape[1]


def _present(node: gs.Node, index: int) -> bool:
    return len(node.inputs) > index and node.inputs[index] is not None and bool(node.inputs[index].name)


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def resolve_pads(auto_pad: str, pads: list[int] | None, in_hw: list[int], kernel: list[int],
                 strides: list[int], dilations: list[int]) -> list[int]:
    """Explicit [begin..., end...] pads for a conv, resolving SAME_UPPER / SAME_LOWER / VALID."""
    dims = len(in_hw)
    if auto_pad in ("", "NOTSET"):
        return list(pads) if pads else [0] * (2 * dims)
    if auto_pad == "VALID":
        return [0] * (2 * dims)
    begins, ends = [], []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations):
        out = math.ceil(size / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        begins.append(begin)
        ends.append(end)
    return begins + ends


def read_conv(node: gs.Node) -> ConvLayer | Refusal:
    """A ConvLayer for a decomposable Conv node, or the reason it is not decomposable."""
    weight = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return Refusal("weight is not a constant")
    if weight.ndim != 4:
        return Refusal(f"only 2-D convs are decomposed (kernel has rank {weight.ndim - 2})")
    if not np.issubdtype(weight.dtype, np.floating):
        return Refusal(f"weight dtype {weight.dtype} is not floating point")
    if not np.isfinite(weight).all():
        return Refusal("weight contains NaN or inf (an SVD of it would not converge)")
    bias = None
    if _present(node, 2):
        bias = constant_value(node.inputs[2])
        if bias is None:
            return Refusal("bias is not a constant")
    x, y = node.inputs[0], node.outputs[0]
    if not (_static(x.shape) and _static(y.shape)) or len(x.shape) != 4:
        return Refusal("input/output shapes are not static 4-D (run canonicalize with --input-shape)")
    group = int(node.attrs.get("group", 1))
    cin = int(x.shape[1])
    if group > 1 and weight.shape[1] == 1 and group == cin:
        return Refusal("depthwise conv (one input channel per group): nothing to decompose")
    kernel = list(weight.shape[2:])
    strides = list(node.attrs.get("strides", [1, 1]))
    dilations = list(node.attrs.get("dilations", [1, 1]))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    pads = resolve_pads(auto_pad, node.attrs.get("pads"), list(x.shape[2:]), kernel, strides, dilations)
    core_attrs = {key: node.attrs[key] for key in ("strides", "dilations", "pads", "auto_pad") if key in node.attrs}
    core_attrs["kernel_shape"] = kernel
    return ConvLayer(node=node, weight=weight, bias=bias, group=group, strides=strides, dilations=dilations,
                     pads=pads, input_shape=list(x.shape), output_shape=list(y.shape), core_attrs=core_attrs)


def read_matmul(node: gs.Node) -> MatMulLayer | Refusal:
    """A MatMulLayer for a Gemm / MatMul with a constant 2-D right operand, or a refusal."""
    b = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if b is None:
        return Refusal("right operand is not a constant")
    if b.ndim != 2:
        return Refusal(f"right operand has rank {b.ndim}, not 2")
    if not np.issubdtype(b.dtype, np.floating):
        return Refusal(f"weight dtype {b.dtype} is not floating point")
    if not np.isfinite(b).all():
        return Refusal("weight contains NaN or inf (an SVD of it would not converge)")
    a = node.inputs[0]
    if not _static(a.shape):
        return Refusal("input shape is not static (run canonicalize with --input-shape)")
    if node.op == "Gemm":
        trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
        matrix = b.T if trans_b else b
        bias = node.inputs[2] if _present(node, 2) else None
        rows = int(a.shape[1] if trans_a else a.shape[0])
        return MatMulLayer(node, matrix, bias, float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0)),
                           trans_a, trans_b, rows)
    if len(a.shape) < 1 or a.shape[-1] != b.shape[0]:
        return Refusal("MatMul operand shapes do not match")
    return MatMulLayer(node, b, None, 1.0, 1.0, 0, 0, int(np.prod(a.shape[:-1])) if len(a.shape) > 1 else 1)
