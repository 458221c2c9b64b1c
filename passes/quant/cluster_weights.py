"""cluster-weights: k-means weight sharing per layer (the survey's 256 shared values + 8-bit indices).

Each Conv/ConvTranspose/Gemm/MatMul weight becomes a codebook of 2^bits float32 centroids
plus one uint8 index per weight; the graph decodes it with Cast(indices -> int32) ->
Gather(codebook, indices), which gives exactly the clustered weights (onnxruntime folds
it into a constant at load). Small weights (fewer than `min_size` values) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.errors import PipelineError
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.pattern import constant_value
from slimcc.passes.quant.qdq_graph import add_constant, fresh

ONNX_INT32 = 6  # TensorProto.INT32 (passes do not import onnx)
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def kmeans_1d(values: np.ndarray, clusters: int, *, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars: (sorted float32 codebook, uint8/uint16 index per value).

    Centroids start evenly spaced over [min, max] (linear initialization keeps the rare
    large weights represented, unlike quantile initialization); assignment uses midpoints between sorted
    centroids, so every step is O(n log k). Empty clusters keep their previous centroid.
    """
    flat = np.asarray(values, np.float64).ravel()
    distinct = np.unique(flat)
    if distinct.size <= clusters:
        codebook = distinct
    else:
        codebook = np.linspace(flat.min(), flat.max(), clusters)
        for _ in range(iterations):
            codebook = np.unique(codebook)
            labels = np.searchsorted((codebook[1:] + codebook[:-1]) / 2, flat)
            sums = np.bincount(labels, weights=flat, minlength=codebook.size)
            counts = np.bincount(labels, minlength=codebook.size)
            updated = np.where(counts > 0, sums / np.maximum(counts, 1), codebook)
            if np.allclose(updated, codebook, rtol=0, atol=1e-12):
                break
            codebook = updated
    codebook = np.unique(codebook.astype(np.float32))
    labels = np.searchsorted((codebook[1:].astype(np.float64) + codebook[:-1]) / 2, flat)
    index_dtype = np.uint8 if codebook.size <= 256 else np.uint16
    return codebook, labels.astype(index_dtype).reshape(np.shape(values))


@register_pass("cluster-weights")
@dataclass(frozen=True)
class ClusterWeights(Pass):
    """Share 2^bits k-means centroids per layer weight; store uint8 indices + codebook + Gather."""

    bits: int = 8
    min_size: int = 1024

    exact = False

    def __post_init__(self):
        if not 1 <= self.bits <= 8:
            raise PipelineError(f"cluster-weights: bits={self.bits} must be between 1 and 8 (uint8 indices)")

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        graph = model.graph
        clustered, kept, max_error = 0, 0, 0.0
        done: dict[int, gs.Tensor] = {}
        for node in list(graph.nodes):
            if node.op not in LAYER_OPS or len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
                continue
            tensor = node.inputs[1]
            if id(tensor) in done:
                node.inputs[1] = done[id(tensor)]
                continue
            weight = constant_value(tensor)
            if weight.dtype != np.float32 or weight.size < self.min_size:
                kept += 1
                continue
            codebook, indices = kmeans_1d(weight, 1 << self.bits)
            max_error = max(max_error, float(np.max(np.abs(codebook[indices.astype(np.int64)] - weight))))
            decoded = self._decoder(graph, tensor.name, codebook, indices)
            done[id(tensor)] = decoded
            node.inputs[1] = decoded
            clustered += 1
        graph.cleanup().toposort()
        return PassResult(clustered > 0, {"clustered": clustered, "kept": kept, "max_abs_error": max_error})

    @staticmethod
    def _decoder(graph: gs.Graph, name: str, codebook: np.ndarray, indices: np.ndarray) -> gs.Variable:
        idx = add_constant(graph, f"{name}_indices", indices)
        book = add_constant(graph, f"{name}_codebook", codebook)
        idx32 = gs.Variable(fresh(graph, f"{name}_indices_i32"), dtype=np.int32, shape=list(indices.shape))
        out = gs.Variable(fresh(graph, f"{name}_clustered"), dtype=np.float32, shape=list(indices.shape))
        graph.nodes.append(gs.Node("Cast", fresh(graph, f"{name}_cast"), {"to": ONNX_INT32}, [idx], [idx32]))
        graph.nodes.append(gs.Node("Gather", fresh(graph, f"{name}_gather"), {"axis": 0}, [book, idx32], [out]))
        return out
