"""Activation ranges from calibration data, and (scale, zero point) from ranges.

Range methods: `minmax` (observed extremes), `percentile` (two-sided percentile of the
observed values, robust to outliers), `entropy` (TensorRT-style KL: the clipping threshold
whose 128-level quantized histogram is closest to the observed one), `mse` (the clip of each side
whose u8 quantization has the least squared error over the observed values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np

from slimcc.errors import PassError

Method = Literal["minmax", "percentile", "entropy", "mse"]
QRANGE = {"u8": (0, 255), "s8": (-128, 127)}
NP_QTYPE = {"u8": np.uint8, "s8": np.int8}
KL_BINS = 2048
KL_LEVELS = 128
PERCENTILE_SAMPLES = 1 << 20


@dataclass(frozen=True)
class QParams:
    """Per-tensor quantization parameters: x ~= scale * (q - zero_point), q of `dtype` (u8/s8)."""

    scale: float
    zero_point: int
    dtype: str

    @property
    def lo(self) -> float:
        """The smallest representable real value."""
        return self.scale * (QRANGE[self.dtype][0] - self.zero_point)

    @property
    def hi(self) -> float:
        """The largest representable real value."""
        return self.scale * (QRANGE[self.dtype][1] - self.zero_point)


def tensor_range(arrays: list[np.ndarray], method: Method = "minmax", *, percentile: float = 99.99) -> tuple[float, float]:
    """The real range [lo, hi] to represent for one tensor seen in several batches (0 always inside)."""
    flat = [np.asarray(a, np.float32).ravel() for a in arrays if np.asarray(a).size]
    if not flat:
        raise PassError("cannot compute a range for an empty tensor")
    lo = float(min(a.min() for a in flat))
    hi = float(max(a.max() for a in flat))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise PassError("calibration produced non-finite activations; check the calibration inputs")
    if method == "percentile":
        values = np.concatenate(flat)
        if values.size > PERCENTILE_SAMPLES:
            values = np.random.default_rng(0).choice(values, PERCENTILE_SAMPLES, replace=False)
        lo, hi = (float(v) for v in np.percentile(values, [100.0 - percentile, percentile]))
    elif method == "entropy":
        # a one-sided (e.g. post-ReLU) tensor spends all 256 u8 levels on [0, T]
        threshold = kl_threshold(np.concatenate(flat), levels=KL_LEVELS * (2 if lo >= 0 else 1))
        lo, hi = max(lo, -threshold), min(hi, threshold)
    elif method == "mse":
        lo, hi = mse_range(np.concatenate(flat), min(lo, 0.0), max(hi, 0.0))
    elif method != "minmax":
        raise PassError(f"unknown range method {method!r}; use minmax, percentile, entropy or mse")
    return min(lo, 0.0), max(hi, 0.0)


def activation_ranges(batches: Iterable[dict[str, np.ndarray]], names: list[str], method: Method = "minmax", *,
                      percentile: float = 99.99) -> dict[str, tuple[float, float]]:
    """`tensor_range` of each named tensor over a stream of per-batch {name: array} (iter_activations).

    minmax folds each batch into a running range as it arrives, so memory stays one batch's
    activations however many batches there are; percentile and entropy need every value, so they
    keep the arrays until the stream ends."""
    if method == "minmax":
        ranges: dict[str, tuple[float, float]] = {}
        for batch in batches:
            for name in names:
                lo, hi = tensor_range([batch[name]])
                old = ranges.get(name, (lo, hi))
                ranges[name] = (min(old[0], lo), max(old[1], hi))
            del batch  # not kept alive while the next batch runs
        return {name: ranges[name] for name in names}
    kept: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for batch in batches:
        for name in names:
            kept[name].append(batch[name])
    return {name: tensor_range(kept[name], method, percentile=percentile) for name in names}


MSE_BINS = 1 << 16  # histogram bins the squared error is summed over: 8x finer than the finest clip's step
MSE_STEPS = 48  # clipping candidates per side: the observed extreme times 1 down to 1/32, geometrically


def mse_range(values: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """The clipped range [lo', hi'] (each the observed extreme times a factor in [1/32, 1]) whose u8
    asymmetric quantization (`qparams_for_range`) has the least squared error over `values`:
    coordinate search, the high side then the low side, twice, on a histogram of the values (rare
    extremes keep their full weight)."""
    if hi <= lo:
        return lo, hi
    counts, edges = np.histogram(values.astype(np.float64), bins=MSE_BINS, range=(lo, hi))
    keep = counts > 0
    x, weight = ((edges[:-1] + edges[1:]) / 2)[keep], counts[keep].astype(np.float64)
    fractions = np.geomspace(1.0, 1.0 / 32.0, MSE_STEPS)

    def best(los: np.ndarray, his: np.ndarray) -> int:
        scale = (his - los) / 255.0
        zero = np.clip(np.round(-los / scale), 0, 255)
        errors = [((np.clip(np.round(x / s) + z, 0, 255) - z) * s - x) ** 2 @ weight for s, z in zip(scale, zero)]
        return int(np.argmin(errors))

    best_lo, best_hi = lo, hi
    for _ in range(2):
        if hi > 0:
            best_hi = hi * fractions[best(np.full(MSE_STEPS, best_lo), hi * fractions)]
        if lo < 0:
            best_lo = lo * fractions[best(lo * fractions, np.full(MSE_STEPS, best_hi))]
    return float(best_lo), float(best_hi)


def kl_threshold(values: np.ndarray, bins: int = KL_BINS, levels: int = KL_LEVELS) -> float:
    """The |x| clipping threshold minimizing KL(P || Q) (P: clipped histogram, Q: it quantized to `levels`)."""
    magnitudes = np.abs(values.astype(np.float64))
    top = float(magnitudes.max())
    if top == 0.0:
        return 0.0
    hist, edges = np.histogram(magnitudes, bins=bins, range=(0.0, top))
    hist = hist.astype(np.float64)
    best_kl, best_i = np.inf, bins
    for i in range(levels, bins + 1):
        reference = hist[:i].copy()
        reference[i - 1] += hist[i:].sum()
        candidate = _quantize_histogram(hist[:i], levels)
        kl = _kl(reference, candidate)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i])


def _quantize_histogram(hist: np.ndarray, levels: int) -> np.ndarray:
    """Merge `hist` into `levels` contiguous groups and spread each group's mass over its non-empty bins."""
    starts = np.arange(levels) * hist.size // levels
    lengths = np.diff(np.append(starts, hist.size))
    nonzero = hist > 0
    sums = np.add.reduceat(hist, starts)
    counts = np.add.reduceat(nonzero.astype(np.float64), starts)
    mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return np.repeat(mean, lengths) * nonzero


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p_sum, q_sum = p.sum(), q.sum()
    if p_sum == 0 or q_sum == 0:
        return np.inf
    p, q = p / p_sum, q / q_sum
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def qparams_for_range(lo: float, hi: float, dtype: str) -> QParams:
    """u8: asymmetric (zero point chosen so 0.0 is exact); s8: symmetric, zero point 0."""
    qmin, qmax = QRANGE[dtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if dtype == "s8":
        bound = max(-lo, hi)
        scale = bound / 127.0 if bound > 0 else 1.0
        return QParams(float(np.float32(scale)), 0, dtype)
    scale = (hi - lo) / float(qmax - qmin) if hi > lo else 1.0
    scale = float(np.float32(scale))
    zero_point = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return QParams(scale, zero_point, dtype)


def qparams_from_low(lo: float, hi: float) -> QParams:
    """u8 parameters whose lowest level decodes to `lo` (< 0) itself, up to float rounding, and
    whose top reaches at least `hi`: the zero point is floor(255 * -lo / (hi - lo)) and the scale
    -lo / zero point, so every level is lo plus a whole number of steps."""
    lo, hi = float(lo), max(float(hi), 0.0)
    if not lo < 0.0:
        raise ValueError(f"qparams_from_low needs lo < 0, got {lo}")
    zero_point = int(np.clip(np.floor(255.0 * -lo / (hi - lo)), 1, 255))
    return QParams(float(np.float32(-lo / zero_point)), zero_point, "u8")


def symmetric_weight_scales(weight: np.ndarray, axis: int | None, *, bits: int = 8) -> np.ndarray:
    """Per-channel (or per-tensor when axis is None) symmetric scales max|w| / (2^(bits-1) - 1)."""
    qmax = float(2 ** (bits - 1) - 1)
    w = np.abs(np.asarray(weight, np.float32))
    if axis is None:
        peak = np.asarray(w.max() if w.size else 0.0)
    else:
        peak = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).max(axis=1)
    scales = (peak / qmax).astype(np.float32)
    return np.where(scales > 0, scales, np.float32(1.0)).astype(np.float32)


def quantize_weight(weight: np.ndarray, scales: np.ndarray, axis: int | None, *, bits: int = 8) -> np.ndarray:
    """Symmetric int8 weights: round-half-even(w / s) clamped to +-(2^(bits-1) - 1)."""
    qmax = 2 ** (bits - 1) - 1
    shape = [1] * weight.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.round(np.asarray(weight, np.float32) / scales.reshape(shape))
    return np.clip(q, -qmax, qmax).astype(np.int8)
