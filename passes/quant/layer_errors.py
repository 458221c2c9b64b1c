"""The quantization debugger's analysis: where two versions of a model start to disagree.

Both models run on the same inputs (calibration data) and every activation tensor they share
by name (an int8 QDQ model keeps the float tensor names: each Q reads the original tensor) is
compared: SQNR in dB (10 log10 of signal over error power), cosine similarity and relative L2
error, in the reference model's order. Each tensor also gets the SQNR its producer's inputs had
(`input_sqnr_db`): the drop from there to its own SQNR is the error that node added, and the
node with the largest drop (`worst_layer`) is where to look first. Output agreement (top-1,
for [batch, classes] outputs) says whether the differences change decisions.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.calibration import collect_activations

MAX_SQNR_DB = 200.0  # identical tensors: reported as this instead of infinity (JSON has no inf)


def shared_tensors(reference, candidate) -> list[str]:
    """Float activations present in both models under one name with one shape, in the reference's order."""
    theirs = candidate.graph.tensors()
    names = []
    for node in reference.graph.nodes:
        for tensor in node.outputs:
            other = theirs.get(tensor.name)
            if isinstance(other, gs.Variable) and tensor.dtype == np.float32 and other.dtype in (np.float32, None) \
                    and (tensor.shape is None or other.shape is None or list(tensor.shape) == list(other.shape)):
                names.append(tensor.name)
    return names


def tensor_metrics(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, float]:
    """SQNR (dB), cosine similarity and relative L2 error of `candidate` against `reference`, batches pooled."""
    r = np.concatenate([np.asarray(a, np.float64).ravel() for a in reference])
    c = np.concatenate([np.asarray(a, np.float64).ravel() for a in candidate])
    signal, noise = float(np.dot(r, r)), float(np.dot(c - r, c - r))
    norms = math.sqrt(signal) * math.sqrt(float(np.dot(c, c)))
    sqnr = MAX_SQNR_DB if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -MAX_SQNR_DB)
    return {"sqnr_db": round(min(sqnr, MAX_SQNR_DB), 3),
            "cosine": round(float(np.dot(r, c)) / norms, 6) if norms > 0 else float(signal == 0 and noise == 0),
            "rel_l2": round(math.sqrt(noise / signal), 6) if signal > 0 else float(noise > 0)}


def compare_layers(reference, candidate, batches: list[dict[str, np.ndarray]], *, progress: bool = False) -> dict:
    """Per-tensor error of `candidate` against `reference` on `batches`, the worst layer, and output agreement."""
    names = shared_tensors(reference, candidate)
    outputs = [t.name for t in reference.graph.outputs]
    ref = collect_activations(reference, batches, names + [o for o in outputs if o not in names], progress=progress)
    got = collect_activations(candidate, batches, names + [o for o in outputs if o not in names], progress=progress)
    producers = {t.name: node for node in reference.graph.nodes for t in node.outputs}
    layers, sqnr = [], {}
    for name in names:
        metrics = tensor_metrics(ref[name], got[name])
        sqnr[name] = metrics["sqnr_db"]
        node = producers[name]
        inputs = [sqnr[t.name] for t in node.inputs if t.name in sqnr]
        before = min(inputs) if inputs else MAX_SQNR_DB
        layers.append({"tensor": name, "node": node.name, "op": node.op, **metrics,
                       "input_sqnr_db": before, "added_db": round(max(before - metrics["sqnr_db"], 0.0), 3)})
    worst = max(layers, key=lambda layer: layer["added_db"]) if layers else None
    return {"tensors": len(layers), "layers": layers, "worst_layer": worst,
            "outputs": {o: {**tensor_metrics(ref[o], got[o]), **top1_agreement(ref[o], got[o])} for o in outputs}}


def top1_agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
    """{"top1_agreement", "samples"} for [batch, classes] outputs; {} for any other shape."""
    if reference[0].ndim != 2 or reference[0].shape[1] < 2:
        return {}
    r = np.concatenate(reference).argmax(axis=1)
    c = np.concatenate(candidate).argmax(axis=1)
    return {"top1_agreement": round(float(np.mean(r == c)), 6), "samples": int(r.size)}


def error_bars(layers: list[dict], width: int = 40, top: int | None = None) -> list[str]:
    """A text plot of SQNR by layer (longer bar: more error), `top` largest-drop layers only when given."""
    shown = layers if top is None else sorted(sorted(layers, key=lambda l: -l["added_db"])[:top],
                                              key=layers.index)
    if not shown:
        return []
    best = max(min(layer["sqnr_db"], 60.0) for layer in shown)
    lines = []
    for layer in shown:
        db = min(layer["sqnr_db"], 60.0)
        bar = "#" * int(round(width * (best - db) / max(best, 1e-9))) if best > 0 else ""
        lines.append(f"{layer['sqnr_db']:8.2f} dB  {layer['node'][:40]:40s} {bar}")
    return lines
