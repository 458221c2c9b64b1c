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

from slimcc.errors import PipelineError
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.recover.activations import calibration_batches, reference_model, stream, tensor_names
from slimcc.passes.recover.channel_map import kept_channels
from slimcc.passes.recover.layers import LinearLayer, find_layers, output_rows, sample_rows

MATCH_ROWS = 4096  # sampled rows kept for matching pruned output channels by correlation
EXACT_ERROR = 1e-10  # relative reconstruction error below which a layer is left untouched


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

    def solve(self, columns: np.ndarray, ridge: float) -> np.ndarray:
        """Ridge solution [matrix; bias] (the bias is not penalized); ridge is relative to the mean input power."""
        fan_in = self.gram.shape[0] - 1
        penalty = ridge * float(np.trace(self.gram[:fan_in, :fan_in])) / max(fan_in, 1)
        system = self.gram.copy()
        system[np.arange(fan_in), np.arange(fan_in)] += max(penalty, 1e-12)
        try:
            return np.linalg.solve(system, self.cross[:, columns])
        except np.linalg.LinAlgError:
            return np.linalg.lstsq(system, self.cross[:, columns], rcond=None)[0]


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
        reference = reference_model(ctx, self.name)
        known = tensor_names(reference)
        originals = {l.output.name: l for l in find_layers(reference.graph)}
        seed = getattr(ctx, "seed", 0) or 0
        skipped: dict[str, str] = {}
        refitted: dict[str, dict] = {}
        for index, layer in enumerate(find_layers(model.graph)):
            reason = self._refusal(layer, known, originals)
            if reason:
                if reason != "unaffected":
                    skipped[layer.name] = reason
                continue
            outcome = self._refit(layer, originals.get(layer.output.name), model, reference, batches, ctx,
                                  np.random.default_rng([seed, index]))
            if isinstance(outcome, str):
                skipped[layer.name] = outcome
            else:
                refitted[layer.name] = outcome
        if refitted:
            model.graph.cleanup().toposort()
        return PassResult(bool(refitted), {"refitted": len(refitted), "layers": refitted, "skipped": skipped})

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

    def _refit(self, layer: LinearLayer, original: LinearLayer | None, model, reference, batches, ctx,
               rng: np.random.Generator) -> dict | str:
        matrix, bias = layer.matrix(), layer.bias()
        current = np.vstack([matrix, bias[None, :]])
        per_batch = max(1, self.samples // len(batches))
        equations: NormalEquations | None = None
        cur_rows, ref_rows = [], []
        pairs = zip(stream(model, batches, [layer.input.name]), stream(reference, batches, [layer.output.name]))
        for inputs, targets in pairs:
            rows, index = sample_rows(layer, inputs[layer.input.name], per_batch, rng)
            wanted = output_rows(layer, targets[layer.output.name], index)
            if equations is None:
                equations = NormalEquations.empty(rows.shape[1], wanted.shape[1])
            equations.add(rows, wanted)
            if sum(len(r) for r in cur_rows) < MATCH_ROWS:
                cur_rows.append(rows @ matrix + bias)
                ref_rows.append(wanted)
        if equations is None or rows.shape[1] != matrix.shape[0]:
            return "input size does not match the layer's weights"
        kept = kept_channels(ctx, layer, original, np.concatenate(cur_rows), np.concatenate(ref_rows))
        if isinstance(kept, str):
            return kept
        before = equations.error(current, kept)
        scale = max(float(equations.target_sq[kept].sum()), 1e-30)
        if before / scale < EXACT_ERROR:
            return "already reproduces the original output"
        solution = equations.solve(kept, self.ridge)
        after = equations.error(solution, kept)
        if not np.all(np.isfinite(solution)) or after >= before:
            return f"refit did not reduce the reconstruction error ({before / scale:.3g} -> {after / scale:.3g})"
        layer.set_matrix(solution[:-1])
        layer.set_bias(solution[-1])
        return {"rows": equations.rows, "error_before": round(before / scale, 6), "error_after": round(after / scale, 6)}
