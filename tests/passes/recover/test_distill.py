"""distill: block boundaries matched automatically, guidance-then-joint training that brings a
pruned student closer to its teacher, weights written back into the ONNX initializers."""

from __future__ import annotations

import numpy as np
import pytest
from recover_helpers import canonical_zoo, held_out_inputs, output_error, zoo_context

from slimcc.errors import PassError, PipelineError
from slimcc.ir.model import load_model
from slimcc.ir.protobuild import make_float_model, make_initializer, make_node
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


def _sequence_mlp():
    """x [1, T=6, C=8] -> two ReLU layers of 32 features (MatMul + bias Add, as PyTorch exports nn.Linear)
    -> MatMul + bias to 4 scores: y [1, 6, 4]. No residuals: every layer output closes a block."""
    rng = np.random.default_rng(0)
    nodes, weights, previous = [], [], "x"
    for i, (cin, cout) in enumerate(((8, 32), (32, 32), (32, 4))):
        weights += [make_initializer(f"fc{i}.weight", rng.normal(0.0, 0.3, (cin, cout)).astype(np.float32)),
                    make_initializer(f"fc{i}.bias", rng.normal(0.0, 0.1, cout).astype(np.float32))]
        out = f"fc{i}.out" if i < 2 else "y"
        nodes += [make_node("MatMul", [previous, f"fc{i}.weight"], [f"fc{i}.mm"], f"fc{i}.matmul"),
                  make_node("Add", [f"fc{i}.mm", f"fc{i}.bias"], [out], f"fc{i}.bias_add")]
        if i < 2:
            previous = f"fc{i}.relu"
            nodes.append(make_node("Relu", [out], [previous], f"fc{i}.relu"))
    return load_model(make_float_model(nodes, weights, "mlp", {"x": [1, 6, 8]}, {"y": [1, 6, 4]}, opset=17,
                                       ir_version=8, producer="test"))


def test_pruned_matmuls_over_sequences_are_compared_on_their_last_axis():
    """A sequence MLP's hidden layers (MatMul on [1, T, C]) lose channels on the last axis; their teacher
    counterparts are selected along that axis (axis 1 would have dropped them as unmatched shapes)."""
    reference = _sequence_mlp()
    model = reference.copy()
    PruneChannels(ratio=0.5).run(model)
    shapes = {t.name: t.shape for t in model.graph.tensors().values()}
    pruned = {name: (kept, axis) for name, kept, axis in match_boundaries(model, reference) if kept is not None}
    # fc0 keeps its channels: it reads the graph input, whose channels (axis 1 there) are a matrix axis
    assert set(pruned) == {"fc1.out", "fc1.relu"}
    for name, (kept, axis) in pruned.items():
        assert axis == 2 and len(kept) == shapes[name][2] < 32 and np.all(np.diff(kept) > 0)
    np.testing.assert_array_equal(pruned["fc1.out"][0], pruned["fc1.relu"][0])  # the Relu carries fc1's channels


def test_boundaries_close_blocks_and_skip_the_inside_of_residual_blocks():
    reference = canonical_zoo("resnet-basic")
    names = [name for name, _, _ in match_boundaries(reference, reference)]
    assert names and all(".conv" not in name for name in names if name.startswith("layer"))
    assert "layer1.0.out.relu_out" in names and "layer1.0.conv1.relu_out" not in names


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
