"""cluster-weights: decodes exactly to the clustered weights, <= 2^bits values per layer, ~4x smaller file."""

from __future__ import annotations

import numpy as np
import pytest
from quant_helpers import canonical_zoo

from slimcc.errors import PipelineError
from slimcc.ir.verify import compare_models, run_onnxruntime
from slimcc.models.data import zoo_inputs
from slimcc.passes.quant.cluster_weights import ClusterWeights, kmeans_1d


def test_kmeans_codebook_is_nearest_assignment():
    values = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    codebook, labels = kmeans_1d(values, 16)
    assert codebook.size == 16 and labels.dtype == np.uint8
    nearest = np.abs(values[:, None] - codebook[None, :]).argmin(axis=1)
    np.testing.assert_array_equal(labels, nearest)
    # k-means beats uniform levels over the same range
    uniform = np.linspace(values.min(), values.max(), 16)
    assert np.mean((codebook[labels] - values) ** 2) < np.mean(np.min((values[:, None] - uniform) ** 2, axis=1))


def test_cluster_weights_exact_decode_and_size():
    model = canonical_zoo("vgg", width=32)
    reference = model.copy()
    layer_weights = {n.name: np.asarray(n.inputs[1].values) for n in model.graph.nodes
                     if n.op in ("Conv", "Gemm") and n.inputs[1].values.size >= 1024}
    before = model.initializer_bytes()
    result = ClusterWeights(bits=8).run(model)
    assert result.stats["clustered"] == len(layer_weights) > 0
    assert before / model.initializer_bytes() > 3.5
    # expose each decoded weight as an output and check it equals codebook[indices] and has <= 256 values
    graph = model.graph
    decoded = {n.name: n.inputs[1] for n in graph.nodes if n.name in layer_weights}
    for name, tensor in decoded.items():
        gather = tensor.inputs[0]
        codebook, indices = gather.inputs[0].values, gather.inputs[1].inputs[0].inputs[0].values
        assert indices.dtype == np.uint8 and codebook.size <= 256
        tensor.dtype = np.float32
        graph.outputs.append(tensor)
    feeds = zoo_inputs(2)
    outs = run_onnxruntime(model, feeds[0])
    for name, tensor in decoded.items():
        gather = tensor.inputs[0]
        codebook, indices = gather.inputs[0].values, gather.inputs[1].inputs[0].inputs[0].values
        np.testing.assert_array_equal(outs[tensor.name], codebook[indices.astype(np.int64)])
        rms = np.sqrt(np.mean((outs[tensor.name] - layer_weights[name]) ** 2))
        assert rms < 0.02 * layer_weights[name].std()
    del graph.outputs[1:]
    report = compare_models(reference, model, feeds)
    assert report.max_rel < 0.1, report.as_dict()  # 256 shared values per layer, 4 layers, untrained net


def test_cluster_bits_validated():
    with pytest.raises(PipelineError):
        ClusterWeights(bits=9)
