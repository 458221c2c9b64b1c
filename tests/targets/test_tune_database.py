"""MetaSchedule tuning writes a database that a later compile applies (tiny trial counts)."""

from __future__ import annotations

import json

import pytest

from slimcc.errors import SlimccError
from slimcc.models import zoo
from slimcc.targets.compiler import compile_file, compile_model
from slimcc.targets.runner import load_artifact
from slimcc.targets.tune import check_database, default_database, record_count, tune_model

from targets_helpers import assert_matches_onnxruntime, feeds_for


@pytest.mark.slow
@pytest.mark.tuning
def test_tuned_database_is_reused_by_compile(zoo_model, x86, tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMCC_CACHE", str(tmp_path / "cache"))
    model = zoo_model("conv-gemm")
    summary = tune_model(model, x86, trials=4, progress=False)
    db = default_database(model, x86)
    assert summary["database"] == str(db) and summary["records"] == record_count(db) > 0
    check_database(db)

    # the default database of this (model, target) is found without being named
    manifest = compile_file(zoo.build("conv-gemm", seed=0), "x86", output_dir=tmp_path / "art", isolate=False)
    assert manifest.build["tuning_database"] == str(db)
    assert 0 < manifest.build["tuned_kernels"] <= manifest.build["kernels"]
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)

    untuned = compile_model(model, x86, tmp_path / "plain", isolate=False)
    assert untuned.build["tuned_kernels"] == 0

    # more tuning appends to the same database instead of starting over
    before = record_count(db)
    tune_model(model, x86, trials=2, progress=False)
    assert record_count(db) >= before
    assert json.loads((tmp_path / "art" / "manifest.json").read_text())["build"]["tuning_database"] == str(db)


def test_missing_or_foreign_database_is_refused(tmp_path):
    with pytest.raises(SlimccError, match="not found"):
        check_database(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    with pytest.raises(SlimccError, match="not a MetaSchedule database"):
        check_database(tmp_path / "other")


def test_tuning_refuses_targets_that_cannot_run_here(zoo_model):
    from slimcc.targets.target import make_target

    with pytest.raises(SlimccError, match="cannot run on this machine.*--tracker HOST:PORT --key KEY"):
        tune_model(zoo_model("conv-gemm"), make_target("arm"), trials=1)
