"""Sensitivity-based allocation (`allocation=sensitivity`; NetAdapt / AMC without the search).

Per cuttable group, the network is run on the calibration data with only that group cut at a
few depths (its lowest-scored components first, by the chosen criterion), and the output error
(`output_error`: the int8 placement's error, squared) is recorded: the group's error curve. A cut is simulated by `mask_channels` on a copy, which the
mask-equivalence tests prove computes what the pruned model computes.

The MACs budget is then spent greedily: starting from nothing removed, take the group whose
next allowed count (rounding and caps as in selection.py; error interpolated between the
measured points) saves the most estimated MACs per unit of added error (errors of different
groups taken as additive), until the estimate meets the target. Curves and the chosen depths are
plain JSON data.
"""

from __future__ import annotations

import numpy as np

from slimcc.passes.output_error import output_error as relative_output_error
from slimcc.passes.prune.apply import mask_channels
from slimcc.passes.prune.channels import ChannelAnalysis
from slimcc.passes.prune.selection import Selection, kept_count

DEPTHS = (0.25, 0.5, 0.75, 0.9)  # share of a group's units removed at each curve point


def output_error(reference: list[dict], outputs: list[dict]) -> float:
    """The square of the output error the int8 placement judges (passes/output_error.py): whole-output
    relative L2 with a share of the per-channel error, so that small-valued channels beside large
    ones count (YOLOv8n's class scores in [0, 1] next to box coordinates in pixels, which a plain
    relative L2 barely sees). Squared, so that the errors of cuts in different groups add."""
    return relative_output_error(reference, outputs) ** 2


def _run(model, batches: list[dict]) -> list[dict]:
    """Every graph output of `model` on every batch, in one onnxruntime session."""
    from slimcc.ir.verify import make_session

    session = make_session(model)
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, batch))) for batch in batches]


def channel_means(model, analysis: ChannelAnalysis, calibration) -> dict[str, np.ndarray]:
    """Mean of every channel-mixing consumer's input, per element of its channel space."""
    from slimcc.passes.prune.importance import _collect

    tensors = sorted({r.tensor for r in analysis.roles if r.kind == "reducer"})
    values = _collect(model, calibration, tensors, False)
    means = {}
    for name in tensors:
        axis = analysis.spaces[name].axis
        means[name] = np.mean([np.moveaxis(v, axis, 0).reshape(v.shape[axis], -1).mean(axis=1)
                               for v in values[name]], axis=0)
    return means


