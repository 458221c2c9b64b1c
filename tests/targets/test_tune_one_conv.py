"""Tuning end to end on a one-conv model: the smallest complete tuning round trip.

Records are written, a second run extends the same database, and a compile with the database
applies them (the build reports a tuned kernel) with outputs still matching onnxruntime.
It took 77 s (load average ~4) to 147 s (load ~6) on the shared 2-core machine: not in the default run.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimcc.targets.compiler import compile_model, prepare_model
from slimcc.targets.runner import load_artifact
from slimcc.targets.tune import check_database, record_count, tune_model

from targets_helpers import assert_matches_onnxruntime, feeds_for


def one_conv_model() -> onnx.ModelProto:
    """Conv(8->16, 3x3, pad 1) + bias -> Relu on a 1x8x16x16 input."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["y"])]
    graph = helper.make_graph(nodes, "one-conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])], [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def seeded_record_present(db, mean_seconds: float) -> bool:
    """Whether the database holds a record timed at `mean_seconds` (slimcc's seeded schedule)."""
    for line in (db / "database_tuning_record.json").read_text().splitlines():
        run_secs = json.loads(line)[1][1]
        if run_secs and abs(sum(run_secs) / len(run_secs) - mean_seconds) <= 1e-9 * max(1.0, mean_seconds):
            return True
    return False


@pytest.mark.slow
@pytest.mark.tuning
def test_tuning_records_extend_and_are_applied_by_compile(x86, tmp_path):
    model = prepare_model(one_conv_model())
    db = tmp_path / "db"
    first = tune_model(model, x86, trials=4, database_dir=db, progress=False)
    assert first["tasks"] == 1 and first["new_records"] == record_count(db) > 0
    assert "conv" in first["tuned_task_names"][0]
    seeded = first["seeded_with_slimcc_schedules"]
    assert list(seeded) == first["tuned_task_names"] and seeded_record_present(db, seeded[first["tuned_task_names"][0]])
    check_database(db)

    second = tune_model(model, x86, trials=4, database_dir=db, progress=False)
    assert second["new_records"] > 0 and record_count(db) == first["records"] + second["new_records"]
    # the seed recorded by the first run is reused, not measured again (a new timing would differ)
    assert second["seeded_with_slimcc_schedules"] == seeded

    manifest = compile_model(model, x86, tmp_path / "art", database_dir=db, isolate=False)
    assert manifest.build["tuned_kernels"] == 1 <= manifest.build["kernels"]
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)
