"""Fixtures for TVM target tests: prepared models and helpers comparing artifacts with onnxruntime."""

from __future__ import annotations

import pytest

from slimcc.ir.model import Model
from slimcc.models import zoo
from slimcc.targets.compiler import prepare_model
from slimcc.targets.target import make_target

pytest.importorskip("tvm", reason="apache-tvm is not installed")


@pytest.fixture(scope="session")
def x86():
    """The x86 target of this machine (host mcpu)."""
    return make_target("x86")


@pytest.fixture(scope="session")
def zoo_model():
    """name -> canonicalized zoo model, built once per session."""
    cache: dict[str, Model] = {}

    def get(name: str) -> Model:
        if name not in cache:
            cache[name] = prepare_model(zoo.build(name, seed=0))
        return cache[name].copy()

    return get
