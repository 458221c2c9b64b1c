"""How far a compressed model's outputs are from the original's, judged alike by every pass that measures it.

The int8 placement (passes/quant/placement.py) and the pruning sensitivity curves
(passes/prune/sensitivity.py) both rank changes by this error on calibration data.
"""

from __future__ import annotations

import numpy as np

CHANNEL_SHARE = 0.25  # per-channel errors run ~4x the whole-output one (weak channels are noisier)


def output_error(reference: list[dict[str, np.ndarray]], outputs: list[dict[str, np.ndarray]]) -> float:
    """The worst float output's error, all batches pooled: the larger of its relative L2 error
    ||y - y_ref|| / ||y_ref|| and a quarter (CHANNEL_SHARE) of its mean per-channel relative error.

    The whole-output L2 alone is blind to small-valued channels beside large ones (YOLOv8n's
    class scores in [0, 1] concatenated with box coordinates in pixels: zeroing every score moved
    it by 4%); per channel (axis 1), each channel's error is taken against its own norm, or the
    median channel norm when smaller (channels that are ~0 everywhere do not dominate)."""
    worst = 0.0
    for name in reference[0]:
        if not np.issubdtype(np.asarray(reference[0][name]).dtype, np.floating):
            continue
        ref = np.concatenate([np.asarray(r[name], np.float64).reshape(1, -1) if np.ndim(r[name]) < 2
                              else np.asarray(r[name], np.float64) for r in reference])
        got = np.concatenate([np.asarray(o[name], np.float64).reshape(1, -1) if np.ndim(o[name]) < 2
                              else np.asarray(o[name], np.float64) for o in outputs])
        norm, diff = float(np.sqrt(np.sum(ref ** 2))), float(np.sqrt(np.sum((got - ref) ** 2)))
        overall = diff / norm if norm > 0 else float(diff > 0)
        worst = max(worst, overall, CHANNEL_SHARE * channel_error(ref, got))
    return worst


def channel_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over channels (axis 1) of ||d_c|| / max(||r_c||, median channel norm)."""
    ref = np.moveaxis(reference, 1, 0).reshape(reference.shape[1], -1)
    got = np.moveaxis(candidate, 1, 0).reshape(candidate.shape[1], -1)
    norms = np.sqrt(np.sum(ref ** 2, axis=1))
    floor = float(np.median(norms))
    if floor <= 0:
        return 0.0 if np.array_equal(ref, got) else 1.0
    return float(np.mean(np.sqrt(np.sum((got - ref) ** 2, axis=1)) / np.maximum(norms, floor)))
