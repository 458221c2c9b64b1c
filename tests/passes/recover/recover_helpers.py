"""Shared helpers for the recovery tests: canonical zoo models, real feeds, output error."""

from __future__ import annotations

import numpy as np

from slimcc.ir.calibration import CalibrationData
from slimcc.ir.model import load_model
from slimcc.ir.verify import run_onnxruntime
from slimcc.models import zoo
from slimcc.models.data import image_names, zoo_inputs
from slimcc.passes.base import PassContext
from slimcc.passes.canonicalize import Canonicalize


def canonical_zoo(name: str):
    """A zoo model with BN folded and static shapes (the reference the recoveries aim at)."""
    model = load_model(zoo.build(name))
    Canonicalize().run(model)
    return model


def zoo_context(reference, count: int = 16, seed: int = 1) -> PassContext:
    """Calibration from real photos, with `reference` as the original model."""
    return PassContext(calibration=CalibrationData.from_arrays(zoo_inputs(count, seed=seed)),
                       reference=reference, progress=False)


def held_out_inputs(count: int = 6) -> list[dict[str, np.ndarray]]:
    """Zoo feeds that are not calibration inputs: crops from another seed (zoo_inputs starts with
    the whole photos, which every seed and so `zoo_context`'s calibration share)."""
    whole = len(image_names("photos"))
    return zoo_inputs(whole + count, seed=7)[whole:]


def output_error(model, reference, feeds) -> float:
    """Mean absolute difference of the first output over the feeds (held-out data)."""
    diffs = []
    for feed in feeds:
        a = next(iter(run_onnxruntime(model, feed).values()))
        b = next(iter(run_onnxruntime(reference, feed).values()))
        diffs.append(np.abs(a - b).mean())
    return float(np.mean(diffs))


def max_difference(model, reference, feeds) -> float:
    """Largest absolute output difference over the feeds."""
    return float(max(np.abs(next(iter(run_onnxruntime(model, f).values()))
                            - next(iter(run_onnxruntime(reference, f).values()))).max() for f in feeds))
