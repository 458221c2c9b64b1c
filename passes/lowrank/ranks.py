"""Rank selection for low-rank decomposition: closed-form speedup bound, energy, EVBMF, rounding.

Analysis only (no graph edits): given a layer's geometry and weight, choose the ranks of
its factors and predict the MACs of the decomposed layer, so that the passes can decide
whether a decomposition pays before rewriting anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_SAVING = 0.2


@dataclass(frozen=True)
class ConvGeometry:
    """The shape facts rank selection needs: channels, kernel size, groups and pixel counts.

    `in_pixels` is H*W of the (unpadded) input, `out_pixels` H*W of the output; they differ
    for strided convs, which is why a 1x1 factor placed before the stride costs more.
    """

    cin: int
    cout: int
    kernel: int  # KH*KW
    in_pixels: int
    out_pixels: int
    groups: int = 1

    @property
    def original_macs(self) -> int:
        """MACs of the undecomposed conv (per image)."""
        return self.cout * (self.cin // self.groups) * self.kernel * self.out_pixels


def survey_k_max(m: float, n: float, kernel: int) -> float:
    """The survey's closed form: largest k (R3=R4=k*C, Cout=n*C) giving a MACs speedup of m.

    k < (-(n+1)/K + sqrt(((n+1)/K)^2 + 4n/m)) / 2 with K = KH*KW; it is the positive
    root of K k^2 + (n+1) k - n K / m = 0 (stride 1, Cin = C).
    """
    if m <= 0 or n <= 0 or kernel <= 0:
        raise ValueError("m, n and K must be positive")
    a = (n + 1) / kernel
    return (-a + math.sqrt(a * a + 4 * n / m)) / 2


def tucker_macs(geo: ConvGeometry, r3: int, r4: int) -> int:
    """MACs of Cin -1x1-> R3 -KxK-> R4 -1x1-> Cout, per group; the first 1x1 runs at input resolution."""
    g = geo.groups
    return g * ((geo.cin // g) * r3 * geo.in_pixels + r3 * r4 * geo.kernel * geo.out_pixels
                + r4 * (geo.cout // g) * geo.out_pixels)


def svd_macs(geo: ConvGeometry, rank: int) -> int:
    """MACs of the two-factor SVD form: KxK conv Cin -> R, then 1x1 R -> Cout (per group)."""
    g = geo.groups
    return g * ((geo.cin // g) * geo.kernel * rank * geo.out_pixels + rank * (geo.cout // g) * geo.out_pixels)


def tucker_rank_for_speedup(geo: ConvGeometry, m: float) -> float:
    """Largest common rank R = R3 = R4 (per group, real-valued) whose Tucker MACs are original/m.

    Stride-aware generalisation of the survey's bound, solved from actual MACs:
    K*Po*R^2 + (ci*Pi + co*Po)*R - co*ci*K*Po/m = 0 (ci, co = channels per group).
    """
    ci, co = geo.cin // geo.groups, geo.cout // geo.groups
    a = geo.kernel * geo.out_pixels
    b = ci * geo.in_pixels + co * geo.out_pixels
    c = co * ci * geo.kernel * geo.out_pixels / m
    return (-b + math.sqrt(b * b + 4 * a * c)) / (2 * a)


def svd_rank_for_speedup(geo: ConvGeometry, m: float) -> float:
    """Largest rank R (per group, real-valued) whose two-factor MACs are original/m."""
    ci, co = geo.cin // geo.groups, geo.cout // geo.groups
    return co * ci * geo.kernel / (m * (ci * geo.kernel + co))


def round_rank(value: float, limit: int, multiple: int = 8, *, up: bool = False) -> int:
    """Round a rank to a multiple of `multiple` (down by default, so a speedup target still holds).

    The result lies in [1, limit]; below one multiple it becomes `multiple` (or `limit`).
    """
    if limit <= 0:
        raise ValueError("rank limit must be positive")
    if multiple <= 1:
        rounded = math.ceil(value - 1e-9) if up else math.floor(value + 1e-9)
    else:
        steps = math.ceil(value / multiple - 1e-9) if up else math.floor(value / multiple + 1e-9)
        rounded = max(steps, 1) * multiple
    return int(min(max(rounded, 1), limit))


def energy_rank(singular_values: np.ndarray, energy: float) -> int:
    """Smallest rank keeping `energy` (0..1] of the sum of squared singular values."""
    s2 = np.asarray(singular_values, dtype=np.float64) ** 2
    total = float(s2.sum())
    if total == 0.0:
        return 1
    kept = np.cumsum(s2) / total
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, len(s2)))


def evbmf_rank(matrix: np.ndarray) -> int:
    """Rank estimated by empirical variational Bayesian matrix factorisation (Nakajima et al., 2013).

    The noise variance sigma^2 is chosen by minimising the analytic EVB free energy over its
    admissible interval; singular values above the EVB threshold
    sqrt(M sigma^2 (1 + tau)(1 + alpha/tau)) are kept. May return 0 for pure noise, which
    is why the passes apply a floor.
    """
    y = np.asarray(matrix, dtype=np.float64)
    if y.shape[0] > y.shape[1]:
        y = y.T
    rows, cols = y.shape  # rows <= cols
    s = np.linalg.svd(y, compute_uv=False)
    h = len(s)
    alpha = rows / cols
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    residual = max(float(np.sum(y * y) - np.sum(s * s)), 0.0)
    upper = (float(np.sum(s * s)) + residual) / (rows * cols)
    h_ub = int(min(math.ceil(rows / (1 + alpha)) - 1, h)) - 1
    tail = s[h_ub + 1:] if h_ub + 1 < h else s[-1:]
    lower = max(float(tail[0] ** 2) / (cols * x_bar), float(np.mean(tail ** 2)) / cols, upper * 1e-12)
    if lower >= upper:
        return h

    def free_energy(sigma2: float) -> float:
        x = s * s / (cols * sigma2)
        big, small = x[x > x_bar], x[x <= x_bar]
        disc = np.maximum((big - (1 + alpha)) ** 2 - 4 * alpha, 0.0)
        tau = 0.5 * (big - (1 + alpha) + np.sqrt(disc))
        return float(np.sum(small - np.log(small)) + np.sum(big - tau) + np.sum(np.log((tau + 1) / big))
                     + alpha * np.sum(np.log(tau / alpha + 1)) + residual / (cols * sigma2)
                     + (rows - h) * math.log(sigma2))

    grid = np.exp(np.linspace(math.log(lower), math.log(upper), 400))
    values = [free_energy(v) for v in grid]
    best = int(np.argmin(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # golden-section refinement around the grid minimum
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if free_energy(a) < free_energy(b):
            hi = b
        else:
            lo = a
    sigma2 = (lo + hi) / 2
    threshold = math.sqrt(cols * sigma2 * x_bar)
    return int(np.sum(s > threshold))


def unfold(tensor: np.ndarray, mode: int) -> np.ndarray:
    """Mode-`mode` unfolding: that axis becomes rows, all others are flattened into columns."""
    return np.moveaxis(tensor, mode, 0).reshape(tensor.shape[mode], -1)


@dataclass(frozen=True)
class RankPolicy:
    """How ranks are chosen; exactly one of speedup / rank / energy / evbmf applies.

    `rank` is the fraction of each dimension kept (1.0 = full rank); `floor` is the minimum
    fraction EVBMF may return; `multiple` is the rounding step (8 suits SIMD widths).
    """

    speedup: float = 0.0
    rank: float = 0.0
    energy: float = 0.0
    evbmf: bool = False
    floor: float = 0.1
    multiple: int = 8

    @property
    def mode(self) -> str:
        """Which rule applies: 'rank', 'energy', 'evbmf' or (the default) 'speedup'."""
        if self.rank > 0:
            return "rank"
        if self.energy > 0:
            return "energy"
        if self.evbmf:
            return "evbmf"
        return "speedup"

    @property
    def target_speedup(self) -> float:
        """The MACs speedup m to aim for (2 when no rule was given)."""
        return self.speedup if self.speedup > 0 else 2.0


def validate_policy(pass_name: str, speedup: float, rank: float, energy: float, evbmf: bool, floor: float,
                    multiple: int) -> None:
    """Raise PipelineError (one line) for contradictory or out-of-range rank options."""
    from slimcc.errors import PipelineError

    given = [name for name, on in (("speedup", speedup > 0), ("rank", rank > 0), ("energy", energy > 0),
                                   ("evbmf", evbmf)) if on]
    if len(given) > 1:
        raise PipelineError(f"{pass_name}: give only one of speedup, rank, energy, evbmf (got {', '.join(given)})")
    if speedup < 0 or (0 < speedup <= 1):
        raise PipelineError(f"{pass_name}: speedup={speedup} must be > 1 (e.g. speedup=2)")
    if rank < 0 or rank > 1:
        raise PipelineError(f"{pass_name}: rank={rank} is a fraction of channels kept; use 0 < rank <= 1")
    if energy < 0 or energy > 1:
        raise PipelineError(f"{pass_name}: energy={energy} must be in (0, 1]")
    if not 0 <= floor <= 1:
        raise PipelineError(f"{pass_name}: floor={floor} must be in [0, 1]")
    if multiple < 1:
        raise PipelineError(f"{pass_name}: multiple={multiple} must be >= 1")


def parse_explicit_ranks(pass_name: str, text: str) -> dict[str, tuple[int, ...]]:
    """Parse `conv1=32;conv2=16:24` into {layer name: ranks} (one rank, or R3:R4 for Tucker)."""
    from slimcc.errors import PipelineError

    ranks: dict[str, tuple[int, ...]] = {}
    for item in filter(None, (p.strip() for p in text.split(";"))):
        name, eq, value = item.rpartition("=")
        try:
            parsed = tuple(int(v) for v in value.split(":"))
        except ValueError:
            parsed = ()
        if not eq or not name or not parsed or len(parsed) > 2 or min(parsed) < 1:
            raise PipelineError(f"{pass_name}: ranks entry {item!r} must be NAME=R or NAME=R3:R4 with R >= 1")
        ranks[name] = parsed
    return ranks
