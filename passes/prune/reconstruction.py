"""Reconstruction-driven channel selection (criterion `reconstruction`; He et al. 2017, ThiNet).

For every prunable group, channels are removed greedily, one at a time (in blocks of 1/32
for groups of more than 64), always the one whose removal the next layers can best reconstruct: each
channel-mixing consumer of the group's tensors refits its remaining inputs (and its bias)
by least squares toward its original output on calibration data. The cost of removing a
block R of input features is the optimal-brain-surgeon form W_R^T (P_RR)^-1 W_R with
P = (X^T X + damping)^-1, and after each removal P and W are downdated, so every later
choice sees the refit weights. Costs are relative to each consumer's output energy and
summed over consumers.

The result is plain JSON data: per group the removal order and the cumulative relative
error after each step. `reconstruction_scores` turns it into one score per component (the
error its step added, non-decreasing along the order), so that removing the k lowest-scored
components of a group is exactly the greedy choice of size k; across groups the scores are
divided by the group mean like every criterion's (a group's relative error says little about
the network output, so it is not used to rank groups against each other). The error is what
a least-squares refit (`recover-lstsq`) recovers to; without a refit the pruned layers keep
their original weights.

Consumers with more than `MAX_FEATURES` input features, and ConvTranspose, are scored
without refit (each channel's own contribution, as the `hessian` criterion does).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from slimcc.passes.prune.channels import ChannelAnalysis
from slimcc.passes.prune.importance import _collect, _conv_patches, _dense_conv_weight, _reconstruction_increase

MAX_FEATURES = 2304
MAX_ROWS = 8192  # rows of X^T X in all, spread over the calibration batches
DAMPING = 1e-3  # relative to the mean input power


class _Consumer:
    """One channel-mixing consumer: P = G^-1 over its [features, 1] rows, and its current weight [F+1, O]."""

    def __init__(self, node: gs.Node, unit_features: int, gram: np.ndarray, weight: np.ndarray):
        self.node = node
        self.unit_features = unit_features
        self.energy = max(float(np.einsum("fo,fg,go->", weight, gram, weight)), 1e-30)
        damp = DAMPING * float(np.mean(np.diag(gram))) + 1e-12
        self.p = np.linalg.inv(gram + damp * np.eye(len(gram)))
        self.w = weight.copy()

    def block(self, units: list[int]) -> np.ndarray:
        return (np.asarray(units)[:, None] * self.unit_features + np.arange(self.unit_features)).reshape(-1)

    def cost(self, units: list[int]) -> float:
        """Relative output error added by removing these input units now, with the rest refitted."""
        r = self.block(units)
        wr = self.w[r]
        return float(np.einsum("ro,rs,so->", wr, np.linalg.inv(self.p[np.ix_(r, r)]), wr)) / self.energy

    def remove(self, units: list[int]) -> None:
        """Drop the units' features and refit the others (OBS downdate of P and W)."""
        r = self.block(units)
        solve = self.p[:, r] @ np.linalg.inv(self.p[np.ix_(r, r)])
        self.w -= solve @ self.w[r]
        self.p -= solve @ self.p[r, :]
        self.w[r] = 0.0


class _Fixed:
    """A consumer scored without refit: a fixed relative cost per input unit."""

    def __init__(self, per_unit: np.ndarray):
        self.per_unit = per_unit / max(float(np.sum(per_unit)), 1e-30)

    def cost(self, units: list[int]) -> float:
        return float(np.sum(self.per_unit[units]))

    def remove(self, units: list[int]) -> None:
        return None


