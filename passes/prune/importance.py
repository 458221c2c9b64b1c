"""Channel importance: one score per component (larger = more important).

Criteria: `l1`/`l2` (filter norms of the producers), `bn` (|gamma| of BatchNormalization,
network slimming), `activation` (mean |output| of the producers over calibration data) and
`hessian` (OBD-style: the increase of each channel-mixing consumer's reconstruction error
||X W^T - X' W'^T||^2 when the channel is removed, from the diagonal blocks of H = X^T X),
`reconstruction` (greedy removal with least-squares refit of the consumers, reconstruction.py).
Scores of the units of one component are summed; `normalize_scores` divides by the
group mean so that scores of different layers can be ranked globally.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.errors import PassError
from slimcc.passes.prune.channels import ChannelAnalysis

CRITERIA = ("l1", "l2", "bn", "activation", "hessian", "reconstruction")


class CriterionUnavailable(PassError):
    """The chosen criterion cannot score this model (e.g. `bn` after BN folding)."""


def _add(scores: np.ndarray, analysis: ChannelAnalysis, tensor: str, per_element: np.ndarray) -> None:
    """Add per-element values of `tensor`'s channel space to the scores of their components."""
    space = analysis.spaces[tensor]
    per_unit = per_element.reshape(space.units, space.unit).sum(axis=1)
    np.add.at(scores, analysis.element_component[tensor], per_unit)


def _producer_filters(node: gs.Node) -> np.ndarray:
    """Filters of a producer as rows: [out_channels, fan_in]."""
    w = np.asarray(node.inputs[1].values, dtype=np.float64)
    if node.op == "Conv":
        return w.reshape(w.shape[0], -1)
    if node.op == "ConvTranspose":
        groups = int(node.attrs.get("group", 1))
        cin_g = w.shape[0] // groups
        blocks = [np.moveaxis(w[g * cin_g:(g + 1) * cin_g], 1, 0).reshape(w.shape[1], -1) for g in range(groups)]
        return np.concatenate(blocks, axis=0)
    if node.op == "Gemm":
        return w if node.attrs.get("transB", 0) else w.T
    return w.T  # MatMul: [K, M] -> rows per output


def magnitude_scores(graph: gs.Graph, analysis: ChannelAnalysis, order: int) -> np.ndarray:
    """Sum of |w|^order over each producer filter (order 1: L1; order 2: squared L2)."""
    scores = np.zeros(len(analysis.components))
    for role in analysis.roles:
        if role.kind == "producer":
            rows = _producer_filters(graph.nodes[role.node])
            _add(scores, analysis, role.tensor, np.sum(np.abs(rows) ** order, axis=1))
    return scores if order == 1 else np.sqrt(scores)


def bn_scores(graph: gs.Graph, analysis: ChannelAnalysis) -> np.ndarray:
    """|gamma| of every BatchNormalization on the component (network slimming)."""
    roles = [r for r in analysis.roles if r.kind == "bn"]
    if not roles:
        raise CriterionUnavailable("criterion=bn needs BatchNormalization nodes, but this model has none "
                                   "(they were folded by canonicalize?); use l1, l2, activation or hessian")
    scores = np.zeros(len(analysis.components))
    for role in roles:
        gamma = np.abs(np.asarray(graph.nodes[role.node].inputs[1].values, dtype=np.float64))
        _add(scores, analysis, role.tensor, gamma)
    return scores


def _collect(model, calibration, names: list[str], progress: bool) -> dict[str, list[np.ndarray]]:
    from slimcc.ir.calibration import collect_activations

    if calibration is None:
        raise CriterionUnavailable("this criterion needs calibration data; give --calib DATA")
    return collect_activations(model, calibration, names, progress=progress)


def activation_scores(model, analysis: ChannelAnalysis, calibration, progress: bool = False) -> np.ndarray:
    """Mean |activation| of each producer output channel over the calibration batches."""
    roles = [r for r in analysis.roles if r.kind == "producer"]
    values = _collect(model, calibration, [r.tensor for r in roles], progress)
    scores = np.zeros(len(analysis.components))
    for role in roles:
        axis = analysis.spaces[role.tensor].axis
        means = [np.mean(np.abs(np.moveaxis(v, axis, 0).reshape(v.shape[axis], -1)), axis=1) for v in values[role.tensor]]
        _add(scores, analysis, role.tensor, np.mean(means, axis=0))
    return scores


def _conv_patches(x: np.ndarray, node: gs.Node) -> list[np.ndarray]:
    """Shifted views of x (one per kernel position), each [N, C, Ho, Wo]: the im2col columns."""
    kh, kw = node.inputs[1].shape[2:4]
    strides = node.attrs.get("strides", [1, 1])
    dil = node.attrs.get("dilations", [1, 1])
    pads = node.attrs.get("pads", [0, 0, 0, 0])
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
        raise PassError("hessian criterion: auto_pad SAME convs are not supported")
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho = (xp.shape[2] - dil[0] * (kh - 1) - 1) // strides[0] + 1
    wo = (xp.shape[3] - dil[1] * (kw - 1) - 1) // strides[1] + 1
    return [xp[:, :, i * dil[0]: i * dil[0] + strides[0] * (ho - 1) + 1: strides[0],
               j * dil[1]: j * dil[1] + strides[1] * (wo - 1) + 1: strides[1]]
            for i in range(kh) for j in range(kw)]


