"""Streaming access to calibration activations of a model, and the calibration batches of a pass context."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from slimcc.errors import PassError
from slimcc.ir.calibration import CalibrationData, collect_activations

BUDGET_BYTES = 256 * 2**20  # activations held at once; bounds memory without a session per batch
UNKNOWN_BYTES = 4 * 2**20


def calibration_batches(ctx, pass_name: str) -> list[dict[str, np.ndarray]]:
    """The calibration batches of `ctx`, or a PassError telling the user to give --calib."""
    calib = getattr(ctx, "calibration", None) if ctx is not None else None
    if calib is None:
        raise PassError(f"{pass_name} needs calibration data; give --calib DATA")
    batches = list(calib.batches if isinstance(calib, CalibrationData) else calib)
    if not batches:
        raise PassError(f"{pass_name}: the calibration data holds no batches")
    return batches


def reference_model(ctx, pass_name: str, model=None):
    """The model before the pipeline (`ctx.reference`), or a PassError.

    When `model` was canonicalized in the pipeline (no BatchNormalization left) but the
    reference still has BatchNormalization, the reference is canonicalized too (an exact
    rewrite, cached in ctx.notes) so that layers, names and weights correspond one to one."""
    reference = getattr(ctx, "reference", None) if ctx is not None else None
    if reference is None:
        raise PassError(f"{pass_name} needs the original model as ctx.reference (the PassManager sets it)")
    if model is None or _has_batchnorm(model) or not _has_batchnorm(reference):
        return reference
    cache = ctx.notes.setdefault("recover:canonical_reference", {})
    if id(reference) not in cache:
        from slimcc.passes.canonicalize import Canonicalize

        canonical = reference.copy()
        Canonicalize().run(canonical)
        cache.clear()
        cache[id(reference)] = canonical
    return cache[id(reference)]


def _has_batchnorm(model) -> bool:
    return any(node.op == "BatchNormalization" for node in model.graph.nodes)


def stream(model, batches: list[dict[str, np.ndarray]], names: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """Yield {name: activation} for each batch in order, a few batches per onnxruntime session."""
    step = batches_per_session(model, batches, names)
    for start in range(0, len(batches), step):
        chunk = batches[start:start + step]
        got = collect_activations(model, chunk, names, progress=False)
        for i in range(len(chunk)):
            yield {name: got[name][i] for name in names}


def tensor_names(model) -> set[str]:
    """Names of all activation tensors (graph inputs and node outputs) of a model."""
    names = {t.name for t in model.graph.inputs}
    for node in model.graph.nodes:
        names.update(t.name for t in node.outputs if t.name)
    return names


def batches_per_session(model, batches: list[dict[str, np.ndarray]], names: list[str]) -> int:
    """How many batches one onnxruntime session runs, from the requested tensors' static sizes."""
    tensors = model.graph.tensors()
    per_batch = 0
    for name in names:
        shape = getattr(tensors.get(name), "shape", None)
        if shape and all(isinstance(d, int) and d > 0 for d in shape):
            per_batch += int(np.prod(shape)) * 4
        elif name in batches[0]:
            per_batch += batches[0][name].nbytes
        else:
            per_batch += UNKNOWN_BYTES
    return int(min(len(batches), max(1, BUDGET_BYTES // max(per_batch, 1))))
