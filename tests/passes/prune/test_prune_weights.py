"""prune-weights: exact sparse round trip, equality with dense zeroing, and a really smaller file."""

from __future__ import annotations

import numpy as np
import pytest

from slimcc.ir.model import load_model, save_model
from slimcc.ir.verify import compare_models, make_session, random_feeds
from slimcc.models.zoo import build
from slimcc.passes.prune.prune_weights import PruneWeights, magnitude_mask
from slimcc.passes.prune.sparse_encoding import decode, encode


@pytest.mark.parametrize("density", [0.0, 0.001, 0.2, 1.0])
def test_encoding_round_trips_exactly(density):
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((7, 5, 31, 3)).astype(np.float32)
    dense[rng.random(dense.shape) >= density] = 0
    gaps, values = encode(dense)
    assert gaps.dtype == np.uint8
    np.testing.assert_array_equal(decode(gaps, values, dense.shape), dense)


def test_magnitude_mask_keeps_largest():
    w = np.array([[0.1, -3.0], [2.0, -0.05]], np.float32)
    np.testing.assert_array_equal(magnitude_mask(w, 0.5), [[False, True], [True, False]])


def test_pass_equals_dense_zeroing_and_shrinks_file(tmp_path):
    model = load_model(build("vgg", width=16))
    dense = model.copy()
    PruneWeights(sparsity=0.8, store=False).run(dense)
    sparse = model.copy()
    stats = PruneWeights(sparsity=0.8).run(sparse).stats
    assert stats["layers"] >= 3
    feeds = random_feeds(model)
    assert compare_models(dense, sparse, feeds).max_rel < 1e-6  # conv kernels differ for runtime weights
    assert compare_models(model, sparse, feeds).max_rel > 1e-3  # weights really were removed
    path = save_model(sparse, tmp_path / "sparse.onnx")
    original = save_model(model, tmp_path / "dense.onnx")
    assert path.stat().st_size < 0.5 * original.stat().st_size
    reloaded = load_model(path)
    assert compare_models(dense, reloaded, feeds).max_rel < 1e-6
    make_session(reloaded, optimize=True)  # onnxruntime folds the decoder at session start
    convs = [n for n in dense.graph.nodes if n.op == "Conv" and n.inputs[1].values.size >= 4096]
    assert all(np.mean(n.inputs[1].values == 0) >= 0.79 for n in convs)
