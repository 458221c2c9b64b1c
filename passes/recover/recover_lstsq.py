"""The `recover-lstsq` pass: refit compressed layers by ridge least squares on calibration data.

He et al. 2017 (channel pruning) / ThiNet: after the input channels of a layer were removed
(or the layer before it was decomposed), its weights are solved so that, fed with the
compressed model's own activations, it reproduces the original model's pre-activation
outputs. Layers are refitted one at a time in topological order, each on activations that
already include the refits upstream of it, so upstream error is compensated downstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from tqdm import tqdm

from slimcc.errors import PipelineError
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.recover.activations import calibration_batches, reference_model, stream, tensor_names
from slimcc.passes.recover.channel_map import kept_channels
from slimcc.passes.recover.layers import LinearLayer, find_layers, output_rows, pick_positions, sample_rows

MATCH_ROWS = 4096  # sampled rows kept for matching pruned output channels by correlation
EXACT_ERROR = 1e-10  # relative reconstruction error below which a layer is left untouched
# fewer calibration rows than this share of a layer's inputs make the fit a guess: refused.
# (between this and 1 the ridge pull toward the current weights keeps unseen directions as they were)
MIN_ROWS_PER_INPUT = 0.5


@dataclass
class NormalEquations:
    """Accumulated A^T A, A^T Y and Y^T Y (diagonal) for rows A = [inputs, 1] and targets Y."""

    gram: np.ndarray
    cross: np.ndarray
    target_sq: np.ndarray
    rows: int = 0

    @classmethod
    def empty(cls, fan_in: int, outputs: int) -> NormalEquations:
        return cls(np.zeros((fan_in + 1, fan_in + 1)), np.zeros((fan_in + 1, outputs)), np.zeros(outputs))

    def add(self, inputs: np.ndarray, targets: np.ndarray) -> None:
        rows = np.concatenate([inputs, np.ones((inputs.shape[0], 1))], axis=1)
        self.gram += rows.T @ rows
        self.cross += rows.T @ targets
        self.target_sq += (targets * targets).sum(axis=0)
        self.rows += inputs.shape[0]

    def error(self, solution: np.ndarray, columns: np.ndarray) -> float:
        """Squared reconstruction error of [matrix; bias] against the selected target columns."""
        cross = self.cross[:, columns]
        return float(self.target_sq[columns].sum() - 2.0 * np.sum(solution * cross)
                     + np.sum(solution * (self.gram @ solution)))

    def solve(self, columns: np.ndarray, ridge: float, prior: np.ndarray) -> np.ndarray:
        """Ridge solution [matrix; bias] pulled toward `prior` (the current weights; the bias is free).

        The penalty is `ridge` times the mean input power, so it is scale-free; pulling toward
        the current weights rather than zero keeps directions the data does not see unchanged."""
        fan_in = self.gram.shape[0] - 1
        penalty = max(ridge * float(np.trace(self.gram[:fan_in, :fan_in])) / max(fan_in, 1), 1e-12)
        system = self.gram.copy()
        system[np.arange(fan_in), np.arange(fan_in)] += penalty
        rhs = self.cross[:, columns].copy()
        rhs[:fan_in] += penalty * prior[:fan_in]
        try:
            return np.linalg.solve(system, rhs)
        except np.linalg.LinAlgError:
            return np.linalg.lstsq(system, rhs, rcond=None)[0]


@register_pass("recover-lstsq")
@dataclass(frozen=True)
class RecoverLstsq(Pass):
    """Refit pruned/decomposed layers by ridge least squares so they reproduce the original outputs (calibration data).

    layers=affected refits the consumers whose inputs changed shape (pruned input channels,
    the last factor of a decomposed layer); layers=all also refits every later conv/gemm
    whose output has a counterpart in the original model. Grouped/depthwise convs are skipped.
    """

    ridge: float = 1e-3
    samples: int = 8192
    layers: Literal["affected", "all"] = "affected"

    exact: ClassVar[bool] = False
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self):
        if not 0.0 <= self.ridge < 1e3:
            raise PipelineError(f"recover-lstsq: ridge={self.ridge} must be in [0, 1000)")
        if self.samples < 16:
            raise PipelineError(f"recover-lstsq: samples={self.samples} must be >= 16")

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        batches = calibration_batches(ctx, self.name)
        reference = reference_model(ctx, self.name, model)
        known = tensor_names(reference)
        originals = {l.output.name: l for l in find_layers(reference.graph)}
        seed = getattr(ctx, "seed", 0) or 0
        skipped: dict[str, str] = {}
        chosen: list[LinearLayer] = []
        for layer in find_layers(model.graph):
            reason = self._refusal(layer, known, originals)
            if reason and reason != "unaffected":
                skipped[layer.name] = reason
            elif not reason:
                chosen.append(layer)
        targets = self._targets(reference, batches, chosen, seed)
        refitted: dict[str, dict] = {}
        for layer in tqdm(chosen, desc=self.name, unit="layer", disable=not getattr(ctx, "progress", False)):
            outcome = self._refit(layer, originals.get(layer.output.name), model, batches, ctx, targets[layer.name])
            if isinstance(outcome, str):
                skipped[layer.name] = outcome
            else:
                refitted[layer.name] = outcome
        if refitted:
            model.graph.cleanup().toposort()
        return PassResult(bool(refitted), {"refitted": len(refitted), "layers": refitted, "skipped": skipped})

    def _targets(self, reference, batches, layers: list[LinearLayer], seed: int) -> dict[str, list]:
        """One pass over the original model: per layer and batch, sampled positions and the
        original outputs there (float32, so memory stays bounded by `samples` rows per layer)."""
        per_batch = max(1, self.samples // len(batches))
        found: dict[str, list] = {layer.name: [] for layer in layers}
        if not layers:
            return found
        names = list(dict.fromkeys(layer.output.name for layer in layers))
        for b, values in enumerate(stream(reference, batches, names)):
            for li, layer in enumerate(layers):
                y = values[layer.output.name]
                index = pick_positions(layer, y.shape, per_batch, np.random.default_rng([seed, li, b]))
                found[layer.name].append((index, np.asarray(output_rows(layer, y, index), np.float32)))
        return found

    def _refusal(self, layer: LinearLayer, known: set[str], originals: dict[str, LinearLayer]) -> str:
        """Why this layer is not refitted ("unaffected" when there is simply nothing to do)."""
        if layer.output.name not in known:
            return f"output {layer.output.name!r} has no counterpart in the original model"
        if layer.reason:
            return layer.reason
        if self.layers == "all":
            return ""
        if layer.input.name not in known:
            return ""  # follows a decomposed layer: its input is new
        original = originals.get(layer.output.name)
        if original is not None and original.weight_array() is not None \
                and original.filters().shape[1:] != layer.filters().shape[1:]:
            return ""  # input channels were pruned
        return "unaffected"

    def _refit(self, layer: LinearLayer, original: LinearLayer | None, model, batches, ctx,
               targets: list) -> dict | str:
        matrix, bias = layer.matrix(), layer.bias()
        current = np.vstack([matrix, bias[None, :]])
        equations: NormalEquations | None = None
        cur_rows, ref_rows = [], []
        for (index, wanted), inputs in zip(targets, stream(model, batches, [layer.input.name])):
            rows = sample_rows(layer, inputs[layer.input.name], index)
            if rows.shape[1] != matrix.shape[0]:
                return "input size does not match the layer's weights"
            wanted = wanted.astype(np.float64)
            if equations is None:
                equations = NormalEquations.empty(rows.shape[1], wanted.shape[1])
            equations.add(rows, wanted)
            if sum(len(r) for r in cur_rows) < MATCH_ROWS:
                cur_rows.append(rows @ matrix + bias)
                ref_rows.append(wanted)
        if equations is None:
            return "no calibration rows"
        if equations.rows < MIN_ROWS_PER_INPUT * matrix.shape[0]:
            return (f"only {equations.rows} calibration rows for {matrix.shape[0]} inputs per output; "
                    "give more calibration samples")
        kept = kept_channels(ctx, layer, original, np.concatenate(cur_rows), np.concatenate(ref_rows))
        if isinstance(kept, str):
            return kept
        before = equations.error(current, kept)
        scale = max(float(equations.target_sq[kept].sum()), 1e-30)
        if before / scale < EXACT_ERROR:
            return "already reproduces the original output"
        solution = equations.solve(kept, self.ridge, current)
        after = equations.error(solution, kept)
        if not np.all(np.isfinite(solution)) or after >= before:
            return f"refit did not reduce the reconstruction error ({before / scale:.3g} -> {after / scale:.3g})"
        layer.set_matrix(solution[:-1])
        layer.set_bias(solution[-1])
        return {"rows": equations.rows, "error_before": round(before / scale, 6), "error_after": round(after / scale, 6)}
