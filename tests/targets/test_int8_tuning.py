"""Tuning an int8 model: `tune_model` on the quantized zoo ResNet searches and seeds the VNNI
kernels, and a compile with the database replays their traces (the VNNI intrinsic registered
before replay) with outputs identical to the untuned int8 build.

Two failures this guards against: TVM 0.27 cannot print a trace holding DecomposePadding as
Python, which MetaSchedule does for every design space (slimcc's int8 tuning space leaves it out),
and a compile applying a tuned trace before any schedule registered the VNNI intrinsic.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from slimcc.passes.quant.qdq_insert import QDQInsert
from slimcc.targets.compiler import compile_model
from slimcc.targets.runner import load_artifact
from slimcc.targets.schedules.apply import apply_first_rule
from slimcc.targets.schedules.isa import cpu_vector_for, target_has_feature
from slimcc.targets.target import make_target
from slimcc.targets.tune import fuse_for_tuning, tune_model
from slimcc.targets.tvm_import import ensure_tvm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "passes" / "quant"))
from quant_helpers import calib_context, canonical_zoo  # noqa: E402

HOST = make_target("x86", num_cores=1)
needs_vnni = pytest.mark.skipif(not target_has_feature(HOST.to_tvm(), "avx512vnni"),
                                reason="this CPU has no AVX512-VNNI")


def _quantized_resnet():
    model = canonical_zoo("resnet-basic")
    ctx, held_out = calib_context()
    QDQInsert().run(model, ctx)
    return model, held_out


@needs_vnni
def test_int8_tuning_space_traces_print_as_python():
    tvm = ensure_tvm()
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from slimcc.targets.relax_import import prepare_for_build, to_relax

    model, _ = _quantized_resnet()
    target = HOST.to_tvm()
    mod = fuse_for_tuning(prepare_for_build(to_relax(model), target), target)
    tunable = replace(cpu_vector_for(target), tunable=True)
    spaces = 0
    for task in ms.relax_integration.extract_tasks(mod, target):
        if "qconv" not in task.task_name:
            continue
        scheduled, rule = apply_first_rule(s_tir.Schedule(task.dispatched[0]).copy, tunable)
        assert rule == "int8_conv"
        assert "tensorize" in "\n".join(scheduled.trace.as_python())  # raised in TVM 0.27 with DecomposePadding
        spaces += 1
    assert spaces > 0
    assert isinstance(tvm.s_tir.TensorIntrin.get("slimcc_dot_u8s8_16x4_vnni"), tvm.s_tir.TensorIntrin)


@pytest.mark.slow
@pytest.mark.tuning
@needs_vnni
def test_tuned_int8_resnet_compiles_and_matches_the_untuned_int8_build(tmp_path):
    model, held_out = _quantized_resnet()
    summary = tune_model(model, HOST, trials=2, database_dir=tmp_path / "db", progress=False)
    assert summary["new_records"] > 0 and summary["seeded_with_slimcc_schedules"]
    assert any("qconv" in name for name in summary["tuned_task_names"])
    tuned = compile_model(model, HOST, tmp_path / "tuned", database_dir=tmp_path / "db")  # child process
    assert tuned.build["tuned_kernels"] > 0 and tuned.build["int8_lowered"] > 0
    compile_model(model, HOST, tmp_path / "untuned")
    a, b = load_artifact(tmp_path / "tuned"), load_artifact(tmp_path / "untuned")
    for feeds in held_out[:2]:
        got, want = a.run(feeds), b.run(feeds)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
