"""Data-aware refit: least-squares fit of each decomposed layer's last factor and bias.

Asymmetric reconstruction: the last factor's inputs come from the already-compressed model
(so errors of earlier decomposed layers are compensated), the targets are the original
layer's outputs in the model as it was before the pass. Layers are refitted in topological
order, in at most MAX_WAVES waves of consecutive layers: each wave's inputs are collected in
one onnxruntime run of the model with every earlier wave's refits applied. With up to
MAX_WAVES layers that is each layer after the refits upstream of it; deeper models keep a
fixed number of runs, so the cost grows linearly with depth instead of quadratically.
"""

from __future__ import annotations

import numpy as np

from slimcc.passes.lowrank.emit import LastFactor

MAX_WAVES = 16


def _rows(array: np.ndarray, axis: int) -> np.ndarray:
    """Move the feature axis last and flatten the rest into rows (float64)."""
    return np.moveaxis(np.asarray(array, dtype=np.float64), axis, -1).reshape(-1, array.shape[axis])


def current_matrix(factor: LastFactor) -> tuple[np.ndarray, np.ndarray]:
    """The factor's effective [R, Cout] matrix and [Cout] bias (zeros when absent)."""
    w = np.asarray(factor.weight.values, dtype=np.float64)
    if factor.layout == "conv":
        matrix = w[:, :, 0, 0].T
    elif factor.layout == "rows":
        matrix = w.T
    else:
        matrix = w
    matrix = matrix * factor.scale
    bias = (np.asarray(factor.bias.values, dtype=np.float64).reshape(-1) * factor.bias_scale
            if factor.bias is not None else np.zeros(matrix.shape[1]))
    return matrix, bias


def store_matrix(factor: LastFactor, matrix: np.ndarray, bias: np.ndarray | None) -> None:
    """Write an effective [R, Cout] matrix (and bias) back into the factor's constants, in place."""
    w = factor.weight.values
    scaled = matrix / factor.scale
    stored = scaled.T[:, :, None, None] if factor.layout == "conv" else (scaled.T if factor.layout == "rows" else scaled)
    factor.weight.values = np.ascontiguousarray(stored.astype(w.dtype).reshape(w.shape))
    if bias is not None and factor.bias is not None:
        old = factor.bias.values
        factor.bias.values = np.ascontiguousarray((bias / factor.bias_scale).astype(old.dtype).reshape(old.shape))


def least_squares(inputs: list[np.ndarray], targets: list[np.ndarray], fit_bias: bool,
                  ridge: float = 1e-6) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, float]:
    """Solve min ||[Z 1] [W; b] - Y|| over all batches (normal equations, tiny ridge for stability).

    Returns (W [R, Cout], b or None, Gram, cross, ||Y||^2) so callers can score any candidate.
    """
    gram = cross = None
    y_norm = 0.0
    for z, y in zip(inputs, targets):
        if fit_bias:
            z = np.concatenate([z, np.ones((z.shape[0], 1))], axis=1)
        gram = z.T @ z if gram is None else gram + z.T @ z
        cross = z.T @ y if cross is None else cross + z.T @ y
        y_norm += float(np.sum(y * y))
    size = gram.shape[0]
    lam = ridge * max(float(np.trace(gram)) / size, 1e-12)
    solution = np.linalg.solve(gram + lam * np.eye(size), cross)
    if fit_bias:
        return solution[:-1], solution[-1], gram, cross, y_norm
    return solution, None, gram, cross, y_norm


def _residual(gram, cross, y_norm, matrix, bias) -> float:
    full = np.vstack([matrix, bias[None, :]]) if bias is not None and gram.shape[0] == matrix.shape[0] + 1 else matrix
    value = float(np.sum(full * (gram @ full)) - 2 * np.sum(full * cross) + y_norm)
    return float(np.sqrt(max(value, 0.0) / max(y_norm, 1e-30)))


def refit_layers(model, before, factors: list[LastFactor], calibration, *, progress: bool = False) -> dict:
    """Refit every factor in order; returns {layer: {'rel_error_before', 'rel_error_after'}} on the calibration data."""
    from slimcc.ir.calibration import collect_activations

    targets = collect_activations(before, calibration, [f.output_name for f in factors], progress=progress)
    report = {}
    for wave in refit_waves(factors):
        inputs = collect_activations(model, calibration, [f.input_name for f in wave], progress=progress)
        for factor in wave:
            z = [_rows(a, factor.axis) for a in inputs[factor.input_name]]
            y = [_rows(a, factor.axis) for a in targets[factor.output_name]]
            fit_bias = factor.bias is not None
            matrix, bias, gram, cross, y_norm = least_squares(z, y, fit_bias)
            old_matrix, old_bias = current_matrix(factor)
            error_before = _residual(gram, cross, y_norm, old_matrix, old_bias if fit_bias else None)
            error_after = _residual(gram, cross, y_norm, matrix, bias)
            if error_after < error_before:
                store_matrix(factor, matrix, bias)
            report[factor.layer] = {"rel_error_before": round(error_before, 6),
                                    "rel_error_after": round(min(error_after, error_before), 6)}
    return report


def refit_waves(factors: list[LastFactor], max_waves: int = MAX_WAVES) -> list[list[LastFactor]]:
    """`factors` (in order) cut into at most `max_waves` runs of consecutive layers of near-equal size."""
    count = len(factors)
    waves = min(count, max_waves)
    bounds = [round(i * count / waves) for i in range(waves + 1)] if waves else [0]
    return [factors[a:b] for a, b in zip(bounds, bounds[1:])]
