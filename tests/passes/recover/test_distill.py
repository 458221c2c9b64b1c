"""distill: block boundaries matched automatically, guidance-then-joint training that brings a
pruned student closer to its teacher, weights written back into the ONNX initializers."""

from __future__ import annotations

import numpy as np
import pytest
from recover_helpers import canonical_zoo, held_out_inputs, output_error, zoo_context

from slimcc.errors import PassError, PipelineError
from slimcc.ir.verify import run_onnxruntime
from slimcc.passes.prune.prune_channels import PruneChannels

torch = pytest.importorskip("torch")

from slimcc.passes.recover.distill import Distill, match_boundaries  # noqa: E402
from slimcc.passes.recover.torch_mapper import TorchGraph  # noqa: E402

HELD_OUT = held_out_inputs()


def test_boundaries_of_a_pruned_model_carry_the_kept_channels():
    reference = canonical_zoo("resnet-basic")
    model = reference.copy()
    PruneChannels(ratio=0.5).run(model)
    boundaries = match_boundaries(model, reference)
    assert 1 <= len(boundaries) <= 8
    shapes = {t.name: t.shape for t in model.graph.tensors().values()}
    for name, kept, axis in boundaries:
        assert axis == 1  # conv outputs: channels on axis 1
        assert kept is not None and len(kept) == shapes[name][1] and np.all(np.diff(kept) > 0)


def test_pruned_matmuls_over_sequences_are_compared_on_their_last_axis(monkeypatch):
    """attn-ctc's MLP hidden layers (MatMul on [1, T, C]) lose channels on the last axis; their teacher
    counterparts are selected along that axis (axis 1 would have dropped them as unmatched shapes)."""
    from slimcc.passes.recover import distill

    monkeypatch.setattr(distill, "MAX_BOUNDARIES", 1000)  # every candidate, not 8 spread over depth
    reference = canonical_zoo("attn-ctc")
    model = reference.copy()
    PruneChannels(ratio=0.5).run(model)
    shapes = {t.name: t.shape for t in model.graph.tensors().values()}
    pruned = {name: (kept, axis) for name, kept, axis in match_boundaries(model, reference) if kept is not None}
    for block in ("block0", "block1"):
        kept, axis = pruned[f"{block}.mlp.fc1.bias_add_out"]
        assert axis == 2 and len(kept) == shapes[f"{block}.mlp.fc1.bias_add_out"][2] < 64


def test_distill_brings_the_pruned_student_closer_and_writes_weights_back():
    reference = canonical_zoo("resnet-basic")
    model = reference.copy()
    PruneChannels(ratio=0.5).run(model)
    before = output_error(model, reference, HELD_OUT)
    result = Distill(epochs=2, stage1_epochs=1, batch=16).run(model, zoo_context(reference, count=32))
    history = result.stats["history"]
    assert [h["stage"] for h in history] == [1, 2]
    # lambda makes the weighted guidance equal the task loss at the start of an epoch
    assert all(h["lambda"] > 0 for h in history)
    assert output_error(model, reference, HELD_OUT) < 0.9 * before
    # the ONNX model computes what the trained torch student computes
    feed = HELD_OUT[0]
    with torch.no_grad():
        student = next(iter(TorchGraph(model.graph)({"x": torch.from_numpy(feed["x"])}).values())).numpy()
    np.testing.assert_allclose(next(iter(run_onnxruntime(model, feed).values())), student, rtol=1e-4, atol=1e-4)


def test_labels_must_match_the_samples_and_options_are_checked():
    reference = canonical_zoo("vgg")
    ctx = zoo_context(reference, count=4)
    ctx.notes["labels"] = np.zeros(3, np.int64)
    with pytest.raises(PassError, match="labels"):
        Distill(epochs=1, stage1_epochs=0).run(reference.copy(), ctx)
    with pytest.raises(PipelineError):
        Distill(epochs=2, stage1_epochs=3)
