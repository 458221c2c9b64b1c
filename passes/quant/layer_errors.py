"""The quantization debugger's analysis: where two versions of a model start to disagree.

Both models run on the same inputs (calibration data) and every activation tensor they share
by name (an int8 QDQ model keeps the float tensor names: each Q reads the original tensor) is
compared: SQNR in dB (10 log10 of signal over error power), cosine similarity and relative L2
error, in the reference model's order, and the SQNR after a per-channel gain fit
(`channel_fit_sqnr_db`: cross-layer equalization rescales channels exactly, which is no error).
Each tensor also gets the fitted SQNR of the nearest compared tensors upstream (`input_sqnr_db`):
the drop from there to its own is the error that node added, and the node with the largest drop
(`worst_layer`) is where to look first. Output agreement (top-1,
for [batch, classes] outputs) says whether the differences change decisions.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.ir.calibration import collect_activations

MAX_SQNR_DB = 200.0  # identical tensors: reported as this instead of infinity (JSON has no inf)
FLOAT_NOISE_DB = 100.0  # above this, a difference is float reordering (e.g. BN folding), not a lost bit


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
        metrics["channel_fit_sqnr_db"] = channel_fit_sqnr(ref[name], got[name])
        sqnr[name] = metrics["channel_fit_sqnr_db"]
        node = producers[name]
        before = _upstream_sqnr(node, sqnr, producers)
        layers.append({"tensor": name, "node": node.name, "op": node.op, **metrics, "input_sqnr_db": before,
                       "added_db": round(max(min(before, FLOAT_NOISE_DB)
                                             - min(metrics["channel_fit_sqnr_db"], FLOAT_NOISE_DB), 0.0), 3)})
    worst = max(layers, key=lambda layer: layer["added_db"]) if layers else None
    return {"tensors": len(layers), "layers": layers, "worst_layer": worst,
            "outputs": {o: {**tensor_metrics(ref[o], got[o]), **top1_agreement(ref[o], got[o])} for o in outputs}}


def channel_fit_sqnr(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """SQNR (dB) after scaling each channel (axis 1) of `candidate` by its least-squares gain onto
    `reference`: an exact per-channel rescaling (cross-layer equalization scales the tensors between
    the convs it balances) is not an error, a quantization error still is."""
    r = np.concatenate([np.asarray(a, np.float64) for a in reference])
    c = np.concatenate([np.asarray(a, np.float64) for a in candidate])
    if r.ndim >= 2:
        r = np.moveaxis(r, 1, 0).reshape(r.shape[1], -1)
        c = np.moveaxis(c, 1, 0).reshape(c.shape[1], -1)
    else:
        r, c = r.reshape(1, -1), c.reshape(1, -1)
    cc = np.sum(c * c, axis=1)
    gain = np.divide(np.sum(r * c, axis=1), cc, out=np.ones_like(cc), where=cc > 0)
    return tensor_metrics([r], [c * gain[:, None]])["sqnr_db"]


def _upstream_sqnr(node, sqnr: dict[str, float], producers: dict) -> float:
    """The lowest SQNR among the nearest compared tensors upstream of `node` (through tensors the
    other model lacks, e.g. a Relu its int8 range absorbed); graph inputs and constants count as exact."""
    lowest, stack, seen = MAX_SQNR_DB, list(node.inputs), set()
    while stack:
        tensor = stack.pop()
        if tensor.name in seen:
            continue
        seen.add(tensor.name)
        if tensor.name in sqnr:
            lowest = min(lowest, sqnr[tensor.name])
        elif tensor.name in producers:
            stack.extend(producers[tensor.name].inputs)
    return lowest


def top1_agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
    """{"top1_agreement", "samples"} for [batch, classes] outputs; {} for any other shape."""
    if reference[0].ndim != 2 or reference[0].shape[1] < 2:
        return {}
    r = np.concatenate(reference).argmax(axis=1)
    c = np.concatenate(candidate).argmax(axis=1)
    return {"top1_agreement": round(float(np.mean(r == c)), 6), "samples": int(r.size)}


def error_bars(layers: list[dict], width: int = 40, top: int | None = None) -> list[str]:
    """A text plot of the (per-channel gain fitted) SQNR by layer, longer bar: more error; only the `top`
    largest-drop layers when given."""
    shown = layers if top is None else sorted(sorted(layers, key=lambda l: -l["added_db"])[:top],
                                              key=layers.index)
    if not shown:
        return []
    best = max(min(layer["channel_fit_sqnr_db"], 60.0) for layer in shown)
    lines = []
    for layer in shown:
        db = min(layer["channel_fit_sqnr_db"], 60.0)
        bar = "#" * int(round(width * (best - db) / max(best, 1e-9))) if best > 0 else ""
        lines.append(f"{layer['channel_fit_sqnr_db']:8.2f} dB  {layer['node'][:40]:40s} {bar}")
    return lines
