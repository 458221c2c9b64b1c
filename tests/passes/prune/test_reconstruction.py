"""criterion=reconstruction: the greedy order and its recorded errors are the least-squares refit
errors one measures directly, the first choice is the exhaustive best, and the analysis is JSON."""

from __future__ import annotations

import json

import numpy as np
from prune_helpers import GraphBuilder

from slimcc.ir.calibration import CalibrationData, collect_activations
from slimcc.ir.model import load_model
from slimcc.passes.base import PassContext
from slimcc.passes.prune.channels import analyze_channels
from slimcc.passes.prune.prune_channels import PruneChannels
from slimcc.passes.prune.reconstruction import reconstruction_analysis, reconstruction_scores


def _model():
    b = GraphBuilder(c=3, hw=8, seed=4)
    mid = b.op("Relu", [b.conv("x", 3, 7)])[0]
    y = b.conv(mid, 7, 4)
    return load_model(b.model(y)), mid, y


def _calib(n: int = 6) -> CalibrationData:
    rng = np.random.default_rng(0)
    return CalibrationData([{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(n)])


def _im2col(x: np.ndarray) -> np.ndarray:
    """3x3, pad 1, stride 1: rows [N*H*W, C, 9]."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
    return cols.transpose(0, 2, 3, 1, 4).reshape(n * h * w, c, 9).astype(np.float64)


def _refit_error(rows: np.ndarray, w: np.ndarray, removed: list[int]) -> float:
    """Least-squares refit of the consumer from the kept channels and a bias, relative to its output energy."""
    target = rows.reshape(len(rows), -1) @ w.reshape(w.shape[0], -1).T
    kept = [c for c in range(rows.shape[1]) if c not in removed]
    design = np.concatenate([rows[:, kept].reshape(len(rows), -1), np.ones((len(rows), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(np.sum((target - design @ coef) ** 2) / np.sum(target ** 2))


def test_recorded_errors_are_the_measured_refit_errors_and_the_first_choice_is_the_best():
    model, mid, _ = _model()
    an = analyze_channels(model.graph)
    calib = _calib()
    details = reconstruction_analysis(model, an, calib)
    json.dumps(details)
    (entry,) = [e for e in details["groups"] if mid in an.groups[e["group"]].tensors]
    assert entry["consumers"][0]["mode"] == "least-squares refit"
    rows = np.concatenate([_im2col(x) for x in collect_activations(model, calib, [mid], progress=False)[mid]])
    w = np.asarray(next(n for n in model.graph.nodes if n.inputs[0].name == mid).inputs[1].values, np.float64)
    channel = {int(an.element_component[mid][k]): k for k in range(7)}
    order = [channel[c] for c in entry["order"]]
    for k in range(1, 6):
        measured = _refit_error(rows, w, order[:k])
        assert abs(entry["error"][k - 1] - measured) <= 0.02 * measured + 1e-6, (k, entry["error"][k - 1], measured)
    singles = [_refit_error(rows, w, [c]) for c in range(7)]
    assert order[0] == int(np.argmin(singles))
    pairs = {(a, b): _refit_error(rows, w, [a, b]) for a in range(7) for b in range(a + 1, 7)}
    assert _refit_error(rows, w, order[:2]) <= 1.5 * min(pairs.values())  # greedy is near the best pair


def test_scores_put_the_greedy_prefix_lowest_and_the_pass_records_its_analysis():
    model, mid, _ = _model()
    an = analyze_channels(model.graph)
    calib = _calib()
    details = reconstruction_analysis(model, an, calib)
    scores = reconstruction_scores(an, details)
    for entry in details["groups"]:
        assert np.all(np.diff(entry["error"]) >= 0)
        assert list(np.argsort(scores[entry["order"]], kind="stable")) == list(range(len(entry["order"])))
    pruner = PruneChannels(ratio=0.45, criterion="reconstruction")
    assert pruner.needs_calibration
    selection = pruner.select(model, an, PassContext(calibration=calib, progress=False))
    (entry,) = selection.analysis["reconstruction"]["groups"]
    assert selection.removed == set(entry["order"][:3])
    pruned = model.copy()
    result = pruner.run(pruned, PassContext(calibration=calib, progress=False))
    assert result.modified and result.stats["removed_units"] == 3
    skipped = PruneChannels(ratio=0.45, criterion="reconstruction").run(model.copy(), PassContext())
    assert not skipped.modified and "calibration" in skipped.stats["skipped"]
