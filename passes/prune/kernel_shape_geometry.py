"""Geometry of kernel-shape pruning: which kernel taps a 2-D Conv keeps and how to re-align them.

ONNX Conv computes, per spatial axis, y[i] += w[k] * x[i*s + k*d - pad_begin] (x is zero outside
[0, size)). Keeping only the taps lo..hi of an axis gives a conv of kernel hi-lo+1 whose first
tap must read x[i*s + lo*d - pad_begin]: its begin pad is pad_begin - lo*d (a negative value
means "crop that many leading elements"), and its end pad is chosen so the output length
stays `out` (a too-long input is cropped at the end). `AxisShift` holds that answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.errors import PassError


class Unsupported(PassError):
    """This conv cannot be kernel-shape pruned exactly; the message is the recorded reason."""


@dataclass(frozen=True)
class Axis:
    """One spatial axis of a Conv: input size, kernel, stride, dilation, explicit pads, output size."""

    size: int
    kernel: int
    stride: int
    dilation: int
    pad_begin: int
    pad_end: int

    @property
    def out(self) -> int:
        return (self.size + self.pad_begin + self.pad_end - self.dilation * (self.kernel - 1) - 1) // self.stride + 1


@dataclass(frozen=True)
class AxisShift:
    """How a conv over taps lo..hi of an axis reproduces the original alignment.

    `crop_begin`/`crop_end`: elements to slice off the input; `pad_begin`/`pad_end`: the new conv pads.
    """

    pad_begin: int
    pad_end: int
    crop_begin: int
    crop_end: int

    @property
    def needs_crop(self) -> bool:
        return bool(self.crop_begin or self.crop_end)


def shift_for_taps(axis: Axis, lo: int, hi: int) -> AxisShift:
    """Pads (and crops) for a conv that applies only taps lo..hi of `axis` at the original positions."""
    begin = axis.pad_begin - lo * axis.dilation
    # how far past the input's last element the last output's last kept tap reads
    need_end = (axis.out - 1) * axis.stride + hi * axis.dilation - axis.pad_begin - axis.size + 1
    if need_end >= 0:
        pad_end, crop_end = need_end, 0
    elif need_end > -axis.stride:  # the surplus is shorter than a stride: output length unchanged
        pad_end, crop_end = 0, 0
    else:
        pad_end, crop_end = 0, -need_end
    return AxisShift(max(begin, 0), pad_end, max(-begin, 0), crop_end)


@dataclass(frozen=True)
class ConvGeometry:
    """A static 2-D Conv: weight [O, C/g, KH, KW], its two spatial axes, group, input shape."""

    weight: np.ndarray
    rows: Axis
    cols: Axis
    group: int
    input_shape: tuple[int, ...]

    @property
    def kernel(self) -> tuple[int, int]:
        return self.rows.kernel, self.cols.kernel


def _explicit_pads(auto_pad: str, size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(begin, end) pads that auto_pad SAME_UPPER / SAME_LOWER / VALID amounts to for a static size."""
    if auto_pad == "VALID":
        return 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small, large = total // 2, total - total // 2
    return (small, large) if auto_pad == "SAME_UPPER" else (large, small)


def conv_geometry(node: gs.Node) -> ConvGeometry:
    """Static geometry of a Conv node, or Unsupported with the reason it cannot be kernel-pruned."""
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        raise Unsupported("weight is not a constant")
    w = np.asarray(node.inputs[1].values)
    if w.ndim != 4:
        raise Unsupported(f"only 2-D convs are handled (weight rank {w.ndim})")
    if not np.issubdtype(w.dtype, np.floating):
        raise Unsupported(f"weight dtype {w.dtype} is not floating point")
    if len(node.inputs) > 2 and node.inputs[2] is not None and not isinstance(node.inputs[2], gs.Constant) \
            and node.inputs[2].name:
        raise Unsupported("bias is not a constant")
    shape = node.inputs[0].shape
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise Unsupported(f"input shape {shape} is not static (give --input-shape and run canonicalize)")
    kh, kw = int(w.shape[2]), int(w.shape[3])
    strides = [int(v) for v in node.attrs.get("strides", [1, 1])]
    dil = [int(v) for v in node.attrs.get("dilations", [1, 1])]
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad in ("NOTSET", ""):
        pads = [int(v) for v in node.attrs.get("pads", [0, 0, 0, 0])]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        (pt, pb), (pl, pr) = (_explicit_pads(auto_pad, shape[2 + i], (kh, kw)[i], strides[i], dil[i]) for i in range(2))
        pads = [pt, pl, pb, pr]
    else:
        raise Unsupported(f"unknown auto_pad {auto_pad!r}")
    rows = Axis(int(shape[2]), kh, strides[0], dil[0], pads[0], pads[2])
    cols = Axis(int(shape[3]), kw, strides[1], dil[1], pads[1], pads[3])
    if rows.out < 1 or cols.out < 1:
        raise Unsupported("the conv has an empty output")
    return ConvGeometry(w, rows, cols, int(node.attrs.get("group", 1)), tuple(int(d) for d in shape))


def position_importance(weight: np.ndarray, criterion: str) -> np.ndarray:
    """[KH, KW] importance of each kernel position: sum over filters and input channels of |w| or w^2."""
    w = np.asarray(weight, dtype=np.float64)
    values = np.abs(w) if criterion == "l1" else w * w
    return values.sum(axis=(0, 1))


def row_blocks(keep: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Cover a [KH, KW] keep mask with rectangles (r0, r1, c0, c1), inclusive.

    Each row's kept taps split into runs of consecutive columns; runs repeated on
    consecutive rows merge into one taller rectangle (one conv instead of several).
    """
    blocks: list[list[int]] = []
    open_blocks: dict[tuple[int, int], list[int]] = {}
    for r, row in enumerate(np.asarray(keep, dtype=bool)):
        runs, c = [], 0
        while c < row.size:
            if row[c]:
                start = c
                while c + 1 < row.size and row[c + 1]:
                    c += 1
                runs.append((start, c))
            c += 1
        still_open = {}
        for run in runs:
            block = open_blocks.get(run)
            if block is not None and block[1] == r - 1:
                block[1] = r
            else:
                block = [r, r, run[0], run[1]]
                blocks.append(block)
            still_open[run] = block
        open_blocks = still_open
    return [tuple(b) for b in blocks]
