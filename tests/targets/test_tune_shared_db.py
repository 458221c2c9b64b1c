"""Tuning databases shared across models: a kernel tuned for model A is reused by model B,
`slimcc tune --report` says which kernels a database covers, and `slimcc tune-merge` joins
databases keeping one (the fastest) record per kernel."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimcc.cli import main
from slimcc.targets.compiler import compile_model, prepare_model
from slimcc.targets.target import make_target
from slimcc.targets.tune import record_count, tune_model
from slimcc.targets.tune_db import database_coverage, merge_databases

from test_tune_one_conv import one_conv_model


def conv_then_pointwise_model():
    """Model B: model A's conv (same weights, same kernel) followed by a 1x1 conv (a new kernel)."""
    base = one_conv_model()
    rng = np.random.default_rng(1)
    w2 = numpy_helper.from_array(rng.standard_normal((8, 16, 1, 1)).astype(np.float32), "w2")
    graph = base.graph
    graph.node.append(helper.make_node("Conv", ["y", "w2"], ["z"]))
    graph.initializer.append(w2)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8, 16, 16]))
    return base


@pytest.mark.slow
@pytest.mark.tuning
def test_kernels_tuned_for_one_model_are_reused_reported_and_merged(tmp_path, capsys):
    spec = make_target("x86", num_cores=1)
    model_a, model_b = prepare_model(one_conv_model()), prepare_model(conv_then_pointwise_model())
    db_a, db_b = tmp_path / "a", tmp_path / "b"
    tune_model(model_a, spec, 4, database_dir=db_a, progress=False)

    coverage = database_coverage(model_b, spec, db_a)
    # model B: the conv (model A's, blocked NCHW16c), its conversion back to NCHW, the 1x1 conv
    assert coverage["kernels"] == 3 and 1 <= coverage["covered"] < 3, coverage
    manifest = compile_model(model_b, spec, tmp_path / "art", database_dir=db_a, isolate=False)
    assert manifest.build["tuned_kernels"] == coverage["covered"]  # model A's kernels, reused by model B

    tune_model(model_b, spec, 8, database_dir=db_b, progress=False)
    merged = merge_databases([db_a, db_b], tmp_path / "merged")
    covered = database_coverage(model_b, spec, tmp_path / "merged")["covered"]
    assert merged["records_out"] == record_count(tmp_path / "merged") == covered >= 2  # one per kernel, both convs
    assert merged["records_in"] > merged["records_out"]

    model_path = tmp_path / "b.onnx"
    model_path.write_bytes(conv_then_pointwise_model().SerializeToString())
    assert main(["tune", str(model_path), "--report", "--db", str(db_a), "--num-cores", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["covered"] == coverage["covered"]


def test_merge_refuses_a_database_that_already_has_records(tmp_path):
    from slimcc.errors import SlimccError

    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "database_tuning_record.json").write_text('[0, [[], [1e-3]]]\n')
    with pytest.raises(SlimccError, match="already holds tuning records"):
        merge_databases([tmp_path / "missing"], dest)


def test_merge_of_a_missing_database_is_a_one_line_error(tmp_path):
    code = main(["tune-merge", str(tmp_path / "nope"), "-o", str(tmp_path / "out")])
    assert code == 2
