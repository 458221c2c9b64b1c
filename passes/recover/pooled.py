"""Refitting a layer that reads a global average pool from the pooling input's positions.

A squeeze-excitation conv (GlobalAveragePool -> 1x1 conv) or a classifier head (GlobalAveragePool
-> Flatten -> Gemm/MatMul) sees one row per calibration sample: 32 rows for hundreds of unknowns,
so a least-squares refit either overfits or is refused by cross-validation. The layer is linear and
the pool is a mean, so its output is the spatial mean of the layer applied at every position:
W^T mean_p(x_p) + b = mean_p(W^T x_p + b). Fitting the pruned layer at every position p of the
pooling input, toward the original layer applied to the original model's input at the same
position, gives H*W rows per sample; a fit that is exact per position is exact after the pool.
The pooled rows (one per sample) still judge the fit: it is kept only when it lowers their error.

Opt-in (`recover-lstsq{pooled=positions}`): on ppocr cls under compress's plan at macs=0.6 it lowered
the output error, but after an l1 cut at ratio=0.3 and on the zoo ResNet's pooled head it predicted
held-out inputs worse than the pooled rows' own fit (docs/methods.md).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.passes.recover.activations import stream
from slimcc.passes.recover.layers import LinearLayer
from slimcc.passes.recover.normal_equations import NormalEquations

RESHAPES = ("Flatten", "Reshape", "Squeeze")


def pooled_source(layer: LinearLayer) -> gs.Variable | None:
    """The GlobalAveragePool input whose spatial mean is this layer's input, when the layer is a
    1x1 stride-1 unpadded ungrouped Conv or a Gemm/MatMul on the flattened pool; else None."""
    if layer.op == "Conv":
        w = layer.weight_array()
        pads = layer.node.attrs.get("pads", [0, 0, 0, 0])
        if layer.groups != 1 or w is None or tuple(w.shape[2:]) != (1, 1) or any(pads):
            return None
    tensor = layer.input
    for _ in range(1 + len(RESHAPES)):
        if len(tensor.inputs) != 1:
            return None
        producer = tensor.inputs[0]
        if producer.op == "GlobalAveragePool":
            source = producer.inputs[0]
            shape = getattr(source, "shape", None)
            return source if shape is not None and len(shape) == 4 else None
        if layer.op == "Conv" or producer.op not in RESHAPES:
            return None
        tensor = producer.inputs[0]
    return None


def reference_sample(x0: np.ndarray, limit: int, rng: np.random.Generator) -> tuple:
    """One batch of the original model's pooling input [N, C, H, W]: (sampled position numbers or None
    for all, the rows [P, C] there, the spatial means [N, C]), kept so that the original model is run once."""
    rows = np.moveaxis(x0, 1, -1).reshape(-1, x0.shape[1])
    pick = np.sort(rng.choice(len(rows), limit, replace=False)) if len(rows) > limit else None
    return pick, np.asarray(rows if pick is None else rows[pick], np.float32), x0.mean(axis=(2, 3))


def pooled_equations(layer: LinearLayer, original: LinearLayer, source: str, model, batches: list,
                     reference: list[tuple], kept: np.ndarray) -> tuple[NormalEquations, NormalEquations]:
    """(per-position equations, pooled equations) of `layer` toward `original`'s kept output channels.

    Per position: rows are the pruned model's `source` at the positions `reference` (one
    `reference_sample` per batch) sampled, targets the original layer applied to the original
    model's `source` there. Pooled: one row per sample, the spatial means of both (what the layer
    really computes and must match)."""
    weight, bias = original.matrix(), original.bias()
    fan_in = layer.matrix().shape[0]
    positions = NormalEquations.empty(1, fan_in, len(kept))
    pooled = NormalEquations.empty(1, fan_in, len(kept))
    for current, (pick, rows0, means0) in zip(stream(model, batches, [source]), reference):
        x = current[source].astype(np.float64)
        if x.shape[1] != fan_in or rows0.shape[1] != weight.shape[0]:
            raise ValueError("the pooling input does not match the layer's weights")
        pooled.add(x.mean(axis=(2, 3))[:, None, :], (means0 @ weight + bias)[:, kept][:, None, :])
        rows = np.moveaxis(x, 1, -1).reshape(-1, fan_in)
        rows = rows if pick is None else rows[pick]
        positions.add(rows[:, None, :], (rows0.astype(np.float64) @ weight + bias)[:, kept][:, None, :])
    return positions, pooled
