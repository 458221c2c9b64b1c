"""Streaming access to calibration activations of a model, and the calibration batches of a pass context."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from slimcc.errors import PassError
from slimcc.ir.calibration import CalibrationData, collect_activations

CHUNK = 16  # batches per onnxruntime session: bounds memory without rebuilding a session per batch


def calibration_batches(ctx, pass_name: str) -> list[dict[str, np.ndarray]]:
    """The calibration batches of `ctx`, or a PassError telling the user to give --calib."""
    calib = getattr(ctx, "calibration", None) if ctx is not None else None
    if calib is None:
        raise PassError(f"{pass_name} needs calibration data; give --calib DATA")
    batches = list(calib.batches if isinstance(calib, CalibrationData) else calib)
    if not batches:
        raise PassError(f"{pass_name}: the calibration data holds no batches")
    return batches


def reference_model(ctx, pass_name: str):
    """The model before the pipeline (`ctx.reference`), or a PassError."""
    reference = getattr(ctx, "reference", None) if ctx is not None else None
    if reference is None:
        raise PassError(f"{pass_name} needs the original model as ctx.reference (the PassManager sets it)")
    return reference


def stream(model, batches: list[dict[str, np.ndarray]], names: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """Yield {name: activation} for each batch in order, a few batches per onnxruntime session."""
    for start in range(0, len(batches), CHUNK):
        chunk = batches[start:start + CHUNK]
        got = collect_activations(model, chunk, names, progress=False)
        for i in range(len(chunk)):
            yield {name: got[name][i] for name in names}


def tensor_names(model) -> set[str]:
    """Names of all activation tensors (graph inputs and node outputs) of a model."""
    names = {t.name for t in model.graph.inputs}
    for node in model.graph.nodes:
        names.update(t.name for t in node.outputs if t.name)
    return names
