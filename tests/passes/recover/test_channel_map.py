"""Matching pruned channels back to the original ones: exact from weights, monotone by correlation."""

import numpy as np

from slimcc.passes.prune.apply import prune_model
from slimcc.passes.prune.channels import analyze_channels
from slimcc.passes.prune.prune_channels import PruneChannels
from slimcc.passes.recover.channel_map import infer_map, monotone_match, sample_correlation, weight_map
from slimcc.passes.recover.layers import find_layers

from recover_helpers import canonical_zoo


def test_monotone_match_recovers_a_subset_from_noisy_activations():
    rng = np.random.default_rng(0)
    original = rng.normal(size=(500, 24))
    kept = np.sort(rng.choice(24, 10, replace=False))
    compressed = original[:, kept] + 0.3 * rng.normal(size=(500, 10))
    found, quality = monotone_match(sample_correlation(compressed, original))
    np.testing.assert_array_equal(found, kept)
    assert quality > 0.8


def test_unrelated_channels_are_refused():
    rng = np.random.default_rng(1)
    kept, reason = infer_map(sample_correlation(rng.normal(size=(400, 6)), rng.normal(size=(400, 12))))
    assert kept is None and "correlation" in reason


def test_weight_map_finds_exactly_the_channels_pruning_kept():
    model = canonical_zoo("resnet-basic")
    reference = model.copy()
    analysis = analyze_channels(model.graph)
    selection = PruneChannels(ratio=0.5).select(model, analysis)
    expected = analysis.kept_elements(selection.removed)
    prune_model(model, analysis, selection.removed)
    originals = {l.output.name: l for l in find_layers(reference.graph)}
    checked = 0
    for layer in find_layers(model.graph):
        original = originals[layer.output.name]
        if layer.out_channels() == original.out_channels():
            continue
        found = weight_map(layer.filters(), original.filters())
        np.testing.assert_array_equal(found, expected[layer.output.name])
        checked += 1
    assert checked >= 4


def test_weight_map_refuses_rescaled_weights():
    rng = np.random.default_rng(2)
    original = rng.normal(size=(8, 4, 9)).astype(np.float32)
    assert weight_map(original[[1, 5]] * np.float32(1.5), original) is None
