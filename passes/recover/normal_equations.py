"""Ridge least squares from accumulated normal equations, for one or many independent groups.

A conv with `group` G is G independent problems (a depthwise conv: one tiny KxK problem per
channel); a plain conv/gemm is G = 1. Rows are [inputs, 1] so that the bias is fitted too;
the ridge penalty pulls the weights (not the bias) toward a prior, the current weights, so
that input directions the calibration data does not show are left as they were.

With few rows per unknown the fit may overfit the calibration rows. `choose_ridge` then checks
by k-fold cross-validation (the rows of one calibration sample stay in one fold) that the
fit predicts unseen samples better than the current weights, and otherwise tries stronger
ridges, down to "weights unchanged, bias refitted" (an infinite ridge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# candidate ridge strengths (relative to the mean input power) tried by cross-validation;
# math.inf keeps the weights and refits the bias only
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, math.inf)


@dataclass
class NormalEquations:
    """Accumulated A^T A [G, F+1, F+1], A^T Y [G, F+1, O] and sum Y^2 for rows A = [inputs, 1], targets Y."""

    gram: np.ndarray
    cross: np.ndarray
    target_sq: float = 0.0
    rows: int = 0

    @classmethod
    def empty(cls, groups: int, fan_in: int, outputs: int) -> NormalEquations:
        """Zero equations for `groups` problems of `fan_in` inputs and `outputs` targets each."""
        return cls(np.zeros((groups, fan_in + 1, fan_in + 1)), np.zeros((groups, fan_in + 1, outputs)))

    @property
    def fan_in(self) -> int:
        return self.gram.shape[1] - 1

    def add(self, inputs: np.ndarray, targets: np.ndarray) -> None:
        """Accumulate rows: inputs [P, G, F], targets [P, G, O]."""
        rows = np.concatenate([inputs, np.ones(inputs.shape[:2] + (1,))], axis=2).transpose(1, 0, 2)
        per_group = targets.transpose(1, 0, 2)
        self.gram += rows.transpose(0, 2, 1) @ rows
        self.cross += rows.transpose(0, 2, 1) @ per_group
        self.target_sq += float(np.sum(targets * targets))
        self.rows += inputs.shape[0]

    def __add__(self, other: NormalEquations) -> NormalEquations:
        return NormalEquations(self.gram + other.gram, self.cross + other.cross,
                               self.target_sq + other.target_sq, self.rows + other.rows)

    def __sub__(self, other: NormalEquations) -> NormalEquations:
        return NormalEquations(self.gram - other.gram, self.cross - other.cross,
                               self.target_sq - other.target_sq, self.rows - other.rows)

    def error(self, solution: np.ndarray) -> float:
        """Squared reconstruction error of [weights; bias] per group ([G, F+1, O]) over the rows."""
        return float(self.target_sq - 2.0 * np.sum(solution * self.cross) + np.sum(solution * (self.gram @ solution)))

    def solve(self, ridge: float, prior: np.ndarray) -> np.ndarray:
        """Ridge solution [G, F+1, O] pulled toward `prior` (the bias is free).

        The penalty is `ridge` times each group's mean input power, so it is scale-free;
        ridge=inf keeps the prior weights and fits the bias alone."""
        fan_in = self.fan_in
        if math.isinf(ridge):
            return self._bias_only(prior)
        weight_gram = self.gram[:, :fan_in, :fan_in]
        power = np.trace(weight_gram, axis1=1, axis2=2) / max(fan_in, 1)
        penalty = np.maximum(ridge * power, 1e-12)
        system = self.gram.copy()
        diagonal = np.arange(fan_in)
        system[:, diagonal, diagonal] += penalty[:, None]
        rhs = self.cross.copy()
        rhs[:, :fan_in] += penalty[:, None, None] * prior[:, :fan_in]
        try:
            return np.linalg.solve(system, rhs)
        except np.linalg.LinAlgError:
            return np.stack([np.linalg.lstsq(s, r, rcond=None)[0] for s, r in zip(system, rhs)])

    def _bias_only(self, prior: np.ndarray) -> np.ndarray:
        """The prior weights with the least-squares bias: (sum y - sum x . w) / rows."""
        fan_in = self.fan_in
        solution = prior.copy()
        count = np.maximum(self.gram[:, fan_in, fan_in], 1e-30)
        sums = self.gram[:, fan_in, :fan_in]
        solution[:, fan_in] = (self.cross[:, fan_in] - np.einsum("gf,gfo->go", sums, prior[:, :fan_in])) / count[:, None]
        return solution


def total(folds: list[NormalEquations]) -> NormalEquations:
    """The equations of all rows of all folds."""
    result = folds[0]
    for fold in folds[1:]:
        result = result + fold
    return result


def choose_ridge(folds: list[NormalEquations], prior: np.ndarray, preferred: float,
                 grid: tuple[float, ...] = RIDGE_GRID) -> tuple[float | None, float, float]:
    """A ridge whose fit predicts held-out folds better than the prior (the current weights) does.

    k-fold cross-validation: each fold is predicted by a fit on the others. `preferred` (the
    configured ridge) is kept when it passes; otherwise the candidate of `grid` with the
    lowest validation error, stronger ridges included; None when no candidate passes.
    (Preferring the configured ridge: in a chain of refits, downstream layers compensate a
    layer's systematic error, so a lower per-layer validation error of a stronger ridge
    did not give lower end-to-end error in our measurements.)

    Returns (ridge or None, its validation error, the prior's error), relative to the targets' power."""
    folds = [f for f in folds if f.rows]
    everything = total(folds)
    scale = max(everything.target_sq, 1e-30)
    baseline = everything.error(prior) / scale

    def validation_error(ridge: float) -> float:
        held_out = sum(fold.error((everything - fold).solve(ridge, prior)) for fold in folds) / scale
        return held_out if np.isfinite(held_out) else math.inf

    first = validation_error(preferred)
    if first < baseline:
        return preferred, first, baseline
    best, best_error = None, baseline
    for ridge in grid:
        error = validation_error(ridge)
        if error < best_error:
            best, best_error = ridge, error
    return best, best_error, baseline
