"""Which channels of an original tensor a compressed tensor still holds.

Pruning keeps tensor names and removes channels, keeping the survivors in their original
order. The map comes from `ctx.notes["channel_map"]` ({tensor name: kept indices}) when the
pruning pass recorded it; otherwise it is inferred from calibration activations: the
order-preserving assignment of compressed to original channels with the largest total
correlation (a monotone alignment, solved exactly by dynamic programming). An assignment
whose mean correlation is below `MIN_CORRELATION` is refused.
"""

from __future__ import annotations

import numpy as np

MIN_CORRELATION = 0.5


def recorded_map(ctx, tensor: str, channels: int, original: int) -> np.ndarray | None:
    """The kept indices recorded in ctx.notes["channel_map"] for `tensor`, if they fit the shapes."""
    notes = getattr(ctx, "notes", None) or {}
    kept = (notes.get("channel_map") or {}).get(tensor)
    if kept is None:
        return None
    kept = np.asarray(kept, np.int64).reshape(-1)
    if len(kept) != channels or (len(kept) and (kept.min() < 0 or kept.max() >= original)):
        return None
    return kept


def correlation(cov: np.ndarray, var_a: np.ndarray, var_b: np.ndarray) -> np.ndarray:
    """Correlation matrix [A, B] from a cross-covariance and the two variance vectors."""
    scale = np.sqrt(np.maximum(var_a, 1e-30))[:, None] * np.sqrt(np.maximum(var_b, 1e-30))[None, :]
    return cov / scale


def sample_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Correlation between the columns of a [P, A] and b [P, B]."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    return correlation(a.T @ b, (a * a).sum(axis=0), (b * b).sum(axis=0))


def monotone_match(corr: np.ndarray) -> tuple[np.ndarray, float]:
    """Strictly increasing j_0 < j_1 < ... maximizing sum_i corr[i, j_i]; returns (indices, mean corr)."""
    rows, cols = corr.shape
    if rows > cols:
        raise ValueError("more compressed channels than original ones")
    if rows == cols:
        return np.arange(cols), float(np.mean(np.diag(corr))) if rows else 1.0
    score = corr[0].copy()
    choice = np.zeros((rows, cols), np.int64)
    for i in range(1, rows):
        # best previous score among columns < j: running maximum shifted by one
        best = np.maximum.accumulate(score)
        arg = _running_argmax(score)
        prev_best = np.concatenate([[-np.inf], best[:-1]])
        choice[i] = np.concatenate([[0], arg[:-1]])
        score = corr[i] + prev_best
    path = np.zeros(rows, np.int64)
    path[-1] = int(np.argmax(score))
    total = float(score[path[-1]])
    for i in range(rows - 1, 0, -1):
        path[i - 1] = choice[i, path[i]]
    return path, total / rows


def _running_argmax(values: np.ndarray) -> np.ndarray:
    """Index of the maximum of values[:j+1] for every j."""
    best = np.maximum.accumulate(values)
    is_new = np.concatenate([[True], values[1:] > best[:-1]])
    return np.maximum.accumulate(np.where(is_new, np.arange(len(values)), 0))


def infer_map(corr: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Kept indices from a [compressed, original] correlation matrix, or (None, reason)."""
    kept, quality = monotone_match(corr)
    if not np.isfinite(quality) or quality < MIN_CORRELATION:
        return None, f"cannot match pruned channels to the original ones (mean correlation {quality:.2f})"
    return kept, ""


def weight_map(compressed: np.ndarray, original: np.ndarray) -> np.ndarray | None:
    """Kept output channels found from the weights themselves, when pruning only sliced them.

    Both arguments are per-output-channel weights shaped [Cout, units, unit] (a conv's filters as
    [Cout, Cin, kh*kw]). A pruned filter keeps a subset of its original kernels bit for bit, so
    each compressed filter is matched to the original filter that contains its first kernels;
    the match must be increasing and every kernel of the compressed filter must occur in it.
    None when no such exact match exists (weights were rescaled, refitted or quantized).
    """
    if compressed.shape[0] > original.shape[0] or compressed.shape[2] != original.shape[2]:
        return None
    owners: dict[bytes, set[int]] = {}
    for j in range(original.shape[0]):
        for unit in original[j]:
            owners.setdefault(np.ascontiguousarray(unit).tobytes(), set()).add(j)
    kept, previous = [], -1
    for row in compressed:
        candidates = None
        for unit in row[:4]:
            found = owners.get(np.ascontiguousarray(unit).tobytes(), set())
            candidates = set(found) if candidates is None else candidates & found
        options = sorted(j for j in (candidates or ()) if j > previous)
        match = next((j for j in options if _contains(original[j], row)), None)
        if match is None:
            return None
        kept.append(match)
        previous = match
    return np.asarray(kept, np.int64)


def _contains(original: np.ndarray, row: np.ndarray) -> bool:
    """Every kernel of `row` occurs, in order, among the kernels of `original`."""
    keys = [u.tobytes() for u in np.ascontiguousarray(original)]
    position = 0
    for unit in np.ascontiguousarray(row):
        key = unit.tobytes()
        while position < len(keys) and keys[position] != key:
            position += 1
        if position == len(keys):
            return False
        position += 1
    return True


def known_channels(ctx, layer, original_layer, channels: int, original: int) -> np.ndarray | str | None:
    """Original channel of each of the `channels` outputs of `layer`, when it can be told without
    activations: all of them kept, the map recorded in ctx.notes, or an exact weight match
    against `original_layer`. A reason string when impossible, None when activations must decide."""
    if channels == original:
        return np.arange(channels)
    if channels > original:
        return f"output has more channels ({channels}) than the original ({original})"
    kept = recorded_map(ctx, layer.output.name, channels, original)
    if kept is None and original_layer is not None \
            and layer.weight_array() is not None and original_layer.weight_array() is not None:
        kept = weight_map(layer.filters(), original_layer.filters())
    return kept


def kept_channels(ctx, layer, original_layer, cur_rows: np.ndarray, ref_rows: np.ndarray) -> np.ndarray | str:
    """Original channel of each output channel of `layer`, or the reason it cannot be told.

    `known_channels` first, then the best monotone correlation of activations (`cur_rows` /
    `ref_rows`: the same sampled positions of both outputs as [P, C])."""
    kept = known_channels(ctx, layer, original_layer, cur_rows.shape[1], ref_rows.shape[1])
    if kept is not None:
        return kept
    kept, reason = infer_map(sample_correlation(cur_rows, ref_rows))
    return kept if kept is not None else reason


def remember_channels(ctx, tensor: str, kept: np.ndarray, original: int) -> None:
    """Record in ctx.notes["channel_map"] which original channels a pruned tensor holds, so that
    later recovery passes still match its channels after its weights were refitted."""
    notes = getattr(ctx, "notes", None)
    if notes is not None and len(kept) < original:
        notes.setdefault("channel_map", {})[tensor] = np.asarray(kept, np.int64)
