"""Grouped ridge least squares and cross-validated ridge choice (synthetic data), and the
depthwise refit that rests on them: exact recovery of a perturbed depthwise conv."""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.calibration import CalibrationData
from slimcc.ir.model import Model
from slimcc.passes.base import PassContext
from slimcc.passes.recover.layers import find_layers
from slimcc.passes.recover.normal_equations import NormalEquations, choose_ridge
from slimcc.passes.recover.recover_lstsq import RecoverLstsq


def _equations(x: np.ndarray, y: np.ndarray) -> NormalEquations:
    eq = NormalEquations.empty(x.shape[1], x.shape[2], y.shape[2])
    eq.add(x, y)
    return eq


def test_grouped_solution_is_each_groups_own_least_squares_fit():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 3, 5)), rng.normal(size=(200, 3, 2))
    solution = _equations(x, y).solve(0.0, np.zeros((3, 6, 2)))
    for g in range(3):
        rows = np.concatenate([x[:, g], np.ones((200, 1))], axis=1)
        np.testing.assert_allclose(solution[g], np.linalg.lstsq(rows, y[:, g], rcond=None)[0], atol=1e-8)


def test_infinite_ridge_keeps_the_weights_and_fits_the_bias():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 1, 4))
    prior = rng.normal(size=(1, 5, 3))
    y = x @ prior[0, :4] + np.array([1.0, -2.0, 0.5])
    solution = _equations(x, y).solve(math.inf, prior)
    np.testing.assert_array_equal(solution[0, :4], prior[0, :4])
    np.testing.assert_allclose(solution[0, 4], [1.0, -2.0, 0.5], atol=1e-10)


def _few_rows_problem(seed: int, signal: float):
    """Rows mostly in a low-dimensional subspace (like pooled features), 24 rows for 64 inputs;
    targets = x (prior + signal * change) + noise, split into calibration folds and a held-out set."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(6, 64))
    prior = np.concatenate([rng.normal(size=(64, 3)), np.zeros((1, 3))])[None]
    true = prior.copy()
    true[0, :64] += signal * rng.normal(size=(64, 3))

    def draw(n):
        x = rng.normal(size=(n, 6)) @ basis + 0.05 * rng.normal(size=(n, 64))
        return x[:, None, :], (x @ true[0, :64] + 0.1 * rng.normal(size=(n, 3)))[:, None, :]

    folds = [_equations(*draw(3)) for _ in range(8)]
    return folds, prior, draw(400)


def test_few_row_fit_predicts_held_out_rows_at_least_as_well_as_the_unrefitted_weights():
    for seed, signal, preferred in [(0, 0.3, 1e-3), (1, 0.0, 1e-3), (2, 1.0, 1e-3), (3, 0.3, 0.0), (4, 0.0, 0.0)]:
        folds, prior, (x_test, y_test) = _few_rows_problem(seed, signal)
        ridge, validated, unchanged = choose_ridge(folds, prior, preferred)
        test = _equations(x_test, y_test)
        if ridge is None:
            assert validated == unchanged
            continue
        everything = folds[0]
        for fold in folds[1:]:
            everything = everything + fold
        fitted = everything.solve(ridge, prior)
        assert validated < unchanged
        assert test.error(fitted) <= test.error(prior), (seed, ridge)
        if signal >= 0.3:
            assert test.error(fitted) < 0.5 * test.error(prior)


def _depthwise_model(weights: np.ndarray, bias: np.ndarray) -> Model:
    channels = weights.shape[0]
    x = gs.Variable("x", np.float32, [2, channels, 7, 7])
    y = gs.Variable("y", np.float32, [2, channels, 7, 7])
    node = gs.Node("Conv", "dw", attrs={"group": channels, "pads": [1, 1, 1, 1], "kernel_shape": [3, 3]},
                   inputs=[x, gs.Constant("w", weights), gs.Constant("b", bias)], outputs=[y])
    graph = gs.Graph(nodes=[node], inputs=[x], outputs=[y], opset=17)
    return Model(graph)


def test_depthwise_conv_is_refitted_exactly_per_channel():
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(6, 1, 3, 3)).astype(np.float32)
    bias = rng.normal(size=6).astype(np.float32)
    reference = _depthwise_model(weights, bias)
    model = _depthwise_model((weights + 0.3 * rng.normal(size=weights.shape)).astype(np.float32), np.zeros(6, np.float32))
    calibration = CalibrationData([{"x": rng.normal(size=(2, 6, 7, 7)).astype(np.float32)} for _ in range(4)])
    ctx = PassContext(calibration=calibration, reference=reference, progress=False)
    result = RecoverLstsq(layers="all", ridge=0.0).run(model, ctx)
    assert result.stats["refitted"] == 1, result.stats
    (layer,) = find_layers(model.graph)
    np.testing.assert_allclose(layer.weight_array(), weights, atol=1e-4)
    np.testing.assert_allclose(layer.bias(), bias, atol=1e-4)


def test_an_overfitting_ridge_is_replaced_by_a_stronger_one_or_none():
    folds, prior, _ = _few_rows_problem(5, 0.0)  # the current weights are already right: only noise to fit
    ridge, validated, unchanged = choose_ridge(folds, prior, 0.0)
    assert ridge != 0.0
    assert ridge is None or validated < unchanged
