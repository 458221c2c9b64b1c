"""Choosing the kernel positions to keep: a rectangle (rect mode) or any set of positions.

Selection only reads importance and geometry; it never edits the graph.
"""

from __future__ import annotations

import math

import numpy as np

from slimcc.errors import PipelineError
from slimcc.passes.prune.kernel_shape_geometry import ConvGeometry, Unsupported, shift_for_taps


def parse_keep(text: str) -> tuple[int, int] | int | None:
    """`keep` option text: "2x3" -> (2, 3), "5" -> 5 (a position count), "" -> None."""
    text = text.strip().lower()
    if not text:
        return None
    try:
        if "x" in text:
            a, b = (int(v) for v in text.split("x"))
            if a < 1 or b < 1:
                raise ValueError
            return a, b
        count = int(text)
        if count < 1:
            raise ValueError
        return count
    except ValueError:
        raise PipelineError(f"prune-kernel-shape: keep={text!r} must be a shape like 2x3 or a position count") from None


def kept_count(kernel_size: int, keep: tuple[int, int] | int | None, ratio: float) -> int:
    """How many positions to keep: from keep=AxB (A*B), keep=N or ratio (at most `ratio` removed)."""
    if isinstance(keep, tuple):
        return min(keep[0] * keep[1], kernel_size)
    if isinstance(keep, int):
        return min(keep, kernel_size)
    return max(1, math.ceil((1.0 - ratio) * kernel_size - 1e-9))


def rect_is_exact(geom: ConvGeometry, block: tuple[int, int, int, int]) -> bool:
    """True when a smaller conv over `block` needs only non-negative pads (no input crop)."""
    r0, r1, c0, c1 = block
    return not (shift_for_taps(geom.rows, r0, r1).needs_crop or shift_for_taps(geom.cols, c0, c1).needs_crop)


def select_rect(geom: ConvGeometry, importance: np.ndarray, keep: tuple[int, int] | int | None,
                ratio: float) -> tuple[int, int, int, int] | None:
    """The most important rectangle (r0, r1, c0, c1) that a pad change alone can express.

    keep=AxB fixes the shape (clipped to the kernel); otherwise the smallest rectangles with at
    least `kept_count` positions compete. Returns None when the target keeps the whole kernel;
    raises Unsupported (with the reason) when no candidate is exact.
    """
    kh, kw = geom.kernel
    if isinstance(keep, tuple):
        shapes = [(min(keep[0], kh), min(keep[1], kw))]
    else:
        need = kept_count(kh * kw, keep, ratio)
        shapes = [(a, b) for a in range(1, kh + 1) for b in range(1, kw + 1) if a * b >= need]
    shapes = [s for s in shapes if s[0] * s[1] < kh * kw]
    if not shapes:
        return None
    best, best_key, tried = None, None, []
    for a, b in shapes:
        for r0 in range(kh - a + 1):
            for c0 in range(kw - b + 1):
                block = (r0, r0 + a - 1, c0, c0 + b - 1)
                if not rect_is_exact(geom, block):
                    tried.append(block)
                    continue
                key = (-a * b, float(importance[r0:r0 + a, c0:c0 + b].sum()))
                if best_key is None or key > best_key:
                    best, best_key = block, key
    if best is None:
        shape_text = ", ".join(f"{a}x{b}" for a, b in shapes)
        raise Unsupported(f"no {shape_text} window of the {kh}x{kw} kernel keeps the output aligned with "
                          f"non-negative pads (pads {[geom.rows.pad_begin, geom.cols.pad_begin, geom.rows.pad_end, geom.cols.pad_end]}); "
                          "use mode=positions, which crops the input instead")
    return best


def select_positions(importance: np.ndarray, count: int) -> np.ndarray:
    """[KH, KW] keep mask of the `count` most important positions (ties: first in row-major order)."""
    flat = importance.reshape(-1)
    order = np.argsort(-flat, kind="stable")
    keep = np.zeros(flat.size, dtype=bool)
    keep[order[:count]] = True
    return keep.reshape(importance.shape)


def block_mask(shape: tuple[int, int], block: tuple[int, int, int, int]) -> np.ndarray:
    """Keep mask of a rectangle (r0, r1, c0, c1)."""
    keep = np.zeros(shape, dtype=bool)
    r0, r1, c0, c1 = block
    keep[r0:r1 + 1, c0:c1 + 1] = True
    return keep


def mask_as_block(keep: np.ndarray) -> tuple[int, int, int, int] | None:
    """The rectangle a keep mask is, or None when it is not one rectangle."""
    rows, cols = np.nonzero(keep)
    if rows.size == 0:
        return None
    block = (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max()))
    return block if np.array_equal(block_mask(keep.shape, block), keep) else None
