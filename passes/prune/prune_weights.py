"""The `prune-weights` pass: fine-grained magnitude pruning stored sparsely so the file shrinks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.errors import PipelineError
from slimcc.passes.base import Pass, PassContext, PassResult, register_pass
from slimcc.passes.prune.sparse_encoding import encode

WEIGHTED_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def magnitude_mask(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """True for the weights kept: the largest |w|, (1 - sparsity) of them."""
    k = int(round(sparsity * weight.size))
    if k <= 0:
        return np.ones(weight.shape, dtype=bool)
    order = np.argsort(np.abs(weight).reshape(-1), kind="stable")
    keep = np.ones(weight.size, dtype=bool)
    keep[order[:k]] = False
    return keep.reshape(weight.shape)


@register_pass("prune-weights")
@dataclass(frozen=True)
class PruneWeights(Pass):
    """Zero the smallest weights of each layer and store them as uint8 gaps + values (5 bytes per nonzero)."""

    sparsity: float = 0.8
    min_size: int = 4096
    store: bool = True

    exact: ClassVar[bool] = False

    def __post_init__(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise PipelineError(f"prune-weights: sparsity={self.sparsity} must be in [0, 1)")
        if self.min_size < 1:
            raise PipelineError("prune-weights: min_size must be >= 1")

    def run(self, model, ctx: PassContext | None = None) -> PassResult:
        """Magnitude-zero every float weight of >= min_size elements; with store=True encode it sparsely."""
        graph = model.graph
        done, dense_bytes, sparse_bytes = 0, 0, 0
        seen: dict[str, gs.Tensor] = {}
        for node in list(graph.nodes):
            index = WEIGHTED_OPS.get(node.op)
            if index is None or len(node.inputs) <= index:
                continue
            tensor = node.inputs[index]
            if tensor.name in seen:
                node.inputs[index] = seen[tensor.name]
                continue
            if not isinstance(tensor, gs.Constant):
                continue
            w = np.asarray(tensor.values)
            if w.dtype not in (np.float32, np.float64, np.float16) or w.size < self.min_size:
                continue
            pruned = np.where(magnitude_mask(w, self.sparsity), w, 0).astype(w.dtype)
            replacement = self._encoded(graph, tensor.name, pruned) if self.store else \
                gs.Constant(f"{tensor.name}__sparse", pruned)
            seen[tensor.name] = replacement
            node.inputs[index] = replacement
            done += 1
            dense_bytes += w.nbytes
            sparse_bytes += int(np.count_nonzero(pruned)) * (1 + w.dtype.itemsize)
        if not done:
            return PassResult(False, {"layers": 0})
        graph.cleanup()
        if self.store:
            model.refresh_shapes()
        return PassResult(True, {"layers": done, "weight_bytes_before": dense_bytes,
                                 "weight_bytes_after": sparse_bytes if self.store else dense_bytes})

    @staticmethod
    def _encoded(graph: gs.Graph, name: str, dense: np.ndarray) -> gs.Variable:
        gaps, values = encode(dense)
        base = f"{name}__sparse"
        c_gaps = gs.Constant(f"{base}_gaps", gaps)
        c_values = gs.Constant(f"{base}_values", values)
        c_axis = gs.Constant(f"{base}_axis0", np.array(0, dtype=np.int64))
        c_size = gs.Constant(f"{base}_size", np.array([dense.size], dtype=np.int64))
        c_unsq = gs.Constant(f"{base}_axes", np.array([1], dtype=np.int64))
        c_shape = gs.Constant(f"{base}_shape", np.array(dense.shape, dtype=np.int64))
        zero = gs.Constant(f"{base}_zero", np.zeros(1, dtype=dense.dtype))
        v = [gs.Variable(f"{base}_{k}") for k in ("i64", "pos", "idx", "zeros", "flat")]
        out = gs.Variable(f"{base}_dense", dtype=dense.dtype, shape=list(dense.shape))
        graph.nodes += [
            gs.Node("Cast", inputs=[c_gaps], outputs=[v[0]], attrs={"to": 7}),
            gs.Node("CumSum", inputs=[v[0], c_axis], outputs=[v[1]]),
            gs.Node("Unsqueeze", inputs=[v[1], c_unsq], outputs=[v[2]]),
            gs.Node("ConstantOfShape", inputs=[c_size], outputs=[v[3]], attrs={"value": zero}),
            gs.Node("ScatterND", inputs=[v[3], v[2], c_values], outputs=[v[4]]),
            gs.Node("Reshape", inputs=[v[4], c_shape], outputs=[out]),
        ]
        graph.toposort()
        return out
