"""Fixtures for pruning tests: canonicalized real models, loaded once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from slimcc.ir.model import load_model  # noqa: E402
from slimcc.models.fetch import REAL_MODELS  # noqa: E402
from slimcc.passes.canonicalize import Canonicalize  # noqa: E402

_CACHE: dict = {}


@pytest.fixture(scope="session")
def canonical_real_model(real_model_path):
    """name -> a fresh copy of the real model, loaded at its default static shape and canonicalized."""

    def get(name: str):
        if name not in _CACHE:
            spec = REAL_MODELS[name]
            model = load_model(real_model_path(name), {spec.input_name: list(spec.input_shape)})
            Canonicalize().run(model)
            _CACHE[name] = model
        return _CACHE[name].copy()

    return get
