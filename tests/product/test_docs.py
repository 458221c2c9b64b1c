"""The README and docs/cli.md cannot drift from the code, and the README's Python snippet runs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from slimcc.ir.model import load_model
from slimcc.ir.verify import run_onnxruntime

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_cli", ROOT / "docs" / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_opens_with_the_two_setup_commands():
    lines = [line for line in README.read_text().splitlines() if line.strip()]
    assert lines[0] == "# slimcc"
    assert lines[1].startswith("```")
    assert lines[2] == "pip install -e '.[report]' && slimcc demo"
    assert lines[3] == "pip install -e '.[test]' && python -m pytest"


def test_cli_reference_and_pass_catalogue_are_up_to_date():
    gen = load_generator()
    for path, expected in gen.expected_files().items():
        assert path.read_text() == expected, f"{path.name} is out of date: run `python docs/gen_cli.py`"


def test_every_subcommand_is_in_the_cli_reference_with_its_real_help(monkeypatch, capsys):
    """Compare with what `slimcc` prints (the console script for the top level, main() for each command)."""
    import pytest

    from slimcc.cli import main

    columns = load_generator().HELP_COLUMNS
    text = (ROOT / "docs" / "cli.md").read_text()
    top = subprocess.run(["slimcc", "--help"], capture_output=True, text=True, check=True,
                         env=dict(os.environ, COLUMNS=columns)).stdout
    assert top.rstrip() in text and top.rstrip() in README.read_text()
    commands = re.findall(r"^    ([a-z][a-z-]+)", top.split("COMMAND", 2)[2], re.M)
    assert {"demo", "compress", "optimize", "inspect", "passes"} <= set(commands)
    monkeypatch.setenv("COLUMNS", columns)
    for command in commands:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        help_text = capsys.readouterr().out
        assert f"## slimcc {command}\n" in text
        assert help_text.rstrip() in text, f"docs/cli.md does not hold the current `slimcc {command} --help`"


def test_pass_catalogue_lists_every_registered_pass():
    from slimcc.passes.base import registry

    block = README.read_text().split("<!-- BEGIN GENERATED: passes -->")[1].split("<!-- END GENERATED: passes -->")[0]
    listed = re.findall(r"^- `([a-z0-9-]+)`", block, re.M)
    assert listed == list(registry())


def readme_snippet() -> str:
    """The Python block of the 'Writing a custom pass' section."""
    section = README.read_text().split("## Writing a custom pass", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_custom_pass_snippet_runs_and_removes_mul_by_one(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    one = numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "one")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "one"], ["y"])],
                              "g", [x], [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "model.onnx")
    (tmp_path / "snippet.py").write_text(readme_snippet())
    done = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    clean = load_model(tmp_path / "model-clean.onnx")
    assert [n.op for n in clean.graph.nodes] == ["Relu"]
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)}
    expected = run_onnxruntime(load_model(tmp_path / "model.onnx"), feeds)["y"]
    np.testing.assert_array_equal(next(iter(run_onnxruntime(clean, feeds).values())), expected)