def _rows_and_weight(node: gs.Node, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Input rows [P, F] (features ordered unit-major), the dense weight [F, O] and features per unit."""
    w = np.asarray(node.inputs[1].values, dtype=np.float64)
    if node.op == "Conv":
        w = _dense_conv_weight(w, int(node.attrs.get("group", 1)))
        k = w.shape[2] * w.shape[3]
        cols = np.stack(_conv_patches(x.astype(np.float64), node), axis=-1)  # [N, C, Ho, Wo, K]
        rows = cols.transpose(0, 2, 3, 1, 4).reshape(-1, w.shape[1] * k)
        return rows, w.reshape(w.shape[0], -1).T, k
    wk = w.T if node.op == "Gemm" and node.attrs.get("transB", 0) else w  # [K, M]
    return x.reshape(-1, x.shape[-1]).astype(np.float64), wk, 1


def _consumer(node: gs.Node, batches: list[np.ndarray], unit: int, seed: int):
    """The refit model of one consumer (or a fixed-cost one when it is too wide or a ConvTranspose)."""
    rng = np.random.default_rng(seed)
    if node.op == "ConvTranspose":
        per_element = _reconstruction_increase(node, batches)
        return _Fixed(per_element.reshape(-1, unit).sum(axis=1)), "no refit (ConvTranspose)"
    gram = None
    weight = None
    per_unit_features = 1
    per_batch = max(1, MAX_ROWS // max(len(batches), 1))
    for x in batches:
        rows, weight, per_unit_features = _rows_and_weight(node, x)
        if rows.shape[1] > MAX_FEATURES:
            per_element = _reconstruction_increase(node, batches)
            return _Fixed(per_element.reshape(-1, unit).sum(axis=1)), f"no refit ({rows.shape[1]} features)"
        if len(rows) > per_batch:
            rows = rows[rng.choice(len(rows), per_batch, replace=False)]
        rows = np.concatenate([rows, np.ones((len(rows), 1))], axis=1)
        gram = rows.T @ rows if gram is None else gram + rows.T @ rows
    if node.op == "Conv" and int(node.attrs.get("group", 1)) > 1:
        gram = _within_groups(gram, weight, int(node.attrs.get("group", 1)), per_unit_features)
    weight = np.concatenate([weight, np.zeros((1, weight.shape[1]))], axis=0)  # the bias row: refitted, never removed
    return _Consumer(node, per_unit_features * unit, gram, weight), "least-squares refit"


def _within_groups(gram: np.ndarray, weight: np.ndarray, groups: int, k: int) -> np.ndarray:
    """Zero the covariance between conv groups, so a refit stays inside each group (the bias row excepted)."""
    channels = weight.shape[0] // k
    group_of = np.repeat(np.arange(channels) // (channels // groups), k)
    group_of = np.append(group_of, -1)
    same = (group_of[:, None] == group_of[None, :]) | (group_of[:, None] < 0) | (group_of[None, :] < 0)
    return np.where(same, gram, 0.0)


def reconstruction_analysis(model, analysis: ChannelAnalysis, calibration, progress: bool = False) -> dict:
    """Greedy removal order and cumulative relative reconstruction error per prunable group (JSON-able)."""
    graph = model.graph
    reducers = [r for r in analysis.roles if r.kind == "reducer"]
    values = _collect(model, calibration, [r.tensor for r in reducers], progress)
    by_tensor: dict[str, list] = {}
    for role in reducers:
        by_tensor.setdefault(role.tensor, []).append(role)
    groups = []
    for group in analysis.prunable_groups():
        if len(group.components) < 2:
            continue
        consumers, described = [], []
        for tensor in group.tensors:
            for role in by_tensor.get(tensor, []):
                node = graph.nodes[role.node]
                model_, mode = _consumer(node, values[tensor], analysis.spaces[tensor].unit, seed=role.node)
                units_of = {c: [] for c in group.components}
                for u, c in enumerate(analysis.element_component[tensor].tolist()):
                    if c in units_of:
                        units_of[c].append(u)
                consumers.append((model_, units_of))
                described.append({"node": node.name, "tensor": tensor, "mode": mode})
        order, errors = _greedy(group.components, consumers)
        groups.append({"group": group.id, "order": order, "error": errors, "consumers": described})
    return {"criterion": "reconstruction", "groups": groups}


def _greedy(components: list[int], consumers: list) -> tuple[list[int], list[float]]:
    """Remove components one at a time, cheapest reconstruction first; in groups of more than 64,
    the cheapest 1/32 go together as one block (their errors split by their single costs)."""
    alive = list(components)
    order, errors, total = [], [], 0.0
    if not consumers:
        return alive, [0.0] * len(alive)
    while len(alive) > 1:
        costs = np.array([sum(m.cost(units[c]) for m, units in consumers if units[c]) for c in alive])
        chunk = [alive[i] for i in np.argsort(costs, kind="stable")[:max(1, len(alive) // 32)]]
        single = np.array([costs[alive.index(c)] for c in chunk])
        joint = 0.0
        for m, units in consumers:
            block = [u for c in chunk for u in units[c]]
            if block:
                joint += m.cost(block)
                m.remove(block)
        share = single / single.sum() if single.sum() > 0 else np.full(len(chunk), 1.0 / len(chunk))
        for c, part in zip(chunk, np.cumsum(share * joint)):
            order.append(c)
            errors.append(total + float(part))
        total += joint
        done = set(chunk)
        alive = [c for c in alive if c not in done]
    last = alive[0]
    order.append(last)
    errors.append(total + float(sum(m.cost(units[last]) for m, units in consumers if units[last])))
    return order, [float(e) for e in np.maximum.accumulate(errors)]


def reconstruction_scores(analysis: ChannelAnalysis, details: dict) -> np.ndarray:
    """One score per component: the error its removal step added, made non-decreasing along the
    greedy order (so a group's k lowest scores are its first k greedy removals)."""
    scores = np.zeros(len(analysis.components))
    for entry in details["groups"]:
        errors = np.asarray(entry["error"])
        added = np.maximum.accumulate(np.diff(errors, prepend=0.0))
        ranked = added + np.arange(len(added)) * 1e-9 * max(float(added.max()), 1e-30)
        scores[entry["order"]] = ranked
    return scores


def error_at(details: dict, group: int, removed: int) -> float:
    """The recorded relative error of `group` after its first `removed` greedy removals (0 for none)."""
    entry = next(e for e in details["groups"] if e["group"] == group)
    return 0.0 if removed <= 0 else entry["error"][min(removed, len(entry["error"])) - 1]

