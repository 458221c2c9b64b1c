"""Passes scale linearly with depth: on a residual chain 5x deeper, no pass scans the whole graph
(tensor map, export, node comparisons) more often. Counts, not timings (issue 20)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from slimcc.ir.calibration import CalibrationData
from slimcc.ir.model import Model, load_model
from slimcc.models.zoo import build_deep_resnet
from slimcc.passes.base import PassContext
from slimcc.passes.manager import PassManager
from slimcc.passes.pipeline import parse_pipeline

SPECS = ["canonicalize", "prune-channels{ratio=0.3}", "decompose-tucker{speedup=2}", "qdq-insert"]


def scans(spec: str, blocks: int, monkeypatch) -> dict[str, int]:
    """How often running `spec` on a `blocks`-deep chain walks the whole graph, by kind of walk."""
    model = load_model(build_deep_resnet(blocks=blocks, seed=1))
    if spec != "canonicalize":
        PassManager(parse_pipeline("canonicalize")).run(model, PassContext(progress=False))
    rng = np.random.default_rng(0)
    calib = CalibrationData([{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(2)])
    counts = {"tensors": 0, "export": 0, "node_eq": 0}

    def counted(kind, function):
        def wrapper(*args, **kwargs):
            counts[kind] += 1
            return function(*args, **kwargs)
        return wrapper

    with monkeypatch.context() as patch:
        patch.setattr(gs.Graph, "tensors", counted("tensors", gs.Graph.tensors))
        patch.setattr(Model, "to_proto", counted("export", Model.to_proto))
        patch.setattr(gs.Node, "__eq__", counted("node_eq", gs.Node.__eq__))
        report = PassManager(parse_pipeline(spec)).run(model, PassContext(calibration=calib, progress=False))
    assert report.modified
    return counts


@pytest.mark.parametrize("spec", SPECS)
def test_whole_graph_walks_do_not_grow_with_depth(spec, monkeypatch):
    shallow, deep = scans(spec, 8, monkeypatch), scans(spec, 40, monkeypatch)  # both over 16 refit waves
    growth = (7 * 40 + 6) / (7 * 8 + 6)  # node counts of the two chains
    # a node list searched by equality once per node would grow by growth**2 (about 21x)
    assert deep["node_eq"] <= 2 * growth * shallow["node_eq"] + 10, (shallow, deep)
    for kind in ("tensors", "export"):
        assert deep[kind] <= shallow[kind] + 2, (kind, shallow, deep)
