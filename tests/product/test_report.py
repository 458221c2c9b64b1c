"""slimcc.report: the Markdown table and the behaviour without matplotlib."""

from __future__ import annotations

import sys

from slimcc.report import markdown_table, table_rows, write_report

STAGES = [
    {"stage": "original", "pipeline": "canonicalize", "params": 77706, "macs": 12608128, "file_bytes": 315780,
     "accuracy": 0.981, "ort_ms": 0.49, "tvm_ms": None, "note": ""},
    {"stage": "pruned", "pipeline": "prune-channels{macs=0.5}", "params": 37417, "macs": 6072208,
     "file_bytes": 154720, "accuracy": 0.975, "ort_ms": 0.31, "tvm_ms": 1.96, "note": "a|b"},
]


def test_table_cells_are_human_readable_and_pipes_escaped():
    rows = table_rows(STAGES)
    assert rows[0][:6] == ["original", "77.71k", "12.61M", "315.78kB", "98.1%", "0.490"]
    assert rows[0][6] == "-" and rows[1][6] == "1.960"
    text = markdown_table(["stage", "note"], [["pruned", "a|b"]])
    assert text.splitlines()[2] == "| pruned | a\\|b |"


def test_report_without_matplotlib_still_writes_markdown_and_says_how_to_get_plots(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    written = write_report(tmp_path, title="t", intro=["hello"], stages=STAGES, kept=[("conv", 16, 8)])
    assert written["plots"] == [] and list(tmp_path.glob("*.png")) == []
    text = (tmp_path / "report.md").read_text()
    assert "| pruned | 37.42k | 6.07M |" in text and "slimcc[report]" in text and "![" not in text