def compensate_bias(graph, analysis: ChannelAnalysis, removed: set[int], means: dict[str, np.ndarray]) -> None:
    """Add to each Conv/Gemm consumer's bias what its removed inputs contributed on average
    (bias correction, as recover-bias does after a real cut); other consumers are left alone."""
    import onnx_graphsurgeon as gs

    kept = analysis.kept_elements(removed)
    for role in analysis.roles:
        node = graph.nodes[role.node]
        if role.kind != "reducer" or node.op not in ("Conv", "Gemm"):
            continue
        space = analysis.spaces[role.tensor]
        drop = np.setdiff1d(np.arange(space.units * space.unit), kept[role.tensor])
        if not len(drop):
            continue
        w = np.asarray(node.inputs[1].values, np.float64)
        if node.op == "Conv":
            groups = int(node.attrs.get("group", 1))
            cout_g, cin_g = w.shape[0] // groups, w.shape[1]
            shift = np.zeros(w.shape[0])
            for c in drop.tolist():
                rows = slice((c // cin_g) * cout_g, (c // cin_g + 1) * cout_g)
                shift[rows] += w[rows, c % cin_g].sum(axis=(1, 2)) * means[role.tensor][c]
        else:
            wk = w.T if node.attrs.get("transB", 0) else w
            shift = means[role.tensor][drop] @ wk[drop] * float(node.attrs.get("alpha", 1.0))
            shift = shift / float(node.attrs.get("beta", 1.0) or 1.0)
        has_bias = len(node.inputs) > 2 and node.inputs[2].name
        bias = np.asarray(node.inputs[2].values, np.float64) if has_bias else np.zeros(len(shift))
        if bias.shape != shift.shape:
            continue  # a broadcast Gemm C: leave it
        fresh = gs.Constant(f"{node.name}__sensitivity_bias", (bias + shift).astype(np.float32))
        if has_bias:
            node.inputs[2] = fresh
        else:
            node.inputs.append(fresh)


def _depth_counts(n: int, round_to: int, max_ratio: float) -> list[int]:
    """Distinct removal counts of a group of `n` units at DEPTHS, after capping and rounding."""
    counts = sorted({n - kept_count(n, int(round(d * n)), round_to=round_to, max_ratio=max_ratio) for d in DEPTHS})
    return [c for c in counts if c > 0]


def measure_curves(model, analysis: ChannelAnalysis, scores: np.ndarray, calibration, estimator, *,
                   round_to: int = 8, max_ratio: float = 0.9, progress: bool = False,
                   compensate: bool = True) -> list[dict]:
    """Error curve of every cuttable group: [{group, units, points: [{removed, error, macs}]}]."""
    from tqdm import tqdm

    batches = list(calibration)
    reference = _run(model, batches)
    means = channel_means(model, analysis, batches) if compensate else None
    groups = [g for g in analysis.prunable_groups() if len(g.components) > 1]
    curves = []
    for group in tqdm(groups, desc="sensitivity", unit="group", disable=not progress, leave=False):
        ids = np.array(group.components)
        order = ids[np.argsort(scores[ids], kind="stable")].tolist()
        points = []
        for count in _depth_counts(len(ids), round_to, max_ratio):
            masked = model.copy()
            if means is not None:
                compensate_bias(masked.graph, analysis, set(order[:count]), means)
            mask_channels(masked.graph, analysis, set(order[:count]))
            points.append({"removed": count, "error": output_error(reference, _run(masked, batches)),
                           "macs": int(estimator.macs(set(order[:count])))})
        curves.append({"group": group.id, "units": len(ids), "order": order, "points": points})
    return curves


def _steps(curve: dict, round_to: int, max_ratio: float) -> list[tuple[int, float]]:
    """(removal count, error) for every count a group may take, errors interpolated between measured points."""
    n = curve["units"]
    known_x = [0] + [p["removed"] for p in curve["points"]]
    known_y = [0.0] + [p["error"] for p in curve["points"]]
    counts = sorted({n - kept_count(n, r, round_to=round_to, max_ratio=max_ratio) for r in range(n + 1)})
    return [(c, float(np.interp(c, known_x, known_y))) for c in counts if 0 < c <= known_x[-1]]


def allocate(curves: list[dict], estimator, target: float, *, round_to: int = 8,
             max_ratio: float = 0.9) -> dict[int, int]:
    """Removal count per group: repeatedly the next step with the most MACs saved per added error,
    until the estimate meets `target`; the last step is the one that meets it with the least error."""
    goal = target * estimator.total
    by_group = {c["group"]: c for c in curves}
    steps = {g: _steps(c, round_to, max_ratio) for g, c in by_group.items()}
    at = {g: -1 for g in by_group}  # index into steps[g]; -1 = nothing removed

    def macs_with(trial: dict[int, int]) -> float:
        return estimator.macs({comp for g, i in trial.items() if i >= 0
                               for comp in by_group[g]["order"][:steps[g][i][0]]})

    current = macs_with(at)
    while current > goal:
        options = []
        for g in by_group:
            if at[g] + 1 >= len(steps[g]):
                continue
            trial = {**at, g: at[g] + 1}
            macs = macs_with(trial)
            added = steps[g][at[g] + 1][1] - (steps[g][at[g]][1] if at[g] >= 0 else 0.0)
            options.append((g, macs, max(added, 0.0) + 1e-12))
        useful = [o for o in options if o[1] < current]
        if not useful:
            break  # every group is as deep as its cap allows
        finishing = [o for o in useful if o[1] <= goal]
        g, current, _ = (min(finishing, key=lambda o: o[2]) if finishing
                         else max(useful, key=lambda o: (current - o[1]) / o[2]))
        at[g] += 1
    return {g: (steps[g][i][0] if i >= 0 else 0) for g, i in at.items()}


def sensitivity_selection(analysis: ChannelAnalysis, curves: list[dict], depth: dict[int, int]) -> Selection:
    """The Selection of the allocated depths, with the curves and choices as its JSON analysis."""
    removed: set[int] = set()
    kept = {}
    for curve in curves:
        k = depth.get(curve["group"], 0)
        removed.update(curve["order"][:k])
        kept[curve["group"]] = curve["units"] - k
    data = {"depths": list(DEPTHS),
            "groups": [{"group": c["group"], "units": c["units"], "points": c["points"],
                        "removed": depth.get(c["group"], 0)} for c in curves]}
    return Selection(removed, kept, analysis=data)