def _dense_conv_weight(w: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv weight [O, C/g, kh, kw] as the block-diagonal dense weight [O, C, kh, kw]."""
    if groups == 1:
        return w
    cout_g, cin_g = w.shape[0] // groups, w.shape[1]
    dense = np.zeros((w.shape[0], cin_g * groups) + w.shape[2:], dtype=w.dtype)
    for q in range(groups):
        dense[q * cout_g:(q + 1) * cout_g, q * cin_g:(q + 1) * cin_g] = w[q * cout_g:(q + 1) * cout_g]
    return dense


def _reconstruction_increase(node: gs.Node, batches: list[np.ndarray]) -> np.ndarray:
    """Per input element c: sum_o w_oc^T H_c w_oc, the output error added by dropping input c."""
    w = np.asarray(node.inputs[1].values, dtype=np.float64)
    if node.op == "Conv":
        w = _dense_conv_weight(w, int(node.attrs.get("group", 1)))
        k = w.shape[2] * w.shape[3]
        wc = w.reshape(w.shape[0], w.shape[1], k)  # [O, C, K]
        h = np.zeros((w.shape[1], k, k))
        for x in batches:
            cols = _conv_patches(x.astype(np.float64), node)
            for a in range(k):
                for b in range(a, k):
                    v = np.einsum("nchw,nchw->c", cols[a], cols[b])
                    h[:, a, b] += v
                    if a != b:
                        h[:, b, a] += v
        return np.einsum("ock,ckl,ocl->c", wc, h, wc)
    if node.op == "ConvTranspose":  # each input pixel writes w[c] once: error = sum x_c^2 * ||w_c||^2
        energy = sum(np.einsum("nchw,nchw->c", x.astype(np.float64), x.astype(np.float64)) for x in batches)
        return energy * np.sum(w.reshape(w.shape[0], -1) ** 2, axis=1)
    wk = w.T if node.op == "Gemm" and node.attrs.get("transB", 0) else w  # [K, M]
    energy = sum(np.sum(x.reshape(-1, x.shape[-1]).astype(np.float64) ** 2, axis=0) for x in batches)
    return energy * np.sum(wk ** 2, axis=1)


def hessian_scores(model, analysis: ChannelAnalysis, calibration, progress: bool = False) -> np.ndarray:
    """OBD-style saliency from each consumer's H = X^T X (diagonal channel blocks, no compensation).

    For Gemm/MatMul/ConvTranspose the cross terms inside a channel are dropped (diagonal H).
    """
    graph = model.graph
    roles = [r for r in analysis.roles if r.kind == "reducer"]
    values = _collect(model, calibration, [r.tensor for r in roles], progress)
    scores = np.zeros(len(analysis.components))
    for role in roles:
        node = graph.nodes[role.node]
        increase = _reconstruction_increase(node, values[role.tensor]) / max(len(values[role.tensor]), 1)
        _add(scores, analysis, role.tensor, increase)
    return scores


def compute_scores(model, analysis: ChannelAnalysis, criterion: str, calibration=None,
                   progress: bool = False, record: dict | None = None) -> np.ndarray:
    """Raw importance per component for `criterion` (see module doc).

    `reconstruction` (see reconstruction.py) stores its JSON-able analysis in `record`."""
    if criterion == "reconstruction":
        from slimcc.passes.prune.reconstruction import reconstruction_analysis, reconstruction_scores

        if calibration is None:
            raise CriterionUnavailable("this criterion needs calibration data; give --calib DATA")
        details = reconstruction_analysis(model, analysis, calibration, progress)
        if record is not None:
            record.update(details)
        return reconstruction_scores(analysis, details)
    if criterion == "l1":
        return magnitude_scores(model.graph, analysis, 1)
    if criterion == "l2":
        return magnitude_scores(model.graph, analysis, 2)
    if criterion == "bn":
        return bn_scores(model.graph, analysis)
    if criterion == "activation":
        return activation_scores(model, analysis, calibration, progress)
    if criterion == "hessian":
        return hessian_scores(model, analysis, calibration, progress)
    raise PassError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")


def normalize_scores(analysis: ChannelAnalysis, scores: np.ndarray) -> np.ndarray:
    """Scores divided by their group's mean, so layers of different scale rank together."""
    normalized = np.full(len(scores), np.nan)
    for group in analysis.prunable_groups():
        ids = np.array(group.components)
        mean = float(np.mean(scores[ids]))
        normalized[ids] = scores[ids] / mean if mean > 0 else 0.0
    return normalized
