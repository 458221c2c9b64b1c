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
from slimcc.passes.recover.channel_map import kept_channels, known_channels, remember_channels
from slimcc.passes.recover.layers import (LinearLayer, find_layers, output_rows, pick_positions, row_samples,
                                          sample_rows)
from slimcc.passes.recover.normal_equations import NormalEquations, choose_ridge, total
from slimcc.passes.recover.pooled import pooled_equations, pooled_source, reference_sample

MATCH_ROWS = 4096  # sampled rows kept for matching pruned output channels by correlation
EXACT_ERROR = 1e-10  # relative reconstruction error below which a layer is left untouched
# with fewer calibration rows than this many per unknown (inputs + bias of one output), the
# fixed ridge may overfit: the ridge is chosen by cross-validation over FOLDS folds instead
CROSS_VALIDATE_ROWS_PER_INPUT = 4
FOLDS = 8


@register_pass("recover-lstsq")
@dataclass(frozen=True)
class RecoverLstsq(Pass):
    """Refit pruned/decomposed layers by ridge least squares so they reproduce the original outputs (calibration data).

    layers=affected refits the consumers whose inputs changed shape (pruned input channels,
    the last factor of a decomposed layer); layers=all also refits every later conv/gemm
    whose output has a counterpart in the original model. A grouped/depthwise conv is refitted
    per group (per channel). Layers with few calibration rows per input (pooled inputs, the
    head) get a ridge chosen by cross-validation over calibration samples, or keep their weights
    when no refit predicts held-out calibration samples better. pooled=positions fits a layer that
    reads a global average pool (squeeze-excitation convs, pooled heads) at every position of the
    pooling input instead (passes/recover/pooled.py), kept when that lowers its pooled error.
    """

    ridge: float = 1e-3
    samples: int = 8192
    layers: Literal["affected", "all"] = "affected"
    pooled: Literal["rows", "positions"] = "rows"

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
        sources = {layer.name: source.name for layer in chosen if self.pooled == "positions"
                   and (source := pooled_source(layer)) is not None and source.name in known}
        targets, pooled = self._targets(reference, batches, chosen, sources, seed)
        refitted: dict[str, dict] = {}
        for layer in tqdm(chosen, desc=self.name, unit="layer", disable=not getattr(ctx, "progress", False)):
            outcome = self._refit(layer, originals.get(layer.output.name), model, batches, ctx, targets[layer.name],
                                  sources.get(layer.name), pooled.get(layer.name))
            if isinstance(outcome, str):
                skipped[layer.name] = outcome
            else:
                refitted[layer.name] = outcome
        if refitted:
            model.graph.cleanup().toposort()
        return PassResult(bool(refitted), {"refitted": len(refitted), "layers": refitted, "skipped": skipped})

    def _targets(self, reference, batches, layers: list[LinearLayer], sources: dict[str, str],
                 seed: int) -> tuple[dict[str, list], dict[str, list]]:
        """One pass over the original model: per layer and batch, sampled positions and the
        original outputs there (float32, so memory stays bounded by `samples` rows per layer); and
        for the layers in `sources` (pooled=positions) their pooling input's `reference_sample`."""
        per_batch = max(1, self.samples // len(batches))
        found: dict[str, list] = {layer.name: [] for layer in layers}
        pooled: dict[str, list] = {name: [] for name in sources}
        if not layers:
            return found, pooled
        names = list(dict.fromkeys([layer.output.name for layer in layers] + list(sources.values())))
        for b, values in enumerate(stream(reference, batches, names)):
            for li, layer in enumerate(layers):
                y = values[layer.output.name]
                index = pick_positions(layer, y.shape, per_batch, np.random.default_rng([seed, li, b]))
                found[layer.name].append((index, np.asarray(output_rows(layer, y, index), np.float32)))
                if layer.name in sources:
                    pooled[layer.name].append(reference_sample(values[sources[layer.name]], per_batch,
                                                               np.random.default_rng([seed, li, b, 1])))
        return found, pooled

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
               targets: list, source: str | None = None, pooled: list | None = None) -> dict | str:
        matrix, bias = layer.matrix(), layer.bias()
        groups, fan_in, channels = layer.groups, matrix.shape[0], matrix.shape[1]
        if channels % groups:
            return f"{channels} output channels do not split into {groups} groups"
        per_group = channels // groups
        current = np.concatenate([matrix.reshape(fan_in, groups, per_group).transpose(1, 0, 2),
                                  bias.reshape(groups, 1, per_group)], axis=1)
        width = targets[0][1].shape[1] if targets else channels
        kept = known_channels(ctx, layer, original, channels, width)
        if isinstance(kept, str):
            return kept
        if source is not None and original is not None:
            outcome = self._refit_pooled(layer, original, source, pooled, model, batches, ctx, current, kept, width)
            if outcome is not None:
                return outcome
        rows_total = sum(len(np.atleast_1d(index[0] if layer.op == "Conv" else index)) for index, _ in targets)
        validate = rows_total < CROSS_VALIDATE_ROWS_PER_INPUT * (fan_in + 1)
        folds = [NormalEquations.empty(groups, fan_in, per_group) for _ in range(FOLDS if validate else 1)]
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # rows held until `kept` is known
        seen = 0  # calibration samples so far: a sample's rows all go to fold (sample number % folds)
        for (index, wanted), inputs in zip(targets, stream(model, batches, [layer.input.name])):
            x = inputs[layer.input.name]
            rows = sample_rows(layer, x, index)
            if rows.shape[1:] != (groups, fan_in):
                return "input size does not match the layer's weights"
            pending.append((rows, wanted.astype(np.float64), (seen + row_samples(layer, x.shape, index)) % len(folds)))
            seen += x.shape[0]
            if kept is None and sum(len(p[0]) for p in pending) >= MATCH_ROWS:
                kept = self._match(ctx, layer, original, current, pending)
                if isinstance(kept, str):
                    return kept
            if kept is not None:
                _accumulate(folds, pending, kept, groups, per_group)
        if kept is None and pending:
            kept = self._match(ctx, layer, original, current, pending)
            if isinstance(kept, str):
                return kept
            _accumulate(folds, pending, kept, groups, per_group)
        equations = total(folds)
        if equations.rows == 0:
            return "no calibration rows"
        remember_channels(ctx, layer.output.name, kept, width)
        scale = max(equations.target_sq, 1e-30)
        before = equations.error(current)
        if before / scale < EXACT_ERROR:
            return "already reproduces the original output"
        ridge, outcome = self.ridge, {}
        if validate:
            if sum(1 for fold in folds if fold.rows) < 2:
                return (f"only {equations.rows} calibration rows from one sample for {fan_in} inputs per output; "
                        "give more calibration samples")
            ridge, validated, unchanged = choose_ridge(folds, current, self.ridge)
            if ridge is None:
                return (f"no refit predicts held-out calibration samples better than the current weights "
                        f"({equations.rows} rows for {fan_in} inputs per output; relative error {unchanged:.3g})")
            outcome = {"ridge": ridge if np.isfinite(ridge) else "bias only", "validation_error": round(validated, 6),
                       "validation_error_before": round(unchanged, 6)}
        solution = equations.solve(ridge, current)
        after = equations.error(solution)
        if not np.all(np.isfinite(solution)) or after >= before:
            return f"refit did not reduce the reconstruction error ({before / scale:.3g} -> {after / scale:.3g})"
        layer.set_matrix(solution[:, :fan_in].transpose(1, 0, 2).reshape(fan_in, channels))
        layer.set_bias(solution[:, fan_in].reshape(channels))
        return {"rows": equations.rows, "error_before": round(before / scale, 6), "error_after": round(after / scale, 6),
                **outcome}

    def _refit_pooled(self, layer: LinearLayer, original: LinearLayer, source: str, reference: list, model, batches,
                      ctx, current: np.ndarray, kept: np.ndarray | None, width: int) -> dict | str | None:
        """The refit on the pooling input's positions (passes/recover/pooled.py), or None when it does
        not apply or does not lower the error of the pooled rows (the pooled rows' own fit is tried then)."""
        if kept is None:
            if layer.out_channels() != width:
                return None  # which original channels survived is matched on the pooled rows
            kept = np.arange(width)
        positions, pooled = pooled_equations(layer, original, source, model, batches, reference, kept)
        scale = max(pooled.target_sq, 1e-30)
        before = pooled.error(current)
        if before / scale < EXACT_ERROR:
            return "already reproduces the original output"
        solution = positions.solve(self.ridge, current)
        after = pooled.error(solution)
        if not np.all(np.isfinite(solution)) or after >= before:
            return None
        fan_in, channels = current.shape[1] - 1, current.shape[2]
        layer.set_matrix(solution[0, :fan_in])
        layer.set_bias(solution[0, fan_in].reshape(channels))
        remember_channels(ctx, layer.output.name, kept, width)
        return {"rows": positions.rows, "fit": "pooling input positions",
                "error_before": round(before / scale, 6), "error_after": round(after / scale, 6)}

    @staticmethod
    def _match(ctx, layer, original, current: np.ndarray, pending: list) -> np.ndarray | str:
        """Kept original channels inferred from the pending rows' current and original outputs."""
        rows = np.concatenate([p[0] for p in pending])
        wanted = np.concatenate([p[1] for p in pending])
        outputs = np.einsum("pgf,gfo->pgo", rows, current[:, :-1]) + current[:, -1][None]
        return kept_channels(ctx, layer, original, outputs.reshape(len(rows), -1), wanted)


def _accumulate(folds: list[NormalEquations], pending: list, kept: np.ndarray, groups: int, per_group: int) -> None:
    """Add the pending rows to their folds (targets: the kept original channels, split per group)."""
    for rows, wanted, fold in pending:
        targets = wanted[:, kept].reshape(len(rows), groups, per_group)
        for f in range(len(folds)):
            chosen = fold == f
            if chosen.any():
                folds[f].add(rows[chosen], targets[chosen])
    pending.clear()
