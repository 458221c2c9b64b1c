"""Atomic writes: a finished write replaces the file, a failed one leaves the old file and no debris."""

from __future__ import annotations

import json

import pytest

from slimcc.ir.atomic import save_json_atomic


def test_json_write_replaces_the_file_and_creates_folders(tmp_path):
    path = tmp_path / "out" / "bench.json"
    save_json_atomic(path, {"speedup": 1.5})
    save_json_atomic(path, {"speedup": 2.0})
    assert json.loads(path.read_text()) == {"speedup": 2.0}
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]


def test_failed_json_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "bench.json"
    save_json_atomic(path, {"rows": [1]})
    with pytest.raises(TypeError):
        save_json_atomic(path, {"rows": [object()]})  # not serializable: fails half-way through
    assert json.loads(path.read_text()) == {"rows": [1]}
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]
