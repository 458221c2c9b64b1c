"""Compact in-graph storage of a sparse weight: uint8 index gaps + float values.

Decoding is an ONNX subgraph that onnxruntime folds once at session start:
    idx = CumSum(Cast(gaps, int64)) ; dense = Reshape(ScatterND(zeros[N], idx[:, None], values), shape)
Gaps above 255 are bridged by filler entries of value 0, so any pattern round-trips exactly.
Storage: 5 bytes per nonzero instead of 4 bytes per element.
"""

from __future__ import annotations

import numpy as np

MAX_GAP = 255


def encode(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gaps uint8, values) such that cumsum(gaps) are the flat positions of `values` (first gap from -1)."""
    flat = dense.reshape(-1)
    positions = np.flatnonzero(flat)
    gaps_out, pos_out = [], []
    previous = -1
    for pos in positions.tolist():
        while pos - previous > MAX_GAP:
            previous += MAX_GAP
            gaps_out.append(MAX_GAP)
            pos_out.append(previous)
        gaps_out.append(pos - previous)
        pos_out.append(pos)
        previous = pos
    gaps = np.array(gaps_out, dtype=np.uint8)
    if len(gaps):
        gaps[0] -= 1  # CumSum starts at 0, positions at gap-1
    return gaps, flat[np.array(pos_out, dtype=np.int64)].astype(dense.dtype)


def decode(gaps: np.ndarray, values: np.ndarray, shape) -> np.ndarray:
    """The numpy twin of the ONNX decoder (for tests and tools)."""
    dense = np.zeros(int(np.prod(shape)), dtype=values.dtype)
    dense[np.cumsum(gaps.astype(np.int64))] = values
    return dense.reshape(shape)
