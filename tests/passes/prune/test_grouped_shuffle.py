"""Grouped 1x1 convs, channel shuffles (ShuffleNet v1 and v2), depthwise convs: group-uniform pruning,
exact at ratio 0, real MACs cuts that onnxruntime runs, and a coverage figure that means what it says."""

from __future__ import annotations

import numpy as np
import pytest
from prune_helpers import GraphBuilder, check_mask_equivalence, random_removal

from slimcc.ir.cost import model_cost, node_macs
from slimcc.ir.model import check_model_valid, load_model
from slimcc.ir.verify import compare_models, random_feeds
from slimcc.models.zoo import ZOO, build, build_shufflenet_v1
from slimcc.passes.canonicalize import Canonicalize
from slimcc.passes.prune.apply import prune_model
from slimcc.passes.prune.balance import block_counts
from slimcc.passes.prune.channels import analyze_channels
from slimcc.passes.prune.plan import conv_coverage
from slimcc.passes.prune.prune_channels import PruneChannels

SHUFFLENETS = ["shufflenet-v1", "shufflenet"]  # "shufflenet" is the ShuffleNet v2 style (split/concat)


def _shuffle(b: GraphBuilder, x: str, c: int, groups: int) -> str:
    s1 = b.const(np.array([1, groups, c // groups, 8, 8], np.int64))
    s2 = b.const(np.array([1, c, 8, 8], np.int64))
    r = b.op("Reshape", [x, s1])[0]
    t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])[0]
    return b.op("Reshape", [t, s2])[0]


def test_grouped_pointwise_shuffle_grouped_pointwise_is_cut_group_uniformly():
    # 24 channels in 3 groups: 8 per group, not a multiple of 3, so the shuffle sends a group's
    # positions across the next conv's group boundaries
    b = GraphBuilder(c=24)
    c1 = b.conv("x", 24, 24, k=1, group=3)
    sh = _shuffle(b, b.op("Relu", [c1])[0], 24, 3)
    dw = b.conv(sh, 24, 24, group=24)
    g2 = b.conv(dw, 24, 24, k=1, group=3)
    y = b.conv(b.op("Add", [g2, b.conv("x", 24, 24, k=1)])[0], 24, 2, k=1)
    model = load_model(b.model(y))
    an = analyze_channels(model.graph)
    assert {u["tensor"] for u in an.uniform} == {"x", c1, dw, g2}
    for tensor in (c1, sh, dw, g2):
        _, counts = block_counts(an.element_component[tensor], 3)
        assert np.all(counts.max(axis=1) == counts.min(axis=1)), tensor
    group = an.groups[an.components[int(an.element_component[c1][0])].group]
    assert group.prunable and len(group.components) == 3  # {columns 0,3,6}, {1,4,7}, {2,5} of the shuffle
    for seed in range(3):
        _, unmasked, pruned = check_mask_equivalence(model, seed=seed)
        assert unmasked.max_rel > 1e-3
        grouped = [n for n in pruned.graph.nodes if n.op == "Conv" and n.attrs["group"] == 3]
        assert len(grouped) == 2  # still grouped convs, fewer channels per group


@pytest.mark.parametrize("name", SHUFFLENETS)
def test_shufflenet_ratio_zero_is_exact(name):
    model = load_model(build(name))
    Canonicalize().run(model)
    pruned = model.copy()
    prune_model(pruned, analyze_channels(model.graph), set())
    assert compare_models(model, pruned).max_abs == 0.0


@pytest.mark.parametrize("name", SHUFFLENETS)
def test_shufflenet_prunes_below_seventy_percent_of_macs_and_runs(name):
    model = load_model(build(name))
    Canonicalize().run(model)
    pruned = model.copy()
    result = PruneChannels(macs=0.7).run(pruned)
    assert result.modified
    assert model_cost(pruned).macs <= 0.7 * model_cost(model).macs
    check_model_valid(pruned)  # onnx.checker and strict shape inference
    report = compare_models(model, pruned, random_feeds(model, seed=0))  # runs in onnxruntime
    assert np.isfinite(report.max_abs) and report.max_rel > 0
    groups = {n.name: n.attrs.get("group", 1) for n in model.graph.nodes if n.op == "Conv"}
    kept_groups = {n.name: n.attrs.get("group", 1) for n in pruned.graph.nodes if n.op == "Conv"}
    grouped = [k for k, g in groups.items() if g == 2]
    assert all(kept_groups[k] == groups[k] for k in grouped)  # group-uniform: the group count never changes


def test_shufflenet_v1_with_three_groups():
    """g=3 with 13 channels per group: prunable, exact at ratio 0, group count kept."""
    model = load_model(build_shufflenet_v1(width=24, groups=3))
    Canonicalize().run(model)
    an = analyze_channels(model.graph)
    assert len(an.uniform) == 16 and all(u["groups"] == 3 for u in an.uniform)
    same = model.copy()
    prune_model(same, an, set())
    assert compare_models(model, same).max_abs == 0.0
    check_mask_equivalence(model, seed=2)
    pruned = model.copy()
    PruneChannels(macs=0.7).run(pruned)
    assert model_cost(pruned).macs <= 0.7 * model_cost(model).macs
    assert sorted({n.attrs["group"] for n in pruned.graph.nodes if n.op == "Conv"})[:2] == [1, 3]


@pytest.mark.parametrize("name", SHUFFLENETS)
def test_shufflenet_random_masks_at_every_seed(name):
    model = load_model(build(name, seed=4))
    Canonicalize().run(model)
    an = analyze_channels(model.graph)
    for seed in range(3):
        removed = random_removal(an, np.random.default_rng(seed))
        check_mask_equivalence(model, removed=removed, seed=seed)


@pytest.mark.parametrize("name", list(ZOO))
def test_coverage_is_what_pruning_really_cuts(name):
    """A conv that coverage calls fully cuttable loses MACs when every cuttable group loses half its
    units; a conv it calls uncuttable keeps all its MACs."""
    model = load_model(build(name))
    Canonicalize().run(model)
    an = analyze_channels(model.graph)
    layers = {row["node"]: row["prunable_share"] for row in conv_coverage(model.graph, an)["layers"]}
    removed = {c for g in an.prunable_groups() if len(g.components) > 1 for c in g.components[::2]}
    pruned = model.copy()
    prune_model(pruned, an, removed)
    before = {n.name: node_macs(n) for n in model.graph.nodes if n.op == "Conv"}
    after = {n.name: node_macs(n) for n in pruned.graph.nodes if n.op == "Conv"}
    for conv, share in layers.items():
        if share == 1.0:
            assert after[conv] < before[conv], conv
        elif share == 0.0:
            assert after[conv] == before[conv], conv


def test_coverage_excludes_single_unit_groups_and_names_why():
    """The ShuffleNet case that used to read 100%: a grouped conv whose groups each tie one input to
    four outputs, then a shuffle that ties the groups together. Nothing between them can be cut."""
    b = GraphBuilder(c=4)
    a = b.conv("x", 4, 2, k=1)
    grouped = b.conv(a, 2, 8, k=1, group=2)
    y = b.conv(_shuffle(b, grouped, 8, 2), 8, 3, k=1)
    model = load_model(b.model(y))
    an = analyze_channels(model.graph)
    cov = conv_coverage(model.graph, an)
    shares = {row["node"]: row["prunable_share"] for row in cov["layers"]}
    assert list(shares.values()) == [0.0, 0.0, 0.0]
    assert cov["coverage"] == 0.0
    assert any(r["reason"].startswith("single unit") for r in cov["blockers"])
    assert any("graph output" in r["reason"] for r in cov["blockers"])
    assert abs(sum(r["macs_share"] for r in cov["blockers"]) - 1.0) < 1e-3
    result = PruneChannels(ratio=0.5).run(model.copy())
    assert not result.modified


def test_recover_lstsq_refits_group_uniformly_pruned_grouped_convs():
    from slimcc.ir.calibration import CalibrationData
    from slimcc.models.data import zoo_inputs
    from slimcc.passes.base import PassContext
    from slimcc.passes.recover.recover_lstsq import RecoverLstsq

    model = load_model(build("shufflenet-v1"))
    Canonicalize().run(model)
    pruned = model.copy()
    ctx = PassContext(calibration=CalibrationData(zoo_inputs(16, seed=1)), progress=False)
    ctx.reference = model
    PruneChannels(macs=0.6).run(pruned, ctx)
    held_out = zoo_inputs(8, seed=2)
    before = compare_models(model, pruned, held_out).max_rel
    result = RecoverLstsq().run(pruned, ctx)
    assert result.modified
    grouped = [n.name for n in pruned.graph.nodes if n.op == "Conv" and n.attrs["group"] == 2]
    assert grouped and set(grouped) <= set(result.stats["layers"])
    assert all(v["error_after"] < v["error_before"] for k, v in result.stats["layers"].items() if k in grouped)
    assert compare_models(model, pruned, held_out).max_rel < 0.3 * before
