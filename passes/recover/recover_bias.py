"""The `recover-bias` pass: per-channel bias correction after pruning, decomposition or quantization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from slimcc.errors import PipelineError
from slimcc.ir.layout import channel_axis
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.recover.activations import calibration_batches, reference_model, stream, tensor_names
from slimcc.passes.recover.channel_map import kept_channels
from slimcc.passes.recover.layers import LinearLayer, find_layers


def channel_rows(y: np.ndarray, seed: int, limit: int, axis: int = 1) -> np.ndarray:
    """Up to `limit` positions of an activation whose channels lie on `axis`, as [P, C] rows; the same
    positions for every tensor of the same shape and seed (so original and compressed rows line up)."""
    rows = np.moveaxis(y, axis, -1).reshape(-1, y.shape[axis])
    if rows.shape[0] <= limit:
        return rows.astype(np.float64)
    picked = np.random.default_rng(seed).choice(rows.shape[0], limit, replace=False)
    return rows[np.sort(picked)].astype(np.float64)


def channel_sums(y: np.ndarray, axis: int = 1) -> tuple[np.ndarray, int]:
    """Per-channel sums over every axis but the channel `axis`, and the count of summed values."""
    axes = tuple(i for i in range(y.ndim) if i != axis)
    channels = y.shape[axis]
    return np.asarray(y, np.float64).sum(axis=axes).reshape(channels), y.size // channels


@register_pass("recover-bias")
@dataclass(frozen=True)
class RecoverBias(Pass):
    """Add mean(original - compressed) per output channel to each conv/gemm bias (calibration data).

    Layers are corrected one by one in topological order, each on activations that already
    include the corrections upstream of it. A layer's output is matched to the original by
    tensor name; pruned outputs use ctx.notes["channel_map"] or an inferred channel alignment.
    A correction that increases the error of the model's first output (sampled positions of
    the calibration data) is undone: the mean shift is optimal for the layer itself, but
    through the nonlinearities after it, and after layers refitted to the uncorrected
    activations (recover-lstsq), it can move the output away from the original.
    """

    samples: int = 2048
    min_shift: float = 1e-6

    exact: ClassVar[bool] = False
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self):
        if self.samples < 16:
            raise PipelineError(f"recover-bias: samples={self.samples} must be >= 16")
        if self.min_shift < 0:
            raise PipelineError(f"recover-bias: min_shift={self.min_shift} must be >= 0")

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        batches = calibration_batches(ctx, self.name)
        reference = reference_model(ctx, self.name, model)
        known = tensor_names(reference)
        skipped: dict[str, str] = {}
        candidates: list[LinearLayer] = []
        for layer in find_layers(model.graph):
            if layer.output.name not in known:
                skipped[layer.name] = f"output {layer.output.name!r} has no counterpart in the original model"
            elif layer.weight_array() is None:
                skipped[layer.name] = "weight is not a constant"
            else:
                candidates.append(layer)
        if not candidates:
            return PassResult(False, {"corrected": 0, "skipped": skipped})
        originals = {l.output.name: l for l in find_layers(reference.graph)}
        output = model.graph.outputs[0].name if model.graph.outputs else None
        output = output if output in known else None
        # the op whose channels each watched tensor holds: a MatMul/Gemm's are on the last axis, a Conv's on axis 1
        ops = {output: model.graph.outputs[0].inputs[0].op if model.graph.outputs[0].inputs else ""} if output else {}
        ops.update({l.output.name: l.op for l in candidates})
        reference_stats = self._statistics(reference, batches, ops)
        corrected, shifts, reverted = 0, [], 0
        last: tuple[LinearLayer, np.ndarray, float, float] | None = None  # layer, old bias, error before, shift
        for layer in candidates + [None]:
            names = ([layer.output.name] if layer is not None else []) + ([output] if output else [])
            current = self._statistics(model, batches, {n: ops[n] for n in names}) if names else {}
            error = _output_error(current, reference_stats, output)
            if last is not None and error > last[2]:
                # the previous correction made the model's output worse on the calibration data: undo it
                last[0].set_bias(last[1])
                skipped[last[0].name] = "bias correction increased the model's output error on the calibration data"
                corrected, reverted = corrected - 1, reverted + 1
                shifts.remove(last[3])
                current = self._statistics(model, batches, {n: ops[n] for n in names}) if layer is not None else {}
                error = last[2]
            last = None
            if layer is None:
                break
            ref_sum, ref_rows, count = reference_stats[layer.output.name]
            cur_sum, cur_rows, cur_count = current[layer.output.name]
            if cur_count != count:
                skipped[layer.name] = "output size differs from the original beyond the channel axis"
                continue
            kept = kept_channels(ctx, layer, originals.get(layer.output.name), cur_rows, ref_rows)
            if isinstance(kept, str):
                skipped[layer.name] = kept
                continue
            delta = (ref_sum[kept] - cur_sum) / count
            scale = max(float(np.abs(ref_sum[kept]).max()) / count, 1e-12)
            if float(np.abs(delta).max()) <= self.min_shift * max(scale, 1.0):
                continue
            old_bias = layer.bias()
            layer.set_bias(old_bias + delta)
            corrected += 1
            shifts.append(float(np.abs(delta).mean()))
            if output is not None:
                last = (layer, old_bias, error, shifts[-1])
        if corrected or reverted:
            model.graph.cleanup().toposort()
        return PassResult(corrected > 0, {"corrected": corrected, "candidates": len(candidates), "reverted": reverted,
                                          "mean_abs_shift": round(float(np.mean(shifts)), 6) if shifts else 0.0,
                                          "skipped": skipped})

    def _statistics(self, model, batches, ops: dict[str, str]) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
        """{tensor: (per-channel sums, sampled rows, values per channel)} over all batches; `ops` maps each
        tensor to the op whose output channels it holds (which decides the channel axis)."""
        names = list(ops)
        sums: dict[str, np.ndarray] = {}
        rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
        counts = dict.fromkeys(names, 0)
        per_batch = max(1, self.samples // len(batches))
        for index, values in enumerate(stream(model, batches, names)):
            for name in names:
                axis = channel_axis(ops[name], values[name].ndim)
                total, count = channel_sums(values[name], axis)
                sums[name] = sums.get(name, 0) + total
                counts[name] += count
                rows[name].append(channel_rows(values[name], index, per_batch, axis))
        return {n: (sums[n], np.concatenate(rows[n]), counts[n]) for n in names}


def _output_error(current: dict, reference: dict, output: str | None) -> float:
    """Squared error of the sampled model-output rows against the original's (0 without an output)."""
    if output is None or output not in current:
        return 0.0
    got, want = current[output][1], reference[output][1]
    return float(np.sum((got - want) ** 2)) if got.shape == want.shape else float("inf")
