"""Proof: the physically pruned model computes what the original computes with the removed
channels masked out (zeroed in every channel-mixing consumer), on every zoo and real model."""

from __future__ import annotations

import numpy as np
import pytest
from prune_helpers import check_mask_equivalence

from slimcc.ir.model import load_model
from slimcc.ir.verify import compare_models
from slimcc.models.fetch import REAL_MODELS
from slimcc.models.zoo import ZOO, build
from slimcc.passes.canonicalize import Canonicalize
from slimcc.passes.prune.apply import prune_model
from slimcc.passes.prune.channels import analyze_channels
from slimcc.passes.prune.plan import conv_coverage
from slimcc.passes.prune.prune_channels import PruneChannels


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("canonical", [False, True])
def test_zoo_random_masks(name, canonical):
    model = load_model(build(name, seed=3))
    if canonical:
        Canonicalize().run(model)
    for seed in (0, 1):
        report, unmasked, pruned = check_mask_equivalence(model, seed=seed)
        assert unmasked.max_rel > 1e-3  # removal really changed the function, so the check has teeth
        assert pruned.initializer_bytes() < model.initializer_bytes()


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_ratio_zero_is_the_identity(name):
    model = load_model(build(name))
    pruned = model.copy()
    result = PruneChannels(ratio=0.0).run(pruned)
    assert not result.modified
    analysis = analyze_channels(model.graph)
    again = model.copy()
    prune_model(again, analysis, set())
    assert compare_models(model, again).max_abs == 0.0
    assert compare_models(model, pruned).max_abs == 0.0


@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_real_models_random_masks_and_coverage(name, canonical_real_model):
    model = canonical_real_model(name)
    analysis = analyze_channels(model.graph)
    assert conv_coverage(model.graph, analysis)["coverage"] >= 0.9
    report, unmasked, pruned = check_mask_equivalence(model, seed=5)
    assert unmasked.max_rel > 1e-3
    assert pruned.initializer_bytes() < 0.8 * model.initializer_bytes()


@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_real_models_macs_target_pass(name, canonical_real_model):
    model = canonical_real_model(name)
    analysis = analyze_channels(model.graph)
    selection = PruneChannels(macs=0.6).select(model, analysis)
    report, _, pruned = check_mask_equivalence(model, removed=selection.removed)
    from slimcc.ir.cost import model_cost
    ratio = model_cost(pruned).macs / model_cost(model).macs
    assert 0.45 <= ratio <= 0.62, ratio


def test_unmasked_removal_would_be_caught():
    """Sanity of the method: zeroing nothing (or the wrong channels) is detected."""
    model = load_model(build("resnet-basic"))
    analysis = analyze_channels(model.graph)
    group = analysis.prunable_groups()[0]
    removed = {group.components[0]}
    pruned = model.copy()
    prune_model(pruned, analysis, removed)
    from slimcc.passes.prune.apply import mask_channels
    wrong = model.copy()
    mask_channels(wrong.graph, analysis, {group.components[1]})
    assert compare_models(wrong, pruned).max_rel > 1e-3
    assert np.isfinite(compare_models(model, pruned).max_rel)
