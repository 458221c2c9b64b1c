"""`slimcc demo --quick`: one row per stage with plausible numbers, and a report with readable plots."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from slimcc.cli import main
from slimcc.commands import demo
from slimcc.models import digits

STAGE_NAMES = ["original", "pruned", "decomposed", "quantized", "recovered"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Run the reduced demo once for every test of this module: (exit code, JSON summary, folder)."""
    out = tmp_path_factory.mktemp("demo") / "slimcc-demo"
    capture = tmp_path_factory.mktemp("demo-out") / "stdout.json"
    import contextlib

    with open(capture, "w") as handle, contextlib.redirect_stdout(handle):
        code = main(["demo", "--quick", "--json", "--out", str(out)])
    return code, json.loads(capture.read_text()), out


def test_demo_runs_every_stage_with_plausible_numbers(demo_run):
    code, summary, _ = demo_run
    assert code == 0
    rows = {row["stage"]: row for row in summary["stages"]}
    assert [row["stage"] for row in summary["stages"]] == STAGE_NAMES
    for name in STAGE_NAMES:
        assert not rows[name]["note"].startswith("skipped"), rows[name]["note"]
        assert rows[name]["ort_ms"] > 0 and rows[name]["file_bytes"] > 0
    original, pruned, decomposed = rows["original"], rows["pruned"], rows["decomposed"]
    assert pruned["params"] < original["params"]
    assert pruned["macs"] <= 0.55 * original["macs"]  # prune-channels{macs=0.5}
    assert decomposed["macs"] < pruned["macs"]
    assert rows["quantized"]["file_bytes"] < decomposed["file_bytes"]  # int8 weights
    assert pruned["file_bytes"] < original["file_bytes"]


def test_demo_accuracy_is_in_range(demo_run):
    _, summary, _ = demo_run
    rows = {row["stage"]: row for row in summary["stages"]}
    if not digits.MODEL_PATH.is_file():
        assert all(row["accuracy"] is None for row in rows.values())
        assert any("not installed" in note for note in summary["notes"])
        pytest.skip("the bundled digits model is not installed; accuracy cannot be measured")
    assert rows["original"]["accuracy"] >= 0.9
    assert rows["pruned"]["accuracy"] >= rows["original"]["accuracy"] - 0.05
    assert all(row["accuracy"] >= 0.5 for row in rows.values())  # far above chance (0.1)


def test_demo_compiles_the_last_stage_with_tvm_or_says_why(demo_run):
    _, summary, out = demo_run
    rows = summary["stages"]
    assert all("skipped (--quick)" in row["note"] for row in rows[:-1])
    last = rows[-1]
    if importlib.util.find_spec("tvm") is None:  # no TVM here: the row must say so, with no number
        assert last["tvm_ms"] is None and "TVM targets not available" in last["note"]
        return
    assert last["tvm_ms"] is not None and last["tvm_ms"] > 0, last["note"]
    assert (out / "artifacts" / last["stage"] / "manifest.json").is_file()


def test_demo_report_has_the_table_and_readable_plots(demo_run):
    _, summary, out = demo_run
    report = (out / "report.md").read_text()
    assert "| stage | params | MACs |" in report
    for name in STAGE_NAMES:
        assert f"| {name} |" in report
    assert json.loads((out / demo.MARKER).read_text())["stages"] == summary["stages"]
    assert sorted((out / "models").iterdir())[0].name == "0-original.onnx"
    image = pytest.importorskip("matplotlib.image", reason="plots need matplotlib (the report extra)")
    for png in ("kept_channels.png", "accuracy_vs_macs.png", "latency.png"):
        assert f"]({png})" in report
        pixels = image.imread(out / png)
        assert pixels.shape[0] >= 300 and pixels.shape[1] >= 600
        assert (pixels[..., :3] < 0.9).mean() > 0.002  # something is drawn, not a blank canvas
    kept = summary["kept_channels"]
    assert kept and all(k["after"] <= k["before"] for k in kept) and any(k["after"] < k["before"] for k in kept)


def test_demo_refuses_to_replace_a_folder_that_is_not_a_demo_report(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    assert main(["demo", "--quick", "--out", str(folder)]) == 2
    assert "not a slimcc demo report" in capsys.readouterr().err
    assert (folder / "thesis.tex").read_text() == "precious"


def test_interrupted_demo_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "measure", interrupt)
    out = tmp_path / "report"
    assert main(["--quiet", "demo", "--quick", "--out", str(out)]) == 130
    assert list(tmp_path.iterdir()) == []


def test_stage_with_a_missing_pass_is_reported():
    specs, notes = demo.available_passes(demo.Stage("future", ("prune-channels{macs=0.5}", "no-such-pass")))
    assert specs == ["prune-channels{macs=0.5}"] and notes == ["no-such-pass not available"]
