"""Every zoo model and every real model compiles for x86 and matches onnxruntime (rel err <= 1e-3)."""

from __future__ import annotations

import pytest

from slimcc.models.fetch import REAL_MODELS
from slimcc.models.zoo import ZOO
from slimcc.targets.compiler import compile_model, prepare_model
from slimcc.targets.runner import load_artifact

from targets_helpers import assert_matches_onnxruntime, feeds_for


# Kernels slimcc has no schedule for yet, per zoo model: attn-ctc's LayerNormalization (issue 17's
# attention recognizer; a schedules/ task).


def assert_scheduled_by_slimcc(manifest) -> None:
    """Convs run slimcc's packed conv schedules and every kernel has a slimcc or dlight schedule."""
    rules = manifest.build["slimcc_schedules"]
    assert rules.get("conv", 0) + rules.get("pointwise", 0) > 0, manifest.build
    assert not manifest.build["unscheduled_kernels"], manifest.build


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_compiles_for_x86_and_matches_onnxruntime(name, zoo_model, x86, tmp_path):
    model = zoo_model(name)
    manifest = compile_model(model, x86, tmp_path / "art", isolate=False)
    assert manifest.target["tvm"]["mcpu"] == x86.tvm["mcpu"]
    assert_scheduled_by_slimcc(manifest)
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_real_model_compiles_for_x86_and_matches_onnxruntime(name, real_model_path, x86, tmp_path):
    info = REAL_MODELS[name]
    model = prepare_model(real_model_path(name), {info.input_name: list(info.input_shape)})
    assert model.is_static()
    manifest = compile_model(model, x86, tmp_path / "art")  # in a child process, as the CLI does
    assert_scheduled_by_slimcc(manifest)
    feeds = feeds_for(model)
    assert_matches_onnxruntime(model, load_artifact(tmp_path / "art").run(feeds), feeds)
